//! Principal angles between column spaces, and the subspace overlap Σ cos² built on them.
//!
//! The algorithm is Björck–Golub with Knyazev's sine correction, as in
//! `scipy.linalg.subspace_angles`: cosines from the SVD of Q_Aᵀ Q_B, and for angles under
//! 45° the sines from the SVD of the residual, which keeps small angles accurate.

use crate::alloc;
use crate::check;
use crate::eigen::scaled_copy;
use crate::error::{CoreError, CoreResult};
use crate::policy;
use crate::scalar::Scalar;
use faer::diag::Diag;
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::matmul::matmul;
use faer::linalg::svd::{self, ComputeSvdVectors};
use faer::{Accum, Mat, MatRef, Par};

fn svd_thin<T: Scalar>(
    a: MatRef<'_, T>,
    want_u: bool,
    par: Par,
) -> CoreResult<(Vec<T>, Option<Mat<T>>)> {
    let (m, n) = a.shape();
    let size = m.min(n);
    let mut s = Diag::<T>::zeros(size);
    let mut u = if want_u {
        Some(alloc::zeros::<T>(
            "principal_angles: singular vectors",
            m,
            size,
        )?)
    } else {
        None
    };
    let compute_u = if want_u {
        ComputeSvdVectors::Thin
    } else {
        ComputeSvdVectors::No
    };
    let scratch = svd::svd_scratch::<T>(
        m,
        n,
        compute_u,
        ComputeSvdVectors::No,
        par,
        Default::default(),
    );
    let mut buf = MemBuffer::try_new(scratch)
        .map_err(|_| CoreError::out_of_memory("principal_angles", scratch.size_bytes()))?;
    svd::svd(
        a,
        s.as_mut(),
        u.as_mut().map(|u| u.as_mut()),
        None,
        par,
        MemStack::new(&mut buf),
        Default::default(),
    )
    .map_err(|_| CoreError::Solver("principal_angles: the SVD did not converge".into()))?;
    let s = s.column_vector();
    Ok(((0..size).map(|i| s[i]).collect(), u))
}

/// Orthonormal basis of the column space of `a` (n, d): left singular vectors whose singular
/// value exceeds max(n, d)·eps·σ_max (the rank rule of `scipy.linalg.orth`).
pub fn orthonormal_basis<T: Scalar>(
    arg: &'static str,
    a: MatRef<'_, T>,
    par: Par,
) -> CoreResult<Mat<T>> {
    check::non_empty(arg, a)?;
    check::finite(arg, a)?;
    // The span does not depend on scale: bring max |a| near 1 by a power of two (exact, and
    // representable even for subnormal input, where 1/max|a| overflows) so that the SVD cannot
    // over- or underflow.
    let top = check::max_abs(a).to_f64();
    let normalised;
    let a = if top > 0.0 {
        let e = -(top.log2().round() as i32);
        normalised = scaled_copy(arg, a, e)?;
        normalised.as_ref()
    } else {
        a
    };
    let (s, u) = svd_thin(a, true, par)?;
    let u = u.expect("requested");
    let top = s.first().copied().unwrap_or(T::ZERO).to_f64();
    let cutoff = policy::rank_cutoff::<T>(a.nrows(), a.ncols(), top);
    let rank = s.iter().filter(|v| v.to_f64() > cutoff).count();
    if rank == 0 {
        return Err(CoreError::OutOfRange {
            arg,
            expected: "columns spanning a subspace of dimension ≥ 1".into(),
            got: "an all-zero matrix (rank 0)".into(),
        });
    }
    alloc::copy(arg, u.as_ref().subcols(0, rank))
}

/// Principal angles (radians, ascending) between span(A) and span(B); `a` (n, d), `b` (n, m).
/// Their number is min(rank A, rank B).
pub fn principal_angles<T: Scalar>(
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    par: Par,
) -> CoreResult<Vec<f64>> {
    let (qa, qb, c) = cosine_matrix(a, b, par)?;
    let (cosines, _) = svd_thin(c.as_ref(), false, par)?;
    // Residual of the wider basis' complement: its singular values are the sines, descending.
    let residual = if qa.ncols() >= qb.ncols() {
        let mut r = alloc::copy("B", qb.as_ref())?;
        matmul(
            r.as_mut(),
            Accum::Add,
            qa.as_ref(),
            c.as_ref(),
            -T::ONE,
            par,
        );
        r
    } else {
        let mut r = alloc::copy("A", qa.as_ref())?;
        matmul(
            r.as_mut(),
            Accum::Add,
            qb.as_ref(),
            c.transpose(),
            -T::ONE,
            par,
        );
        r
    };
    let (sines, _) = svd_thin(residual.as_ref(), false, par)?;
    let count = cosines.len();
    let mut angles: Vec<f64> = (0..count)
        .map(|i| {
            let cos = cosines[i].to_f64().clamp(-1.0, 1.0);
            if cos * cos >= 0.5 {
                let sin = sines[sines.len() - 1 - i].to_f64().clamp(-1.0, 1.0);
                sin.asin()
            } else {
                cos.acos()
            }
        })
        .collect();
    // The two formulas meet at 45°, where round-off can swap neighbours: sort to guarantee order.
    angles.sort_by(f64::total_cmp);
    Ok(angles)
}

/// Σ cos²(principal angles) between span(A) and span(B), in [0, min(rank A, rank B)].
pub fn subspace_overlap<T: Scalar>(
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    par: Par,
) -> CoreResult<f64> {
    let (_, _, c) = cosine_matrix(a, b, par)?;
    // ‖Q_Aᵀ Q_B‖_F² = Σ σ² exactly; accumulated in f64.
    let mut total = 0.0f64;
    for j in 0..c.ncols() {
        for i in 0..c.nrows() {
            total += c[(i, j)].to_f64().powi(2);
        }
    }
    // Each cos² ≤ 1: round-off in the bases (f32) must not push the sum past its bound.
    Ok(total.min(c.nrows().min(c.ncols()) as f64))
}

/// Orthonormal bases Q_A, Q_B of the two spans and C = Q_Aᵀ Q_B, whose singular values are
/// the cosines of the principal angles.
#[allow(clippy::type_complexity)]
fn cosine_matrix<T: Scalar>(
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    par: Par,
) -> CoreResult<(Mat<T>, Mat<T>, Mat<T>)> {
    let (qa, qb) = bases(a, b, par)?;
    let mut c = alloc::zeros::<T>("principal_angles", qa.ncols(), qb.ncols())?;
    matmul(
        c.as_mut(),
        Accum::Replace,
        qa.transpose(),
        qb.as_ref(),
        T::ONE,
        par,
    );
    Ok((qa, qb, c))
}

fn bases<T: Scalar>(a: MatRef<'_, T>, b: MatRef<'_, T>, par: Par) -> CoreResult<(Mat<T>, Mat<T>)> {
    check::non_empty("A", a)?;
    check::non_empty("B", b)?;
    check::rows("B", b, a.nrows(), "the same number of rows as A")?;
    Ok((
        orthonormal_basis("A", a, par)?,
        orthonormal_basis("B", b, par)?,
    ))
}
