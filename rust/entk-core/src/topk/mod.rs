//! Top-k eigenpairs of a symmetric operator by thick-restarted block Krylov iteration
//! (block Lanczos with full reorthogonalisation and Rayleigh–Ritz), for a dense matrix or any
//! [`SymmetricOperator`] that can multiply a block of vectors (matrix-free).
//!
//! A block method, not single-vector Lanczos, because eNTK spectra have exactly degenerate
//! eigenvalues (cos/sin pairs of a Fourier family) that a single Krylov vector cannot resolve.
//! A block of b random vectors finds up to b copies of each eigenvalue; when the block is
//! smaller than k, converged pairs are then locked and the search restarted from fresh random
//! blocks orthogonal to them, until no eigenvalue above the k-th is left, so that every copy
//! of a repeated eigenvalue is found. The work is dominated by K·Q products (BLAS-3 on a dense
//! K), so it scales like k·n² per cycle instead of the n³ of a full solve.

mod krylov;
mod ortho;
mod ritz;

use crate::alloc;
use crate::check;
use crate::eigen::{ensure_finite, scaled_copy, EigenPairs};
use crate::error::{CoreError, CoreResult};
use crate::gram::par_matmul;
use crate::policy;
use crate::scalar::Scalar;
use faer::reborrow::Reborrow;
use faer::{Accum, MatMut, MatRef, Par};
use krylov::Solver;

/// A symmetric linear operator K (n, n) known only through products with blocks of vectors.
pub trait SymmetricOperator<T: Scalar> {
    /// The order n of K.
    fn dim(&self) -> usize;
    /// Writes K·x into `out`; `x` and `out` are (n, b).
    fn apply(&mut self, x: MatRef<'_, T>, out: MatMut<'_, T>, par: Par) -> CoreResult<()>;
}

/// A dense symmetric matrix as an operator (one GEMM per block).
pub struct DenseOperator<'a, T> {
    k: MatRef<'a, T>,
}

impl<'a, T: Scalar> DenseOperator<'a, T> {
    pub fn new(k: MatRef<'a, T>) -> Self {
        Self { k }
    }
}

impl<T: Scalar> SymmetricOperator<T> for DenseOperator<'_, T> {
    fn dim(&self) -> usize {
        self.k.nrows()
    }

    fn apply(&mut self, x: MatRef<'_, T>, out: MatMut<'_, T>, par: Par) -> CoreResult<()> {
        par_matmul(out, Accum::Replace, self.k, x, T::ONE, par);
        Ok(())
    }
}

/// Tuning of the top-k solvers. The defaults suit kernels up to tens of thousands of rows.
#[derive(Debug, Clone, Copy)]
pub struct TopkParams {
    /// Extra block columns beyond k when `block` is not given: block size = k + oversample
    /// (guards against degenerate eigenvalues at the cut).
    pub oversample: usize,
    /// Explicit block size (vectors per operator product); `None`: k + oversample. A block
    /// smaller than k saves memory per product and still finds every copy of a repeated
    /// eigenvalue (by locking and fresh restarts), at the price of more products.
    pub block: Option<usize>,
    /// Krylov basis width as a multiple of the block size; `None` picks
    /// [`policy::topk_basis_blocks`] (10, or 16 when the basis stays under a quarter of n).
    pub basis_blocks: Option<usize>,
    /// Relative residual ‖K u − λ u‖ / max|λ| at which a pair counts as converged;
    /// `None` picks [`policy::topk_tolerance`] (1e-11 for f64, 1e-4 for f32).
    pub tolerance: Option<f64>,
    /// Restart cycles before giving up (a dense K then falls back to the full solve).
    pub max_cycles: usize,
    /// Seed of the random start block.
    pub seed: u64,
}

impl Default for TopkParams {
    fn default() -> Self {
        Self {
            oversample: 8,
            block: None,
            basis_blocks: None,
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
    /// Block Krylov iteration.
    Krylov,
    /// Block Krylov did not converge (or stagnated); the full solve was used instead.
    DenseFallback,
}

impl TopkMethod {
    pub fn name(self) -> &'static str {
        match self {
            TopkMethod::Dense => "dense",
            TopkMethod::Krylov => "krylov",
            TopkMethod::DenseFallback => "dense-fallback",
        }
    }
}

/// What a top-k solve did and how accurate its answer is.
#[derive(Debug, Clone, PartialEq)]
pub struct TopkInfo {
    pub method: TopkMethod,
    /// Krylov restart cycles run (0 for a direct dense solve).
    pub cycles: usize,
    /// Operator-vector products (a block of b vectors counts b).
    pub n_matvec: usize,
    /// Vectors per operator product.
    pub block: usize,
    /// ‖K v − λ v‖ / max(|λ|max, tiny) of each returned pair, |λ|max the largest |Ritz value|
    /// (|λ_1| for a PSD K).
    pub residuals: Vec<f64>,
    pub max_residual: f64,
    /// The tolerance the Krylov iteration worked to.
    pub tolerance: f64,
    /// Whether every returned pair met the tolerance.
    pub converged: bool,
    /// Whether the iteration stopped early because its residuals stopped improving.
    pub stagnated: bool,
}

/// The k largest eigenpairs of the symmetric `k_mat` (n, n): values descending, vectors (n, k).
pub fn eigh_topk<T: Scalar>(k_mat: MatRef<'_, T>, k: usize, par: Par) -> CoreResult<EigenPairs<T>> {
    eigh_topk_with(k_mat, k, TopkParams::default(), &mut || Ok(()), par).map(|(pairs, _)| pairs)
}

fn check_k(k: usize, n: usize, of: &str) -> CoreResult<()> {
    if k == 0 || k > n {
        return Err(CoreError::OutOfRange {
            arg: "k",
            expected: format!("an integer in [1, {n}] ({of})"),
            got: k.to_string(),
        });
    }
    Ok(())
}

/// Validated solver settings: block size, basis width, tolerance, cycle budget, seed.
struct Plan {
    block: usize,
    width: usize,
    tol: f64,
    /// Test for convergence as the basis grows, not only when it is full (operators whose
    /// products cost more than a Rayleigh–Ritz step: see `krylov::CheckClock`).
    early: bool,
    /// Restart cycles before giving up.
    max_cycles: usize,
    /// Seed of the random start blocks.
    seed: u64,
}

fn plan<T: Scalar>(n: usize, k: usize, params: &TopkParams) -> CoreResult<Plan> {
    if let Some(blocks @ (..=2 | 257..)) = params.basis_blocks {
        return Err(CoreError::OutOfRange {
            arg: "basis_blocks",
            expected: "an integer in [3, 256]".into(),
            got: blocks.to_string(),
        });
    }
    let block = match params.block {
        Some(b) if b == 0 || b > n => {
            return Err(CoreError::OutOfRange {
                arg: "block",
                expected: format!("an integer in [1, {n}] (the order of K)"),
                got: b.to_string(),
            })
        }
        Some(b) => b,
        None => k.saturating_add(params.oversample).min(n),
    };
    let tol = params.tolerance.unwrap_or(policy::topk_tolerance::<T>());
    let min_tol = policy::topk_min_tolerance::<T>();
    if !(tol.is_finite() && tol >= min_tol && tol < 1.0) {
        return Err(CoreError::OutOfRange {
            arg: "tol",
            expected: format!("a number in [{min_tol:.1e}, 1) (a relative residual)"),
            got: format!("{tol}"),
        });
    }
    if params.max_cycles == 0 {
        return Err(CoreError::OutOfRange {
            arg: "maxiter",
            expected: "a positive number of restart cycles".into(),
            got: "0".into(),
        });
    }
    let blocks = params
        .basis_blocks
        .unwrap_or_else(|| policy::topk_basis_blocks(n, block));
    // Room for the pairs kept across a restart (at least k + one block) and a new block.
    let width = block
        .saturating_mul(blocks)
        .max(k.saturating_add(block.saturating_mul(2)))
        .min(n);
    Ok(Plan {
        block,
        width,
        tol,
        early: false,
        max_cycles: params.max_cycles,
        seed: params.seed,
    })
}

/// [`eigh_topk`] with explicit tuning and a `cancel` callback polled at least once per block
/// product (return `Err(CoreError::Interrupted)` to stop); also reports how it was solved.
pub fn eigh_topk_with<T: Scalar>(
    kmat: MatRef<'_, T>,
    k: usize,
    params: TopkParams,
    cancel: &mut dyn FnMut() -> CoreResult<()>,
    par: Par,
) -> CoreResult<(EigenPairs<T>, TopkInfo)> {
    check::symmetric_input("K", kmat)?;
    let n = kmat.nrows();
    check_k(k, n, "the order of K")?;
    let plan = plan::<T>(n, k, &params)?;
    // The full solve wins when the Krylov basis would be a sizeable part of the space.
    if 2 * plan.width >= n {
        return Ok(full_solve(kmat, k, par)?.report(TopkMethod::Dense, &plan));
    }
    // Krylov on a badly scaled K works on a power-of-two rescaled copy (exact to scale back).
    let exponent = policy::rescale_exponent::<T>(check::max_abs(kmat).to_f64());
    let scaled;
    let kmat = match exponent {
        Some(e) => {
            scaled = scaled_copy("eigh_topk: rescaled copy of K", kmat, e)?;
            scaled.as_ref()
        }
        None => kmat,
    };
    let unscale = |mut pairs: EigenPairs<T>| {
        if let Some(e) = exponent {
            let back = policy::pow2_steps::<T>(-e);
            pairs
                .values
                .iter_mut()
                .for_each(|v| *v = policy::scale_pow2(*v, &back));
        }
        pairs
    };
    let mut op = DenseOperator::new(kmat);
    let run = Solver::new(&mut op, &plan, cancel, par).run(k)?;
    if run.converged {
        let (pairs, info) = run.report(TopkMethod::Krylov, &plan);
        let pairs = unscale(pairs);
        ensure_finite(&pairs, "eigh_topk")?;
        return Ok((pairs, info));
    }
    let fallback = Run {
        cycles: run.cycles,
        n_matvec: run.n_matvec,
        stagnated: run.stagnated,
        ..full_solve(kmat, k, par)?
    };
    let (pairs, info) = fallback.report(TopkMethod::DenseFallback, &plan);
    Ok((unscale(pairs), info))
}

/// The k largest eigenpairs of a symmetric operator `op`, matrix-free: values descending,
/// vectors (n, k). Does not fail when the iteration does not converge: `info.converged` says
/// so, and the best pairs found are returned.
pub fn eigh_topk_operator<T: Scalar>(
    op: &mut dyn SymmetricOperator<T>,
    k: usize,
    params: TopkParams,
    cancel: &mut dyn FnMut() -> CoreResult<()>,
    par: Par,
) -> CoreResult<(EigenPairs<T>, TopkInfo)> {
    let n = op.dim();
    if n == 0 {
        return Err(CoreError::OutOfRange {
            arg: "n",
            expected: "a positive operator order".into(),
            got: "0".into(),
        });
    }
    check_k(k, n, "the order n of the operator")?;
    let plan = Plan {
        early: true,
        ..plan::<T>(n, k, &params)?
    };
    let run = Solver::new(op, &plan, cancel, par).run(k)?;
    let (pairs, info) = run.report(TopkMethod::Krylov, &plan);
    ensure_finite(&pairs, "eigh_topk_operator")?;
    Ok((pairs, info))
}

fn dense_top<T: Scalar>(kmat: MatRef<'_, T>, k: usize, par: Par) -> CoreResult<EigenPairs<T>> {
    let n = kmat.nrows();
    let (s, u) = crate::eigen::self_adjoint_ascending_scaled(kmat, par)?;
    let s = s.column_vector();
    let pairs = EigenPairs {
        values: (0..k).map(|i| s[n - 1 - i]).collect(),
        vectors: alloc::from_fn("eigh_topk: eigenvectors", n, k, |i, j| u[(i, n - 1 - j)])?,
    };
    ensure_finite(&pairs, "eigh_topk")?;
    Ok(pairs)
}

/// ‖K v − λ v‖ / max|λ| of pairs from a full solve (one product K·V).
fn dense_residuals<T: Scalar>(
    kmat: MatRef<'_, T>,
    pairs: &EigenPairs<T>,
    par: Par,
) -> CoreResult<Vec<f64>> {
    // Relative residuals are scale-invariant: compute them on a rescaled K when it is tiny or
    // huge, so that they do not under- or overflow.
    let exponent = policy::rescale_exponent::<T>(check::max_abs(kmat).to_f64());
    let (scaled, values);
    let (kmat, values) = match exponent {
        Some(e) => {
            scaled = scaled_copy("eigh_topk: rescaled copy of K", kmat, e)?;
            let steps = policy::pow2_steps::<T>(e);
            values = pairs
                .values
                .iter()
                .map(|&v| policy::scale_pow2(v, &steps))
                .collect::<Vec<_>>();
            (scaled.as_ref(), values)
        }
        None => (kmat, pairs.values.clone()),
    };
    let k = values.len();
    let mut r = alloc::zeros::<T>("eigh_topk: residuals", kmat.nrows(), k)?;
    par_matmul(
        r.as_mut(),
        Accum::Replace,
        kmat,
        pairs.vectors.as_ref(),
        T::ONE,
        par,
    );
    let top = values
        .iter()
        .fold(0.0f64, |m, v| m.max(v.to_f64().abs()))
        .max(f64::MIN_POSITIVE);
    let residuals = (0..k)
        .map(|j| {
            let mut col = r.as_mut().col_mut(j);
            let v = pairs.vectors.col(j);
            for i in 0..col.nrows() {
                col[i] -= values[j] * v[i];
            }
            col.rb().norm_l2().to_f64() / top
        })
        .collect();
    Ok(residuals)
}

/// A solve's pairs and what it took to find them, before they are reported.
struct Run<T> {
    pairs: EigenPairs<T>,
    residuals: Vec<f64>,
    cycles: usize,
    n_matvec: usize,
    converged: bool,
    stagnated: bool,
}

/// The top k of a full solve, with the residuals of one product K·V: a run of no cycles.
fn full_solve<T: Scalar>(kmat: MatRef<'_, T>, k: usize, par: Par) -> CoreResult<Run<T>> {
    let pairs = dense_top(kmat, k, par)?;
    Ok(Run {
        residuals: dense_residuals(kmat, &pairs, par)?,
        pairs,
        cycles: 0,
        n_matvec: 0,
        converged: true,
        stagnated: false,
    })
}

impl<T> Run<T> {
    fn report(self, method: TopkMethod, plan: &Plan) -> (EigenPairs<T>, TopkInfo) {
        let info = TopkInfo {
            method,
            cycles: self.cycles,
            n_matvec: self.n_matvec,
            block: plan.block,
            max_residual: self.residuals.iter().copied().fold(0.0, f64::max),
            residuals: self.residuals,
            tolerance: plan.tol,
            converged: self.converged,
            stagnated: self.stagnated,
        };
        (self.pairs, info)
    }
}
