//! Python functions over the core's linear algebra: unpack numpy, release the GIL, map errors.

use crate::convert::{
    new_output, new_output_fortran, to_numpy, vector, view, view_mut, Matrix, MatrixMut,
};
use crate::errors::{to_py, type_error};
use entk_core::{threads, CoreResult, Scalar, TopkMethod, TopkParams};
use faer::Par;
use numpy::{Element, PyReadonlyArray2, PyReadwriteArray2};
use pyo3::prelude::*;

/// The choke point: run `work` without the GIL, inside the core's thread pool, and map errors.
fn detach<T: Send>(py: Python<'_>, work: impl FnOnce(Par) -> CoreResult<T> + Send) -> PyResult<T> {
    py.detach(|| threads::install(work))
        .map_err(|e| to_py(py, e))
}

fn dtype_mismatch(py: Python<'_>, what: &str) -> PyErr {
    type_error(
        py,
        format!("{what}: expected arrays of one dtype (all float32 or all float64)"),
    )
}

fn gram_impl<'py, T: Element + Scalar>(
    py: Python<'py>,
    j: &PyReadonlyArray2<'py, T>,
) -> PyResult<Bound<'py, PyAny>> {
    let jv = view(py, "J", j)?;
    let r = jv.nrows();
    let (out, outv) = new_output::<T>(py, r, r)?;
    detach(py, move |par| entk_core::gram_into(outv, jv, par))?;
    Ok(out.into_any())
}

/// gram(J) -> J @ J.T (one triangle computed, mirrored).
#[pyfunction]
pub fn gram<'py>(py: Python<'py>, j: Matrix<'py>) -> PyResult<Bound<'py, PyAny>> {
    match j {
        Matrix::F64(j) => gram_impl(py, &j),
        Matrix::F32(j) => gram_impl(py, &j),
    }
}

fn accumulate_impl<T: Element + Scalar>(
    py: Python<'_>,
    k: &mut PyReadwriteArray2<'_, T>,
    j: &PyReadonlyArray2<'_, T>,
    alpha: f64,
) -> PyResult<()> {
    let jv = view(py, "J", j)?;
    let kv = view_mut(py, "K", k)?;
    detach(py, move |par| {
        entk_core::gram_accumulate(kv, jv, T::from_f64(alpha), par)
    })
}

/// gram_accumulate(K, J, alpha) -> None: K += alpha * J @ J.T in place.
#[pyfunction]
#[pyo3(signature = (k, j, alpha = 1.0))]
pub fn gram_accumulate(
    py: Python<'_>,
    k: MatrixMut<'_>,
    j: Matrix<'_>,
    alpha: f64,
) -> PyResult<()> {
    match (k, j) {
        (MatrixMut::F64(mut k), Matrix::F64(j)) => accumulate_impl(py, &mut k, &j, alpha),
        (MatrixMut::F32(mut k), Matrix::F32(j)) => accumulate_impl(py, &mut k, &j, alpha),
        _ => Err(dtype_mismatch(py, "gram_accumulate(K, J)")),
    }
}

fn cross_impl<'py, T: Element + Scalar>(
    py: Python<'py>,
    a: &PyReadonlyArray2<'py, T>,
    b: &PyReadonlyArray2<'py, T>,
) -> PyResult<Bound<'py, PyAny>> {
    let av = view(py, "A", a)?;
    let bv = view(py, "B", b)?;
    let (out, outv) = new_output::<T>(py, av.nrows(), bv.nrows())?;
    detach(py, move |par| entk_core::gram_cross_into(outv, av, bv, par))?;
    Ok(out.into_any())
}

/// gram_cross(A, B) -> A @ B.T.
#[pyfunction]
pub fn gram_cross<'py>(
    py: Python<'py>,
    a: Matrix<'py>,
    b: Matrix<'py>,
) -> PyResult<Bound<'py, PyAny>> {
    match (a, b) {
        (Matrix::F64(a), Matrix::F64(b)) => cross_impl(py, &a, &b),
        (Matrix::F32(a), Matrix::F32(b)) => cross_impl(py, &a, &b),
        _ => Err(dtype_mismatch(py, "gram_cross(A, B)")),
    }
}

fn hadamard_impl<T: Element + Scalar>(
    py: Python<'_>,
    k: &mut PyReadwriteArray2<'_, T>,
    g: &PyReadonlyArray2<'_, T>,
    s: &PyReadonlyArray2<'_, T>,
    block: usize,
    alpha: f64,
) -> PyResult<()> {
    let gv = view(py, "G", g)?;
    let sv = view(py, "S", s)?;
    let kv = view_mut(py, "K", k)?;
    detach(py, move |par| {
        entk_core::hadamard_gram_accumulate(kv, gv, sv, block, T::from_f64(alpha), par)
    })
}

/// hadamard_gram_accumulate(K, G, S, block, alpha) -> None:
/// K[i, j] += alpha * S[i // block, j // block] * <G[i], G[j]> in place.
#[pyfunction]
#[pyo3(signature = (k, g, s, block = 1, alpha = 1.0))]
pub fn hadamard_gram_accumulate(
    py: Python<'_>,
    k: MatrixMut<'_>,
    g: Matrix<'_>,
    s: Matrix<'_>,
    block: usize,
    alpha: f64,
) -> PyResult<()> {
    match (k, g, s) {
        (MatrixMut::F64(mut k), Matrix::F64(g), Matrix::F64(s)) => {
            hadamard_impl(py, &mut k, &g, &s, block, alpha)
        }
        (MatrixMut::F32(mut k), Matrix::F32(g), Matrix::F32(s)) => {
            hadamard_impl(py, &mut k, &g, &s, block, alpha)
        }
        _ => Err(dtype_mismatch(py, "hadamard_gram_accumulate(K, G, S)")),
    }
}

fn hadamard_cross_impl<'py, T: Element + Scalar>(
    py: Python<'py>,
    ga: &PyReadonlyArray2<'py, T>,
    gb: &PyReadonlyArray2<'py, T>,
    s: &PyReadonlyArray2<'py, T>,
    block: usize,
    alpha: f64,
) -> PyResult<Bound<'py, PyAny>> {
    let gav = view(py, "Ga", ga)?;
    let gbv = view(py, "Gb", gb)?;
    let sv = view(py, "S", s)?;
    let (out, outv) = new_output::<T>(py, gav.nrows(), gbv.nrows())?;
    detach(py, move |par| {
        entk_core::hadamard_gram_cross_into(outv, gav, gbv, sv, block, T::from_f64(alpha), par)
    })?;
    Ok(out.into_any())
}

/// hadamard_gram_cross(Ga, Gb, S, block, alpha) -> out with
/// out[i, j] = alpha * S[i // block, j // block] * <Ga[i], Gb[j]>.
#[pyfunction]
#[pyo3(signature = (ga, gb, s, block = 1, alpha = 1.0))]
pub fn hadamard_gram_cross<'py>(
    py: Python<'py>,
    ga: Matrix<'py>,
    gb: Matrix<'py>,
    s: Matrix<'py>,
    block: usize,
    alpha: f64,
) -> PyResult<Bound<'py, PyAny>> {
    match (ga, gb, s) {
        (Matrix::F64(ga), Matrix::F64(gb), Matrix::F64(s)) => {
            hadamard_cross_impl(py, &ga, &gb, &s, block, alpha)
        }
        (Matrix::F32(ga), Matrix::F32(gb), Matrix::F32(s)) => {
            hadamard_cross_impl(py, &ga, &gb, &s, block, alpha)
        }
        _ => Err(dtype_mismatch(py, "hadamard_gram_cross(Ga, Gb, S)")),
    }
}

type EigOut<'py> = (Bound<'py, PyAny>, Bound<'py, PyAny>);

fn eigh_impl<'py, T: Element + Scalar>(
    py: Python<'py>,
    k: &PyReadonlyArray2<'py, T>,
) -> PyResult<EigOut<'py>> {
    let kv = view(py, "K", k)?;
    let n = kv.nrows();
    // Eigenvectors are written straight into the returned (Fortran-ordered) array.
    let (vectors, vectors_view) =
        new_output_fortran::<T>(py, n, if kv.ncols() == n { n } else { 0 })?;
    let values = detach(py, move |par| entk_core::eigh_into(kv, vectors_view, par))?;
    Ok((vector(py, values).into_any(), vectors.into_any()))
}

/// eigh(K) -> (eigenvalues descending (n,), eigenvectors (n, n) as columns).
#[pyfunction]
pub fn eigh<'py>(py: Python<'py>, k: Matrix<'py>) -> PyResult<EigOut<'py>> {
    match k {
        Matrix::F64(k) => eigh_impl(py, &k),
        Matrix::F32(k) => eigh_impl(py, &k),
    }
}

fn topk_impl<'py, T: Element + Scalar>(
    py: Python<'py>,
    k: &PyReadonlyArray2<'py, T>,
    nev: usize,
    params: TopkParams,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>, String)> {
    let kv = view(py, "K", k)?;
    let (pairs, method) = detach(py, move |par| {
        entk_core::eigh_topk_with(kv, nev, params, par)
    })?;
    let method = match method {
        TopkMethod::Dense => "dense".to_string(),
        TopkMethod::Krylov { cycles } => format!("krylov:{cycles}"),
        TopkMethod::DenseFallback => "dense-fallback".to_string(),
    };
    Ok((
        vector(py, pairs.values).into_any(),
        to_numpy(py, &pairs.vectors)?.into_any(),
        method,
    ))
}

/// eigh_topk(K, k, tolerance=None, seed=None, oversample=None, basis_blocks=None)
/// -> (values (k,), vectors (n, k), method).
#[pyfunction]
#[pyo3(signature = (k_matrix, k, tolerance = None, seed = None, oversample = None, basis_blocks = None))]
pub fn eigh_topk<'py>(
    py: Python<'py>,
    k_matrix: Matrix<'py>,
    k: usize,
    tolerance: Option<f64>,
    seed: Option<u64>,
    oversample: Option<usize>,
    basis_blocks: Option<usize>,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>, String)> {
    let defaults = TopkParams::default();
    let params = TopkParams {
        tolerance,
        seed: seed.unwrap_or(defaults.seed),
        oversample: oversample.unwrap_or(defaults.oversample),
        basis_blocks: basis_blocks.unwrap_or(defaults.basis_blocks),
        ..defaults
    };
    match k_matrix {
        Matrix::F64(m) => topk_impl(py, &m, k, params),
        Matrix::F32(m) => topk_impl(py, &m, k, params),
    }
}

fn angles_impl<'py, T: Element + Scalar>(
    py: Python<'py>,
    a: &PyReadonlyArray2<'py, T>,
    b: &PyReadonlyArray2<'py, T>,
    overlap: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let av = view(py, "A", a)?;
    let bv = view(py, "B", b)?;
    if overlap {
        let v = detach(py, move |par| entk_core::subspace_overlap(av, bv, par))?;
        Ok(v.into_pyobject(py)?.into_any())
    } else {
        let v = detach(py, move |par| entk_core::principal_angles(av, bv, par))?;
        Ok(vector(py, v).into_any())
    }
}

fn angles_dispatch<'py>(
    py: Python<'py>,
    a: Matrix<'py>,
    b: Matrix<'py>,
    overlap: bool,
) -> PyResult<Bound<'py, PyAny>> {
    match (a, b) {
        (Matrix::F64(a), Matrix::F64(b)) => angles_impl(py, &a, &b, overlap),
        (Matrix::F32(a), Matrix::F32(b)) => angles_impl(py, &a, &b, overlap),
        _ => Err(dtype_mismatch(
            py,
            "principal_angles / subspace_overlap (A, B)",
        )),
    }
}

/// principal_angles(A, B) -> float64 angles in radians, ascending.
#[pyfunction]
pub fn principal_angles<'py>(
    py: Python<'py>,
    a: Matrix<'py>,
    b: Matrix<'py>,
) -> PyResult<Bound<'py, PyAny>> {
    angles_dispatch(py, a, b, false)
}

/// subspace_overlap(A, B) -> sum of squared cosines of the principal angles.
#[pyfunction]
pub fn subspace_overlap<'py>(
    py: Python<'py>,
    a: Matrix<'py>,
    b: Matrix<'py>,
) -> PyResult<Bound<'py, PyAny>> {
    angles_dispatch(py, a, b, true)
}

/// set_num_threads(n) -> None; 0 means all cores.
#[pyfunction]
pub fn set_num_threads(n: usize) {
    threads::set_num_threads(n);
}

/// get_num_threads() -> int.
#[pyfunction]
pub fn get_num_threads() -> usize {
    threads::num_threads()
}

/// Called by os.register_at_fork in a child: the pool's threads did not survive the fork.
#[pyfunction]
pub fn _after_fork_in_child() {
    threads::after_fork_in_child();
}
