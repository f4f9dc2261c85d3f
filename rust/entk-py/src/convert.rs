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

fn element_strides<T>(py: Python<'_>, arg: &str, strides: &[isize]) -> PyResult<(isize, isize)> {
    let size = std::mem::size_of::<T>() as isize;
    if strides.iter().any(|s| s % size != 0) {
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
    let (rs, cs) = element_strides::<T>(py, arg, array.strides())?;
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
    let (rs, cs) = element_strides::<T>(py, arg, array.strides())?;
    // SAFETY: the read-write borrow guarantees exclusive access to the live buffer for 'a.
    Ok(unsafe { MatMut::from_raw_parts_mut(array.data(), shape[0], shape[1], rs, cs) })
}

/// A new C-ordered numpy array (rows, cols) of zeros and a mutable view of it.
pub fn new_output<'py, T: Element + Scalar>(
    py: Python<'py>,
    rows: usize,
    cols: usize,
) -> (Bound<'py, PyArray2<T>>, MatMut<'static, T>) {
    let array = PyArray2::<T>::zeros(py, [rows, cols], false);
    let data = array.data();
    // SAFETY: the array was just created (C order, contiguous) and nothing else refers to it;
    // the caller writes through the view only while holding `array`.
    let view = unsafe { MatMut::from_raw_parts_mut(data, rows, cols, cols as isize, 1) };
    (array, view)
}

/// Copies an owned faer matrix into a new Fortran-ordered numpy array.
pub fn to_numpy<'py, T: Element + Scalar>(py: Python<'py>, m: &Mat<T>) -> Bound<'py, PyArray2<T>> {
    let (rows, cols) = (m.nrows(), m.ncols());
    let array = PyArray2::<T>::zeros(py, [rows, cols], true);
    // SAFETY: freshly created Fortran-ordered array, exclusively ours.
    let mut dst = unsafe { MatMut::from_raw_parts_mut(array.data(), rows, cols, 1, rows as isize) };
    dst.copy_from(m);
    array
}

/// A 1-D numpy array from a vector.
pub fn vector<'py, T: Element>(py: Python<'py>, v: Vec<T>) -> Bound<'py, PyArray1<T>> {
    PyArray1::from_vec(py, v)
}
