//! Orthonormalisation of a new Krylov block against the basis and the locked vectors
//! (block Gram–Schmidt twice, CholQR or Householder QR).

use crate::alloc;
use crate::error::CoreResult;
use crate::gram::par_matmul;
use crate::policy;
use crate::rng::SplitMix64;
use crate::scalar::Scalar;
use faer::linalg::triangular_solve::solve_lower_triangular_in_place;
use faer::reborrow::{Reborrow, ReborrowMut};
use faer::{Accum, Mat, MatMut, MatRef, Par, Side};

/// Makes the columns of `z` orthonormal and orthogonal to the orthonormal `locked` and `basis`.
///
/// Block Gram–Schmidt against the bases, then an orthonormalisation of the block, twice
/// ("twice is enough": the second pass removes what round-off left of the basis directions).
/// The block is orthonormalised by CholQR (Gram matrix, Cholesky, one product: BLAS-3 and a
/// fraction of the cost of a Householder QR of a tall block) when it is well conditioned,
/// else by Householder QR. Columns that lie numerically in the span already are replaced by
/// random directions, so the Krylov basis keeps its full width when K has low rank.
pub(super) fn orthonormalize_against<T: Scalar>(
    locked: MatRef<'_, T>,
    basis: MatRef<'_, T>,
    mut z: MatMut<'_, T>,
    rng: &mut SplitMix64,
    par: Par,
) -> CoreResult<()> {
    let b = z.ncols();
    let project = |mut z: MatMut<'_, T>| -> CoreResult<()> {
        for basis in [locked, basis] {
            if basis.ncols() == 0 {
                continue;
            }
            let mut c = alloc::zeros::<T>("eigh_topk: projection", basis.ncols(), z.ncols())?;
            par_matmul(
                c.as_mut(),
                Accum::Replace,
                basis.transpose(),
                z.rb(),
                T::ONE,
                par,
            );
            par_matmul(z.rb_mut(), Accum::Add, basis, c.as_ref(), -T::ONE, par);
        }
        Ok(())
    };
    let householder = |mut z: MatMut<'_, T>| {
        let qr = z.rb().qr();
        z.copy_from(qr.compute_thin_Q());
    };
    let mut reference: Vec<f64> = (0..b).map(|j| z.rb().col(j).norm_l2().to_f64()).collect();
    for attempt in 0..4 {
        project(z.rb_mut())?;
        // The diagonal of the block's R factor: from Cholesky when the block is well
        // conditioned (then also accurate), else from a Householder QR.
        let chol = CholQr::new(z.rb(), par)?;
        let qr = if chol.is_some() {
            None
        } else {
            Some(z.rb().qr())
        };
        let r_diag = |j: usize| match (&chol, &qr) {
            (Some(c), _) => c.l[(j, j)].to_f64(),
            (None, Some(qr)) => qr.thin_R()[(j, j)].abs_val().to_f64(),
            (None, None) => 0.0,
        };
        let deficient: Vec<usize> = (0..b)
            .filter(|&j| {
                r_diag(j) <= policy::DEFICIENT_DIRECTION * reference[j].max(f64::MIN_POSITIVE)
            })
            .collect();
        if deficient.is_empty() || attempt == 3 {
            match (chol, qr) {
                (Some(c), _) => c.apply(z.rb_mut(), par)?,
                (None, Some(qr)) => z.copy_from(qr.compute_thin_Q()),
                (None, None) => householder(z.rb_mut()),
            }
            project(z.rb_mut())?;
            match CholQr::new(z.rb(), par)? {
                Some(c) => c.apply(z.rb_mut(), par)?,
                None => householder(z.rb_mut()),
            }
            return Ok(());
        }
        for &j in &deficient {
            for i in 0..z.nrows() {
                z[(i, j)] = T::from_f64(rng.symmetric_unit());
            }
            reference[j] = z.rb().col(j).norm_l2().to_f64();
        }
    }
    Ok(())
}

/// The Cholesky factor L of a block's Gram matrix ZᵀZ = L Lᵀ, so that Z L⁻ᵀ is orthonormal.
struct CholQr<T> {
    l: Mat<T>,
}

impl<T: Scalar> CholQr<T> {
    /// `None` when Z is too ill-conditioned for CholQR to be accurate: the Gram matrix squares
    /// the condition number, so every column must keep a good part of its norm
    /// (L_jj ≥ [`policy::cholqr_min_diag`] · ‖z_j‖) for the factor to be trusted.
    fn new(z: MatRef<'_, T>, par: Par) -> CoreResult<Option<Self>> {
        let b = z.ncols();
        let mut g = alloc::zeros::<T>("eigh_topk: block Gram matrix", b, b)?;
        par_matmul(g.as_mut(), Accum::Replace, z.transpose(), z, T::ONE, par);
        let Ok(llt) = g.as_ref().llt(Side::Lower) else {
            return Ok(None);
        };
        let l = llt.L();
        let trusted = (0..b).all(|j| {
            let d = l[(j, j)].to_f64();
            d.is_finite() && d > policy::cholqr_min_diag::<T>() * g[(j, j)].to_f64().sqrt()
        });
        if !trusted {
            return Ok(None);
        }
        Ok(Some(Self {
            l: alloc::copy("eigh_topk: Cholesky factor", l)?,
        }))
    }

    /// z ← z L⁻ᵀ.
    fn apply(&self, mut z: MatMut<'_, T>, par: Par) -> CoreResult<()> {
        let b = self.l.nrows();
        let mut inv = alloc::from_fn("eigh_topk: inverse factor", b, b, |i, j| {
            if i == j {
                T::ONE
            } else {
                T::ZERO
            }
        })?;
        solve_lower_triangular_in_place(self.l.as_ref(), inv.as_mut(), Par::Seq);
        let mut out = alloc::zeros::<T>("eigh_topk: orthonormal block", z.nrows(), b)?;
        par_matmul(
            out.as_mut(),
            Accum::Replace,
            z.rb(),
            inv.as_ref().transpose(),
            T::ONE,
            par,
        );
        z.copy_from(out.as_ref());
        Ok(())
    }
}
