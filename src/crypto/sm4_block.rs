//! SM4's block function (GB/T 32907) under SM4-GCM: on x86-64 with AES-NI, eight blocks at a
//! time and in constant time; elsewhere the `sm4` crate's.
//!
//! Why ours: the `sm4` crate encrypts one block at a time and looks its S-box up in a
//! 256-byte table, at indexes made of key and data bytes. That is the cache-timing exposure
//! a TEE cannot afford (the host shares the caches), and at 73 MB/s it was 28 % of the
//! service's request threads (docs/PERFORMANCE.md, "SM4 is now the next cost"). No
//! maintained crate does SM4 with AES-NI; the constant-time pure-Rust ones are slower still.
//!
//! How (the technique of Linux's `sm4-aesni-avx`; constants derived here, independently):
//! SM4's S-box and AES's are both inversion in GF(2⁸) between affine maps, over isomorphic
//! fields, so `S(x) = Q·AES_S(P·x ⊕ p) ⊕ q` for 8×8 bit matrices P, Q and bytes p, q.
//! `scripts/sm4_affine.py` derives them and checks the identity on all 256 bytes;
//! `the_sbox_is_the_standards_on_every_byte` checks it again here. Each affine map is two
//! 16-entry nibble lookups by `pshufb` (a permutation of a register, not a memory access),
//! and `AES_S` is `aesenclast` with a zero round key on input whose ShiftRows was undone.
//! Four blocks share a register, one 32-bit word each (transposed), so a round is the same
//! instructions whatever the key and data: nothing secret chooses an address or a branch.
//! The key schedule uses the same S-box. Tests: the standard's vectors (one block and the
//! million-fold one), agreement with the `sm4` crate on random keys and blocks (`tests.rs`);
//! SM4-GCM on it against RFC 8998's vector (`tests/vectors.rs`) and the independent Python
//! client's SM4-GCM (`tests/independent/`); timing in `benches/constant_time.rs`.

use sm4::cipher::consts::{U8, U16};
use sm4::cipher::{
    AlgorithmName, Block, BlockCipherEncBackend, BlockCipherEncClosure, BlockCipherEncrypt,
    BlockSizeUser, InOut, Key, KeyInit, KeySizeUser, ParBlocks, ParBlocksSizeUser,
};
use zeroize::Zeroize;

/// Whether this CPU runs SM4 on AES-NI, in constant time: the one test that picks the backend.
pub fn on_aes_ni() -> bool {
    #[cfg(target_arch = "x86_64")]
    return ni::available();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// SM4 encryption: on AES-NI in constant time where the CPU has it, else the `sm4` crate's.
#[derive(Clone)]
pub struct Sm4Block(Backend);

#[derive(Clone)]
enum Backend {
    /// Round keys for the AES-NI path (checked present when the key was set).
    #[cfg(target_arch = "x86_64")]
    AesNi(RoundKeys),
    Portable(sm4::Sm4),
}

/// SM4's 32 round keys, wiped on drop.
#[derive(Clone)]
struct RoundKeys([u32; 32]);

impl Drop for RoundKeys {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl Sm4Block {
    /// The `sm4` crate's block function, whatever the CPU (tests compare the two).
    #[cfg(test)]
    pub fn portable(key: &[u8; 16]) -> Self {
        Self(Backend::Portable(sm4::Sm4::new(key.into())))
    }

    /// Whether this key runs on AES-NI.
    #[cfg(test)]
    pub fn is_constant_time(&self) -> bool {
        !matches!(self.0, Backend::Portable(_))
    }
}

impl KeySizeUser for Sm4Block {
    type KeySize = U16;
}

impl BlockSizeUser for Sm4Block {
    type BlockSize = U16;
}

impl KeyInit for Sm4Block {
    fn new(key: &Key<Self>) -> Self {
        #[cfg(target_arch = "x86_64")]
        if on_aes_ni() {
            let mut bytes: [u8; 16] = (*key).into();
            // SAFETY: `on_aes_ni` found AES-NI and SSSE3 on this CPU.
            #[allow(unsafe_code)]
            let keys = unsafe { ni::round_keys(&bytes) };
            bytes.zeroize();
            return Self(Backend::AesNi(RoundKeys(keys)));
        }
        Self(Backend::Portable(sm4::Sm4::new(key)))
    }
}

impl BlockCipherEncrypt for Sm4Block {
    fn encrypt_with_backend(&self, f: impl BlockCipherEncClosure<BlockSize = U16>) {
        match &self.0 {
            #[cfg(target_arch = "x86_64")]
            Backend::AesNi(keys) => f.call(&NiBackend(&keys.0)),
            Backend::Portable(cipher) => cipher.encrypt_with_backend(f),
        }
    }
}

impl AlgorithmName for Sm4Block {
    fn write_alg_name(f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sm4")
    }
}

/// Eight blocks per call: two groups of four, whose rounds the CPU overlaps.
#[cfg(target_arch = "x86_64")]
struct NiBackend<'a>(&'a [u32; 32]);

#[cfg(target_arch = "x86_64")]
impl BlockSizeUser for NiBackend<'_> {
    type BlockSize = U16;
}

#[cfg(target_arch = "x86_64")]
impl ParBlocksSizeUser for NiBackend<'_> {
    type ParBlocksSize = U8;
}

#[cfg(target_arch = "x86_64")]
impl BlockCipherEncBackend for NiBackend<'_> {
    fn encrypt_block(&self, mut block: InOut<'_, '_, Block<Self>>) {
        let mut groups = [[[0u8; 16]; 4]; 1];
        groups[0][0] = (*block.get_in()).into();
        // SAFETY: this backend exists only for keys made where `on_aes_ni` held.
        #[allow(unsafe_code)]
        unsafe {
            ni::encrypt(self.0, &mut groups)
        };
        *block.get_out() = groups[0][0].into();
        groups.zeroize();
    }

    fn encrypt_par_blocks(&self, mut blocks: InOut<'_, '_, ParBlocks<Self>>) {
        let mut groups = [[[0u8; 16]; 4]; 2];
        for (i, block) in blocks.get_in().iter().enumerate() {
            groups[i / 4][i % 4] = (*block).into();
        }
        // SAFETY: as in `encrypt_block`.
        #[allow(unsafe_code)]
        unsafe {
            ni::encrypt(self.0, &mut groups)
        };
        for (i, block) in blocks.get_out().iter_mut().enumerate() {
            *block = groups[i / 4][i % 4].into();
        }
        groups.zeroize();
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod ni {
    use std::arch::x86_64::*;

    /// FK of GB/T 32907's key schedule.
    const FK: [u32; 4] = [0xa3b1_bac6, 0x56aa_3350, 0x677d_9197, 0xb270_22dc];

    /// CK of the key schedule: byte j of CK[i] is (4i + j)·7 mod 256.
    const fn ck(i: usize) -> u32 {
        let mut word = 0u32;
        let mut j = 0;
        while j < 4 {
            word = (word << 8) | (((4 * i + j) * 7) % 256) as u32;
            j += 1;
        }
        word
    }

    pub(super) fn available() -> bool {
        std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("ssse3")
    }

    // The affine maps around AES's S-box (scripts/sm4_affine.py): P·x ⊕ p is
    // PRE_LO[x & 15] ⊕ PRE_HI[x >> 4] (p folded into PRE_LO), likewise Q, q with POST_*.
    const PRE_LO: [u8; 16] = [
        0x3e, 0xb2, 0x0e, 0x82, 0xbb, 0x37, 0x8b, 0x07, 0xa1, 0x2d, 0x91, 0x1d, 0x24, 0xa8, 0x14,
        0x98,
    ];
    const PRE_HI: [u8; 16] = [
        0x00, 0xdc, 0x2e, 0xf2, 0xc5, 0x19, 0xeb, 0x37, 0x08, 0xd4, 0x26, 0xfa, 0xcd, 0x11, 0xe3,
        0x3f,
    ];
    const POST_LO: [u8; 16] = [
        0x6c, 0xd4, 0xa6, 0x1e, 0x52, 0xea, 0x98, 0x20, 0x0b, 0xb3, 0xc1, 0x79, 0x35, 0x8d, 0xff,
        0x47,
    ];
    const POST_HI: [u8; 16] = [
        0x00, 0xe0, 0x50, 0xb0, 0x9d, 0x7d, 0xcd, 0x2d, 0xc0, 0x20, 0x90, 0x70, 0x5d, 0xbd, 0x0d,
        0xed,
    ];
    /// AES's InvShiftRows as a byte shuffle: `aesenclast`'s ShiftRows then puts every byte
    /// back where it was, leaving SubBytes alone.
    const INV_SHIFT_ROWS: [u8; 16] = [0, 13, 10, 7, 4, 1, 14, 11, 8, 5, 2, 15, 12, 9, 6, 3];
    /// Each 32-bit lane's bytes reversed: SM4's words are big-endian.
    const BSWAP32: [u8; 16] = [3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8, 15, 14, 13, 12];
    /// Each 32-bit lane rotated left by 8, 16 and 24 bits, as byte shuffles.
    const ROL8: [u8; 16] = [3, 0, 1, 2, 7, 4, 5, 6, 11, 8, 9, 10, 15, 12, 13, 14];
    const ROL16: [u8; 16] = [2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13];
    const ROL24: [u8; 16] = [1, 2, 3, 0, 5, 6, 7, 4, 9, 10, 11, 8, 13, 14, 15, 12];

    /// The constants in registers.
    struct Masks {
        pre_lo: __m128i,
        pre_hi: __m128i,
        post_lo: __m128i,
        post_hi: __m128i,
        inv_shift_rows: __m128i,
        nibble: __m128i,
        bswap32: __m128i,
        rol8: __m128i,
        rol16: __m128i,
        rol24: __m128i,
    }

    // Intrinsics became safe to call inside `target_feature` functions after our MSRV
    // (1.85); the `unsafe` blocks they need there are "unused" to newer compilers.
    // SAFETY (every `unsafe` block below): the functions are only entered with AES-NI and
    // SSSE3 present (each function's contract, from `available`); the only loads and stores
    // are unaligned 16-byte ones of `[u8; 16]` values, within bounds.
    #[allow(unused_unsafe)]
    #[inline]
    #[target_feature(enable = "sse2,ssse3,aes")]
    unsafe fn vector(bytes: &[u8; 16]) -> __m128i {
        unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) }
    }

    #[allow(unused_unsafe)]
    #[inline]
    #[target_feature(enable = "sse2,ssse3,aes")]
    unsafe fn masks() -> Masks {
        unsafe {
            Masks {
                pre_lo: vector(&PRE_LO),
                pre_hi: vector(&PRE_HI),
                post_lo: vector(&POST_LO),
                post_hi: vector(&POST_HI),
                inv_shift_rows: vector(&INV_SHIFT_ROWS),
                nibble: _mm_set1_epi8(0x0f),
                bswap32: vector(&BSWAP32),
                rol8: vector(&ROL8),
                rol16: vector(&ROL16),
                rol24: vector(&ROL24),
            }
        }
    }

    /// One affine map of every byte: `low[x & 15] ⊕ high[x >> 4]`.
    #[allow(unused_unsafe)]
    #[inline]
    #[target_feature(enable = "sse2,ssse3,aes")]
    unsafe fn affine(x: __m128i, low: __m128i, high: __m128i, nibble: __m128i) -> __m128i {
        unsafe {
            let lo = _mm_and_si128(x, nibble);
            let hi = _mm_and_si128(_mm_srli_epi16::<4>(x), nibble);
            _mm_xor_si128(_mm_shuffle_epi8(low, lo), _mm_shuffle_epi8(high, hi))
        }
    }

    /// SM4's S-box on each of the 16 bytes.
    #[allow(unused_unsafe)]
    #[inline]
    #[target_feature(enable = "sse2,ssse3,aes")]
    unsafe fn sbox(x: __m128i, m: &Masks) -> __m128i {
        unsafe {
            let y = affine(x, m.pre_lo, m.pre_hi, m.nibble);
            let y = _mm_shuffle_epi8(y, m.inv_shift_rows);
            let y = _mm_aesenclast_si128(y, _mm_setzero_si128());
            affine(y, m.post_lo, m.post_hi, m.nibble)
        }
    }

    /// SM4's L on each 32-bit lane: b ⊕ (b <<< 2) ⊕ (b <<< 10) ⊕ (b <<< 18) ⊕ (b <<< 24),
    /// as b ⊕ (b <<< 24) ⊕ ((b ⊕ (b <<< 8) ⊕ (b <<< 16)) <<< 2).
    #[allow(unused_unsafe)]
    #[inline]
    #[target_feature(enable = "sse2,ssse3,aes")]
    unsafe fn linear(b: __m128i, m: &Masks) -> __m128i {
        unsafe {
            let u = _mm_xor_si128(
                _mm_xor_si128(b, _mm_shuffle_epi8(b, m.rol8)),
                _mm_shuffle_epi8(b, m.rol16),
            );
            let u = _mm_or_si128(_mm_slli_epi32::<2>(u), _mm_srli_epi32::<30>(u));
            _mm_xor_si128(_mm_xor_si128(b, _mm_shuffle_epi8(b, m.rol24)), u)
        }
    }

    /// Rows of four 32-bit lanes become columns (its own inverse).
    #[allow(unused_unsafe)]
    #[inline]
    #[target_feature(enable = "sse2,ssse3,aes")]
    unsafe fn transpose(x: [__m128i; 4]) -> [__m128i; 4] {
        unsafe {
            let t0 = _mm_unpacklo_epi32(x[0], x[1]);
            let t1 = _mm_unpacklo_epi32(x[2], x[3]);
            let t2 = _mm_unpackhi_epi32(x[0], x[1]);
            let t3 = _mm_unpackhi_epi32(x[2], x[3]);
            [
                _mm_unpacklo_epi64(t0, t1),
                _mm_unpackhi_epi64(t0, t1),
                _mm_unpacklo_epi64(t2, t3),
                _mm_unpackhi_epi64(t2, t3),
            ]
        }
    }

    /// Encrypts `G` groups of four blocks in place under the round keys `rk`.
    ///
    /// # Safety
    /// The CPU has AES-NI and SSSE3.
    #[allow(unused_unsafe)]
    #[target_feature(enable = "sse2,ssse3,aes")]
    pub(super) unsafe fn encrypt<const G: usize>(rk: &[u32; 32], groups: &mut [[[u8; 16]; 4]; G]) {
        unsafe {
            let m = masks();
            // Word i of the four blocks of a group in register i, as native integers.
            let mut state = [[_mm_setzero_si128(); 4]; G];
            for (words, blocks) in state.iter_mut().zip(groups.iter()) {
                let mut rows = [_mm_setzero_si128(); 4];
                for (row, block) in rows.iter_mut().zip(blocks) {
                    *row = _mm_shuffle_epi8(vector(block), m.bswap32);
                }
                *words = transpose(rows);
            }
            for (i, &key) in rk.iter().enumerate() {
                let key = _mm_set1_epi32(key as i32);
                for x in state.iter_mut() {
                    // Round i updates word i mod 4 from the other three.
                    let (a, b, c, d) = (i % 4, (i + 1) % 4, (i + 2) % 4, (i + 3) % 4);
                    let t = _mm_xor_si128(_mm_xor_si128(x[b], x[c]), _mm_xor_si128(x[d], key));
                    x[a] = _mm_xor_si128(x[a], linear(sbox(t, &m), &m));
                }
            }
            for (words, blocks) in state.iter().zip(groups.iter_mut()) {
                // The output is the last four words in reverse order.
                let rows = transpose([words[3], words[2], words[1], words[0]]);
                for (row, block) in rows.iter().zip(blocks.iter_mut()) {
                    let row = _mm_shuffle_epi8(*row, m.bswap32);
                    _mm_storeu_si128(block.as_mut_ptr().cast(), row);
                }
            }
        }
    }

    /// SM4's key schedule (GB/T 32907, 7.3) on the same constant-time S-box.
    ///
    /// # Safety
    /// The CPU has AES-NI and SSSE3.
    #[allow(unused_unsafe)]
    #[target_feature(enable = "sse2,ssse3,aes")]
    pub(super) unsafe fn round_keys(key: &[u8; 16]) -> [u32; 32] {
        unsafe {
            let m = masks();
            let mut k = [0u32; 4];
            for (i, word) in k.iter_mut().enumerate() {
                let bytes = [key[4 * i], key[4 * i + 1], key[4 * i + 2], key[4 * i + 3]];
                *word = u32::from_be_bytes(bytes) ^ FK[i];
            }
            let mut rk = [0u32; 32];
            for (i, out) in rk.iter_mut().enumerate() {
                let t = k[(i + 1) % 4] ^ k[(i + 2) % 4] ^ k[(i + 3) % 4] ^ ck(i);
                // The S-box works bytewise, so lane 0 holds the word in any byte order.
                let s = _mm_cvtsi128_si32(sbox(_mm_cvtsi32_si128(t as i32), &m)) as u32;
                k[i % 4] ^= s ^ s.rotate_left(13) ^ s.rotate_left(23);
                *out = k[i % 4];
            }
            k.fill(0);
            rk
        }
    }

    #[cfg(test)]
    pub(super) fn sbox_bytes(input: [u8; 16]) -> [u8; 16] {
        assert!(available());
        let mut out = [0u8; 16];
        // SAFETY: AES-NI and SSSE3 present (asserted above).
        unsafe {
            let m = masks();
            _mm_storeu_si128(out.as_mut_ptr().cast(), sbox(vector(&input), &m));
        }
        out
    }
}

#[cfg(test)]
mod tests;
