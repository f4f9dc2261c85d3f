//! The one error type of the core: everything a caller can get wrong, or a solver can fail at.

use std::fmt;

/// An error from an entk-core routine. Every message names the argument at fault.
#[derive(Debug, Clone, PartialEq)]
pub enum CoreError {
    /// An argument has the wrong shape; `expected` says what was required.
    Shape {
        arg: &'static str,
        expected: String,
        got: String,
    },
    /// An argument has no elements where at least one was required.
    Empty { arg: &'static str },
    /// An argument holds a NaN or an infinity (first offending index given).
    NonFinite {
        arg: &'static str,
        row: usize,
        col: usize,
    },
    /// A matrix that must be symmetric is not, beyond the tolerance.
    NotSymmetric {
        arg: &'static str,
        max_asymmetry: f64,
        tolerance: f64,
    },
    /// A scalar argument is out of its allowed range.
    OutOfRange {
        arg: &'static str,
        expected: String,
        got: String,
    },
    /// A numerical routine failed (no convergence, non-finite result).
    Solver(String),
    /// Memory for a result or a workspace could not be allocated.
    OutOfMemory { what: String, bytes: usize },
    /// A caller's callback asked to stop (a pending Ctrl-C, or an error in a user operator);
    /// the caller knows why and reports it.
    Interrupted,
}

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoreError::Shape { arg, expected, got } => {
                write!(f, "{arg}: expected {expected}, got {got}")
            }
            CoreError::Empty { arg } => {
                write!(
                    f,
                    "{arg}: expected a non-empty array, got one with a zero-length axis"
                )
            }
            CoreError::NonFinite { arg, row, col } => write!(
                f,
                "{arg}: expected only finite values, found NaN or inf at index ({row}, {col})"
            ),
            CoreError::NotSymmetric {
                arg,
                max_asymmetry,
                tolerance,
            } => write!(
                f,
                "{arg}: expected a symmetric matrix, but max |K - K^T| = {max_asymmetry:.3e} \
                 exceeds the tolerance {tolerance:.3e} (symmetrise it with (K + K.T) / 2)"
            ),
            CoreError::OutOfRange { arg, expected, got } => {
                write!(f, "{arg}: expected {expected}, got {got}")
            }
            CoreError::Solver(msg) => write!(f, "{msg}"),
            CoreError::OutOfMemory { what, bytes } => write!(
                f,
                "{what}: could not allocate {:.1} MB (not enough memory; use float32 or a \
                 smaller problem)",
                *bytes as f64 / 1e6
            ),
            CoreError::Interrupted => write!(f, "interrupted"),
        }
    }
}

impl std::error::Error for CoreError {}

impl CoreError {
    /// Scratch memory of `bytes` for a solver could not be allocated.
    pub fn out_of_memory(what: &str, bytes: usize) -> Self {
        CoreError::OutOfMemory {
            what: format!("{what} (solver workspace)"),
            bytes,
        }
    }
}

/// Result alias used throughout the core.
pub type CoreResult<T> = Result<T, CoreError>;
