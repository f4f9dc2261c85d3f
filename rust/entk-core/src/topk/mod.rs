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

use crate::alloc;
use crate::check;
use crate::eigen::{ensure_finite, scaled_copy, self_adjoint_ascending, EigenPairs};
use crate::error::{CoreError, CoreResult};
use crate::gram::par_matmul;
use crate::policy;
use crate::rng::SplitMix64;
use crate::scalar::Scalar;
use faer::linalg::triangular_solve::solve_lower_triangular_in_place;
use faer::reborrow::{Reborrow, ReborrowMut};
use faer::{Accum, Mat, MatMut, MatRef, Par, Side};
use std::time::Instant;

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

/// Validated solver settings: block size, basis width, tolerance.
struct Plan {
    block: usize,
    width: usize,
    tol: f64,
    /// Test for convergence as the basis grows, not only when it is full (operators whose
    /// products cost more than a Rayleigh–Ritz step: see [`CheckClock`]).
    early: bool,
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
        let pairs = dense_top(kmat, k, par)?;
        let info = dense_info(kmat, &pairs, TopkMethod::Dense, 0, 0, &plan, false, par)?;
        return Ok((pairs, info));
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
    let run = krylov(
        &mut op,
        k,
        &plan,
        params.max_cycles,
        params.seed,
        cancel,
        par,
    )?;
    if run.converged {
        let info = run.info(TopkMethod::Krylov, &plan);
        let pairs = unscale(run.pairs);
        ensure_finite(&pairs, "eigh_topk")?;
        return Ok((pairs, info));
    }
    let pairs = dense_top(kmat, k, par)?;
    let info = dense_info(
        kmat,
        &pairs,
        TopkMethod::DenseFallback,
        run.cycles,
        run.n_matvec,
        &plan,
        run.stagnated,
        par,
    )?;
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
    let run = krylov(op, k, &plan, params.max_cycles, params.seed, cancel, par)?;
    let info = run.info(TopkMethod::Krylov, &plan);
    ensure_finite(&run.pairs, "eigh_topk_operator")?;
    Ok((run.pairs, info))
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

/// Residuals of pairs from a full solve (one product K·V), and the info record.
#[allow(clippy::too_many_arguments)]
fn dense_info<T: Scalar>(
    kmat: MatRef<'_, T>,
    pairs: &EigenPairs<T>,
    method: TopkMethod,
    cycles: usize,
    n_matvec: usize,
    plan: &Plan,
    stagnated: bool,
    par: Par,
) -> CoreResult<TopkInfo> {
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
    let residuals: Vec<f64> = (0..k)
        .map(|j| {
            let mut col = r.as_mut().col_mut(j);
            let v = pairs.vectors.col(j);
            for i in 0..col.nrows() {
                col[i] -= values[j] * v[i];
            }
            col.rb().norm_l2().to_f64() / top
        })
        .collect();
    let max_residual = residuals.iter().copied().fold(0.0, f64::max);
    Ok(TopkInfo {
        method,
        cycles,
        n_matvec,
        block: plan.block,
        residuals,
        max_residual,
        tolerance: plan.tol,
        converged: true,
        stagnated,
    })
}

/// The result of the Krylov iteration.
struct Run<T> {
    pairs: EigenPairs<T>,
    residuals: Vec<f64>,
    cycles: usize,
    n_matvec: usize,
    converged: bool,
    stagnated: bool,
}

impl<T: Scalar> Run<T> {
    /// The answer of a run whose pairs are `best`, with the products `budget` counted.
    fn from_phase(best: Phase<T>, budget: &Budget) -> Self {
        Run {
            pairs: EigenPairs {
                values: best.values,
                vectors: best.vectors,
            },
            residuals: best.residuals,
            cycles: budget.cycles,
            n_matvec: budget.n_matvec,
            converged: best.converged,
            stagnated: best.stagnated,
        }
    }

    fn info(&self, method: TopkMethod, plan: &Plan) -> TopkInfo {
        TopkInfo {
            method,
            cycles: self.cycles,
            n_matvec: self.n_matvec,
            block: plan.block,
            residuals: self.residuals.clone(),
            max_residual: self.residuals.iter().copied().fold(0.0, f64::max),
            tolerance: plan.tol,
            converged: self.converged,
            stagnated: self.stagnated,
        }
    }
}

/// Counters shared by the phases of one solve.
struct Budget {
    cycles: usize,
    max_cycles: usize,
    n_matvec: usize,
    /// Largest |entry| of any projected matrix Qᵀ K Q so far: the operator's scale, against
    /// which the symmetry of a later projection is judged (a deflated search in K's null
    /// space projects to round-off, whose own largest entry is no scale).
    scale: f64,
}

/// The outcome of one Krylov phase: the top `need` Ritz pairs of K restricted to the
/// complement of the locked vectors.
struct Phase<T> {
    values: Vec<T>,
    vectors: Mat<T>,
    residuals: Vec<f64>,
    converged: bool,
    stagnated: bool,
}

/// Top-k by phases. Phase 1 runs from a random block. With a block of at least k vectors its
/// answer is final (each eigenvalue needs at most k copies, and a block of b finds up to b).
/// Otherwise, fresh random phases orthogonal to the pairs found look for eigenvalues above the
/// k-th that were missed (copies of a repeated eigenvalue beyond the block size), merging them
/// in until none is left.
fn krylov<T: Scalar>(
    op: &mut dyn SymmetricOperator<T>,
    k: usize,
    plan: &Plan,
    max_cycles: usize,
    seed: u64,
    cancel: &mut dyn FnMut() -> CoreResult<()>,
    par: Par,
) -> CoreResult<Run<T>> {
    let n = op.dim();
    let mut rng = SplitMix64::new(seed);
    let mut budget = Budget {
        cycles: 0,
        max_cycles,
        n_matvec: 0,
        scale: 0.0,
    };
    let none = Mat::<T>::new();
    if plan.block >= k {
        let best = phase(
            op,
            none.as_ref(),
            k,
            plan,
            &mut rng,
            &mut budget,
            cancel,
            par,
        )?;
        return Ok(Run::from_phase(best, &budget));
    }
    // A block smaller than k: one thick-restarted run for all k pairs (a wide basis of small
    // blocks reaches a high Krylov degree in few products). Should it stagnate (an eigenvalue
    // repeated more often than the block holds), start over converging half a block at a
    // time (the top pairs of a block Krylov space converge fast, whatever their multiplicity
    // up to the block size) and locking them. Then look for missed copies as below.
    let half = (plan.block / 2).max(1);
    let mut merged = false;
    let mut best = phase(
        op,
        none.as_ref(),
        k,
        plan,
        &mut rng,
        &mut budget,
        cancel,
        par,
    )?;
    if !best.converged && budget.cycles < budget.max_cycles {
        best = phase(
            op,
            none.as_ref(),
            half.min(k),
            plan,
            &mut rng,
            &mut budget,
            cancel,
            par,
        )?;
    }
    while best.converged && best.values.len() < k {
        let need = half.min(k - best.values.len());
        let more = phase(
            op,
            best.vectors.as_ref(),
            need,
            plan,
            &mut rng,
            &mut budget,
            cancel,
            par,
        )?;
        let all: Vec<usize> = (0..more.values.len()).collect();
        let total = best.values.len() + more.values.len();
        best = merge(best, more, &all, total)?;
        merged = true;
    }
    // Fresh random phases orthogonal to the k pairs look for eigenvalues above the k-th that
    // were missed (copies of a repeated eigenvalue beyond the block size), until none is left.
    while best.converged && n > k {
        let need = half.min(n - k);
        let extra = phase(
            op,
            best.vectors.as_ref(),
            need,
            plan,
            &mut rng,
            &mut budget,
            cancel,
            par,
        )?;
        let scale = best
            .values
            .iter()
            .chain(extra.values.iter())
            .fold(f64::MIN_POSITIVE, |m, v| m.max(v.to_f64().abs()));
        let cut = best.values[k - 1].to_f64() + plan.tol * scale;
        let missed: Vec<usize> = (0..extra.values.len())
            .filter(|&j| extra.values[j].to_f64() > cut)
            .collect();
        if missed.is_empty() {
            break;
        }
        best = merge(best, extra, &missed, k)?;
        merged = true;
    }
    // Pairs from several phases: measure their residuals on K itself (one more product each).
    // Pairs of the one first phase keep its Rayleigh–Ritz residuals, which are exact.
    if merged {
        best.residuals = true_residuals(op, &best, plan.block, &mut budget, par)?;
    }
    Ok(Run::from_phase(best, &budget))
}

/// ‖K v − λ v‖ / max|λ| of each pair, with products of at most `block` vectors.
fn true_residuals<T: Scalar>(
    op: &mut dyn SymmetricOperator<T>,
    pairs: &Phase<T>,
    block: usize,
    budget: &mut Budget,
    par: Par,
) -> CoreResult<Vec<f64>> {
    let (n, k) = pairs.vectors.shape();
    let scale = pairs
        .values
        .iter()
        .fold(f64::MIN_POSITIVE, |m, v| m.max(v.to_f64().abs()));
    let mut image = alloc::zeros::<T>("eigh_topk: residuals", n, block.min(k))?;
    let mut out = Vec::with_capacity(k);
    let mut start = 0;
    while start < k {
        let b = block.min(k - start);
        let mut img = image.as_mut().subcols_mut(0, b);
        op.apply(pairs.vectors.as_ref().subcols(start, b), img.rb_mut(), par)?;
        budget.n_matvec += b;
        for j in 0..b {
            let (v, w, lambda) = (
                pairs.vectors.col(start + j),
                img.rb().col(j),
                pairs.values[start + j],
            );
            let sum: f64 = (0..n)
                .map(|i| (w[i] - lambda * v[i]).to_f64().powi(2))
                .sum();
            out.push(sum.sqrt() / scale);
        }
        start += b;
    }
    Ok(out)
}

/// The top k of the locked pairs `a` and the candidates `b[missed]` (orthogonal to them).
fn merge<T: Scalar>(a: Phase<T>, b: Phase<T>, missed: &[usize], k: usize) -> CoreResult<Phase<T>> {
    let mut all: Vec<(T, bool, usize)> = (0..a.values.len())
        .map(|j| (a.values[j], false, j))
        .chain(missed.iter().map(|&j| (b.values[j], true, j)))
        .collect();
    all.sort_by(|x, y| y.0.to_f64().total_cmp(&x.0.to_f64()));
    all.truncate(k);
    let n = a.vectors.nrows();
    let pick = |&(_, from_b, j): &(T, bool, usize)| {
        if from_b {
            b.vectors.col(j)
        } else {
            a.vectors.col(j)
        }
    };
    let vectors = alloc::from_fn("eigh_topk: eigenvectors", n, k, |i, c| pick(&all[c])[i])?;
    let residuals = all
        .iter()
        .map(|&(_, from_b, j)| {
            if from_b {
                b.residuals[j]
            } else {
                a.residuals[j]
            }
        })
        .collect();
    Ok(Phase {
        values: all.iter().map(|x| x.0).collect(),
        vectors,
        residuals,
        converged: a.converged && b.converged,
        stagnated: a.stagnated || b.stagnated,
    })
}

/// One thick-restarted block Krylov run on K restricted to the complement of `locked`,
/// until its top `need` Ritz pairs converge, stagnate, or the cycle budget runs out.
#[allow(clippy::too_many_arguments)]
fn phase<T: Scalar>(
    op: &mut dyn SymmetricOperator<T>,
    locked: MatRef<'_, T>,
    need: usize,
    plan: &Plan,
    rng: &mut SplitMix64,
    budget: &mut Budget,
    cancel: &mut dyn FnMut() -> CoreResult<()>,
    par: Par,
) -> CoreResult<Phase<T>> {
    let n = op.dim();
    let free = n - locked.ncols();
    let block = plan.block.min(free);
    let width = plan.width.min(free).max(block);
    let mut solver = BlockKrylov::new(n, block, width, rng, par)?;
    let mut history = Vec::new();
    let mut clock = CheckClock::default();
    loop {
        budget.cycles += 1;
        while solver.used < solver.q.ncols() {
            let started = Instant::now();
            solver.expand_block(op, locked, rng, budget, cancel)?;
            clock.products += started.elapsed().as_secs_f64();
            // An early test needs a basis beyond the wanted pairs, and pays for itself only
            // when the products since the last one took longer than a test does.
            if !plan.early || solver.used < need + solver.block || !clock.due() {
                continue;
            }
            let started = Instant::now();
            let ritz = solver.rayleigh_ritz(need, locked, &mut budget.scale)?;
            clock.tested(started.elapsed().as_secs_f64());
            if ritz.max_residual <= plan.tol {
                return Phase::from_ritz(ritz, need, true, false);
            }
        }
        let ritz = solver.rayleigh_ritz(need, locked, &mut budget.scale)?;
        history.push(ritz.max_residual);
        let converged = ritz.max_residual <= plan.tol;
        let stagnated = !converged && policy::stagnated(&history);
        if converged || stagnated || budget.cycles >= budget.max_cycles {
            return Phase::from_ritz(ritz, need, converged, stagnated);
        }
        solver.restart(&ritz, need, plan.tol)?;
    }
}

/// When an early convergence test is worth its cost: seconds spent in products since the
/// last test against the last test's own seconds.
#[derive(Default)]
struct CheckClock {
    products: f64,
    last_test: f64,
}

impl CheckClock {
    fn due(&self) -> bool {
        self.products >= self.last_test
    }

    fn tested(&mut self, seconds: f64) {
        self.products = 0.0;
        self.last_test = seconds;
    }
}

impl<T: Scalar> Phase<T> {
    fn from_ritz(ritz: Ritz<T>, need: usize, converged: bool, stagnated: bool) -> CoreResult<Self> {
        let vectors = alloc::copy(
            "eigh_topk: eigenvectors",
            ritz.vectors.as_ref().subcols(0, need),
        )?;
        Ok(Phase {
            values: ritz.values[..need].to_vec(),
            vectors,
            residuals: ritz.residuals,
            converged,
            stagnated,
        })
    }
}

struct Ritz<T> {
    /// Ritz vectors (n, kept) and their images K·U, sorted by descending Ritz value.
    vectors: Mat<T>,
    images: Mat<T>,
    values: Vec<T>,
    /// Relative residuals of the top `need` pairs.
    residuals: Vec<f64>,
    max_residual: f64,
}

struct BlockKrylov<T: Scalar> {
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
    fn new(
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

    /// Grows the basis by one block: Q_{j+1} ⟂ [locked, Q], from K Q_j.
    fn expand_block(
        &mut self,
        op: &mut dyn SymmetricOperator<T>,
        locked: MatRef<'_, T>,
        rng: &mut SplitMix64,
        budget: &mut Budget,
        cancel: &mut dyn FnMut() -> CoreResult<()>,
    ) -> CoreResult<()> {
        let width = self.q.ncols();
        cancel()?;
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
        op.apply(
            self.q.as_ref().subcols(start, b),
            self.p.as_mut().subcols_mut(start, b),
            self.par,
        )?;
        budget.n_matvec += b;
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
    fn rayleigh_ritz(
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
    fn restart(&mut self, ritz: &Ritz<T>, need: usize, tol: f64) -> CoreResult<()> {
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

/// Makes the columns of `z` orthonormal and orthogonal to the orthonormal `locked` and `basis`.
///
/// Block Gram–Schmidt against the bases, then an orthonormalisation of the block, twice
/// ("twice is enough": the second pass removes what round-off left of the basis directions).
/// The block is orthonormalised by CholQR (Gram matrix, Cholesky, one product: BLAS-3 and a
/// fraction of the cost of a Householder QR of a tall block) when it is well conditioned,
/// else by Householder QR. Columns that lie numerically in the span already are replaced by
/// random directions, so the Krylov basis keeps its full width when K has low rank.
fn orthonormalize_against<T: Scalar>(
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
