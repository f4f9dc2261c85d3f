//! Fallible allocation: a matrix that does not fit in memory is a `CoreError::OutOfMemory`,
//! never a panic or an abort (faer's `Mat::zeros` panics, `Vec` aborts the process).

use crate::error::{CoreError, CoreResult};
use crate::scalar::Scalar;
use faer::Mat;

fn out_of_memory<T>(what: &str, rows: usize, cols: usize) -> CoreError {
    CoreError::OutOfMemory {
        what: what.to_string(),
        bytes: rows
            .saturating_mul(cols)
            .saturating_mul(std::mem::size_of::<T>()),
    }
}

/// A (rows, cols) matrix with entries `f(i, j)`, or an out-of-memory error naming `what`.
pub(crate) fn from_fn<T: Scalar>(
    what: &str,
    rows: usize,
    cols: usize,
    f: impl FnMut(usize, usize) -> T,
) -> CoreResult<Mat<T>> {
    let mut m = Mat::<T>::new();
    m.try_reserve(rows, cols)
        .map_err(|_| out_of_memory::<T>(what, rows, cols))?;
    // The capacity is reserved: resizing only initialises, it does not allocate.
    m.resize_with(rows, cols, f);
    Ok(m)
}

/// A (rows, cols) matrix of zeros, or an out-of-memory error naming `what`.
pub(crate) fn zeros<T: Scalar>(what: &str, rows: usize, cols: usize) -> CoreResult<Mat<T>> {
    from_fn(what, rows, cols, |_, _| T::ZERO)
}

/// An owned copy of a view, or an out-of-memory error naming `what`.
pub(crate) fn copy<T: Scalar>(what: &str, a: faer::MatRef<'_, T>) -> CoreResult<Mat<T>> {
    from_fn(what, a.nrows(), a.ncols(), |i, j| a[(i, j)])
}

/// A vector of `len` zeros, or an out-of-memory error naming `what`.
pub(crate) fn vec_zeros<T: Scalar>(what: &str, len: usize) -> CoreResult<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(len)
        .map_err(|_| out_of_memory::<T>(what, len, 1))?;
    v.resize(len, T::ZERO);
    Ok(v)
}
