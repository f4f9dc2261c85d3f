//! Structured Gram accumulation K += alpha · (S ⊗ 1_b) ∘ (G Gᵀ), the exact eNTK block of a
//! linear layer used once: ⟨a, a'⟩ · ⟨g_c, g'_c'⟩ without forming the per-sample Jacobian.

use crate::alloc;
use crate::check;
use crate::error::{CoreError, CoreResult};
use crate::policy;
use crate::scalar::Scalar;
use crate::symmetric::{mirror_lower, RawRef, SharedMut};
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
    k: MatMut<'_, T>,
    g: MatRef<'_, T>,
    s: MatRef<'_, T>,
    block: usize,
    alpha: T,
    par: Par,
) -> CoreResult<()> {
    hadamard_gram_positions_accumulate(k, g, s, 1, block, alpha, par)
}

/// In place `K[i, j] += alpha · Σ_{t,u} S[t·m + i / block, u·m + j / block] · ⟨G[t·R + i],
/// G[u·R + j]⟩` over `positions` = T positions, m = R / block: the eNTK block of a linear layer
/// applied at T positions of each sample, Σ_{t,u} ⟨a_t, a'_u⟩ ⟨g_t, g'_u⟩, with G's rows the
/// output cotangents position by position and S the Gram of the inputs over (position, sample).
///
/// `k`: symmetric (R, R); `g`: (T·R, Q); `s`: symmetric (T·m, T·m). K is touched once per row
/// tile for all T² position pairs (pairs whose block of S is zero are skipped); only the lower
/// triangle is computed and then mirrored.
pub fn hadamard_gram_positions_accumulate<T: Scalar>(
    mut k: MatMut<'_, T>,
    g: MatRef<'_, T>,
    s: MatRef<'_, T>,
    positions: usize,
    block: usize,
    alpha: T,
    par: Par,
) -> CoreResult<()> {
    check::non_empty("G", g)?;
    let r = rows_per_position(g, positions)?;
    let g_max = check::finite_max_abs("G", g)?;
    let k_max = check::symmetric_input("K", k.rb())?;
    let s_max = check::symmetric_input("S", s)?;
    check_k_and_block(k.rb(), r, positions, block)?;
    let m = r / block;
    check::rows(
        "S",
        s,
        positions * m,
        if positions == 1 {
            "rows of G divided by block"
        } else {
            "positions × rows of G per position divided by block"
        },
    )?;
    check::finite_scalar("alpha", alpha)?;

    // K is updated in place: refuse before touching it if the sum could overflow.
    refuse_overflow(
        k_max.to_f64(),
        alpha,
        s_max.to_f64(),
        (g_max, g.ncols()),
        positions,
        "S",
    )?;
    let live = live_positions(g, positions, r);
    let pairs: Vec<(usize, usize)> = position_pairs(&live)
        .filter(|&(t, u)| positions == 1 || !is_zero(s.submatrix(t * m, u * m, m, m)))
        .collect();
    // Scratch holds the transposed tile, tileᵀ[j, i] = ⟨G_u[j], G_t[start + i]⟩ (column-major),
    // so row i of the tile is one contiguous column.
    let mut scratch = alloc::zeros::<T>("hadamard_gram_accumulate: workspace", r, TILE.min(r))?;
    let shared = SharedMut::new(&mut k);
    let mut start = 0;
    while start < r {
        let end = (start + TILE).min(r);
        let rows = end - start;
        for &(t, u) in &pairs {
            let g_t = g.subrows(t * r, r);
            let g_u = g.subrows(u * r, r);
            let weights = RawRef::new(s.submatrix(t * m, u * m, m, m));
            let mut tile_t = scratch.as_mut().submatrix_mut(0, 0, end, rows);
            matmul(
                tile_t.rb_mut(),
                Accum::Replace,
                g_u.subrows(0, end),
                g_t.subrows(start, rows).transpose(),
                T::ONE,
                par,
            );
            let tile_t = tile_t.rb();
            (0..rows).into_par_iter().for_each(|i| {
                let gi = start + i;
                // SAFETY: column i of the scratch holds `end` ≥ gi + 1 contiguous entries.
                let products =
                    unsafe { std::slice::from_raw_parts(tile_t.col(i).as_ptr(), gi + 1) };
                // SAFETY: task i writes only row gi of K (columns 0..=gi); rows are disjoint
                // across tasks, and S is only read.
                unsafe {
                    weighted_row_add(shared, gi, products, weights, gi / block, block, alpha)
                };
            });
        }
        start = end;
    }
    mirror_lower(k);
    Ok(())
}

/// In place `K[i, j] += alpha · Σ_{t,u} ⟨A[t·m + i / block], A[u·m + j / block]⟩ ·
/// ⟨G[t·R + i], G[u·R + j]⟩` over `positions` = T positions, m = R / block: the same block as
/// [`hadamard_gram_positions_accumulate`] with S = A Aᵀ given by its factor, so the (T·m)²
/// input Gram is never formed: each row tile of K takes, for every position pair, one tile of
/// input products and one of cotangent products, both in cache, and K is read and written
/// once per tile.
///
/// `k`: symmetric (R, R); `g`: (T·R, Q) output cotangents position by position; `a`: (T·m, D)
/// the layer's inputs position by position.
pub fn hadamard_gram_factored_accumulate<T: Scalar>(
    k: MatMut<'_, T>,
    g: MatRef<'_, T>,
    a: MatRef<'_, T>,
    positions: usize,
    block: usize,
    alpha: T,
    par: Par,
) -> CoreResult<()> {
    let term = FactoredTerm {
        g,
        a,
        positions,
        block,
    };
    hadamard_gram_factored_accumulate_many(k, &[term], alpha, par)
}

/// One layer's operands of [`hadamard_gram_factored_accumulate_many`]: output cotangents `g`
/// (T·R, Q) and inputs `a` (T·m, D), position by position, m = R / `block`.
#[derive(Clone, Copy, Debug)]
pub struct FactoredTerm<'a, T> {
    pub g: MatRef<'a, T>,
    pub a: MatRef<'a, T>,
    pub positions: usize,
    pub block: usize,
}

/// A validated term: its rows per position, and the position pairs with the columns each
/// pair shares in G and in A.
struct PlannedTerm<'a, T> {
    term: FactoredTerm<'a, T>,
    r: usize,
    m: usize,
    pairs: Vec<(usize, usize, Span, Span)>,
}

/// In place `K += alpha · Σ_terms` [`hadamard_gram_factored_accumulate`]'s block of each term:
/// the eNTK of several layers that add into one kernel, with K checked, tiled and mirrored
/// once, and every term's products of a row tile of K done by one task in one parallel
/// section (no thread wake-up or pass over K per layer).
///
/// Every term is validated before K is touched (K is left unchanged on any error).
pub fn hadamard_gram_factored_accumulate_many<T: Scalar>(
    mut k: MatMut<'_, T>,
    terms: &[FactoredTerm<'_, T>],
    alpha: T,
    par: Par,
) -> CoreResult<()> {
    let mut maxima = Vec::with_capacity(terms.len());
    for term in terms {
        check::non_empty("G", term.g)?;
        check::non_empty("A", term.a)?;
        rows_per_position(term.g, term.positions)?;
        maxima.push((
            check::finite_max_abs("G", term.g)?,
            check::finite_max_abs("A", term.a)?,
        ));
    }
    let k_max = check::symmetric_input("K", k.rb())?;
    check::finite_scalar("alpha", alpha)?;
    let mut bound = k_max.to_f64();
    let mut planned = Vec::with_capacity(terms.len());
    for (term, (g_max, a_max)) in terms.iter().zip(maxima) {
        let (g, a, positions, block) = (term.g, term.a, term.positions, term.block);
        let r = g.nrows() / positions;
        check_k_and_block(k.rb(), r, positions, block)?;
        let m = r / block;
        check::rows(
            "A",
            a,
            positions * m,
            "positions × rows of G per position divided by block",
        )?;
        let s_max = a_max.to_f64().powi(2) * a.ncols() as f64; // bounds every ⟨A_i, A_j⟩
        bound = refuse_overflow(bound, alpha, s_max, (g_max, g.ncols()), positions, "A")?;
        let pairs = shared_columns(g, a, positions, r, m);
        if !pairs.is_empty() {
            planned.push(PlannedTerm {
                term: *term,
                r,
                m,
                pairs,
            });
        }
    }
    if planned.is_empty() {
        return Ok(()); // every term is zero: K is unchanged
    }
    // Row tiles of K run in parallel, each with its own scratch and, for every term, all its
    // position pairs in turn (sequential products): one parallel section per call, K's rows
    // owned by one task. Tiles further down the triangle hold more work: they go first.
    let r = planned[0].r;
    let tile = FACTORED_TILE.min(r);
    let tiles: Vec<(usize, usize)> = (0..r.div_ceil(tile))
        .rev()
        .map(|i| (i * tile, ((i + 1) * tile).min(r)))
        .collect();
    let shared = SharedMut::new(&mut k);
    let _ = par; // the pool installed by the caller sets the parallelism of the tiles
    tiles
        .into_par_iter()
        .try_for_each(|(start, end)| -> CoreResult<()> {
            let rows = end - start;
            let mut products = alloc::zeros::<T>("hadamard_gram_accumulate: workspace", end, rows)?;
            for plan in &planned {
                let (block, m) = (plan.term.block, plan.m);
                // Sample rows of S this tile needs: m0..m1 (rows), 0..m1 (columns).
                let (m0, m1) = (start / block, (end - 1) / block + 1);
                let mut inputs =
                    alloc::zeros::<T>("hadamard_gram_accumulate: workspace", m1, m1 - m0)?;
                for &(t, u, gc, ac) in &plan.pairs {
                    let g = plan.term.g.subcols(gc.0, gc.len());
                    let a = plan.term.a.subcols(ac.0, ac.len());
                    // productsᵀ[j, i] = ⟨G_u[j], G_t[start + i]⟩: row i of the tile is a column.
                    matmul(
                        products.as_mut(),
                        Accum::Replace,
                        g.subrows(u * r, end),
                        g.subrows(t * r + start, rows).transpose(),
                        T::ONE,
                        Par::Seq,
                    );
                    matmul(
                        inputs.as_mut(),
                        Accum::Replace,
                        a.subrows(u * m, m1),
                        a.subrows(t * m + m0, m1 - m0).transpose(),
                        T::ONE,
                        Par::Seq,
                    );
                    // S tile: row si - m0, column sj (rows contiguous).
                    let weights = RawRef::new(inputs.as_ref().transpose());
                    for i in 0..rows {
                        let gi = start + i;
                        // SAFETY: column i of `products` holds `end` ≥ gi + 1 contiguous
                        // entries.
                        let row =
                            unsafe { std::slice::from_raw_parts(products.col(i).as_ptr(), gi + 1) };
                        // SAFETY: this task alone writes rows start..end of K (columns 0..=gi);
                        // the S tile has rows m0..m1 and columns 0..m1.
                        unsafe {
                            weighted_row_add(
                                shared,
                                gi,
                                row,
                                weights,
                                gi / block - m0,
                                block,
                                alpha,
                            )
                        };
                    }
                }
            }
            Ok(())
        })?;
    mirror_lower(k);
    Ok(())
}

/// The position pairs (t, u) of a term with the columns both positions span, in G and in A;
/// a pair is left out when either is empty. Each position's span of non-zero columns covers
/// the cases where a pair needs less than all columns: a position whose cotangents are zero
/// (a causal model read at its last position), query columns that only the last position
/// uses, an embedding's indices that never meet across two positions (a position embedding).
fn shared_columns<T: Scalar>(
    g: MatRef<'_, T>,
    a: MatRef<'_, T>,
    positions: usize,
    r: usize,
    m: usize,
) -> Vec<(usize, usize, Span, Span)> {
    let g_spans: Vec<Option<Span>> = (0..positions)
        .map(|t| nonzero_columns(g.subrows(t * r, r)))
        .collect();
    let a_spans: Vec<Option<Span>> = (0..positions)
        .map(|t| nonzero_columns(a.subrows(t * m, m)))
        .collect();
    (0..positions)
        .flat_map(|t| (0..positions).map(move |u| (t, u)))
        .filter_map(|(t, u)| {
            let gc = Span::meet(g_spans[t], g_spans[u])?;
            let ac = Span::meet(a_spans[t], a_spans[u])?;
            Some((t, u, gc, ac))
        })
        .collect()
}

/// Rows of K per tile of the factored accumulation: its two scratch tiles stay in cache.
const FACTORED_TILE: usize = 64;

/// Refuses, before K is touched, an update `K += alpha · Σ_{t,u} S_tu ∘ (G_t G_uᵀ)` that could
/// overflow: |K| + |alpha| · max|S| · max|G|² · Q · T² must stay below the dtype's safe range;
/// returns that bound (the next term of a sum adds to it).
fn refuse_overflow<T: Scalar>(
    k_max: f64,
    alpha: T,
    s_max: f64,
    (g_max, q): (T, usize),
    positions: usize,
    inputs: &str,
) -> CoreResult<f64> {
    let terms = (positions * positions) as f64;
    let bound =
        k_max + alpha.abs_val().to_f64() * s_max * g_max.to_f64().powi(2) * q as f64 * terms;
    if policy::overflow_safe::<T>(bound.sqrt(), 1) {
        return Ok(bound);
    }
    Err(CoreError::Solver(format!(
        "hadamard_gram_accumulate: the update could overflow this dtype; K was left unchanged \
         (rescale G or {inputs}, or use float64)"
    )))
}

/// R, the rows of G per position, when `positions` divides G's rows.
fn rows_per_position<T>(g: MatRef<'_, T>, positions: usize) -> CoreResult<usize> {
    if positions == 0 || g.nrows() % positions != 0 {
        return Err(CoreError::OutOfRange {
            arg: "positions",
            expected: format!("a positive divisor of the {} rows of G", g.nrows()),
            got: positions.to_string(),
        });
    }
    Ok(g.nrows() / positions)
}

/// K has R rows (one per row of G at a position) and `block` divides R.
fn check_k_and_block<T>(
    k: MatRef<'_, T>,
    r: usize,
    positions: usize,
    block: usize,
) -> CoreResult<()> {
    let (k_rows, per) = if positions == 1 {
        ("one per row of G", "")
    } else {
        ("one per row of G divided by positions", " per position")
    };
    check::rows("K", k, r, k_rows)?;
    if block == 0 || r % block != 0 {
        return Err(CoreError::OutOfRange {
            arg: "block",
            expected: format!("a positive divisor of the {r} rows of G{per}"),
            got: block.to_string(),
        });
    }
    Ok(())
}

/// Whether every entry of `a` is zero (a position pair that never meets, e.g. two fixed
/// embedding indices).
fn is_zero<T: Scalar>(a: MatRef<'_, T>) -> bool {
    a.col_iter().all(|col| col.iter().all(|&x| x == T::ZERO))
}

/// Whether each position's R rows of G hold a non-zero entry. A position whose cotangents are
/// all zero (a causal model read at its last position: the layers after attention at every
/// earlier position) adds nothing to any pair, so its pairs are skipped.
fn live_positions<T: Scalar>(g: MatRef<'_, T>, positions: usize, r: usize) -> Vec<bool> {
    (0..positions)
        .map(|t| !is_zero(g.subrows(t * r, r)))
        .collect()
}

/// A half-open range of columns `start..end`, non-empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span(usize, usize);

impl Span {
    fn len(self) -> usize {
        self.1 - self.0
    }

    /// The columns both spans cover, if any.
    fn meet(a: Option<Self>, b: Option<Self>) -> Option<Self> {
        let (a, b) = (a?, b?);
        let (start, end) = (a.0.max(b.0), a.1.min(b.1));
        (start < end).then_some(Span(start, end))
    }
}

/// The span from the first to the last column holding a non-zero entry of `m`, None when
/// `m` is zero. Each row is scanned from both ends to its first non-zero, so a dense row
/// costs two reads.
fn nonzero_columns<T: Scalar>(m: MatRef<'_, T>) -> Option<Span> {
    let (mut start, mut end) = (m.ncols(), 0);
    for i in 0..m.nrows() {
        let row = m.row(i);
        if let Some(j) = (0..start).find(|&j| row[j] != T::ZERO) {
            start = j;
        }
        if let Some(j) = (end..m.ncols()).rev().find(|&j| row[j] != T::ZERO) {
            end = j + 1;
        }
        if start == 0 && end == m.ncols() {
            break;
        }
    }
    (start < end).then_some(Span(start, end))
}

/// The position pairs (t, u), t and u both live, in row-major order.
fn position_pairs(live: &[bool]) -> impl Iterator<Item = (usize, usize)> + '_ {
    let at = |t: usize| live[t].then_some(t);
    (0..live.len())
        .filter_map(at)
        .flat_map(move |t| (0..live.len()).filter_map(at).map(move |u| (t, u)))
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
    let weights = RawRef::new(s);
    (0..ga.nrows()).into_par_iter().for_each(|i| {
        // SAFETY: task i touches only row i of `out` (columns 0..cols); S is only read.
        unsafe { weighted_row_scale(shared, i, cols, weights, i / block, block) };
    });
    check::finite_result("hadamard_gram_cross", out.rb())
}

/// `K[row, j] += alpha · S[si, j / block] · products[j]` for j < products.len(), with no
/// per-entry division or bounds check: each run of `block` columns shares one weight, and a
/// contiguous row of K and S takes a plain slice loop the compiler vectorises.
///
/// # Safety
/// Row `row` of K must hold `products.len()` columns, row `si` of S `⌈len / block⌉`, and no
/// other task may touch that row of K concurrently.
unsafe fn weighted_row_add<T: Scalar>(
    k: SharedMut<T>,
    row: usize,
    products: &[T],
    s: RawRef<T>,
    si: usize,
    block: usize,
    alpha: T,
) {
    let len = products.len();
    if block == 1 && k.col_stride() == 1 && s.col_stride() == 1 {
        let out = std::slice::from_raw_parts_mut(k.at(row, 0), len);
        let w = std::slice::from_raw_parts(s.at(si, 0), len);
        for ((o, &p), &sw) in out.iter_mut().zip(products).zip(w) {
            *o += alpha * sw * p;
        }
        return;
    }
    let mut j = 0;
    let mut sj = 0;
    while j < len {
        let weight = alpha * *s.at(si, sj);
        let stop = (j + block).min(len);
        for (jj, &p) in (j..stop).zip(&products[j..stop]) {
            *k.at(row, jj) += weight * p;
        }
        j = stop;
        sj += 1;
    }
}

/// `out[row, j] *= S[si, j / block]` for j < cols (see [`weighted_row_add`]).
///
/// # Safety
/// Row `row` of `out` must hold `cols` columns, row `si` of S `⌈cols / block⌉`, and no other
/// task may touch that row of `out` concurrently.
unsafe fn weighted_row_scale<T: Scalar>(
    out: SharedMut<T>,
    row: usize,
    cols: usize,
    s: RawRef<T>,
    si: usize,
    block: usize,
) {
    if block == 1 && out.col_stride() == 1 && s.col_stride() == 1 {
        let o = std::slice::from_raw_parts_mut(out.at(row, 0), cols);
        let w = std::slice::from_raw_parts(s.at(si, 0), cols);
        for (o, &sw) in o.iter_mut().zip(w) {
            *o *= sw;
        }
        return;
    }
    let mut j = 0;
    let mut sj = 0;
    while j < cols {
        let weight = *s.at(si, sj);
        let stop = (j + block).min(cols);
        for jj in j..stop {
            *out.at(row, jj) *= weight;
        }
        j = stop;
        sj += 1;
    }
}
