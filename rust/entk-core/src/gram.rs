//! Gram matrices K = J Jᵀ: one triangle by a symmetric rank-k update, then mirrored.

use crate::alloc;
use crate::check;
use crate::error::CoreResult;
use crate::policy;
use crate::scalar::Scalar;
use crate::symmetric::mirror_lower;
use faer::linalg::matmul::matmul;
use faer::linalg::matmul::triangular::{self, BlockStructure};
use faer::reborrow::{Reborrow, ReborrowMut};
use faer::{Accum, Mat, MatMut, MatRef, Par};

fn check_jacobian<T: Scalar>(arg: &'static str, j: MatRef<'_, T>) -> CoreResult<()> {
    check::non_empty(arg, j)?;
    check::finite(arg, j)
}

/// `k ← beta·k + alpha·J Jᵀ` on the lower triangle, then mirrored. `k` is (R, R), `j` is (R, P).
fn syrk_into<T: Scalar>(mut k: MatMut<'_, T>, beta: Accum, j: MatRef<'_, T>, alpha: T, par: Par) {
    triangular::matmul(
        k.rb_mut(),
        BlockStructure::TriangularLower,
        beta,
        j,
        BlockStructure::Rectangular,
        j.transpose(),
        BlockStructure::Rectangular,
        alpha,
        par,
    );
    mirror_lower(k);
}

/// Writes K = J Jᵀ into `out`. `j`: (R, P); `out`: (R, R), overwritten.
pub fn gram_into<T: Scalar>(mut out: MatMut<'_, T>, j: MatRef<'_, T>, par: Par) -> CoreResult<()> {
    check_jacobian("J", j)?;
    check::rows("out", out.rb(), j.nrows(), "one per row of J")?;
    check::cols("out", out.rb(), j.nrows(), "one per row of J")?;
    syrk_into(out.rb_mut(), Accum::Replace, j, T::ONE, par);
    check::finite_result("gram", out.rb())
}

/// Returns K = J Jᵀ, (R, R), for `j` of shape (R, P).
pub fn gram<T: Scalar>(j: MatRef<'_, T>, par: Par) -> CoreResult<Mat<T>> {
    check_jacobian("J", j)?;
    let mut k = alloc::zeros("gram", j.nrows(), j.nrows())?;
    gram_into(k.as_mut(), j, par)?;
    Ok(k)
}

/// In place K += alpha·J Jᵀ. `k`: symmetric (R, R); `j`: (R, P).
///
/// Summing over column blocks of J (parameter groups, streamed chunks) gives the Gram of the
/// whole J without ever holding it.
pub fn gram_accumulate<T: Scalar>(
    k: MatMut<'_, T>,
    j: MatRef<'_, T>,
    alpha: T,
    par: Par,
) -> CoreResult<()> {
    check::non_empty("J", j)?;
    let j_max = check::finite_max_abs("J", j)?;
    let k_max = check::symmetric_input("K", k.rb())?;
    check::rows("K", k.rb(), j.nrows(), "one per row of J")?;
    check::finite_scalar("alpha", alpha)?;
    // K is updated in place: refuse before touching it if the sum could overflow.
    let bound =
        k_max.to_f64() + alpha.abs_val().to_f64() * j_max.to_f64().powi(2) * j.ncols() as f64;
    if !policy::overflow_safe::<T>(bound.sqrt(), 1) {
        return Err(crate::CoreError::Solver(
            "gram_accumulate: K + alpha·J Jᵀ could overflow this dtype; K was left unchanged \
             (rescale J or use float64)"
                .into(),
        ));
    }
    syrk_into(k, Accum::Add, j, alpha, par);
    Ok(())
}

/// Writes A Bᵀ into `out`. `a`: (R, P), `b`: (S, P), `out`: (R, S).
pub fn gram_cross_into<T: Scalar>(
    mut out: MatMut<'_, T>,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    par: Par,
) -> CoreResult<()> {
    check_jacobian("A", a)?;
    check_jacobian("B", b)?;
    check::cols("B", b, a.ncols(), "the same number of columns as A")?;
    check::rows("out", out.rb(), a.nrows(), "one per row of A")?;
    check::cols("out", out.rb(), b.nrows(), "one per row of B")?;
    matmul(out.rb_mut(), Accum::Replace, a, b.transpose(), T::ONE, par);
    check::finite_result("gram_cross", out.rb())
}

/// Returns A Bᵀ, (R, S), for `a` (R, P) and `b` (S, P): an off-diagonal tile of a Gram matrix.
pub fn gram_cross<T: Scalar>(a: MatRef<'_, T>, b: MatRef<'_, T>, par: Par) -> CoreResult<Mat<T>> {
    check_jacobian("A", a)?;
    check_jacobian("B", b)?;
    let mut out = alloc::zeros("gram_cross", a.nrows(), b.nrows())?;
    gram_cross_into(out.as_mut(), a, b, par)?;
    Ok(out)
}
