//! Helpers shared by the integration tests: seeded random matrices, naive reference
//! products, and measures of how far a result is from a reference.

// Each test file is its own crate and uses only some of these.
#![allow(dead_code)]

use entk_core::CoreResult;
use faer::{Mat, MatRef, Par};

pub fn lcg(seed: u64) -> impl FnMut() -> f64 {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }
}

pub fn random(rows: usize, cols: usize, seed: u64) -> Mat<f64> {
    let mut r = lcg(seed);
    Mat::from_fn(rows, cols, |_, _| r())
}

pub fn naive_abt(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> Mat<f64> {
    Mat::from_fn(a.nrows(), b.nrows(), |i, j| {
        (0..a.ncols()).map(|p| a[(i, p)] * b[(j, p)]).sum()
    })
}

pub fn max_rel(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> f64 {
    let mut worst = 0.0f64;
    let mut scale = f64::MIN_POSITIVE;
    for j in 0..a.ncols() {
        for i in 0..a.nrows() {
            worst = worst.max((a[(i, j)] - b[(i, j)]).abs());
            scale = scale.max(b[(i, j)].abs());
        }
    }
    worst / scale
}

pub const PAR: Par = Par::Seq;

pub fn no_cancel() -> impl FnMut() -> CoreResult<()> {
    || Ok(())
}

/// ‖P_a − P_b‖_max of the projectors onto the column spans of two orthonormal bases.
pub fn projector_distance(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> f64 {
    let pa = naive_abt(a, a);
    let pb = naive_abt(b, b);
    let mut worst = 0.0f64;
    for j in 0..pa.ncols() {
        for i in 0..pa.nrows() {
            worst = worst.max((pa[(i, j)] - pb[(i, j)]).abs());
        }
    }
    worst
}

/// Q diag(values) Qᵀ for a random orthogonal Q (n = values.len()).
pub fn with_spectrum(values: &[f64], seed: u64) -> Mat<f64> {
    let n = values.len();
    let x = random(n, n, seed);
    let q = x.qr().compute_thin_Q();
    Mat::from_fn(n, n, |i, j| {
        let s: f64 = (0..n).map(|c| q[(i, c)] * values[c] * q[(j, c)]).sum();
        let t: f64 = (0..n).map(|c| q[(j, c)] * values[c] * q[(i, c)]).sum();
        0.5 * (s + t)
    })
}

/// max_j ‖K v_j − λ_j v_j‖ / |λ_1|, computed independently of the solver.
pub fn residual_bound(k: MatRef<'_, f64>, values: &[f64], vectors: MatRef<'_, f64>) -> f64 {
    residual_from_product(naive_abt(k, vectors.transpose()).as_ref(), values, vectors)
}

/// max_j ‖(K V)_j − λ_j v_j‖ / |λ_1| from the product `kv` = K V (n, m): for orders where the
/// naive product of [`residual_bound`] is too slow, pass faer's.
pub fn residual_from_product(kv: MatRef<'_, f64>, values: &[f64], vectors: MatRef<'_, f64>) -> f64 {
    let top = values[0].abs().max(f64::MIN_POSITIVE);
    (0..values.len())
        .map(|j| {
            (0..kv.nrows())
                .map(|i| (kv[(i, j)] - values[j] * vectors[(i, j)]).powi(2))
                .sum::<f64>()
                .sqrt()
                / top
        })
        .fold(0.0, f64::max)
}
