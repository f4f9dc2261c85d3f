//! Structured Gram accumulation K += alpha · (S ⊗ 1_b) ∘ (G Gᵀ), the exact eNTK block of a
//! linear layer used once: ⟨a, a'⟩ · ⟨g_c, g'_c'⟩ without forming the per-sample Jacobian.

use crate::check;
use crate::error::{CoreError, CoreResult};
use crate::scalar::Scalar;
use crate::symmetric::{mirror_lower, SharedMut};
use faer::linalg::matmul::matmul;
use faer::reborrow::{Reborrow, ReborrowMut};
use faer::{Accum, Mat, MatMut, MatRef, Par};
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
    check::finite("G", g)?;
    check::symmetric_input("K", k.rb())?;
    check::symmetric_input("S", s)?;
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
    if !alpha.is_finite_val() {
        return Err(CoreError::OutOfRange {
            arg: "alpha",
            expected: "a finite number".into(),
            got: format!("{}", alpha.to_f64()),
        });
    }

    let mut scratch = Mat::<T>::zeros(TILE.min(r), r);
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
