//! Top-k eigenpairs of a dense symmetric matrix by thick-restarted block Krylov iteration
//! (block Lanczos with full reorthogonalisation and Rayleigh–Ritz).
//!
//! A block method, not single-vector Lanczos, because eNTK spectra have exactly degenerate
//! eigenvalues (cos/sin pairs of a Fourier family) that a single Krylov vector cannot resolve.
//! The work is dominated by K·Q products (BLAS-3), so it scales like k·n² per cycle instead of
//! the n³ of a full solve.

use crate::check;
use crate::eigen::{
    ensure_finite, self_adjoint_ascending, self_adjoint_ascending_scaled, EigenPairs,
};
use crate::error::{CoreError, CoreResult};
use crate::rng::SplitMix64;
use crate::scalar::Scalar;
use faer::linalg::matmul::matmul;
use faer::reborrow::{Reborrow, ReborrowMut};
use faer::{Accum, Mat, MatMut, MatRef, Par};

/// Tuning of [`eigh_topk_with`]. The defaults suit kernels up to tens of thousands of rows.
#[derive(Debug, Clone, Copy)]
pub struct TopkParams {
    /// Extra block columns beyond k (guards against degenerate eigenvalues at the cut).
    /// Block size = k + oversample.
    pub oversample: usize,
    /// Krylov basis width as a multiple of the block size.
    pub basis_blocks: usize,
    /// Relative residual ‖K u − λ u‖ / |λ_max| at which a pair counts as converged;
    /// `None` picks 1e-11 for f64 and 1e-4 for f32.
    pub tolerance: Option<f64>,
    /// Restart cycles before falling back to the full solve.
    pub max_cycles: usize,
    /// Seed of the random start block.
    pub seed: u64,
}

impl Default for TopkParams {
    fn default() -> Self {
        Self {
            oversample: 8,
            basis_blocks: 10,
            tolerance: None,
            max_cycles: 200,
            seed: 0x5EED_E47C,
        }
    }
}

/// How a top-k solve was carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopkMethod {
    /// The matrix was small enough that the full solve was cheaper.
    Dense,
    /// Block Krylov converged after this many restart cycles.
    Krylov { cycles: usize },
    /// Block Krylov did not converge; the full solve was used instead.
    DenseFallback,
}

/// The k largest eigenpairs of the symmetric `k_mat` (n, n): values descending, vectors (n, k).
pub fn eigh_topk<T: Scalar>(k_mat: MatRef<'_, T>, k: usize, par: Par) -> CoreResult<EigenPairs<T>> {
    eigh_topk_with(k_mat, k, TopkParams::default(), par).map(|(pairs, _)| pairs)
}

/// [`eigh_topk`] with explicit tuning; also reports the method used.
pub fn eigh_topk_with<T: Scalar>(
    kmat: MatRef<'_, T>,
    k: usize,
    params: TopkParams,
    par: Par,
) -> CoreResult<(EigenPairs<T>, TopkMethod)> {
    check::symmetric_input("K", kmat)?;
    let n = kmat.nrows();
    if k == 0 || k > n {
        return Err(CoreError::OutOfRange {
            arg: "k",
            expected: format!("an integer in [1, {n}] (the order of K)"),
            got: k.to_string(),
        });
    }
    if params.basis_blocks < 3 || params.basis_blocks > 64 {
        return Err(CoreError::OutOfRange {
            arg: "basis_blocks",
            expected: "an integer in [3, 64]".into(),
            got: params.basis_blocks.to_string(),
        });
    }
    let block = k.saturating_add(params.oversample).min(n);
    let width = block * params.basis_blocks;
    // The full solve wins when the Krylov basis would be a sizeable part of the space.
    if 2 * width >= n {
        return Ok((dense_top(kmat, k, par)?, TopkMethod::Dense));
    }
    let tol = params.tolerance.unwrap_or(if T::EPSILON.to_f64() < 1e-10 {
        1e-11
    } else {
        1e-4
    });
    // Krylov on a badly scaled K works on a power-of-two rescaled copy (exact to scale back).
    let factor = check::rescale_factor::<T>(check::max_abs(kmat).to_f64());
    let scaled;
    let kmat = match factor {
        Some(f) => {
            let f = T::from_f64(f);
            scaled = Mat::from_fn(n, n, |i, j| kmat[(i, j)] * f);
            scaled.as_ref()
        }
        None => kmat,
    };
    let unscale = |mut pairs: EigenPairs<T>| {
        if let Some(f) = factor {
            let inv = T::from_f64(1.0 / f);
            pairs.values.iter_mut().for_each(|v| *v *= inv);
        }
        pairs
    };
    let mut solver = BlockKrylov::new(kmat, block, width, params.seed, par);
    for cycle in 1..=params.max_cycles {
        solver.expand();
        let ritz = solver.rayleigh_ritz(k)?;
        if ritz.max_relative_residual <= tol {
            let pairs = unscale(ritz.pairs);
            ensure_finite(&pairs, "eigh_topk")?;
            return Ok((pairs, TopkMethod::Krylov { cycles: cycle }));
        }
        solver.restart(&ritz);
    }
    Ok((unscale(dense_top(kmat, k, par)?), TopkMethod::DenseFallback))
}

fn dense_top<T: Scalar>(kmat: MatRef<'_, T>, k: usize, par: Par) -> CoreResult<EigenPairs<T>> {
    let n = kmat.nrows();
    let (s, u) = self_adjoint_ascending_scaled(kmat, par)?;
    let s = s.column_vector();
    let pairs = EigenPairs {
        values: (0..k).map(|i| s[n - 1 - i]).collect(),
        vectors: Mat::from_fn(n, k, |i, j| u[(i, n - 1 - j)]),
    };
    ensure_finite(&pairs, "eigh_topk")?;
    Ok(pairs)
}

struct Ritz<T> {
    pairs: EigenPairs<T>,
    /// Ritz vectors (n, kept) and their images K·U, sorted by descending Ritz value.
    vectors: Mat<T>,
    images: Mat<T>,
    values: Vec<T>,
    max_relative_residual: f64,
}

struct BlockKrylov<'a, T: Scalar> {
    kmat: MatRef<'a, T>,
    block: usize,
    /// Orthonormal basis Q (n, width) and P = K Q; the first `used` columns are valid.
    q: Mat<T>,
    p: Mat<T>,
    used: usize,
    /// Next block to orthogonalise into the basis (n, block).
    next: Mat<T>,
    rng: SplitMix64,
    par: Par,
}

impl<'a, T: Scalar> BlockKrylov<'a, T> {
    fn new(kmat: MatRef<'a, T>, block: usize, width: usize, seed: u64, par: Par) -> Self {
        let n = kmat.nrows();
        let mut rng = SplitMix64::new(seed);
        let next = Mat::from_fn(n, block, |_, _| T::from_f64(rng.symmetric_unit()));
        Self {
            kmat,
            block,
            q: Mat::zeros(n, width),
            p: Mat::zeros(n, width),
            used: 0,
            next,
            rng,
            par,
        }
    }

    /// Grows the basis block by block to its full width: Q_{j+1} ⟂ Q, from K Q_j.
    fn expand(&mut self) {
        let width = self.q.ncols();
        while self.used + self.block <= width {
            let (start, b) = (self.used, self.block);
            let mut z = std::mem::replace(&mut self.next, Mat::zeros(0, 0));
            orthonormalize_against(
                self.q.as_ref().subcols(0, start),
                z.as_mut(),
                &mut self.rng,
                self.par,
            );
            self.q.as_mut().subcols_mut(start, b).copy_from(&z);
            matmul(
                self.p.as_mut().subcols_mut(start, b),
                Accum::Replace,
                self.kmat,
                self.q.as_ref().subcols(start, b),
                T::ONE,
                self.par,
            );
            self.next = self.p.as_ref().subcols(start, b).to_owned();
            self.used += b;
        }
    }

    /// Ritz pairs of K on span(Q), with the residuals of the top `k`.
    fn rayleigh_ritz(&self, k: usize) -> CoreResult<Ritz<T>> {
        let (n, m) = (self.kmat.nrows(), self.used);
        let q = self.q.as_ref().subcols(0, m);
        let p = self.p.as_ref().subcols(0, m);
        let mut t = Mat::<T>::zeros(m, m);
        matmul(
            t.as_mut(),
            Accum::Replace,
            q.transpose(),
            p,
            T::ONE,
            self.par,
        );
        let half = T::from_f64(0.5);
        let t = Mat::from_fn(m, m, |i, j| half * (t[(i, j)] + t[(j, i)]));
        let (theta, s) = self_adjoint_ascending(t.as_ref(), self.par)?;
        let theta = theta.column_vector();
        // descending order
        let values: Vec<T> = (0..m).rev().map(|i| theta[i]).collect();
        // Only the Ritz vectors a restart keeps (and the k reported) are formed: n·m·need work.
        let need = self.restart_width().max(k).min(m);
        let s_desc = Mat::from_fn(m, need, |i, j| s[(i, m - 1 - j)]);
        let mut vectors = Mat::<T>::zeros(n, need);
        let mut images = Mat::<T>::zeros(n, need);
        matmul(
            vectors.as_mut(),
            Accum::Replace,
            q,
            s_desc.as_ref(),
            T::ONE,
            self.par,
        );
        matmul(
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
        let mut residual = images.as_ref().subcols(0, k).to_owned();
        let theta_k = Mat::from_fn(k, k, |i, j| if i == j { values[i] } else { T::ZERO });
        matmul(
            residual.as_mut(),
            Accum::Add,
            vectors.as_ref().subcols(0, k),
            theta_k.as_ref(),
            -T::ONE,
            self.par,
        );
        let worst = (0..k)
            .map(|j| residual.col(j).norm_l2().to_f64() / scale)
            .fold(0.0f64, f64::max);
        if !worst.is_finite() {
            return Err(CoreError::Solver(
                "eigh_topk: non-finite residual in the Krylov iteration".into(),
            ));
        }
        let pairs = EigenPairs {
            values: values[..k].to_vec(),
            vectors: vectors.as_ref().subcols(0, k).to_owned(),
        };
        Ok(Ritz {
            pairs,
            vectors,
            images,
            values,
            max_relative_residual: worst,
        })
    }

    /// Ritz vectors kept across a restart: two blocks, leaving room for at least one new block.
    fn restart_width(&self) -> usize {
        (2 * self.block).min(self.q.ncols() - self.block)
    }

    /// Thick restart: keep the leading Ritz vectors, continue from their residual block.
    fn restart(&mut self, ritz: &Ritz<T>) {
        let b = self.block;
        let keep = self.restart_width().min(ritz.vectors.ncols());
        self.q
            .as_mut()
            .subcols_mut(0, keep)
            .copy_from(ritz.vectors.as_ref().subcols(0, keep));
        self.p
            .as_mut()
            .subcols_mut(0, keep)
            .copy_from(ritz.images.as_ref().subcols(0, keep));
        self.used = keep;
        let n = self.kmat.nrows();
        self.next = Mat::from_fn(n, b, |i, j| {
            ritz.images[(i, j)] - ritz.values[j] * ritz.vectors[(i, j)]
        });
    }
}

/// Makes the columns of `z` orthonormal and orthogonal to the orthonormal `basis`.
///
/// Block Gram–Schmidt against the basis, then a Householder QR of the block, twice ("twice is
/// enough": the second pass removes what round-off left of the basis directions). Columns that lie numerically in the span already are replaced by random
/// directions, so the Krylov basis keeps its full width when K has low rank.
fn orthonormalize_against<T: Scalar>(
    basis: MatRef<'_, T>,
    mut z: MatMut<'_, T>,
    rng: &mut SplitMix64,
    par: Par,
) {
    let b = z.ncols();
    let project = |mut z: MatMut<'_, T>| {
        if basis.ncols() == 0 {
            return;
        }
        let mut c = Mat::<T>::zeros(basis.ncols(), z.ncols());
        matmul(
            c.as_mut(),
            Accum::Replace,
            basis.transpose(),
            z.rb(),
            T::ONE,
            par,
        );
        matmul(z.rb_mut(), Accum::Add, basis, c.as_ref(), -T::ONE, par);
    };
    let mut reference: Vec<f64> = (0..b).map(|j| z.rb().col(j).norm_l2().to_f64()).collect();
    for attempt in 0..4 {
        project(z.rb_mut());
        let qr = z.rb().qr();
        let r = qr.thin_R();
        let deficient: Vec<usize> = (0..b)
            .filter(|&j| {
                r[(j, j)].abs_val().to_f64() <= 1e-10 * reference[j].max(f64::MIN_POSITIVE)
            })
            .collect();
        if deficient.is_empty() || attempt == 3 {
            z.copy_from(qr.compute_thin_Q());
            project(z.rb_mut());
            let qr = z.rb().qr();
            z.copy_from(qr.compute_thin_Q());
            return;
        }
        for &j in &deficient {
            for i in 0..z.nrows() {
                z[(i, j)] = T::from_f64(rng.symmetric_unit());
            }
            reference[j] = z.rb().col(j).norm_l2().to_f64();
        }
    }
}
