//! Structured Gram accumulation K += alpha · (S ⊗ 1_b) ∘ (G Gᵀ), the exact eNTK block of a
//! linear layer used once: ⟨a, a'⟩ · ⟨g_c, g'_c'⟩ without forming the per-sample Jacobian.

use crate::alloc;
use crate::check;
use crate::error::{CoreError, CoreResult};
use crate::policy;
use crate::scalar::Scalar;
use crate::symmetric::{mirror_lower, SharedMut};
use faer::linalg::matmul::matmul;
use faer::reborrow::{Reborrow, ReborrowMut};
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

/// Rows of K processed per tile: bounds the scratch to `TILE × R` entries.
const TILE: usize = 256;

/// In place `K[i, j] += alpha · S[i / block, j / block] · ⟨G[i], G[j]⟩`.
///
/// `k`: symmetric (R, R); `g`: (R, Q); `s`: symmetric (R / block, R / block); `block ≥ 1`
/// divides R. Only the lower triangle is computed (in row tiles) and then mirrored.
pub fn hadamard_gram_accumulate<T: Scalar>(
    mut k: MatMut<'_, T>,
    g: MatRef<'_, T>,
    s: MatRef<'_, T>,
    block: usize,
    alpha: T,
    par: Par,
) -> CoreResult<()> {
    check::non_empty("G", g)?;
    let g_max = check::finite_max_abs("G", g)?;
    let k_max = check::symmetric_input("K", k.rb())?;
    let s_max = check::symmetric_input("S", s)?;
    let r = g.nrows();
    check::rows("K", k.rb(), r, "one per row of G")?;
    if block == 0 || r % block != 0 {
        return Err(CoreError::OutOfRange {
            arg: "block",
            expected: format!("a positive divisor of the {r} rows of G"),
            got: block.to_string(),
        });
    }
    check::rows("S", s, r / block, "rows of G divided by block")?;
    check::finite_scalar("alpha", alpha)?;

    // K is updated in place: refuse before touching it if the sum could overflow.
    let bound = k_max.to_f64()
        + alpha.abs_val().to_f64() * s_max.to_f64() * g_max.to_f64().powi(2) * g.ncols() as f64;
    if !policy::overflow_safe::<T>(bound.sqrt(), 1) {
        return Err(CoreError::Solver(
            "hadamard_gram_accumulate: the update could overflow this dtype; K was left \
             unchanged (rescale G or S, or use float64)"
                .into(),
        ));
    }
    let mut scratch = alloc::zeros::<T>("hadamard_gram_accumulate: workspace", TILE.min(r), r)?;
    let shared = SharedMut::new(&mut k);
    let mut start = 0;
    while start < r {
        let end = (start + TILE).min(r);
        let rows = end - start;
        // tile[i, j] = ⟨G[start + i], G[j]⟩ for j < end (the part at or below the diagonal).
        let mut tile = scratch.as_mut().submatrix_mut(0, 0, rows, end);
        matmul(
            tile.rb_mut(),
            Accum::Replace,
            g.subrows(start, rows),
            g.subrows(0, end).transpose(),
            T::ONE,
            par,
        );
        let tile = tile.rb();
        (0..rows).into_par_iter().for_each(|i| {
            let gi = start + i;
            let si = gi / block;
            for j in 0..=gi {
                // SAFETY: task i writes only row gi of K; rows are disjoint across tasks.
                unsafe {
                    *shared.at(gi, j) += alpha * s[(si, j / block)] * tile[(i, j)];
                }
            }
        });
        start = end;
    }
    mirror_lower(k);
    Ok(())
}

/// Writes `out[i, j] = alpha · S[i / block, j / block] · ⟨Ga[i], Gb[j]⟩`: an off-diagonal
/// sample tile of the structured block, so it can be assembled tile by tile in bounded memory.
///
/// `ga`: (R, Q); `gb`: (S, Q); `s`: (R / block, S / block); `out`: (R, S).
pub fn hadamard_gram_cross_into<T: Scalar>(
    mut out: MatMut<'_, T>,
    ga: MatRef<'_, T>,
    gb: MatRef<'_, T>,
    s: MatRef<'_, T>,
    block: usize,
    alpha: T,
    par: Par,
) -> CoreResult<()> {
    check::non_empty("Ga", ga)?;
    check::non_empty("Gb", gb)?;
    check::finite("Ga", ga)?;
    check::finite("Gb", gb)?;
    check::finite("S", s)?;
    check::cols("Gb", gb, ga.ncols(), "the same number of columns as Ga")?;
    for (arg, rows) in [("Ga", ga.nrows()), ("Gb", gb.nrows())] {
        if block == 0 || rows % block != 0 {
            return Err(CoreError::OutOfRange {
                arg: "block",
                expected: format!("a positive divisor of the {rows} rows of {arg}"),
                got: block.to_string(),
            });
        }
    }
    check::rows("S", s, ga.nrows() / block, "rows of Ga divided by block")?;
    check::cols("S", s, gb.nrows() / block, "rows of Gb divided by block")?;
    check::rows("out", out.rb(), ga.nrows(), "one per row of Ga")?;
    check::cols("out", out.rb(), gb.nrows(), "one per row of Gb")?;
    check::finite_scalar("alpha", alpha)?;
    matmul(out.rb_mut(), Accum::Replace, ga, gb.transpose(), alpha, par);
    let cols = out.ncols();
    let shared = SharedMut::new(&mut out);
    (0..ga.nrows()).into_par_iter().for_each(|i| {
        let si = i / block;
        for j in 0..cols {
            // SAFETY: task i touches only row i of `out`.
            unsafe { *shared.at(i, j) *= s[(si, j / block)] };
        }
    });
    check::finite_result("hadamard_gram_cross", out.rb())
}
