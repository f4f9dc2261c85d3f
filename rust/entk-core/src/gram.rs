//! Gram matrices K = J Jᵀ: one triangle by a symmetric rank-k update, then mirrored.
//!
//! Parallel products are split into square output tiles, each a sequential faer product, that
//! rayon hands out by work stealing. faer's own parallel GEMM synchronises its threads at
//! spinning barriers once per depth slice; when another process (an OpenBLAS pool still
//! spinning after a numpy call, a second job) takes a core for a moment, every barrier waits
//! for it and a product can take several times its quiet time. Tiles only wait for the last
//! one, and run as fast as faer's parallel kernel on a quiet machine (within a few percent,
//! measured on 2 cores at n = 512 to 2048, P = 2048).

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
use rayon::prelude::*;

fn check_jacobian<T: Scalar>(arg: &'static str, j: MatRef<'_, T>) -> CoreResult<()> {
    check::non_empty(arg, j)?;
    check::finite(arg, j)
}

/// Side of the square output tiles of a parallel product with `threads` threads and an
/// output of `tiles(side)` tiles: 256 (the fastest per tile, a few percent ahead of 128)
/// unless that leaves fewer than three tiles per thread to balance, down to 64.
fn tile_side(threads: usize, tiles: impl Fn(usize) -> usize) -> usize {
    let mut side = 256;
    while side > 64 && tiles(side) < 3 * threads {
        side /= 2;
    }
    side
}

/// Products below this many multiply-adds run on the calling thread (a task hand-off costs
/// more than they do).
const PAR_MIN_WORK: usize = 1 << 20;

/// `dst ← beta·dst + alpha·A B` (faer's `matmul`), in parallel by output tiles (see the
/// module note) when `par` has several threads and the product is large enough.
pub(crate) fn par_matmul<T: Scalar>(
    dst: MatMut<'_, T>,
    beta: Accum,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    alpha: T,
    par: Par,
) {
    let (m, n, depth) = (dst.nrows(), dst.ncols(), a.ncols());
    let threads = par.degree();
    if threads <= 1 || m.saturating_mul(n).saturating_mul(depth) < PAR_MIN_WORK {
        matmul(dst, beta, a, b, alpha, Par::Seq);
        return;
    }
    let side = tile_side(threads, |s| m.div_ceil(s) * n.div_ceil(s));
    dst.par_row_chunks_mut(side)
        .enumerate()
        .for_each(|(bi, panel)| {
            let rows = a.subrows(bi * side, panel.nrows());
            panel
                .par_col_chunks_mut(side)
                .enumerate()
                .for_each(|(bj, tile)| {
                    let cols = b.subcols(bj * side, tile.ncols());
                    matmul(tile, beta, rows, cols, alpha, Par::Seq);
                });
        });
}

/// Below this many rows a Gram runs as one faer triangular product (faer's parallelism),
/// from it on as output tiles shared out by rayon (see the module note); at n ≥ 1024 the two
/// are equally fast on a quiet machine and the tiles keep their speed when a core is taken.
const TILED_SYRK_MIN_ROWS: usize = 1024;

/// `k ← beta·k + alpha·J Jᵀ` on the lower triangle, then mirrored. `k` is (R, R), `j` is (R, P).
fn syrk_into<T: Scalar>(mut k: MatMut<'_, T>, beta: Accum, j: MatRef<'_, T>, alpha: T, par: Par) {
    let n = j.nrows();
    if n < TILED_SYRK_MIN_ROWS {
        // faer's own parallel triangular product: on a quiet machine twice as fast as the
        // tiles here at n = 512 (7.9 against 14.6 ms, f64, P = 2048), where 128-row tiles
        // repack J for every tile.
        syrk_tile(k.rb_mut(), beta, j, alpha, par);
        mirror_lower(k);
        return;
    }
    let side = tile_side(par.degree(), |s| {
        let t = n.div_ceil(s);
        t * (t + 1) / 2
    });
    if par.degree() <= 1 || n <= side {
        syrk_tile(k.rb_mut(), beta, j, alpha, Par::Seq);
    } else {
        // Row panel i holds tiles (i, 0..=i): the diagonal one triangular, the rest full.
        k.rb_mut()
            .par_row_chunks_mut(side)
            .enumerate()
            .for_each(|(bi, panel)| {
                let r0 = bi * side;
                let rows = j.subrows(r0, panel.nrows());
                panel
                    .subcols_mut(0, r0 + rows.nrows())
                    .par_col_chunks_mut(side)
                    .enumerate()
                    .for_each(|(bj, tile)| {
                        if bj == bi {
                            syrk_tile(tile, beta, rows, alpha, Par::Seq);
                        } else {
                            let cols = j.subrows(bj * side, tile.ncols());
                            matmul(tile, beta, rows, cols.transpose(), alpha, Par::Seq);
                        }
                    });
            });
    }
    mirror_lower(k);
}

/// The lower triangle of `beta·k + alpha·J Jᵀ` (faer's triangular product, run with `par`).
fn syrk_tile<T: Scalar>(k: MatMut<'_, T>, beta: Accum, j: MatRef<'_, T>, alpha: T, par: Par) {
    triangular::matmul(
        k,
        BlockStructure::TriangularLower,
        beta,
        j,
        BlockStructure::Rectangular,
        j.transpose(),
        BlockStructure::Rectangular,
        alpha,
        par,
    );
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
    par_matmul(out.rb_mut(), Accum::Replace, a, b.transpose(), T::ONE, par);
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
