//! numpy ⇄ faer: zero-copy views of numpy arrays, and numpy arrays to write results into.

use crate::errors::type_error;
use entk_core::Scalar;
use faer::{Mat, MatMut, MatRef};
use numpy::{
    Element, PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray2, PyReadwriteArray2,
    PyUntypedArrayMethods,
};
use pyo3::prelude::*;

/// A read-only 2-D float array of either supported dtype.
#[derive(FromPyObject)]
pub enum Matrix<'py> {
    F64(PyReadonlyArray2<'py, f64>),
    F32(PyReadonlyArray2<'py, f32>),
}

/// A writable 2-D float array of either supported dtype.
#[derive(FromPyObject)]
pub enum MatrixMut<'py> {
    F64(PyReadwriteArray2<'py, f64>),
    F32(PyReadwriteArray2<'py, f32>),
}

fn element_strides<T>(
    py: Python<'_>,
    arg: &str,
    data: *const T,
    strides: &[isize],
) -> PyResult<(isize, isize)> {
    let size = std::mem::size_of::<T>() as isize;
    if (data as usize) % std::mem::align_of::<T>() != 0 || strides.iter().any(|s| s % size != 0) {
        return Err(type_error(
            py,
            format!("{arg}: expected an aligned array (strides a multiple of the item size)"),
        ));
    }
    Ok((strides[0] / size, strides[1] / size))
}

/// A faer view of a numpy array, without copying.
///
/// The view borrows the array's buffer for as long as the caller keeps `array` alive.
pub fn view<'a, T: Element>(
    py: Python<'_>,
    arg: &str,
    array: &'a PyReadonlyArray2<'_, T>,
) -> PyResult<MatRef<'a, T>> {
    let shape = array.shape();
    let (rs, cs) = element_strides::<T>(py, arg, array.data(), array.strides())?;
    // SAFETY: pointer, shape and element strides describe the live numpy buffer, which the
    // read-only borrow keeps alive and unmodified for 'a.
    Ok(unsafe { MatRef::from_raw_parts(array.data(), shape[0], shape[1], rs, cs) })
}

/// A mutable faer view of a writable numpy array, without copying.
pub fn view_mut<'a, T: Element>(
    py: Python<'_>,
    arg: &str,
    array: &'a mut PyReadwriteArray2<'_, T>,
) -> PyResult<MatMut<'a, T>> {
    let shape = array.shape().to_vec();
    let (rs, cs) = element_strides::<T>(py, arg, array.data(), array.strides())?;
    if self_overlapping(&shape, rs, cs) {
        return Err(type_error(
            py,
            format!("{arg}: expected an array whose elements do not overlap in memory (it is written in place)"),
        ));
    }
    // SAFETY: the read-write borrow guarantees exclusive access to the live buffer for 'a.
    Ok(unsafe { MatMut::from_raw_parts_mut(array.data(), shape[0], shape[1], rs, cs) })
}

/// Whether two distinct (i, j) of a (rows, cols) view with these element strides can share
/// one address (zero strides, or strides too small for the other axis' extent).
fn self_overlapping(shape: &[usize], rs: isize, cs: isize) -> bool {
    let mut axes = [(rs.unsigned_abs(), shape[0]), (cs.unsigned_abs(), shape[1])];
    axes.sort();
    let [(small, small_len), (large, large_len)] = axes;
    (small_len > 1 && small == 0) || (large_len > 1 && large < small.saturating_mul(small_len))
}

/// A new numpy array of zeros, made through numpy itself so that a failed allocation is a
/// Python `MemoryError`, not a panic. `fortran` picks column-major order.
fn zeros<'py, T: Element>(
    py: Python<'py>,
    rows: usize,
    cols: usize,
    fortran: bool,
) -> PyResult<Bound<'py, PyArray2<T>>> {
    let array = py.import("numpy")?.getattr("zeros")?.call1((
        (rows, cols),
        T::get_dtype(py),
        if fortran { "F" } else { "C" },
    ))?;
    Ok(array.cast_into::<PyArray2<T>>()?)
}

/// A new C-ordered numpy array (rows, cols) of zeros and a mutable view of it.
pub fn new_output<'py, T: Element + Scalar>(
    py: Python<'py>,
    rows: usize,
    cols: usize,
) -> PyResult<(Bound<'py, PyArray2<T>>, MatMut<'static, T>)> {
    let array = zeros::<T>(py, rows, cols, false)?;
    let data = array.data();
    // SAFETY: the array was just created (C order, contiguous) and nothing else refers to it;
    // the caller writes through the view only while holding `array`.
    let view = unsafe { MatMut::from_raw_parts_mut(data, rows, cols, cols as isize, 1) };
    Ok((array, view))
}

/// A new Fortran-ordered numpy array (rows, cols) of zeros and a mutable view of it.
pub fn new_output_fortran<'py, T: Element + Scalar>(
    py: Python<'py>,
    rows: usize,
    cols: usize,
) -> PyResult<(Bound<'py, PyArray2<T>>, MatMut<'static, T>)> {
    let array = zeros::<T>(py, rows, cols, true)?;
    // SAFETY: as in `new_output`, for a freshly made column-major array.
    let view =
        unsafe { MatMut::from_raw_parts_mut(array.data(), rows, cols, 1, rows.max(1) as isize) };
    Ok((array, view))
}

/// Copies an owned faer matrix into a new Fortran-ordered numpy array.
pub fn to_numpy<'py, T: Element + Scalar>(
    py: Python<'py>,
    m: &Mat<T>,
) -> PyResult<Bound<'py, PyArray2<T>>> {
    let (rows, cols) = (m.nrows(), m.ncols());
    let array = zeros::<T>(py, rows, cols, true)?;
    // SAFETY: freshly created Fortran-ordered array, exclusively ours.
    let mut dst =
        unsafe { MatMut::from_raw_parts_mut(array.data(), rows, cols, 1, rows.max(1) as isize) };
    dst.copy_from(m);
    Ok(array)
}

/// A 1-D numpy array from a vector.
pub fn vector<'py, T: Element>(py: Python<'py>, v: Vec<T>) -> Bound<'py, PyArray1<T>> {
    PyArray1::from_vec(py, v)
}
