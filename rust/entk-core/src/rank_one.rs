//! Per-column rank-one checks of a traced kernel's cotangents: one pass over the block, the
//! sums in f64. Column k of G holds one output unit's cotangents g[(n, r, t), k] over samples
//! n, output rows r and positions t; the unit is rank one when g[(n, r, t), k] = s[(n, t), k] ·
//! w[r, k] (only elementwise operations between the layer and a linear read-out).

use crate::check;
use crate::error::{CoreError, CoreResult};
use crate::scalar::Scalar;
use faer::{MatRef, Par};
use rayon::prelude::*;

/// Sample rows per parallel task: each task's partial sums are one vector per column.
const SAMPLES_PER_TASK: usize = 16;

/// Per column k of `g` ((n·rows·T), K; row (n·rows + r)·T + t): `(lost, energy)` with
/// lost_k = Σ (g − s ⊗ w)² and energy_k = Σ g², summed in f64 over all rows of `g`, where
/// s is (n·T, K) (row n·T + t) and w is (rows, K).
///
/// Errors: shapes that do not match, and a non-finite sum (G, S or W holds NaN or inf).
pub fn rank_one_residual<T: Scalar>(
    g: MatRef<'_, T>,
    s: MatRef<'_, T>,
    w: MatRef<'_, T>,
    positions: usize,
    par: Par,
) -> CoreResult<(Vec<f64>, Vec<f64>)> {
    check::non_empty("G", g)?;
    let units = g.ncols();
    let rows = w.nrows();
    check::non_empty("W", w)?;
    if positions == 0 {
        return Err(CoreError::OutOfRange {
            arg: "positions",
            expected: "at least 1".into(),
            got: "0".into(),
        });
    }
    if s.nrows() % positions != 0 {
        return Err(CoreError::Shape {
            arg: "S",
            expected: format!("samples × positions ({positions}) rows"),
            got: format!("{} rows", s.nrows()),
        });
    }
    let n = s.nrows() / positions;
    check::cols("S", s, units, "the columns of G")?;
    check::cols("W", w, units, "the columns of G")?;
    check::rows(
        "G",
        g,
        n * rows * positions,
        "samples × rows of W × positions",
    )?;
    // Rows as slices when the columns are contiguous (C-ordered numpy); else a copy that is.
    let (g, s, w) = (contiguous(g), contiguous(s), contiguous(w));
    let partial = |sample: usize, lost: &mut [f64], energy: &mut [f64]| {
        for r in 0..rows {
            let w_r = &w[r * units..(r + 1) * units];
            for t in 0..positions {
                let row = (sample * rows + r) * positions + t;
                let score = sample * positions + t;
                let g_row = &g[row * units..(row + 1) * units];
                let s_row = &s[score * units..(score + 1) * units];
                // zipped slices: no bounds checks, so the loop vectorises
                let sums = lost.iter_mut().zip(energy.iter_mut());
                let terms = g_row.iter().zip(s_row).zip(w_r);
                for ((l, e), ((&value, &score), &weight)) in sums.zip(terms) {
                    let d = (value - score * weight).to_f64();
                    let v = value.to_f64();
                    *l += d * d;
                    *e += v * v;
                }
            }
        }
    };
    let zeros = || (vec![0.0f64; units], vec![0.0f64; units]);
    let (lost, energy) = if matches!(par, Par::Seq) || n < 2 * SAMPLES_PER_TASK {
        let (mut lost, mut energy) = zeros();
        for sample in 0..n {
            partial(sample, &mut lost, &mut energy);
        }
        (lost, energy)
    } else {
        (0..n.div_ceil(SAMPLES_PER_TASK))
            .into_par_iter()
            .fold(zeros, |(mut lost, mut energy), task| {
                let end = ((task + 1) * SAMPLES_PER_TASK).min(n);
                for sample in task * SAMPLES_PER_TASK..end {
                    partial(sample, &mut lost, &mut energy);
                }
                (lost, energy)
            })
            .reduce(zeros, |(mut a, mut b), (c, d)| {
                a.iter_mut().zip(&c).for_each(|(x, y)| *x += y);
                b.iter_mut().zip(&d).for_each(|(x, y)| *x += y);
                (a, b)
            })
    };
    if !lost.iter().chain(&energy).all(|v| v.is_finite()) {
        return Err(CoreError::Solver(
            "rank_one_residual: G, S or W holds NaN or inf, or the squares overflow".into(),
        ));
    }
    Ok((lost, energy))
}

/// The matrix's entries row after row: borrowed when each row is contiguous and the rows
/// follow each other, else copied.
fn contiguous<'a, T: Scalar>(m: MatRef<'a, T>) -> std::borrow::Cow<'a, [T]> {
    let (rows, cols) = (m.nrows(), m.ncols());
    if m.col_stride() == 1 && (rows <= 1 || m.row_stride() == cols as isize) {
        // SAFETY: rows · cols entries from the first, contiguous by the strides checked above.
        return std::borrow::Cow::Borrowed(unsafe {
            std::slice::from_raw_parts(m.as_ptr(), rows * cols)
        });
    }
    std::borrow::Cow::Owned(
        (0..rows)
            .flat_map(|i| (0..cols).map(move |k| m[(i, k)]))
            .collect(),
    )
}

/// Per column k of `g` (M, K): the row of its largest |value| (the first of equal ones) and
/// that value. Errors: an empty or non-finite `g`.
pub fn column_pivots<T: Scalar>(g: MatRef<'_, T>) -> CoreResult<(Vec<usize>, Vec<T>)> {
    check::non_empty("G", g)?;
    let units = g.ncols();
    let flat = contiguous(g);
    // Per block of rows, each column's largest |value| and its first row; blocks in parallel,
    // merged in row order (so ties keep the first row).
    let block = PIVOT_ROWS.max(1);
    let scan = |b: usize| -> CoreResult<(Vec<usize>, Vec<T>)> {
        let mut best = vec![b * block; units];
        let mut size = vec![T::ZERO; units];
        for i in b * block..((b + 1) * block).min(g.nrows()) {
            let row = &flat[i * units..(i + 1) * units];
            for (k, ((&value, s), r)) in row.iter().zip(&mut size).zip(&mut best).enumerate() {
                if !value.is_finite_val() {
                    return Err(CoreError::NonFinite {
                        arg: "G",
                        row: i,
                        col: k,
                    });
                }
                let a = value.abs_val();
                if a > *s {
                    *s = a;
                    *r = i;
                }
            }
        }
        Ok((best, size))
    };
    let parts: Vec<(Vec<usize>, Vec<T>)> = (0..g.nrows().div_ceil(block))
        .into_par_iter()
        .map(scan)
        .collect::<CoreResult<_>>()?;
    let (mut best, mut size) = (vec![0usize; units], vec![T::ZERO; units]);
    for (rows, sizes) in parts {
        for k in 0..units {
            if sizes[k] > size[k] {
                size[k] = sizes[k];
                best[k] = rows[k];
            }
        }
    }
    let values = (0..units).map(|k| flat[best[k] * units + k]).collect();
    Ok((best, values))
}

/// Rows per parallel task of [`column_pivots`].
const PIVOT_ROWS: usize = 512;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::threads;
    use faer::Mat;

    fn brute(g: &Mat<f64>, s: &Mat<f64>, w: &Mat<f64>, positions: usize) -> (Vec<f64>, Vec<f64>) {
        let (rows, units) = (w.nrows(), g.ncols());
        let n = s.nrows() / positions;
        let mut lost = vec![0.0; units];
        let mut energy = vec![0.0; units];
        for sample in 0..n {
            for r in 0..rows {
                for t in 0..positions {
                    for k in 0..units {
                        let v = g[((sample * rows + r) * positions + t, k)];
                        let d = v - s[(sample * positions + t, k)] * w[(r, k)];
                        lost[k] += d * d;
                        energy[k] += v * v;
                    }
                }
            }
        }
        (lost, energy)
    }

    fn case(
        n: usize,
        rows: usize,
        positions: usize,
        units: usize,
    ) -> (Mat<f64>, Mat<f64>, Mat<f64>) {
        let s = Mat::from_fn(n * positions, units, |i, k| {
            ((i * 7 + k * 3) % 11) as f64 - 5.0
        });
        let w = Mat::from_fn(rows, units, |r, k| ((r * 5 + k) % 7) as f64 * 0.5 - 1.0);
        let g = Mat::from_fn(n * rows * positions, units, |i, k| {
            let (sample, rest) = (i / (rows * positions), i % (rows * positions));
            let (r, t) = (rest / positions, rest % positions);
            s[(sample * positions + t, k)] * w[(r, k)]
                + if k == 1 { 0.25 * (i % 3) as f64 } else { 0.0 }
        });
        (g, s, w)
    }

    #[test]
    fn residual_matches_brute_force_serial_and_parallel() {
        for &(n, rows, positions) in &[(3, 2, 1), (40, 3, 2), (70, 1, 3)] {
            let (g, s, w) = case(n, rows, positions, 4);
            let expected = brute(&g, &s, &w, positions);
            for par in [Par::Seq, Par::rayon(2)] {
                let (lost, energy) =
                    rank_one_residual(g.as_ref(), s.as_ref(), w.as_ref(), positions, par).unwrap();
                for k in 0..4 {
                    assert!((lost[k] - expected.0[k]).abs() <= 1e-9 * expected.1[k].max(1.0));
                    assert!((energy[k] - expected.1[k]).abs() <= 1e-9 * expected.1[k]);
                }
                // columns 0, 2, 3 are exactly rank one; column 1 is not
                assert_eq!(lost[0], 0.0);
                assert!(lost[1] > 0.0);
            }
        }
    }

    #[test]
    fn residual_refuses_mismatched_shapes_and_nan() {
        let (g, s, w) = case(4, 2, 1, 3);
        assert!(rank_one_residual(g.as_ref(), s.as_ref(), w.as_ref(), 3, Par::Seq).is_err());
        assert!(rank_one_residual(g.as_ref(), s.as_ref(), w.as_ref(), 0, Par::Seq).is_err());
        assert!(rank_one_residual(g.as_ref(), s.subcols(0, 2), w.as_ref(), 1, Par::Seq).is_err());
        assert!(rank_one_residual(g.as_ref(), s.as_ref(), w.subrows(0, 1), 1, Par::Seq).is_err());
        let mut bad = g.clone();
        bad[(2, 1)] = f64::NAN;
        assert!(rank_one_residual(bad.as_ref(), s.as_ref(), w.as_ref(), 1, Par::Seq).is_err());
    }

    #[test]
    fn pivots_are_the_largest_magnitudes() {
        let g = Mat::from_fn(5, 3, |i, k| {
            [
                [1.0, -4.0, 0.0],
                [3.0, 2.0, 0.0],
                [-3.5, 4.0, 0.0],
                [0.5, 1.0, 0.0],
                [2.0, -1.0, 0.0],
            ][i][k]
        });
        let (rows, values) = column_pivots(g.as_ref()).unwrap();
        assert_eq!(rows, vec![2, 0, 0]);
        assert_eq!(values, vec![-3.5, -4.0, 0.0]);
        let mut bad = g.clone();
        bad[(1, 1)] = f64::INFINITY;
        assert!(column_pivots(bad.as_ref()).is_err());
    }

    #[test]
    fn pivots_across_parallel_blocks_keep_the_first_of_equal_magnitudes() {
        let m = 3 * PIVOT_ROWS + 7;
        let g = Mat::from_fn(m, 3, |i, k| match k {
            0 => ((i * 37) % 101) as f64 - 50.0, // ±50 first at row 0 (−50), later +50 too
            1 => {
                if i == m - 1 {
                    -9.0
                } else {
                    1.0
                }
            }
            _ => {
                if i == PIVOT_ROWS + 3 || i == 2 * PIVOT_ROWS + 1 {
                    2.0
                } else {
                    0.0
                }
            }
        });
        let (rows, values) = threads::install(|_| column_pivots(g.as_ref())).unwrap();
        let expected0 = (0..m).find(|&i| g[(i, 0)].abs() == 50.0).unwrap();
        assert_eq!(rows, vec![expected0, m - 1, PIVOT_ROWS + 3]);
        assert_eq!(values, vec![g[(expected0, 0)], -9.0, 2.0]);
    }
}
