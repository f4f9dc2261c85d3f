//! entk-core: the linear algebra of entk-fast, in pure Rust on faer and rayon.
//!
//! - [`gram`]: K = J Jᵀ (one triangle, mirrored), in-place accumulation over streamed
//!   Jacobian chunks, and cross tiles A Bᵀ.
//! - [`hadamard`]: the structured eNTK block of a once-used linear layer.
//! - [`eigen`] and [`topk`]: symmetric eigendecomposition, full and top-k (dense or through a
//!   [`SymmetricOperator`], matrix-free), descending. Large full solves reduce the matrix to
//!   tridiagonal form by blocked Householder reflections (`tridiag`, over a one-pass
//!   lower-triangle matrix–vector kernel, `symv`).
//! - [`angles`]: principal angles and subspace overlap.
//! - [`rank_one`]: per-column rank-one checks of a traced kernel's cotangents.
//! - [`policy`]: the numeric policy (tolerances, rescaling and overflow thresholds).
//!
//! Every routine validates its input and returns a [`CoreError`] instead of panicking.
//! Parallel routines take a faer [`Par`](faer::Par); [`threads::install`] runs a closure in the
//! crate's resizable thread pool with the matching `Par`.

mod alloc;
pub mod angles;
pub(crate) mod check;
pub mod eigen;
pub mod error;
pub mod gram;
pub mod hadamard;
pub mod policy;
pub mod rank_one;
mod rng;
pub mod scalar;
mod symmetric;
mod symv;
pub mod threads;
pub mod topk;
mod tridiag;

pub use angles::{orthonormal_basis, principal_angles, subspace_overlap};
pub use eigen::{eigh, eigh_into, EigenPairs};
pub use error::{CoreError, CoreResult};
pub use gram::{gram, gram_accumulate, gram_cross, gram_cross_into, gram_into};
pub use hadamard::{hadamard_gram_accumulate, hadamard_gram_cross_into};
pub use rank_one::{column_pivots, rank_one_residual};
pub use scalar::Scalar;
pub use topk::{
    eigh_topk, eigh_topk_operator, eigh_topk_with, DenseOperator, SymmetricOperator, TopkInfo,
    TopkMethod, TopkParams,
};
