//! The one place a core error becomes a Python exception. The classes are defined once, in
//! `entk_fast.errors` (they also derive from ValueError, TypeError, ...), and looked up once
//! per process: raising costs no import.

use entk_core::CoreError;
use pyo3::exceptions::{PyMemoryError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

static INVALID_ARGUMENT: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static INVALID_TYPE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static LINALG: PyOnceLock<Py<PyType>> = PyOnceLock::new();

fn raise(py: Python<'_>, class: &PyOnceLock<Py<PyType>>, name: &str, message: String) -> PyErr {
    match class.import(py, "entk_fast.errors", name) {
        Ok(cls) => PyErr::from_type(cls.clone(), (message,)),
        // Without the Python package (a bare extension import) fall back to builtins.
        Err(_) if name == "InvalidTypeError" => PyTypeError::new_err(message),
        Err(_) => PyValueError::new_err(message),
    }
}

/// Maps a core error to `InvalidArgumentError` (a ValueError), `LinAlgError` or MemoryError.
pub fn to_py(py: Python<'_>, err: CoreError) -> PyErr {
    match err {
        CoreError::Solver(_) | CoreError::Interrupted => linalg_error(py, err.to_string()),
        CoreError::OutOfMemory { .. } => PyMemoryError::new_err(err.to_string()),
        _ => invalid_argument(py, err.to_string()),
    }
}

/// An `InvalidArgumentError` (a ValueError) naming the argument and what was expected.
pub fn invalid_argument(py: Python<'_>, message: String) -> PyErr {
    raise(py, &INVALID_ARGUMENT, "InvalidArgumentError", message)
}

/// A `TypeError` (`InvalidTypeError`) naming the argument and what was expected.
pub fn type_error(py: Python<'_>, message: String) -> PyErr {
    raise(py, &INVALID_TYPE, "InvalidTypeError", message)
}

/// A `LinAlgError`: a routine failed, or its own machinery did (never a panic).
pub fn linalg_error(py: Python<'_>, message: String) -> PyErr {
    raise(py, &LINALG, "LinAlgError", message)
}
