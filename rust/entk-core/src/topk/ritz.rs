//! The block Krylov basis of one phase: growth by one block per product, Rayleigh–Ritz on
//! its span, and the thick restart.

use super::ortho::orthonormalize_against;
use crate::alloc;
use crate::check;
use crate::eigen::self_adjoint_ascending;
use crate::error::{CoreError, CoreResult};
use crate::gram::par_matmul;
use crate::policy;
use crate::rng::SplitMix64;
use crate::scalar::Scalar;
use faer::reborrow::{Reborrow, ReborrowMut};
use faer::{Accum, Mat, MatMut, MatRef, Par};

/// Ritz pairs of K on the span of a basis.
pub(super) struct Ritz<T> {
    /// Ritz vectors (n, kept) and their images K·U, sorted by descending Ritz value.
    pub(super) vectors: Mat<T>,
    pub(super) images: Mat<T>,
    pub(super) values: Vec<T>,
    /// Relative residuals of the top `need` pairs.
    pub(super) residuals: Vec<f64>,
    pub(super) max_residual: f64,
}

/// An orthonormal basis Q of a block Krylov space of K (orthogonal to the locked vectors)
/// and its images K Q.
pub(super) struct BlockKrylov<T: Scalar> {
    block: usize,
    /// Orthonormal basis Q (n, width) and P = K Q; the first `used` columns are valid.
    q: Mat<T>,
    p: Mat<T>,
    used: usize,
    /// Next block to orthogonalise into the basis (n, block).
    next: Mat<T>,
    par: Par,
}

impl<T: Scalar> BlockKrylov<T> {
    pub(super) fn new(
        n: usize,
        block: usize,
        width: usize,
        rng: &mut SplitMix64,
        par: Par,
    ) -> CoreResult<Self> {
        let next = alloc::from_fn("eigh_topk: Krylov block", n, block, |_, _| {
            T::from_f64(rng.symmetric_unit())
        })?;
        Ok(Self {
            block,
            q: alloc::zeros("eigh_topk: Krylov basis", n, width)?,
            p: alloc::zeros("eigh_topk: Krylov basis images", n, width)?,
            used: 0,
            next,
            par,
        })
    }

    /// Vectors per block.
    pub(super) fn block(&self) -> usize {
        self.block
    }

    /// Columns of the basis built so far.
    pub(super) fn used(&self) -> usize {
        self.used
    }

    pub(super) fn is_full(&self) -> bool {
        self.used >= self.q.ncols()
    }

    /// Grows the basis by one block: Q_{j+1} ⟂ [locked, Q], from K Q_j; `product(x, out)`
    /// writes K·x into `out`.
    pub(super) fn expand_block(
        &mut self,
        locked: MatRef<'_, T>,
        rng: &mut SplitMix64,
        mut product: impl FnMut(MatRef<'_, T>, MatMut<'_, T>) -> CoreResult<()>,
    ) -> CoreResult<()> {
        let width = self.q.ncols();
        let start = self.used;
        let b = self.block.min(width - start);
        let mut z = std::mem::replace(&mut self.next, Mat::new());
        let mut z = z.as_mut().subcols_mut(0, b);
        orthonormalize_against(
            locked,
            self.q.as_ref().subcols(0, start),
            z.rb_mut(),
            rng,
            self.par,
        )?;
        self.q.as_mut().subcols_mut(start, b).copy_from(z.rb());
        product(
            self.q.as_ref().subcols(start, b),
            self.p.as_mut().subcols_mut(start, b),
        )?;
        check::finite("matmat", self.p.as_ref().subcols(start, b))?;
        self.next = alloc::copy("eigh_topk: Krylov block", self.p.as_ref().subcols(start, b))?;
        self.used += b;
        Ok(())
    }

    /// Ritz pairs of K on span(Q), with the residuals of the top `need`.
    ///
    /// With locked vectors X, convergence is judged on the residual of the deflated operator,
    /// (I − X Xᵀ)(K u − θ u): the part along X is the locked pairs' own residual (they are
    /// eigenvectors only to the tolerance), which no iteration on span(Q) can reduce.
    pub(super) fn rayleigh_ritz(
        &self,
        need: usize,
        locked: MatRef<'_, T>,
        scale: &mut f64,
    ) -> CoreResult<Ritz<T>> {
        let (n, m) = (self.q.nrows(), self.used);
        let q = self.q.as_ref().subcols(0, m);
        let p = self.p.as_ref().subcols(0, m);
        let mut t = alloc::zeros::<T>("eigh_topk: projected matrix", m, m)?;
        par_matmul(
            t.as_mut(),
            Accum::Replace,
            q.transpose(),
            p,
            T::ONE,
            self.par,
        );
        let mut t_max = 0.0f64;
        let mut asym = 0.0f64;
        for j in 0..m {
            for i in 0..m {
                t_max = t_max.max(t[(i, j)].to_f64().abs());
                asym = asym.max((t[(i, j)] - t[(j, i)]).to_f64().abs());
            }
        }
        *scale = scale.max(t_max);
        if asym > 1e3 * policy::symmetry_tolerance(T::from_f64(*scale)) {
            return Err(CoreError::OutOfRange {
                arg: "matmat",
                expected: "a symmetric operator (V ↦ K V with K = Kᵀ)".into(),
                got: format!("Qᵀ K Q asymmetric by {asym:.3e} (largest entry {t_max:.3e})"),
            });
        }
        let half = T::from_f64(0.5);
        let t = alloc::from_fn("eigh_topk: projected matrix", m, m, |i, j| {
            half * (t[(i, j)] + t[(j, i)])
        })?;
        let (theta, s) = self_adjoint_ascending(t.as_ref(), self.par)?;
        let theta = theta.column_vector();
        let values: Vec<T> = (0..m).rev().map(|i| theta[i]).collect();
        // Only the Ritz vectors a restart keeps (and those reported) are formed.
        let keep = self.restart_width(need).max(need).min(m);
        let s_desc = alloc::from_fn("eigh_topk: Ritz coefficients", m, keep, |i, j| {
            s[(i, m - 1 - j)]
        })?;
        let mut vectors = alloc::zeros::<T>("eigh_topk: Ritz vectors", n, keep)?;
        let mut images = alloc::zeros::<T>("eigh_topk: Ritz vectors", n, keep)?;
        par_matmul(
            vectors.as_mut(),
            Accum::Replace,
            q,
            s_desc.as_ref(),
            T::ONE,
            self.par,
        );
        par_matmul(
            images.as_mut(),
            Accum::Replace,
            p,
            s_desc.as_ref(),
            T::ONE,
            self.par,
        );
        let scale = values
            .iter()
            .fold(0.0f64, |acc, v| acc.max(v.to_f64().abs()))
            .max(f64::MIN_POSITIVE);
        let mut r = alloc::from_fn("eigh_topk: residuals", n, need, |i, j| {
            images[(i, j)] - values[j] * vectors[(i, j)]
        })?;
        if locked.ncols() > 0 {
            let mut c = alloc::zeros::<T>("eigh_topk: projection", locked.ncols(), need)?;
            par_matmul(
                c.as_mut(),
                Accum::Replace,
                locked.transpose(),
                r.as_ref(),
                T::ONE,
                self.par,
            );
            par_matmul(
                r.as_mut(),
                Accum::Add,
                locked,
                c.as_ref(),
                -T::ONE,
                self.par,
            );
        }
        let residuals: Vec<f64> = (0..need)
            .map(|j| {
                let col = r.col(j);
                (0..n).map(|i| col[i].to_f64().powi(2)).sum::<f64>().sqrt() / scale
            })
            .collect();
        let worst = residuals.iter().copied().fold(0.0f64, f64::max);
        if !worst.is_finite() {
            return Err(CoreError::Solver(
                "eigh_topk: non-finite residual in the Krylov iteration".into(),
            ));
        }
        Ok(Ritz {
            vectors,
            images,
            values,
            residuals,
            max_residual: worst,
        })
    }

    /// Ritz vectors kept across a restart: at least two blocks and the wanted pairs plus one
    /// block, leaving room for at least one new block.
    fn restart_width(&self, need: usize) -> usize {
        (2 * self.block)
            .max(need + self.block)
            .min(self.q.ncols().saturating_sub(self.block))
    }

    /// Thick restart: keep the leading Ritz vectors, continue from the residuals of the
    /// leading pairs that have not converged yet.
    pub(super) fn restart(&mut self, ritz: &Ritz<T>, need: usize, tol: f64) -> CoreResult<()> {
        let keep = self.restart_width(need).min(ritz.vectors.ncols());
        self.q
            .as_mut()
            .subcols_mut(0, keep)
            .copy_from(ritz.vectors.as_ref().subcols(0, keep));
        self.p
            .as_mut()
            .subcols_mut(0, keep)
            .copy_from(ritz.images.as_ref().subcols(0, keep));
        self.used = keep;
        let n = self.q.nrows();
        let b = self.block;
        // Residual directions of unconverged wanted pairs first, then of the following ones.
        let mut order: Vec<usize> = (0..need.min(keep))
            .filter(|&j| ritz.residuals[j] > tol)
            .collect();
        let rest: Vec<usize> = (0..keep).filter(|j| !order.contains(j)).collect();
        order.extend(rest);
        order.truncate(b);
        while order.len() < b {
            order.push(order.len() % keep.max(1));
        }
        self.next = alloc::from_fn("eigh_topk: Krylov block", n, b, |i, c| {
            let j = order[c];
            ritz.images[(i, j)] - ritz.values[j] * ritz.vectors[(i, j)]
        })?;
        Ok(())
    }
}
