//! The one place a core error becomes a Python exception (classes from `entk_fast.errors`).

use entk_core::CoreError;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

fn raise(py: Python<'_>, class: &str, message: String) -> PyErr {
    let made = py
        .import("entk_fast.errors")
        .and_then(|m| m.getattr(class))
        .and_then(|cls| cls.call1((message.clone(),)));
    match made {
        Ok(exc) => PyErr::from_value(exc),
        // Without the Python package (a bare extension import) fall back to builtins.
        Err(_) if class == "InvalidTypeError" => PyTypeError::new_err(message),
        Err(_) => PyValueError::new_err(message),
    }
}

/// Maps a core error to `InvalidArgumentError` (a ValueError) or `LinAlgError`.
pub fn to_py(py: Python<'_>, err: CoreError) -> PyErr {
    match err {
        CoreError::Solver(_) => raise(py, "LinAlgError", err.to_string()),
        _ => raise(py, "InvalidArgumentError", err.to_string()),
    }
}

/// A `TypeError` (`InvalidTypeError`) naming the argument and what was expected.
pub fn type_error(py: Python<'_>, message: String) -> PyErr {
    raise(py, "InvalidTypeError", message)
}
