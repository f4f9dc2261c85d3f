//! Full symmetric eigendecomposition with eigenvalues in descending order.

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

/// Eigendecomposition of the lower triangle of `k`, returned ascending as faer gives it.
///
/// Single precision is computed in double precision and rounded back: faer 0.24's `f32`
/// eigensolver left eigenvector residuals near 2e-3·‖K‖ and eigenvalue errors near 6e-5·‖K‖
/// at n ≈ 1000 (LAPACK's `ssyevd`: 5e-8), i.e. a few per cent on an eNTK's smaller
/// eigenvalues. The `f64` solve costs about twice the `f32` one.
pub(crate) fn self_adjoint_ascending<T: Scalar>(
    k: MatRef<'_, T>,
    par: Par,
) -> CoreResult<(Diag<T>, Mat<T>)> {
    if T::EPSILON.to_f64() <= f64::EPSILON {
        return evd_ascending(k, par);
    }
    let n = k.nrows();
    let wide = alloc::from_fn("eigh: float64 copy of K", n, n, |i, j| k[(i, j)].to_f64())?;
    let (s, u) = evd_ascending(wide.as_ref(), par)?;
    let s = s.column_vector();
    let mut values = Diag::<T>::zeros(n);
    let mut col = values.column_vector_mut();
    for i in 0..n {
        col[i] = T::from_f64(s[i]);
    }
    let vectors = alloc::from_fn("eigh: eigenvectors", n, n, |i, j| T::from_f64(u[(i, j)]))?;
    Ok((values, vectors))
}

/// faer's symmetric eigendecomposition in `T` itself.
fn evd_ascending<T: Scalar>(k: MatRef<'_, T>, par: Par) -> CoreResult<(Diag<T>, Mat<T>)> {
    let n = k.nrows();
    let mut s = Diag::<T>::zeros(n);
    let mut u = alloc::zeros::<T>("eigh: eigenvectors", n, n)?;
    let scratch =
        evd::self_adjoint_evd_scratch::<T>(n, ComputeEigenvectors::Yes, par, Default::default());
    let mut buf = MemBuffer::try_new(scratch)
        .map_err(|_| CoreError::out_of_memory("eigh", scratch.size_bytes()))?;
    evd::self_adjoint_evd(
        k,
        s.as_mut(),
        Some(u.as_mut()),
        par,
        MemStack::new(&mut buf),
        Default::default(),
    )
    .map_err(|_| CoreError::Solver("the symmetric eigensolver did not converge".into()))?;
    Ok((s, u))
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
    match policy::rescale_exponent::<T>(check::max_abs(k).to_f64()) {
        None => self_adjoint_ascending(k, par),
        Some(e) => {
            let scaled = scaled_copy("eigh: rescaled copy of K", k, e)?;
            let (mut s, u) = self_adjoint_ascending(scaled.as_ref(), par)?;
            let back = policy::pow2_steps::<T>(-e);
            let mut col = s.column_vector_mut();
            for i in 0..k.nrows() {
                col[i] = policy::scale_pow2(col[i], &back);
            }
            Ok((s, u))
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
    let (s, u) = self_adjoint_ascending_scaled(k, par)?;
    let s = s.column_vector();
    let values: Vec<T> = (0..n).map(|i| s[n - 1 - i]).collect();
    for j in 0..n {
        vectors.rb_mut().col_mut(j).copy_from(u.col(n - 1 - j));
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
