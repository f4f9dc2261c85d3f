//! Numeric policy of the core in one place: how much asymmetry an input may have, when a
//! matrix is rescaled before a solve, when an update could overflow, and the top-k solver's
//! default tolerances and stopping rules. Validation (what is an error) lives in `check`.

use crate::scalar::Scalar;

/// Whether `T` is the double-precision type (policies differ between f32 and f64).
fn is_double<T: Scalar>() -> bool {
    T::EPSILON.to_f64() < 1e-10
}

/// Relative asymmetry allowed in a "symmetric" input: sqrt(machine epsilon) of the largest entry.
pub fn symmetry_tolerance<T: Scalar>(scale: T) -> f64 {
    T::EPSILON.to_f64().sqrt() * scale.to_f64()
}

/// Whether `terms` squares of `max_entry` can be summed in `T` without overflow (with a 4×
/// margin for the rounding of the sum).
pub fn overflow_safe<T: Scalar>(max_entry: f64, terms: usize) -> bool {
    let big = if is_double::<T>() {
        f64::MAX
    } else {
        f32::MAX as f64
    };
    max_entry * max_entry * (terms.max(1) as f64) < big / 4.0
}

/// The exponent e such that 2^e · `scale` (a largest |entry|) is near 1, when `scale` is far
/// enough from 1 that a solver could under- or overflow in `T`; `None` when it is safe as is.
///
/// A power of two, so scaling is exact (except where a result is itself subnormal) and
/// results scale back without error. The exponent can exceed the range of a single
/// representable factor (subnormal inputs need 2^1030 in f64, 2^133 in f32): apply it with
/// [`scale_pow2`], which splits it into representable steps.
pub fn rescale_exponent<T: Scalar>(scale: f64) -> Option<i32> {
    let (low, high) = if is_double::<T>() {
        (1e-100, 1e100)
    } else {
        (1e-12, 1e12)
    };
    if scale > 0.0 && scale.is_finite() && (scale < low || scale > high) {
        Some(-(scale.log2().round() as i32))
    } else {
        None
    }
}

/// The factors whose product is 2^e, each representable in `T` (at most three or four).
pub fn pow2_steps<T: Scalar>(e: i32) -> Vec<T> {
    let limit = if is_double::<T>() { 500 } else { 60 };
    let mut steps = Vec::new();
    let mut rest = e;
    while rest != 0 {
        let step = rest.clamp(-limit, limit);
        steps.push(T::from_f64(2f64.powi(step)));
        rest -= step;
    }
    steps
}

/// x · 2^e, exactly unless the result is subnormal (steps applied largest-first so that an
/// intermediate value never over- or underflows on the way).
#[inline]
pub fn scale_pow2<T: Scalar>(x: T, steps: &[T]) -> T {
    steps.iter().fold(x, |acc, &f| acc * f)
}

/// Default relative residual ‖K u − λ u‖ / max|λ| at which a top-k pair counts as converged.
pub fn topk_tolerance<T: Scalar>() -> f64 {
    if is_double::<T>() {
        1e-11
    } else {
        1e-4
    }
}

/// Smallest tolerance a caller may ask for: below a few ulps the residual cannot get.
pub fn topk_min_tolerance<T: Scalar>() -> f64 {
    T::EPSILON.to_f64()
}

/// Default Krylov basis width of the top-k solver, in blocks of `block` vectors, for order n.
///
/// A wider basis needs fewer products with K per converged pair (a higher polynomial degree
/// per restart) but costs O(n·width²) in orthogonalisation and O(width³) in Rayleigh–Ritz per
/// cycle. 16 blocks only pay off when the basis stays under a quarter of n, where the products
/// dominate (measured on 2 cores, k = 32: at n = 4096, 640 products instead of 1040 for an
/// eNTK-like spectrum, 2320 instead of 2640 for noise; at n = 2048 the wider basis was
/// slower).
pub fn topk_basis_blocks(n: usize, block: usize) -> usize {
    if block.saturating_mul(16 * 4) <= n {
        16
    } else {
        10
    }
}

/// Stagnation rule of the Krylov restarts: stop when the best residual of the last
/// `STAGNATION_WINDOW` cycles is not below `STAGNATION_FACTOR` times the best before them.
pub const STAGNATION_WINDOW: usize = 10;
pub const STAGNATION_FACTOR: f64 = 0.9;

/// Whether a residual history (one entry per cycle) has stopped improving.
pub fn stagnated(history: &[f64]) -> bool {
    let w = STAGNATION_WINDOW;
    if history.len() < 2 * w {
        return false;
    }
    let (before, recent) = history.split_at(history.len() - w);
    let best_before = before.iter().copied().fold(f64::INFINITY, f64::min);
    let best_recent = recent.iter().copied().fold(f64::INFINITY, f64::min);
    best_recent > STAGNATION_FACTOR * best_before
}

/// A new Krylov direction whose norm after projection is below this fraction of its norm
/// before lies numerically in the basis already; it is replaced by a random direction.
pub const DEFICIENT_DIRECTION: f64 = 1e-10;

/// CholQR orthonormalises a Krylov block only when each column keeps at least this fraction
/// of its norm against the previous ones (L_jj ≥ this · ‖z_j‖): in float64 the block's
/// condition number is then small enough (≲ 1e5) that CholQR followed by a second pass is
/// orthonormal to working precision; otherwise Householder QR is used. Float32 always takes
/// Householder QR (a fraction above 1 is never met): with CholQR, even at a 1e-2 fraction, a
/// float32 operator whose products are symmetric only to round-off (as J (Jᵀ v) computed in
/// float32 is) stalled at residuals near 2e-3 and needed 4.7× the products for a top-25.
pub fn cholqr_min_diag<T: Scalar>() -> f64 {
    if is_double::<T>() {
        1e-4
    } else {
        2.0
    }
}

/// Singular values below max(n, d)·eps·σ_max count as zero (`scipy.linalg.orth`'s rule).
pub fn rank_cutoff<T: Scalar>(rows: usize, cols: usize, top: f64) -> f64 {
    (rows.max(cols) as f64) * T::EPSILON.to_f64() * top
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnormal_scales_get_representable_steps() {
        let e = rescale_exponent::<f64>(1e-310).unwrap();
        assert!(e > 1023);
        let steps = pow2_steps::<f64>(e);
        assert!(steps.iter().all(|s| s.is_finite() && *s > 0.0));
        let x = scale_pow2(1e-310, &steps);
        assert!((0.5..2.0).contains(&x), "{x}");
        let e32 = rescale_exponent::<f32>(1e-40).unwrap();
        let x32 = scale_pow2(1e-40f32, &pow2_steps::<f32>(e32));
        assert!((0.5..2.0).contains(&x32), "{x32}");
    }

    #[test]
    fn stagnation_needs_two_windows_without_progress() {
        let improving: Vec<f64> = (0..40).map(|i| 0.8f64.powi(i)).collect();
        assert!(!stagnated(&improving));
        let flat = vec![1e-15; 2 * STAGNATION_WINDOW];
        assert!(stagnated(&flat));
    }
}
