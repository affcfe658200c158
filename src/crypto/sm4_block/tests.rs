//! The AES-NI block function against the standard (its S-box table and vectors) and against
//! the `sm4` crate.

use aes_gcm::aead::consts::U12;
use aes_gcm::{AeadInOut, AesGcm};
use sm4::cipher::{BlockCipherEncrypt, KeyInit};

use super::Sm4Block;

/// GB/T 32907-2016's S-box, row by row.
#[rustfmt::skip]
const STANDARD_SBOX: [u8; 256] = [
    0xd6, 0x90, 0xe9, 0xfe, 0xcc, 0xe1, 0x3d, 0xb7, 0x16, 0xb6, 0x14, 0xc2, 0x28, 0xfb, 0x2c, 0x05,
    0x2b, 0x67, 0x9a, 0x76, 0x2a, 0xbe, 0x04, 0xc3, 0xaa, 0x44, 0x13, 0x26, 0x49, 0x86, 0x06, 0x99,
    0x9c, 0x42, 0x50, 0xf4, 0x91, 0xef, 0x98, 0x7a, 0x33, 0x54, 0x0b, 0x43, 0xed, 0xcf, 0xac, 0x62,
    0xe4, 0xb3, 0x1c, 0xa9, 0xc9, 0x08, 0xe8, 0x95, 0x80, 0xdf, 0x94, 0xfa, 0x75, 0x8f, 0x3f, 0xa6,
    0x47, 0x07, 0xa7, 0xfc, 0xf3, 0x73, 0x17, 0xba, 0x83, 0x59, 0x3c, 0x19, 0xe6, 0x85, 0x4f, 0xa8,
    0x68, 0x6b, 0x81, 0xb2, 0x71, 0x64, 0xda, 0x8b, 0xf8, 0xeb, 0x0f, 0x4b, 0x70, 0x56, 0x9d, 0x35,
    0x1e, 0x24, 0x0e, 0x5e, 0x63, 0x58, 0xd1, 0xa2, 0x25, 0x22, 0x7c, 0x3b, 0x01, 0x21, 0x78, 0x87,
    0xd4, 0x00, 0x46, 0x57, 0x9f, 0xd3, 0x27, 0x52, 0x4c, 0x36, 0x02, 0xe7, 0xa0, 0xc4, 0xc8, 0x9e,
    0xea, 0xbf, 0x8a, 0xd2, 0x40, 0xc7, 0x38, 0xb5, 0xa3, 0xf7, 0xf2, 0xce, 0xf9, 0x61, 0x15, 0xa1,
    0xe0, 0xae, 0x5d, 0xa4, 0x9b, 0x34, 0x1a, 0x55, 0xad, 0x93, 0x32, 0x30, 0xf5, 0x8c, 0xb1, 0xe3,
    0x1d, 0xf6, 0xe2, 0x2e, 0x82, 0x66, 0xca, 0x60, 0xc0, 0x29, 0x23, 0xab, 0x0d, 0x53, 0x4e, 0x6f,
    0xd5, 0xdb, 0x37, 0x45, 0xde, 0xfd, 0x8e, 0x2f, 0x03, 0xff, 0x6a, 0x72, 0x6d, 0x6c, 0x5b, 0x51,
    0x8d, 0x1b, 0xaf, 0x92, 0xbb, 0xdd, 0xbc, 0x7f, 0x11, 0xd9, 0x5c, 0x41, 0x1f, 0x10, 0x5a, 0xd8,
    0x0a, 0xc1, 0x31, 0x88, 0xa5, 0xcd, 0x7b, 0xbd, 0x2d, 0x74, 0xd0, 0x12, 0xb8, 0xe5, 0xb4, 0xb0,
    0x89, 0x69, 0x97, 0x4a, 0x0c, 0x96, 0x77, 0x7e, 0x65, 0xb9, 0xf1, 0x09, 0xc5, 0x6e, 0xc6, 0x84,
    0x18, 0xf0, 0x7d, 0xec, 0x3a, 0xdc, 0x4d, 0x20, 0x79, 0xee, 0x5f, 0x3e, 0xd7, 0xcb, 0x39, 0x48,
];

fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).unwrap();
    bytes
}

/// Both backends where this CPU has AES-NI (this machine and CI), else the portable one.
fn both(key: &[u8; 16]) -> Vec<Sm4Block> {
    vec![Sm4Block::new(key.into()), Sm4Block::portable(key)]
}

#[cfg(target_arch = "x86_64")]
#[test]
fn the_sbox_is_the_standards_on_every_byte() {
    if !super::ni::available() {
        eprintln!("no AES-NI here: only the portable backend runs");
        return;
    }
    for chunk in 0..16 {
        let input: [u8; 16] = std::array::from_fn(|i| (16 * chunk + i) as u8);
        let out = super::ni::sbox_bytes(input);
        for (x, s) in input.iter().zip(out) {
            assert_eq!(s, STANDARD_SBOX[*x as usize], "S({x:#04x})");
        }
    }
    assert!(Sm4Block::new(&[0u8; 16].into()).is_constant_time());
}

#[test]
fn the_standards_vectors_pass_on_both_backends() {
    // GB/T 32907-2016, appendix A: key = plaintext; once, then a million times over.
    let key = hex::decode("0123456789abcdeffedcba9876543210").unwrap();
    let key: [u8; 16] = key.try_into().unwrap();
    for cipher in both(&key) {
        let mut block = key.into();
        cipher.encrypt_block(&mut block);
        assert_eq!(hex::encode(block), "681edf34d206965e86b3e94f536e4246");
        let mut block = key.into();
        for _ in 0..1_000_000 {
            cipher.encrypt_block(&mut block);
        }
        assert_eq!(hex::encode(block), "595298c7c6fd271f0402f804c33d3f66");
    }
}

#[test]
fn it_agrees_with_the_sm4_crate_on_random_keys_and_every_run_length() {
    for _ in 0..50 {
        let key: [u8; 16] = random();
        let reference = sm4::Sm4::new(&key.into());
        // 1..=20 blocks: single blocks, the eight-block groups and every tail length.
        for count in 1..=20 {
            let input: Vec<_> = (0..count).map(|_| random::<16>().into()).collect();
            let mut expected = input.clone();
            reference.encrypt_blocks(&mut expected);
            for cipher in both(&key) {
                let mut blocks = input.clone();
                cipher.encrypt_blocks(&mut blocks);
                assert_eq!(blocks, expected, "{count} blocks");
            }
        }
    }
}

#[test]
fn sm4_gcm_on_it_matches_sm4_gcm_on_the_sm4_crate() {
    type Ours = AesGcm<Sm4Block, U12>;
    type Theirs = AesGcm<sm4::Sm4, U12>;
    for len in (0..300).step_by(7).chain([4096]) {
        let (key, nonce): ([u8; 16], [u8; 12]) = (random(), random());
        let plaintext: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
        let mut ours = plaintext.clone();
        let mut theirs = plaintext.clone();
        let tag = Ours::new(&key.into())
            .encrypt_inout_detached(&nonce.into(), b"aad", ours.as_mut_slice().into())
            .unwrap();
        let their_tag = Theirs::new(&key.into())
            .encrypt_inout_detached(&nonce.into(), b"aad", theirs.as_mut_slice().into())
            .unwrap();
        assert_eq!((&ours, tag), (&theirs, their_tag), "{len} bytes");
        Ours::new(&key.into())
            .decrypt_inout_detached(&nonce.into(), b"aad", ours.as_mut_slice().into(), &tag)
            .unwrap();
        assert_eq!(ours, plaintext);
    }
}
