//! Validation of user-supplied matrices: shapes, emptiness, finiteness, symmetry.

use crate::error::{CoreError, CoreResult};
use crate::scalar::Scalar;
use faer::MatRef;
use rayon::prelude::*;

/// Fails unless `a` has at least one row and one column.
pub fn non_empty<T>(arg: &'static str, a: MatRef<'_, T>) -> CoreResult<()> {
    if a.nrows() == 0 || a.ncols() == 0 {
        return Err(CoreError::Empty { arg });
    }
    Ok(())
}

/// Fails unless `a` is square.
pub fn square<T>(arg: &'static str, a: MatRef<'_, T>) -> CoreResult<()> {
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
pub fn rows<T>(arg: &'static str, a: MatRef<'_, T>, rows: usize, why: &str) -> CoreResult<()> {
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
pub fn cols<T>(arg: &'static str, a: MatRef<'_, T>, cols: usize, why: &str) -> CoreResult<()> {
    if a.ncols() != cols {
        return Err(CoreError::Shape {
            arg,
            expected: format!("{cols} columns ({why})"),
            got: format!("shape ({}, {})", a.nrows(), a.ncols()),
        });
    }
    Ok(())
}

/// Fails at the first NaN or infinity in `a` (scanned in parallel over columns).
pub fn finite<T: Scalar>(arg: &'static str, a: MatRef<'_, T>) -> CoreResult<()> {
    let bad = (0..a.ncols()).into_par_iter().find_first(|&j| {
        let col = a.col(j);
        (0..a.nrows()).any(|i| !col[i].is_finite_val())
    });
    if let Some(col) = bad {
        let row = (0..a.nrows())
            .find(|&i| !a[(i, col)].is_finite_val())
            .unwrap_or(0);
        return Err(CoreError::NonFinite { arg, row, col });
    }
    Ok(())
}

/// Largest absolute entry of `a`.
pub fn max_abs<T: Scalar>(a: MatRef<'_, T>) -> T {
    (0..a.ncols())
        .into_par_iter()
        .map(|j| {
            let col = a.col(j);
            (0..a.nrows()).fold(T::ZERO, |m, i| {
                let v = col[i].abs_val();
                if v > m {
                    v
                } else {
                    m
                }
            })
        })
        .reduce(|| T::ZERO, |x, y| if x > y { x } else { y })
}

/// Relative asymmetry allowed in a "symmetric" input: sqrt(machine epsilon) of the largest entry.
pub fn symmetry_tolerance<T: Scalar>(scale: T) -> f64 {
    T::EPSILON.to_f64().sqrt() * scale.to_f64()
}

/// Fails unless the square `a` is symmetric within `sqrt(eps) * max|a|`.
pub fn symmetric<T: Scalar>(arg: &'static str, a: MatRef<'_, T>) -> CoreResult<()> {
    let n = a.nrows();
    let worst = (0..n)
        .into_par_iter()
        .map(|j| {
            (j + 1..n).fold(0.0f64, |m, i| {
                let d = (a[(i, j)] - a[(j, i)]).abs_val().to_f64();
                m.max(d)
            })
        })
        .reduce(|| 0.0, f64::max);
    let tolerance = symmetry_tolerance(max_abs(a));
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
pub fn symmetric_input<T: Scalar>(arg: &'static str, a: MatRef<'_, T>) -> CoreResult<()> {
    non_empty(arg, a)?;
    square(arg, a)?;
    finite(arg, a)?;
    symmetric(arg, a)
}
