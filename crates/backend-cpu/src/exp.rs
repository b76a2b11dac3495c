//! The one hand-written `e^x` of the CPU backend (softmax rows, attention, ReduNet memberships 4.1.11), in f32 and f64 from one algorithm: Cody-Waite reduction, a Taylor polynomial, `2^k` assembled in the exponent bits.
//!
//! ```text
//! x = k ln 2 + r,  |r| <= ln 2 / 2,  k = round(x log2 e)
//! e^x = 2^k p(r),  p(r) = sum_{i <= D} r^i / i!
//! ```
//!
//! `k` is rounded by adding `1.5 * 2^mantissa_bits` (it lands in the low
//! mantissa bits, where `2^k` is then read off), `ln 2` is split in a high
//! part exact in `k ln 2` and a low part, so the loop has no branch and no
//! float-to-integer conversion and vectorises. The polynomial degree and the
//! range differ by precision ([`FastExp`]): f32 degree 6 by Horner (relative
//! error below 5e-7, arguments clamped to `[-87.3, 88]`, so `e^-inf` is about
//! the smallest normal number and `e^inf` finite); f64 degree 12 by Estrin's
//! scheme (within a few ulp of `f64::exp`), flushed to 0 below -708.

/// The per-precision constants and polynomial of [`fast_exp`].
pub trait FastExp:
    Copy + PartialOrd + std::ops::Add<Output = Self> + std::ops::Sub<Output = Self> + std::ops::Mul<Output = Self>
{
    /// `log2 e`.
    const LOG2E: Self;
    /// High part of `ln 2`, with few enough bits that `k LN2_HI` is exact.
    const LN2_HI: Self;
    /// `ln 2 - LN2_HI`.
    const LN2_LO: Self;
    /// `1.5 * 2^mantissa_bits`: adding it rounds to an integer held in the low mantissa bits.
    const ROUND: Self;
    /// Smallest argument computed; below it the result is zero when [`FastExp::FLUSH_TO_ZERO`], else the value at the bound.
    const MIN_ARG: Self;
    /// Largest argument computed (the value at the bound above it).
    const MAX_ARG: Self;
    /// Whether arguments below [`FastExp::MIN_ARG`] give exactly zero.
    const FLUSH_TO_ZERO: bool;
    /// Zero.
    const ZERO: Self;
    /// `p(r)`, the Taylor polynomial of `e^r` on `|r| <= ln 2 / 2`.
    fn poly(r: Self) -> Self;
    /// `2^k` from `k ln 2`'s rounded form `x log2 e + ROUND`.
    fn pow2(shifted: Self) -> Self;
}

impl FastExp for f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0;
    const MIN_ARG: f32 = -87.336_54;
    const MAX_ARG: f32 = 88.0;
    const FLUSH_TO_ZERO: bool = false;
    const ZERO: f32 = 0.0;

    #[inline(always)]
    fn poly(r: f32) -> f32 {
        1.0 + r
            * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))))
    }

    #[inline(always)]
    fn pow2(shifted: f32) -> f32 {
        // (k + 127) << 23, k = bits(shifted) - bits(ROUND)
        f32::from_bits(shifted.to_bits().wrapping_sub(Self::ROUND.to_bits()).wrapping_add(127) << 23)
    }
}

impl FastExp for f64 {
    const LOG2E: f64 = std::f64::consts::LOG2_E;
    // ln 2 split as in fdlibm: the high part has 32 significant bits, so k * LN2_HI is exact.
    const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
    const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);
    const ROUND: f64 = 6_755_399_441_055_744.0;
    const MIN_ARG: f64 = -708.0;
    const MAX_ARG: f64 = 709.0;
    const FLUSH_TO_ZERO: bool = true;
    const ZERO: f64 = 0.0;

    #[inline(always)]
    fn poly(r: f64) -> f64 {
        const C: [f64; 13] = [
            1.0,
            1.0,
            1.0 / 2.0,
            1.0 / 6.0,
            1.0 / 24.0,
            1.0 / 120.0,
            1.0 / 720.0,
            1.0 / 5040.0,
            1.0 / 40320.0,
            1.0 / 362_880.0,
            1.0 / 3_628_800.0,
            1.0 / 39_916_800.0,
            1.0 / 479_001_600.0,
        ];
        // Estrin's scheme: a short dependency chain, so that lanes overlap.
        let (r2, q0, q1, q2, q3, q4, q5) = (
            r * r,
            C[0] + C[1] * r,
            C[2] + C[3] * r,
            C[4] + C[5] * r,
            C[6] + C[7] * r,
            C[8] + C[9] * r,
            C[10] + C[11] * r,
        );
        let r4 = r2 * r2;
        let (s0, s1, s2) = (q0 + q1 * r2, q2 + q3 * r2, q4 + q5 * r2 + C[12] * r4);
        (s0 + s1 * r4) + s2 * (r4 * r4)
    }

    #[inline(always)]
    fn pow2(shifted: f64) -> f64 {
        f64::from_bits((shifted.to_bits().wrapping_sub(Self::ROUND.to_bits()).wrapping_add(1023)) << 52)
    }
}

/// `e^x` (see the module documentation for the accuracy and range per precision); NaN propagates.
#[inline(always)]
pub fn fast_exp<T: FastExp>(x: T) -> T {
    let below = x < T::MIN_ARG;
    // clamped by two selects that keep NaN (`f32::clamp` would too, but is not generic)
    let xc = if below { T::MIN_ARG } else { x };
    let xc = if xc > T::MAX_ARG { T::MAX_ARG } else { xc };
    let shifted = xc * T::LOG2E + T::ROUND;
    let k = shifted - T::ROUND;
    let r = (xc - k * T::LN2_HI) - k * T::LN2_LO;
    let y = T::poly(r) * T::pow2(shifted);
    if T::FLUSH_TO_ZERO && below {
        T::ZERO
    } else {
        y
    }
}

/// [`fast_exp`] in f32 (the softmax rows of the attention kernels).
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    fast_exp(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std_within_a_few_ulp() {
        let mut worst = 0.0f64;
        let n = 200_000;
        for i in 0..=n {
            let x = -708.0 * (i as f64 / n as f64).powi(3);
            let (a, b) = (fast_exp(x), x.exp());
            worst = worst.max(((a - b) / b).abs());
        }
        assert!(worst < 4.0 * f64::EPSILON, "worst relative error {worst:e}");
        assert_eq!(fast_exp(0.0f64), 1.0);
        assert_eq!(fast_exp(-800.0f64), 0.0);
        assert!(fast_exp(f64::NAN).is_nan());
    }
}
