//! numpy ⇄ faer: zero-copy views of numpy arrays, and numpy arrays to write results into.
//!
//! Arrays are taken as `&Bound<PyAny>` and borrowed here (not by a derived extractor), so that
//! a wrong dtype and an array already in use by another call each get a clear message naming
//! the argument. Every view borrows from the array's borrow guard: it cannot outlive it.

use crate::errors::{invalid_argument, type_error};
use entk_core::Scalar;
use faer::{Mat, MatMut, MatRef};
use numpy::{
    BorrowError, Element, PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray2, PyReadwriteArray2,
    PyUntypedArrayMethods,
};
use pyo3::prelude::*;

/// Either supported dtype: one variant per float type, for any array wrapper.
pub enum Float<A, B> {
    F64(A),
    F32(B),
}

/// A read-only 2-D float array of either supported dtype.
pub type Matrix<'py> = Float<PyReadonlyArray2<'py, f64>, PyReadonlyArray2<'py, f32>>;
/// A writable 2-D float array of either supported dtype.
pub type MatrixMut<'py> = Float<PyReadwriteArray2<'py, f64>, PyReadwriteArray2<'py, f32>>;

fn borrow_error(py: Python<'_>, arg: &str, err: BorrowError) -> PyErr {
    match err {
        BorrowError::NotWriteable => invalid_argument(
            py,
            format!("{arg}: expected a writable array (it is updated in place)"),
        ),
        _ => invalid_argument(
            py,
            format!(
                "{arg}: the array is in use by another entk_fast call that writes to it or \
                 reads it while this one writes (two threads sharing one array?); pass a copy, \
                 or wait for the other call to finish"
            ),
        ),
    }
}

fn not_a_float_matrix(py: Python<'_>, arg: &str, obj: &Bound<'_, PyAny>) -> PyErr {
    type_error(
        py,
        format!(
            "{arg}: expected a 2-D numpy array of dtype float32 or float64, got {}",
            describe(obj)
        ),
    )
}

fn describe(obj: &Bound<'_, PyAny>) -> String {
    let shape = obj.getattr("shape").ok().map(|s| s.to_string());
    let dtype = obj.getattr("dtype").ok().map(|d| d.to_string());
    match (shape, dtype) {
        (Some(s), Some(d)) => format!("an array of shape {s} and dtype {d}"),
        _ => obj
            .get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| "an object".into()),
    }
}

/// Borrows `obj` read-only as a 2-D float array.
pub fn matrix<'py>(arg: &str, obj: &Bound<'py, PyAny>) -> PyResult<Matrix<'py>> {
    let py = obj.py();
    if let Ok(a) = obj.cast::<PyArray2<f64>>() {
        return a
            .try_readonly()
            .map(Float::F64)
            .map_err(|e| borrow_error(py, arg, e));
    }
    if let Ok(a) = obj.cast::<PyArray2<f32>>() {
        return a
            .try_readonly()
            .map(Float::F32)
            .map_err(|e| borrow_error(py, arg, e));
    }
    Err(not_a_float_matrix(py, arg, obj))
}

/// Borrows `obj` for writing as a 2-D float array.
pub fn matrix_mut<'py>(arg: &str, obj: &Bound<'py, PyAny>) -> PyResult<MatrixMut<'py>> {
    let py = obj.py();
    if let Ok(a) = obj.cast::<PyArray2<f64>>() {
        return a
            .try_readwrite()
            .map(Float::F64)
            .map_err(|e| borrow_error(py, arg, e));
    }
    if let Ok(a) = obj.cast::<PyArray2<f32>>() {
        return a
            .try_readwrite()
            .map(Float::F32)
            .map_err(|e| borrow_error(py, arg, e));
    }
    Err(not_a_float_matrix(py, arg, obj))
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

/// A faer view of a numpy array, without copying; it lives as long as the borrow `array`.
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

/// A mutable faer view of a writable numpy array, without copying; it lives as long as the
/// exclusive borrow `array`.
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
pub fn zeros<'py, T: Element>(
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

/// A new numpy array for a result and the exclusive borrow to write it through (take the
/// view with [`view_mut`]).
pub fn new_output<'py, T: Element + Scalar>(
    py: Python<'py>,
    rows: usize,
    cols: usize,
    fortran: bool,
) -> PyResult<(Bound<'py, PyArray2<T>>, PyReadwriteArray2<'py, T>)> {
    let array = zeros::<T>(py, rows, cols, fortran)?;
    let borrow = array
        .try_readwrite()
        .map_err(|e| borrow_error(py, "output", e))?;
    Ok((array, borrow))
}

/// Copies an owned faer matrix into a new Fortran-ordered numpy array.
pub fn to_numpy<'py, T: Element + Scalar>(
    py: Python<'py>,
    m: MatRef<'_, T>,
) -> PyResult<Bound<'py, PyArray2<T>>> {
    let (array, mut borrow) = new_output::<T>(py, m.nrows(), m.ncols(), true)?;
    view_mut(py, "output", &mut borrow)?.copy_from(m);
    drop(borrow);
    Ok(array)
}

/// Copies a numpy array into an owned faer matrix.
pub fn to_mat<T: Element + Scalar>(
    py: Python<'_>,
    arg: &str,
    array: &PyReadonlyArray2<'_, T>,
) -> PyResult<Mat<T>> {
    Ok(view(py, arg, array)?.to_owned())
}

/// A 1-D numpy array from a vector.
pub fn vector<'py, T: Element>(py: Python<'py>, v: Vec<T>) -> Bound<'py, PyArray1<T>> {
    PyArray1::from_vec(py, v)
}
