#!/usr/bin/env python3
"""Derives the constants of src/crypto/sm4_block.rs: SM4's S-box as AES's between two affine
maps, S(x) = Q·AES_S(P·x ⊕ p) ⊕ q, each map as two 16-entry nibble tables. Checks the identity
on all 256 bytes against the S-box of GB/T 32907 (given here by its algebraic form, checked
against the standard's first entries) and prints the tables. No input; run it to compare with
the Rust constants.

Why it holds: SM4's S-box is A·inv(A·x ⊕ C) ⊕ C with inv the inverse in GF(2⁸) modulo
x⁸+x⁷+x⁶+x⁵+x⁴+x²+1, A a circulant bit matrix, C = 0xd3; AES's is A'·inv'(x) ⊕ 0x63 modulo
x⁸+x⁴+x³+x+1. The two fields are isomorphic (M below: α^i ↦ β^i for a root β of SM4's
polynomial in AES's field), so inv = M⁻¹·inv'·M and the rest is composing affine maps.
"""

SM4_POLY, AES_POLY = 0x1F5, 0x11B


def gf_mul(a, b, poly):
    r = 0
    while b:
        if b & 1:
            r ^= a
        b >>= 1
        a <<= 1
        if a & 0x100:
            a ^= poly
    return r


def gf_inv(a, poly):
    return 0 if a == 0 else next(b for b in range(1, 256) if gf_mul(a, b, poly) == 1)


def rotl8(x, n):
    return ((x << n) | (x >> (8 - n))) & 0xFF


# A linear map on bytes is the list of the images of bits 0..7.
def apply(m, x):
    r = 0
    for i in range(8):
        if x >> i & 1:
            r ^= m[i]
    return r


def of(f):
    return [f(1 << i) for i in range(8)]


def compose(a, b):  # a after b
    return [apply(a, c) for c in b]


def inverse(m):
    table = {apply(m, x): x for x in range(256)}
    assert len(table) == 256, "not invertible"
    return [table[1 << i] for i in range(8)]


def reverse_bits(x):
    return int(f"{x:08b}"[::-1], 2)


# SM4's A, as the literature writes it (rows, most significant bit first).
ROWS = ["11100101", "11110010", "01111001", "10111100",
        "01011110", "00101111", "10010111", "11001011"]


def a_msb_first(x):
    bits = [(x >> (7 - i)) & 1 for i in range(8)]
    out = 0
    for r, row in enumerate(ROWS):
        v = 0
        for c in range(8):
            v ^= int(row[c]) & bits[c]
        out |= v << (7 - r)
    return out


A = of(lambda x: reverse_bits(a_msb_first(reverse_bits(x))))
C = 0xD3
SM4_S = [apply(A, gf_inv(apply(A, x) ^ C, SM4_POLY)) ^ C for x in range(256)]
# GB/T 32907's table starts d6 90 e9 fe cc e1 3d b7 and ends ... 39 48.
assert SM4_S[:8] == [0xD6, 0x90, 0xE9, 0xFE, 0xCC, 0xE1, 0x3D, 0xB7] and SM4_S[-2:] == [0x39, 0x48]

A_AES = of(lambda b: b ^ rotl8(b, 1) ^ rotl8(b, 2) ^ rotl8(b, 3) ^ rotl8(b, 4))
AES_S = [apply(A_AES, gf_inv(x, AES_POLY)) ^ 0x63 for x in range(256)]
assert AES_S[0] == 0x63 and AES_S[1] == 0x7C and AES_S[0x53] == 0xED


def evaluate_in_aes_field(poly, beta):
    r, power = 0, 1
    for i in range(9):
        if poly >> i & 1:
            r ^= power
        power = gf_mul(power, beta, AES_POLY)
    return r


BETA = min(b for b in range(2, 256) if evaluate_in_aes_field(SM4_POLY, b) == 0)
M = []
power = 1
for _ in range(8):
    M.append(power)
    power = gf_mul(power, BETA, AES_POLY)
for a in range(256):
    for b in (3, 0x53, 0xCA):
        assert apply(M, gf_mul(a, b, SM4_POLY)) == gf_mul(apply(M, a), apply(M, b), AES_POLY)

P, p = compose(M, A), apply(M, C)
Q = compose(A, compose(inverse(M), inverse(A_AES)))
q = apply(Q, 0x63) ^ C

PRE_LO = [apply(P, n) ^ p for n in range(16)]
PRE_HI = [apply(P, n << 4) for n in range(16)]
POST_LO = [apply(Q, n) ^ q for n in range(16)]
POST_HI = [apply(Q, n << 4) for n in range(16)]


def via_aes(x):
    y = PRE_LO[x & 15] ^ PRE_HI[x >> 4]
    w = AES_S[y]
    return POST_LO[w & 15] ^ POST_HI[w >> 4]


assert all(via_aes(x) == SM4_S[x] for x in range(256)), "the identity fails"
print("S(x) = Q·AES_S(P·x ⊕ p) ⊕ q holds on all 256 bytes")
for name, table in [("PRE_LO", PRE_LO), ("PRE_HI", PRE_HI), ("POST_LO", POST_LO), ("POST_HI", POST_HI)]:
    print(f"{name}: " + ", ".join(f"0x{v:02x}" for v in table))
