//! `entk_fast._core`: the Python binding of entk-core. Thin by design: numpy ⇄ faer views,
//! the GIL released around every computation, core errors mapped to Python exceptions.

mod convert;
mod errors;
mod linalg;

use pyo3::prelude::*;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(linalg::gram, m)?)?;
    m.add_function(wrap_pyfunction!(linalg::gram_accumulate, m)?)?;
    m.add_function(wrap_pyfunction!(linalg::gram_cross, m)?)?;
    m.add_function(wrap_pyfunction!(linalg::hadamard_gram_accumulate, m)?)?;
    m.add_function(wrap_pyfunction!(linalg::hadamard_gram_cross, m)?)?;
    m.add_function(wrap_pyfunction!(
        linalg::hadamard_gram_factored_accumulate,
        m
    )?)?;
    m.add_function(wrap_pyfunction!(
        linalg::hadamard_gram_factored_accumulate_many,
        m
    )?)?;
    m.add_function(wrap_pyfunction!(linalg::rank_one_residual, m)?)?;
    m.add_function(wrap_pyfunction!(linalg::column_pivots, m)?)?;
    m.add_function(wrap_pyfunction!(linalg::eigh, m)?)?;
    m.add_function(wrap_pyfunction!(linalg::eigh_topk, m)?)?;
    m.add_function(wrap_pyfunction!(linalg::eigh_topk_operator, m)?)?;
    m.add_function(wrap_pyfunction!(linalg::principal_angles, m)?)?;
    m.add_function(wrap_pyfunction!(linalg::subspace_overlap, m)?)?;
    m.add_function(wrap_pyfunction!(linalg::set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(linalg::get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(linalg::_after_fork_in_child, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
