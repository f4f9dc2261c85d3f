//! Validation of user-supplied matrices: shapes, emptiness, finiteness, symmetry. Crate-private:
//! every public routine calls these before it computes; the numeric thresholds are in `policy`.

use crate::error::{CoreError, CoreResult};
use crate::policy;
use crate::scalar::Scalar;
use crate::symmetric::SYM_TILE;
use faer::MatRef;
use rayon::prelude::*;

/// Fails unless `a` has at least one row and one column.
pub(crate) fn non_empty<T>(arg: &'static str, a: MatRef<'_, T>) -> CoreResult<()> {
    if a.nrows() == 0 || a.ncols() == 0 {
        return Err(CoreError::Empty { arg });
    }
    Ok(())
}

/// Fails unless `a` is square.
pub(crate) fn square<T>(arg: &'static str, a: MatRef<'_, T>) -> CoreResult<()> {
    if a.nrows() != a.ncols() {
        return Err(CoreError::Shape {
            arg,
            expected: "a square matrix (n, n)".into(),
            got: format!("shape ({}, {})", a.nrows(), a.ncols()),
        });
    }
    Ok(())
}

/// Fails unless `a` has exactly `rows` rows.
pub(crate) fn rows<T>(
    arg: &'static str,
    a: MatRef<'_, T>,
    rows: usize,
    why: &str,
) -> CoreResult<()> {
    if a.nrows() != rows {
        return Err(CoreError::Shape {
            arg,
            expected: format!("{rows} rows ({why})"),
            got: format!("shape ({}, {})", a.nrows(), a.ncols()),
        });
    }
    Ok(())
}

/// Fails unless `a` has exactly `cols` columns.
pub(crate) fn cols<T>(
    arg: &'static str,
    a: MatRef<'_, T>,
    cols: usize,
    why: &str,
) -> CoreResult<()> {
    if a.ncols() != cols {
        return Err(CoreError::Shape {
            arg,
            expected: format!("{cols} columns ({why})"),
            got: format!("shape ({}, {})", a.nrows(), a.ncols()),
        });
    }
    Ok(())
}

/// `a` viewed so that its columns are contiguous in memory when its rows are (numpy's C
/// order), with a flag saying it was transposed: scans then read memory in order.
fn column_major<T>(a: MatRef<'_, T>) -> (MatRef<'_, T>, bool) {
    if a.row_stride().unsigned_abs() != 1 && a.col_stride().unsigned_abs() == 1 {
        (a.transpose(), true)
    } else {
        (a, false)
    }
}

/// Largest |entry| of `a`, or the index of a NaN/inf in it; one pass in memory order.
fn scan<T: Scalar>(a: MatRef<'_, T>) -> Result<T, (usize, usize)> {
    let (v, transposed) = column_major(a);
    // Contiguous columns are scanned in blocks of columns, each read as one slice when the
    // block is contiguous too (a C-order matrix: every row); else column by column.
    // At least SCAN_ENTRIES entries a task: many short columns (the rows of a C-order
    // matrix) are grouped, a few long ones still run in parallel.
    let min_columns = (SCAN_ENTRIES / v.nrows().max(1)).max(1);
    let per_column = (0..v.ncols())
        .into_par_iter()
        .with_min_len(min_columns)
        .map(|j| {
            let col = v.col(j);
            if let Some(slice) = col.try_as_col_major().map(|c| c.as_slice()) {
                if let Some(top) = finite_max_abs_of(slice) {
                    return Ok(top);
                }
            }
            let mut top = T::ZERO;
            for i in 0..v.nrows() {
                let x = col[i];
                if !x.is_finite_val() {
                    return Err(if transposed { (j, i) } else { (i, j) });
                }
                let x = x.abs_val();
                if x > top {
                    top = x;
                }
            }
            Ok(top)
        });
    per_column.try_reduce(|| T::ZERO, |x, y| Ok(if x > y { x } else { y }))
}

/// Entries a scan task reads at least.
const SCAN_ENTRIES: usize = 4096;

/// The largest |x| of `values`, or None if one is NaN or infinite; in lanes of 8 that the
/// compiler vectorises (0 · x is 0 for a finite x and NaN otherwise).
fn finite_max_abs_of<T: Scalar>(values: &[T]) -> Option<T> {
    const LANES: usize = 8;
    let mut top = [T::ZERO; LANES];
    let mut odd = [T::ZERO; LANES];
    let chunks = values.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for k in 0..LANES {
            let x = chunk[k];
            odd[k] += x * T::ZERO;
            let m = x.abs_val();
            top[k] = if m > top[k] { m } else { top[k] };
        }
    }
    for &x in rest {
        odd[0] += x * T::ZERO;
        let m = x.abs_val();
        top[0] = if m > top[0] { m } else { top[0] };
    }
    if odd.iter().any(|&z| z != T::ZERO) {
        return None; // a NaN or inf: the caller finds where
    }
    Some(
        top.into_iter()
            .fold(T::ZERO, |a, b| if b > a { b } else { a }),
    )
}

/// Fails at a NaN or infinity in `a` (named by its index).
pub(crate) fn finite<T: Scalar>(arg: &'static str, a: MatRef<'_, T>) -> CoreResult<()> {
    finite_max_abs(arg, a).map(|_| ())
}

/// Largest |entry| of `a`, failing at a NaN or infinity.
pub(crate) fn finite_max_abs<T: Scalar>(arg: &'static str, a: MatRef<'_, T>) -> CoreResult<T> {
    scan(a).map_err(|(row, col)| CoreError::NonFinite { arg, row, col })
}

/// Largest absolute entry of `a` (NaNs ignored).
pub(crate) fn max_abs<T: Scalar>(a: MatRef<'_, T>) -> T {
    let (v, _) = column_major(a);
    (0..v.ncols())
        .into_par_iter()
        .map(|j| {
            let col = v.col(j);
            (0..v.nrows()).fold(T::ZERO, |m, i| {
                let x = col[i].abs_val();
                if x > m {
                    x
                } else {
                    m
                }
            })
        })
        .reduce(|| T::ZERO, |x, y| if x > y { x } else { y })
}

/// Largest |a[i, j] − a[j, i]| of the square `a`, read tile by tile.
fn max_asymmetry<T: Scalar>(a: MatRef<'_, T>) -> f64 {
    let n = a.nrows();
    let tiles = n.div_ceil(SYM_TILE);
    (0..tiles)
        .into_par_iter()
        .map(|tj| {
            let j0 = tj * SYM_TILE;
            let j1 = (j0 + SYM_TILE).min(n);
            let mut worst = 0.0f64;
            for i0 in (j0..n).step_by(SYM_TILE) {
                let i1 = (i0 + SYM_TILE).min(n);
                for j in j0..j1 {
                    for i in i0.max(j + 1)..i1 {
                        worst = worst.max((a[(i, j)] - a[(j, i)]).abs_val().to_f64());
                    }
                }
            }
            worst
        })
        .reduce(|| 0.0, f64::max)
}

/// Fails unless the square `a` is symmetric within `sqrt(eps) · scale` (scale = max |a|).
fn symmetric_with_scale<T: Scalar>(
    arg: &'static str,
    a: MatRef<'_, T>,
    scale: T,
) -> CoreResult<()> {
    let worst = max_asymmetry(a);
    let tolerance = policy::symmetry_tolerance(scale);
    if worst > tolerance {
        return Err(CoreError::NotSymmetric {
            arg,
            max_asymmetry: worst,
            tolerance,
        });
    }
    Ok(())
}

/// The checks every square symmetric input gets: non-empty, square, finite, symmetric.
/// Returns max |a|.
pub(crate) fn symmetric_input<T: Scalar>(arg: &'static str, a: MatRef<'_, T>) -> CoreResult<T> {
    non_empty(arg, a)?;
    square(arg, a)?;
    let scale = finite_max_abs(arg, a)?;
    symmetric_with_scale(arg, a, scale)?;
    Ok(scale)
}

/// Fails unless the scalar argument `arg` is finite.
pub(crate) fn finite_scalar<T: Scalar>(arg: &'static str, value: T) -> CoreResult<()> {
    if !value.is_finite_val() {
        return Err(CoreError::OutOfRange {
            arg,
            expected: "a finite number".into(),
            got: format!("{}", value.to_f64()),
        });
    }
    Ok(())
}

/// Fails if a freshly computed result holds inf/NaN although its inputs were finite.
pub(crate) fn finite_result<T: Scalar>(what: &str, a: MatRef<'_, T>) -> CoreResult<()> {
    if finite("result", a).is_err() {
        return Err(CoreError::Solver(format!(
            "{what}: the result overflowed to inf/NaN (inputs too large for this dtype; \
             rescale them or use float64)"
        )));
    }
    Ok(())
}
