//! The scan of the gallery's int8 codes: one probe against every row, scores out.
//!
//! Why hand-written: SimSIMD's kernel is exact and fast per pair, but called once per user it
//! pays a dispatch and its tail handling a million times per search, and it cannot keep the
//! probe in registers. Here the probe is prepared once and each row costs, per 32 components,
//! one load and four AVX2 instructions (the sign trick of `maddubs`, below), and four rows
//! are reduced together (docs/PERFORMANCE.md, "1:N"). AVX2 intrinsics are stable in
//! Rust 1.85 (our MSRV); AVX-512 VNNI's are not. Without AVX2, or at a dimension that is not
//! a multiple of 32, rows go through `dot_codes` (SimSIMD) one by one.
//!
//! Exactness: `maddubs` multiplies unsigned by signed bytes and adds pairs into saturating
//! i16. With |q| (0…127) as the unsigned side and c·sign(q) (−127…127: codes are clamped to
//! ±127, so negation cannot overflow) as the signed one, a pair sums to at most
//! 2·127·127 = 32,258 < 32,767: no saturation, and the i32 sums that follow are exact.

use super::dot_codes;

/// Writes to `out[i]` the integer dot product of `query` with row `i` of `codes` (rows of
/// `query.len()` codes, every one in −127…127; `out` as long as there are rows).
pub(super) fn score_rows(query: &[i8], codes: &[i8], out: &mut [i32]) {
    let dim = query.len();
    debug_assert_eq!(codes.len(), dim * out.len());
    #[cfg(target_arch = "x86_64")]
    if dim % 32 == 0 && dim > 0 && std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present (checked just above), and the rows and `out` have the
        // lengths `avx2::score_rows` requires (`dim` a multiple of 32, checked above; one
        // `out` per row, the caller's contract, asserted in debug builds).
        #[allow(unsafe_code)]
        unsafe {
            avx2::score_rows(query, codes, out)
        };
        return;
    }
    for (row, score) in codes.chunks_exact(dim).zip(out.iter_mut()) {
        *score = dot_codes(query, row);
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx2 {
    use std::arch::x86_64::*;

    /// Register-sized pieces of the probe: |q| and q (whose signs are applied to the rows).
    const LANES: usize = 32;

    /// # Safety
    /// The CPU has AVX2; `query.len()` is a non-zero multiple of 32; `codes` holds
    /// `out.len()` rows of `query.len()` codes.
    // Intrinsics became safe to call inside `target_feature` functions after our MSRV; the
    // `unsafe` blocks they need there are "unused" to newer compilers.
    #[allow(unused_unsafe)]
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn score_rows(query: &[i8], codes: &[i8], out: &mut [i32]) {
        let dim = query.len();
        let pieces = dim / LANES;
        // SAFETY (every block below): AVX2 is enabled for this function and present (the
        // caller's contract); each load reads 32 bytes at an offset `LANES·j` < dim of a
        // slice of `dim` bytes, so within bounds; unaligned loads are allowed.
        let (magnitude, signs): (Vec<__m256i>, Vec<__m256i>) = (0..pieces)
            .map(|j| unsafe {
                let q = _mm256_loadu_si256(query.as_ptr().add(LANES * j).cast());
                (_mm256_abs_epi8(q), q)
            })
            .unzip();
        let ones = unsafe { _mm256_set1_epi16(1) };
        // |q|·(c·sign(q)) = q·c per component (0 where q is 0), pairs added in i16 (exact,
        // see the module comment), then pairs of those in i32.
        // Four rows at a time: their four sums are reduced together (three horizontal adds
        // instead of four reductions), and the rows' loads overlap.
        let mut quads = codes.chunks_exact(4 * dim).zip(out.chunks_exact_mut(4));
        for (rows, scores) in &mut quads {
            unsafe {
                let mut sums = [_mm256_setzero_si256(); 4];
                for j in 0..pieces {
                    for (r, sum) in sums.iter_mut().enumerate() {
                        let row = rows.as_ptr().add(r * dim + LANES * j);
                        let partial = product(row, magnitude[j], signs[j], ones);
                        *sum = _mm256_add_epi32(*sum, partial);
                    }
                }
                // hadd(hadd(s0, s1), hadd(s2, s3)) holds, per 128-bit half, the four rows'
                // partial sums in order; the two halves added are the four scores.
                let low = _mm256_hadd_epi32(sums[0], sums[1]);
                let high = _mm256_hadd_epi32(sums[2], sums[3]);
                let both = _mm256_hadd_epi32(low, high);
                let four = _mm_add_epi32(
                    _mm256_castsi256_si128(both),
                    _mm256_extracti128_si256::<1>(both),
                );
                // SAFETY: `scores` is four i32 (chunks_exact_mut(4)); unaligned store.
                _mm_storeu_si128(scores.as_mut_ptr().cast(), four);
            }
        }
        let done = out.len() / 4 * 4;
        for (row, score) in codes[done * dim..]
            .chunks_exact(dim)
            .zip(out[done..].iter_mut())
        {
            unsafe {
                let mut sum = _mm256_setzero_si256();
                for j in 0..pieces {
                    let partial =
                        product(row.as_ptr().add(LANES * j), magnitude[j], signs[j], ones);
                    sum = _mm256_add_epi32(sum, partial);
                }
                *score = horizontal_sum(sum);
            }
        }
    }

    /// q·c of 32 components as eight i32 partial sums, for `q = sign·magnitude` and the
    /// 32 codes at `row` (inlined into `score_rows`, which has the same target feature).
    ///
    /// # Safety
    /// AVX2 is present; `row` points to 32 readable bytes.
    #[allow(unused_unsafe)]
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn product(row: *const i8, magnitude: __m256i, sign: __m256i, ones: __m256i) -> __m256i {
        // SAFETY: the caller's contract; unaligned load.
        unsafe {
            let c = _mm256_loadu_si256(row.cast());
            let pairs = _mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(c, sign));
            _mm256_madd_epi16(pairs, ones)
        }
    }

    /// The sum of the eight i32 lanes.
    #[allow(unused_unsafe)]
    #[target_feature(enable = "avx2")]
    unsafe fn horizontal_sum(v: __m256i) -> i32 {
        // SAFETY: register-only AVX2/SSE2 operations, AVX2 enabled (the caller's contract).
        unsafe {
            let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
            _mm_cvtsi128_si32(s)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::dot_codes_scalar;
    use super::*;

    /// Every row's score is the exact integer sum, at the dimensions that take the AVX2 path
    /// (on a CPU that has it) and those that do not, including the extremes ±127 and 0.
    #[test]
    fn every_row_score_is_the_exact_integer_sum() {
        let mut state = 7u32;
        let mut code = || {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (((state >> 24) % 255) as i32 - 127) as i8
        };
        for dim in [32, 64, 100, 128, 512] {
            for rows in [0, 1, 3, 257] {
                let mut query: Vec<i8> = (0..dim).map(|_| code()).collect();
                let mut codes: Vec<i8> = (0..dim * rows).map(|_| code()).collect();
                if rows > 0 {
                    // The worst case for the i16 pair sums: ±127 everywhere, and zeros.
                    query[..4].copy_from_slice(&[127, 127, -127, 0]);
                    codes[..dim].iter_mut().for_each(|c| *c = -127);
                    codes[dim * (rows - 1)..].iter_mut().for_each(|c| *c = 127);
                }
                let mut out = vec![0; rows];
                score_rows(&query, &codes, &mut out);
                for (i, row) in codes.chunks_exact(dim).enumerate() {
                    assert_eq!(out[i], dot_codes_scalar(&query, row), "dim {dim} row {i}");
                }
            }
        }
        let all = vec![127i8; 128];
        let mut out = [0];
        score_rows(&all, &all, &mut out);
        assert_eq!(out[0], 127 * 127 * 128);
        let negative = vec![-127i8; 128];
        score_rows(&all, &negative, &mut out);
        assert_eq!(out[0], -127 * 127 * 128);
    }

    /// The AVX2 path itself runs here (CI's machines have AVX2): otherwise the test above
    /// would compare the fallback with itself.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn this_machine_takes_the_avx2_path() {
        assert!(std::arch::is_x86_feature_detected!("avx2"));
    }
}
