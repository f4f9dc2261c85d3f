//! The Krylov driver: thick-restarted phases, locking, and the search for missed copies of a
//! repeated eigenvalue, on one operator under one budget of cycles.

use super::ritz::{BlockKrylov, Ritz};
use super::{Plan, Run, SymmetricOperator};
use crate::alloc;
use crate::eigen::EigenPairs;
use crate::error::CoreResult;
use crate::policy;
use crate::rng::SplitMix64;
use crate::scalar::Scalar;
use faer::reborrow::{Reborrow, ReborrowMut};
use faer::{Mat, MatRef, Par};
use std::time::Instant;

/// One top-k solve in progress: the operator and the state its phases share (random stream,
/// cycle and product counts, the operator's scale).
pub(super) struct Solver<'a, T: Scalar> {
    op: &'a mut dyn SymmetricOperator<T>,
    /// Polled before every block product.
    cancel: &'a mut dyn FnMut() -> CoreResult<()>,
    plan: &'a Plan,
    rng: SplitMix64,
    budget: Budget,
    par: Par,
}

/// Counters shared by the phases of one solve.
struct Budget {
    cycles: usize,
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

impl<'a, T: Scalar> Solver<'a, T> {
    pub(super) fn new(
        op: &'a mut dyn SymmetricOperator<T>,
        plan: &'a Plan,
        cancel: &'a mut dyn FnMut() -> CoreResult<()>,
        par: Par,
    ) -> Self {
        Self {
            op,
            cancel,
            plan,
            rng: SplitMix64::new(plan.seed),
            budget: Budget {
                cycles: 0,
                n_matvec: 0,
                scale: 0.0,
            },
            par,
        }
    }

    /// Top-k by phases. Phase 1 runs from a random block. With a block of at least k vectors
    /// its answer is final (each eigenvalue needs at most k copies, and a block of b finds up
    /// to b). Otherwise, fresh random phases orthogonal to the pairs found look for eigenvalues
    /// above the k-th that were missed (copies of a repeated eigenvalue beyond the block size),
    /// merging them in until none is left.
    pub(super) fn run(mut self, k: usize) -> CoreResult<Run<T>> {
        let n = self.op.dim();
        let none = Mat::<T>::new();
        let mut best = self.phase(none.as_ref(), k)?;
        if self.plan.block >= k {
            return Ok(self.finish(best));
        }
        // A block smaller than k: the first phase was one thick-restarted run for all k pairs
        // (a wide basis of small blocks reaches a high Krylov degree in few products). Should
        // it stagnate (an eigenvalue repeated more often than the block holds), start over
        // converging half a block at a time (the top pairs of a block Krylov space converge
        // fast, whatever their multiplicity up to the block size) and locking them. Then look
        // for missed copies as below.
        let half = (self.plan.block / 2).max(1);
        let mut merged = false;
        if !best.converged && self.budget.cycles < self.plan.max_cycles {
            best = self.phase(none.as_ref(), half.min(k))?;
        }
        while best.converged && best.values.len() < k {
            let need = half.min(k - best.values.len());
            let more = self.phase(best.vectors.as_ref(), need)?;
            let all: Vec<usize> = (0..more.values.len()).collect();
            let total = best.values.len() + more.values.len();
            best = merge(best, more, &all, total)?;
            merged = true;
        }
        // Fresh random phases orthogonal to the k pairs look for eigenvalues above the k-th
        // that were missed (copies of a repeated eigenvalue beyond the block size), until none
        // is left.
        while best.converged && n > k {
            let need = half.min(n - k);
            let extra = self.phase(best.vectors.as_ref(), need)?;
            let scale = best
                .values
                .iter()
                .chain(extra.values.iter())
                .fold(f64::MIN_POSITIVE, |m, v| m.max(v.to_f64().abs()));
            let cut = best.values[k - 1].to_f64() + self.plan.tol * scale;
            let missed: Vec<usize> = (0..extra.values.len())
                .filter(|&j| extra.values[j].to_f64() > cut)
                .collect();
            if missed.is_empty() {
                break;
            }
            best = merge(best, extra, &missed, k)?;
            merged = true;
        }
        // Pairs from several phases: measure their residuals on K itself (one more product
        // each). Pairs of the one first phase keep its Rayleigh–Ritz residuals, which are exact.
        if merged {
            best.residuals = self.true_residuals(&best)?;
        }
        Ok(self.finish(best))
    }

    /// The answer of a run whose pairs are `best`, with the products counted so far.
    fn finish(self, best: Phase<T>) -> Run<T> {
        Run {
            pairs: EigenPairs {
                values: best.values,
                vectors: best.vectors,
            },
            residuals: best.residuals,
            cycles: self.budget.cycles,
            n_matvec: self.budget.n_matvec,
            converged: best.converged,
            stagnated: best.stagnated,
        }
    }

    /// One thick-restarted block Krylov run on K restricted to the complement of `locked`,
    /// until its top `need` Ritz pairs converge, stagnate, or the cycle budget runs out.
    fn phase(&mut self, locked: MatRef<'_, T>, need: usize) -> CoreResult<Phase<T>> {
        let n = self.op.dim();
        let free = n - locked.ncols();
        let block = self.plan.block.min(free);
        let width = self.plan.width.min(free).max(block);
        let mut basis = BlockKrylov::new(n, block, width, &mut self.rng, self.par)?;
        let mut history = Vec::new();
        let mut clock = CheckClock::default();
        loop {
            self.budget.cycles += 1;
            while !basis.is_full() {
                let started = Instant::now();
                self.expand(&mut basis, locked)?;
                clock.products += started.elapsed().as_secs_f64();
                // An early test needs a basis beyond the wanted pairs, and pays for itself
                // only when the products since the last one took longer than a test does.
                if !self.plan.early || basis.used() < need + basis.block() || !clock.due() {
                    continue;
                }
                let started = Instant::now();
                let ritz = basis.rayleigh_ritz(need, locked, &mut self.budget.scale)?;
                clock.tested(started.elapsed().as_secs_f64());
                if ritz.max_residual <= self.plan.tol {
                    return Phase::from_ritz(ritz, need, true, false);
                }
            }
            let ritz = basis.rayleigh_ritz(need, locked, &mut self.budget.scale)?;
            history.push(ritz.max_residual);
            let converged = ritz.max_residual <= self.plan.tol;
            let stagnated = !converged && policy::stagnated(&history);
            if converged || stagnated || self.budget.cycles >= self.plan.max_cycles {
                return Phase::from_ritz(ritz, need, converged, stagnated);
            }
            basis.restart(&ritz, need, self.plan.tol)?;
        }
    }

    /// Grows `basis` by one block, after polling `cancel`.
    fn expand(&mut self, basis: &mut BlockKrylov<T>, locked: MatRef<'_, T>) -> CoreResult<()> {
        (self.cancel)()?;
        let (op, budget, par) = (&mut *self.op, &mut self.budget, self.par);
        basis.expand_block(locked, &mut self.rng, |x, out| {
            op.apply(x, out, par)?;
            budget.n_matvec += x.ncols();
            Ok(())
        })
    }

    /// ‖K v − λ v‖ / max|λ| of each pair, with products of at most one block of vectors.
    fn true_residuals(&mut self, pairs: &Phase<T>) -> CoreResult<Vec<f64>> {
        let block = self.plan.block;
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
            self.op.apply(
                pairs.vectors.as_ref().subcols(start, b),
                img.rb_mut(),
                self.par,
            )?;
            self.budget.n_matvec += b;
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
