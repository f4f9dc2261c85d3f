//! Full symmetric eigendecomposition with eigenvalues in descending order: faer's solver for
//! small orders, the blocked tridiagonal reduction of `tridiag` for large ones.

use crate::alloc;
use crate::check;
use crate::error::{CoreError, CoreResult};
use crate::policy;
use crate::scalar::Scalar;
use faer::diag::Diag;
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::evd::{self, ComputeEigenvectors};
use faer::reborrow::{Reborrow, ReborrowMut};
use faer::{Mat, MatMut, MatRef, Par};

/// Eigenpairs of a symmetric matrix: `values` descending, `vectors` (n, m) with column i
/// the unit eigenvector of `values[i]`.
#[derive(Debug, Clone)]
pub struct EigenPairs<T> {
    pub values: Vec<T>,
    pub vectors: Mat<T>,
}

/// From this order on, a float64 solve takes the blocked tridiagonal reduction
/// ([`crate::tridiag`]) instead of faer's one-column-at-a-time reduction. faer's reads and
/// writes the trailing triangle at every column, the blocked one only reads it: that halves
/// the memory traffic once the matrix outgrows the last-level cache (n = 2560: 1.49 s against
/// 1.64 s, n = 4096: 5.7 s against 7.6 s), while in cache faer's AVX-512 kernel is as fast or a
/// few per cent faster (n = 1024 to 2048, on a 32 MB L3).
pub(crate) const BLOCKED_REDUCTION_FROM_F64: usize = 2304;

/// The same for float32, lower: there the blocked path also replaces the float64 detour (see
/// [`self_adjoint_ascending_into`]), at about two thirds of the float64 solve's time.
pub(crate) const BLOCKED_REDUCTION_FROM_F32: usize = 768;

/// Whether a solve of order `n` in `T` takes the blocked reduction.
fn blocked_reduction<T: Scalar>(n: usize) -> bool {
    if T::EPSILON.to_f64() <= f64::EPSILON {
        n >= BLOCKED_REDUCTION_FROM_F64
    } else {
        n >= BLOCKED_REDUCTION_FROM_F32
    }
}

/// Eigendecomposition of the lower triangle of `k`, returned ascending as faer gives it.
pub(crate) fn self_adjoint_ascending<T: Scalar>(
    k: MatRef<'_, T>,
    par: Par,
) -> CoreResult<(Diag<T>, Mat<T>)> {
    let n = k.nrows();
    let mut u = alloc::zeros::<T>("eigh: eigenvectors", n, n)?;
    let values = self_adjoint_ascending_into(k, u.as_mut(), par)?;
    Ok((diag_of(&values), u))
}

fn diag_of<T: Scalar>(values: &[T]) -> Diag<T> {
    let mut d = Diag::<T>::zeros(values.len());
    let mut col = d.column_vector_mut();
    for (i, v) in values.iter().enumerate() {
        col[i] = *v;
    }
    d
}

/// The eigenvalues of the lower triangle of `k`, ascending, with the eigenvectors written to
/// the columns of `u` (n × n).
///
/// Single precision: faer 0.24's `f32` eigensolver left eigenvector residuals near 2e-3·‖K‖
/// and eigenvalue errors near 6e-5·‖K‖ at n ≈ 1000 (LAPACK's `ssyevd`: 5e-8), i.e. a few per
/// cent on an eNTK's smaller eigenvalues; the loss is in its f32 tridiagonal solver. From
/// [`BLOCKED_REDUCTION_FROM_F32`] on, the blocked path reduces and back-transforms in f32 and
/// solves the tridiagonal problem in f64 (accurate, in about two thirds of an f64 solve's time);
/// below it, the whole solve runs in f64 and is rounded back.
fn self_adjoint_ascending_into<T: Scalar>(
    k: MatRef<'_, T>,
    u: MatMut<'_, T>,
    par: Par,
) -> CoreResult<Vec<T>> {
    let n = k.nrows();
    if T::EPSILON.to_f64() <= f64::EPSILON || blocked_reduction::<T>(n) {
        return evd_ascending_into(k, u, par);
    }
    let wide = alloc::from_fn("eigh: float64 copy of K", n, n, |i, j| k[(i, j)].to_f64())?;
    let mut wide_u = alloc::zeros::<f64>("eigh: float64 eigenvectors", n, n)?;
    let values = evd_ascending_into(wide.as_ref(), wide_u.as_mut(), par)?;
    drop(wide);
    round_into(u, wide_u.as_ref());
    Ok(values.into_iter().map(T::from_f64).collect())
}

/// `u` ← `wide` rounded to `T` (both n × m): eigenvectors solved in float64.
pub(crate) fn round_into<T: Scalar>(mut u: MatMut<'_, T>, wide: MatRef<'_, f64>) {
    for j in 0..wide.ncols() {
        for i in 0..wide.nrows() {
            u[(i, j)] = T::from_f64(wide[(i, j)]);
        }
    }
}

/// The symmetric eigendecomposition in `T` itself: the blocked reduction from
/// [`blocked_reduction`] says so, faer's own otherwise.
fn evd_ascending_into<T: Scalar>(
    k: MatRef<'_, T>,
    mut u: MatMut<'_, T>,
    par: Par,
) -> CoreResult<Vec<T>> {
    let n = k.nrows();
    if blocked_reduction::<T>(n) {
        return crate::tridiag::self_adjoint_evd(k, u, par);
    }
    let mut s = Diag::<T>::zeros(n);
    let scratch =
        evd::self_adjoint_evd_scratch::<T>(n, ComputeEigenvectors::Yes, par, Default::default());
    let mut buf = MemBuffer::try_new(scratch)
        .map_err(|_| CoreError::out_of_memory("eigh", scratch.size_bytes()))?;
    evd::self_adjoint_evd(
        k,
        s.as_mut(),
        Some(u.rb_mut()),
        par,
        MemStack::new(&mut buf),
        Default::default(),
    )
    .map_err(|_| CoreError::Solver("the symmetric eigensolver did not converge".into()))?;
    let s = s.column_vector();
    Ok((0..n).map(|i| s[i]).collect())
}

/// Fails if any eigenvalue or eigenvector entry is not finite (never return silent NaNs).
pub(crate) fn ensure_finite<T: Scalar>(pairs: &EigenPairs<T>, what: &str) -> CoreResult<()> {
    let values_ok = pairs.values.iter().all(|v| v.is_finite_val());
    if !values_ok || check::finite("eigenvectors", pairs.vectors.as_ref()).is_err() {
        return Err(CoreError::Solver(format!(
            "{what}: the solver produced non-finite values (input too badly scaled?)"
        )));
    }
    Ok(())
}

/// `a` multiplied by 2^e (exact), as a new matrix; `what` names it if memory runs out.
pub(crate) fn scaled_copy<T: Scalar>(what: &str, a: MatRef<'_, T>, e: i32) -> CoreResult<Mat<T>> {
    let steps = policy::pow2_steps::<T>(e);
    alloc::from_fn(what, a.nrows(), a.ncols(), |i, j| {
        policy::scale_pow2(a[(i, j)], &steps)
    })
}

/// Eigendecomposition of `k`, rescaled by a power of two first when its entries are so large
/// or small (subnormal included) that the solver could over- or underflow; eigenvalues are
/// scaled back exactly (up to their own rounding when they are subnormal).
pub(crate) fn self_adjoint_ascending_scaled<T: Scalar>(
    k: MatRef<'_, T>,
    par: Par,
) -> CoreResult<(Diag<T>, Mat<T>)> {
    let n = k.nrows();
    let mut u = alloc::zeros::<T>("eigh: eigenvectors", n, n)?;
    let values = self_adjoint_ascending_scaled_into(k, u.as_mut(), par)?;
    Ok((diag_of(&values), u))
}

/// [`self_adjoint_ascending_scaled`] writing the eigenvectors into `u` (n × n).
fn self_adjoint_ascending_scaled_into<T: Scalar>(
    k: MatRef<'_, T>,
    u: MatMut<'_, T>,
    par: Par,
) -> CoreResult<Vec<T>> {
    match policy::rescale_exponent::<T>(check::max_abs(k).to_f64()) {
        None => self_adjoint_ascending_into(k, u, par),
        Some(e) => {
            let scaled = scaled_copy("eigh: rescaled copy of K", k, e)?;
            let mut values = self_adjoint_ascending_into(scaled.as_ref(), u, par)?;
            let back = policy::pow2_steps::<T>(-e);
            for v in values.iter_mut() {
                *v = policy::scale_pow2(*v, &back);
            }
            Ok(values)
        }
    }
}

/// All eigenpairs of the symmetric `k` (n, n), eigenvalues descending.
pub fn eigh<T: Scalar>(k: MatRef<'_, T>, par: Par) -> CoreResult<EigenPairs<T>> {
    check::non_empty("K", k)?;
    check::square("K", k)?;
    let n = k.nrows();
    let mut vectors = alloc::zeros("eigh: eigenvectors", n, n)?;
    let values = eigh_into(k, vectors.as_mut(), par)?;
    Ok(EigenPairs { values, vectors })
}

/// [`eigh`] writing the eigenvectors (columns, descending eigenvalue) straight into
/// `vectors` (n, n) — e.g. a caller's output buffer — and returning the eigenvalues.
pub fn eigh_into<T: Scalar>(
    k: MatRef<'_, T>,
    mut vectors: MatMut<'_, T>,
    par: Par,
) -> CoreResult<Vec<T>> {
    check::symmetric_input("K", k)?;
    let n = k.nrows();
    check::rows("vectors", vectors.rb(), n, "the order of K")?;
    check::cols("vectors", vectors.rb(), n, "the order of K")?;
    let mut values = self_adjoint_ascending_scaled_into(k, vectors.rb_mut(), par)?;
    // Descending: reverse the order of the values and, in place, of the vector columns.
    values.reverse();
    for j in 0..n / 2 {
        faer::perm::swap_cols_idx(vectors.rb_mut(), j, n - 1 - j);
    }
    if !values.iter().all(|v| v.is_finite_val())
        || check::finite("eigenvectors", vectors.rb()).is_err()
    {
        return Err(CoreError::Solver(
            "eigh: the solver produced non-finite values (input too badly scaled?)".into(),
        ));
    }
    Ok(values)
}
