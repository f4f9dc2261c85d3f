//! Python functions over the core's linear algebra: unpack numpy, release the GIL, map errors.
//!
//! Two choke points run the work: [`detach`] (GIL released, core thread pool, errors mapped,
//! panics caught) for calls that are short or cannot stop midway, and [`detach_serving`] for
//! iterative solvers that poll for Ctrl-C and may call back into Python (a matrix-free
//! operator). There the solver runs on a worker thread in the pool while the calling thread
//! serves its callbacks, attaching the GIL only for them: signal handlers only run on the
//! main thread, and torch's thread-local state (grad mode) is the caller's.

use crate::convert::{
    matrix, matrix_mut, new_output, to_mat, to_numpy, vector, view, view_mut, Float,
};
use crate::errors::{invalid_argument, linalg_error, to_py, type_error};
use entk_core::{
    threads, CoreError, CoreResult, EigenPairs, Scalar, SymmetricOperator, TopkInfo, TopkParams,
};
use faer::{Mat, MatMut, MatRef, Par};
use numpy::{Element, PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray2, PyReadwriteArray2};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;

/// Runs the same generic body for whichever dtype the arrays share, or refuses mixed dtypes.
/// `dispatch!(py, "what(A, B)", [a, b] => |T| body)`: in `body`, each name is the borrowed
/// array of element type `T`.
macro_rules! dispatch {
    ($py:expr, $what:expr, [$($m:ident),+] => |$t:ident| $body:expr) => {{
        #[allow(unreachable_patterns)]
        match ($($m,)+) {
            ($(Float::F64($m),)+) => {
                type $t = f64;
                $body
            }
            ($(Float::F32($m),)+) => {
                type $t = f32;
                $body
            }
            _ => Err(type_error(
                $py,
                format!("{}: expected arrays of one dtype (all float32 or all float64)", $what),
            )),
        }
    }};
}

/// A panic in the core (a bug, or an allocation deep inside faer) as a Python exception.
fn panic_to_py(py: Python<'_>, payload: Box<dyn std::any::Any + Send>) -> PyErr {
    let text = payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    if text.contains("AllocError") || text.contains("alloc") || text.contains("capacity") {
        pyo3::exceptions::PyMemoryError::new_err(format!(
            "not enough memory for a workspace of the Rust core ({text})"
        ))
    } else {
        linalg_error(py, format!("internal error in the Rust core: {text}"))
    }
}

/// The choke point: run `work` without the GIL, inside the core's thread pool, and map errors.
fn detach<T: Send>(py: Python<'_>, work: impl FnOnce(Par) -> CoreResult<T> + Send) -> PyResult<T> {
    match py.detach(|| catch_unwind(AssertUnwindSafe(|| threads::install(work)))) {
        Ok(result) => result.map_err(|e| to_py(py, e)),
        Err(payload) => Err(panic_to_py(py, payload)),
    }
}

/// What the solver thread asks of the calling thread.
enum Request<T> {
    /// Poll for Ctrl-C (and other pending signals).
    Check,
    /// Apply the Python operator to a block of vectors.
    Apply(Mat<T>),
}

enum Reply<T> {
    Go,
    Applied(Mat<T>),
    Stop,
}

/// The solver thread's end of the link to the calling thread.
struct Relay<T> {
    to_caller: mpsc::Sender<Request<T>>,
    from_caller: mpsc::Receiver<Reply<T>>,
    n: usize,
}

impl<T: Scalar> Relay<T> {
    fn ask(&self, request: Request<T>) -> CoreResult<Reply<T>> {
        self.to_caller
            .send(request)
            .map_err(|_| CoreError::Interrupted)?;
        match self.from_caller.recv() {
            Ok(Reply::Stop) | Err(_) => Err(CoreError::Interrupted),
            Ok(reply) => Ok(reply),
        }
    }

    fn check(&self) -> CoreResult<()> {
        self.ask(Request::Check).map(|_| ())
    }
}

impl<T: Scalar> SymmetricOperator<T> for &Relay<T> {
    fn dim(&self) -> usize {
        self.n
    }

    fn apply(&mut self, x: MatRef<'_, T>, mut out: MatMut<'_, T>, _par: Par) -> CoreResult<()> {
        match self.ask(Request::Apply(x.to_owned()))? {
            Reply::Applied(m) => {
                out.copy_from(&m);
                Ok(())
            }
            _ => Err(CoreError::Interrupted),
        }
    }
}

/// Calls `matmat(V)` for a block V and takes the result back, checking its shape.
fn call_matmat<T: Element + Scalar>(
    py: Python<'_>,
    matmat: &Py<PyAny>,
    x: &Mat<T>,
) -> PyResult<Mat<T>> {
    let v = to_numpy(py, x.as_ref())?;
    let out = matmat.bind(py).call1((v,))?;
    let array = out.cast::<PyArray2<T>>().map_err(|_| {
        type_error(
            py,
            format!(
                "matmat: expected the callable to return a 2-D {} array, got {}",
                T::get_dtype(py),
                out.get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default()
            ),
        )
    })?;
    let borrow = array
        .try_readonly()
        .map_err(|_| invalid_argument(py, "matmat: returned an array in use elsewhere".into()))?;
    let got = view(py, "matmat", &borrow)?;
    if got.nrows() != x.nrows() || got.ncols() != x.ncols() {
        return Err(invalid_argument(
            py,
            format!(
                "matmat: expected K @ V of shape ({}, {}) for V of that shape, got shape ({}, {})",
                x.nrows(),
                x.ncols(),
                got.nrows(),
                got.ncols()
            ),
        ));
    }
    to_mat(py, "matmat", &borrow)
}

/// The interruptible choke point: `work` runs in the core's pool on a worker thread, with a
/// [`Relay`] through which it polls for signals and applies `matmat`; this thread serves
/// those requests (GIL attached only meanwhile). An exception raised while serving (a
/// KeyboardInterrupt, or one from `matmat`) stops the solver and is re-raised as is.
fn detach_serving<T, R>(
    py: Python<'_>,
    n: usize,
    matmat: Option<Py<PyAny>>,
    work: impl FnOnce(&Relay<T>, Par) -> CoreResult<R> + Send,
) -> PyResult<R>
where
    T: Element + Scalar,
    R: Send,
{
    let (to_caller, requests) = mpsc::channel::<Request<T>>();
    let (replies, from_caller) = mpsc::channel::<Reply<T>>();
    let relay = Relay {
        to_caller,
        from_caller,
        n,
    };
    let (raised, outcome) = py.detach(move || {
        let mut raised: Option<PyErr> = None;
        let outcome = std::thread::scope(|scope| {
            let worker = scope.spawn(move || {
                catch_unwind(AssertUnwindSafe(move || {
                    threads::install(move |par| work(&relay, par))
                }))
            });
            // Ends when the worker drops its relay, i.e. when the solver has returned.
            for request in requests.iter() {
                let reply = Python::attach(|py| match request {
                    Request::Check => py.check_signals().map(|_| Reply::Go),
                    Request::Apply(x) => match &matmat {
                        Some(f) => call_matmat(py, f, &x).map(Reply::Applied),
                        None => Err(linalg_error(py, "internal error: no operator".into())),
                    },
                });
                let reply = reply.unwrap_or_else(|err| {
                    raised = Some(err);
                    Reply::Stop
                });
                if replies.send(reply).is_err() {
                    break;
                }
            }
            worker.join()
        });
        (raised, outcome)
    });
    if let Some(err) = raised {
        return Err(err);
    }
    match outcome {
        Ok(Ok(result)) => result.map_err(|e| to_py(py, e)),
        Ok(Err(payload)) | Err(payload) => Err(panic_to_py(py, payload)),
    }
}

/// A non-negative integer argument (Python has checked it is an int); ranges beyond that
/// are the core's to check.
fn count(py: Python<'_>, arg: &str, value: i128) -> PyResult<usize> {
    usize::try_from(value).map_err(|_| {
        let expected = if value < 0 {
            "a non-negative integer".to_string()
        } else {
            format!("an integer ≤ {}", usize::MAX)
        };
        invalid_argument(py, format!("{arg}: expected {expected}, got {value}"))
    })
}

fn opt_count(py: Python<'_>, arg: &str, value: Option<i128>) -> PyResult<Option<usize>> {
    value.map(|v| count(py, arg, v)).transpose()
}

fn seed_arg(py: Python<'_>, value: Option<i128>) -> PyResult<Option<u64>> {
    value
        .map(|v| {
            u64::try_from(v).map_err(|_| {
                invalid_argument(
                    py,
                    format!("seed: expected an integer in [0, 2**64 - 1], got {v}"),
                )
            })
        })
        .transpose()
}

/// gram(J) -> J @ J.T (one triangle computed, mirrored).
#[pyfunction]
pub fn gram<'py>(py: Python<'py>, j: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let j = matrix("J", j)?;
    dispatch!(py, "gram(J)", [j] => |T| gram_impl::<T>(py, &j))
}

fn gram_impl<'py, T: Element + Scalar>(
    py: Python<'py>,
    j: &PyReadonlyArray2<'py, T>,
) -> PyResult<Bound<'py, PyAny>> {
    let jv = view(py, "J", j)?;
    let r = jv.nrows();
    let (out, mut borrow) = new_output::<T>(py, r, r, false)?;
    let outv = view_mut(py, "out", &mut borrow)?;
    detach(py, move |par| entk_core::gram_into(outv, jv, par))?;
    drop(borrow);
    Ok(out.into_any())
}

/// gram_accumulate(K, J, alpha) -> None: K += alpha * J @ J.T in place.
#[pyfunction]
#[pyo3(signature = (k, j, alpha = 1.0))]
pub fn gram_accumulate(
    py: Python<'_>,
    k: &Bound<'_, PyAny>,
    j: &Bound<'_, PyAny>,
    alpha: f64,
) -> PyResult<()> {
    let j = matrix("J", j)?;
    let k = matrix_mut("K", k)?;
    dispatch!(py, "gram_accumulate(K, J)", [k, j] => |T| accumulate_impl::<T>(py, k, &j, alpha))
}

fn accumulate_impl<T: Element + Scalar>(
    py: Python<'_>,
    mut k: PyReadwriteArray2<'_, T>,
    j: &PyReadonlyArray2<'_, T>,
    alpha: f64,
) -> PyResult<()> {
    let jv = view(py, "J", j)?;
    let kv = view_mut(py, "K", &mut k)?;
    detach(py, move |par| {
        entk_core::gram_accumulate(kv, jv, T::from_f64(alpha), par)
    })
}

/// gram_cross(A, B) -> A @ B.T.
#[pyfunction]
pub fn gram_cross<'py>(
    py: Python<'py>,
    a: &Bound<'py, PyAny>,
    b: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let (a, b) = (matrix("A", a)?, matrix("B", b)?);
    dispatch!(py, "gram_cross(A, B)", [a, b] => |T| cross_impl::<T>(py, &a, &b))
}

fn cross_impl<'py, T: Element + Scalar>(
    py: Python<'py>,
    a: &PyReadonlyArray2<'py, T>,
    b: &PyReadonlyArray2<'py, T>,
) -> PyResult<Bound<'py, PyAny>> {
    let av = view(py, "A", a)?;
    let bv = view(py, "B", b)?;
    let (out, mut borrow) = new_output::<T>(py, av.nrows(), bv.nrows(), false)?;
    let outv = view_mut(py, "out", &mut borrow)?;
    detach(py, move |par| entk_core::gram_cross_into(outv, av, bv, par))?;
    drop(borrow);
    Ok(out.into_any())
}

/// hadamard_gram_accumulate(K, G, S, block, alpha, positions) -> None:
/// K[i, j] += alpha * sum_{t,u} S[t*m + i // block, u*m + j // block] * <G[t*R + i], G[u*R + j]>
/// in place (R = rows of K, m = R // block; positions = 1: S[i // block, j // block] <G[i], G[j]>).
#[pyfunction]
#[pyo3(signature = (k, g, s, block = 1, alpha = 1.0, positions = 1))]
pub fn hadamard_gram_accumulate(
    py: Python<'_>,
    k: &Bound<'_, PyAny>,
    g: &Bound<'_, PyAny>,
    s: &Bound<'_, PyAny>,
    block: i128,
    alpha: f64,
    positions: i128,
) -> PyResult<()> {
    let block = count(py, "block", block)?;
    let positions = count(py, "positions", positions)?;
    let (g, s) = (matrix("G", g)?, matrix("S", s)?);
    let k = matrix_mut("K", k)?;
    dispatch!(py, "hadamard_gram_accumulate(K, G, S)", [k, g, s] => |T| {
        positions_impl::<T>(
            py,
            k,
            &g,
            ("S", &s),
            (positions, block),
            alpha,
            entk_core::hadamard::hadamard_gram_positions_accumulate::<T>,
        )
    })
}

/// A positions kernel of the core: (K, G, S or A, positions, block, alpha, par).
type PositionsKernel<T> = for<'k, 'g, 's> fn(
    MatMut<'k, T>,
    MatRef<'g, T>,
    MatRef<'s, T>,
    usize,
    usize,
    T,
    Par,
) -> entk_core::CoreResult<()>;

/// K updated in place by `kernel` from G and the inputs (S, or its factor A, named `arg`).
fn positions_impl<T: Element + Scalar>(
    py: Python<'_>,
    mut k: PyReadwriteArray2<'_, T>,
    g: &PyReadonlyArray2<'_, T>,
    (arg, inputs): (&'static str, &PyReadonlyArray2<'_, T>),
    (positions, block): (usize, usize),
    alpha: f64,
    kernel: PositionsKernel<T>,
) -> PyResult<()> {
    let gv = view(py, "G", g)?;
    let iv = view(py, arg, inputs)?;
    let kv = view_mut(py, "K", &mut k)?;
    detach(py, move |par| {
        kernel(kv, gv, iv, positions, block, T::from_f64(alpha), par)
    })
}

/// hadamard_gram_factored_accumulate(K, G, A, block, alpha, positions) -> None: as
/// hadamard_gram_accumulate with S = A A^T, never formed.
#[pyfunction]
#[pyo3(signature = (k, g, a, block = 1, alpha = 1.0, positions = 1))]
pub fn hadamard_gram_factored_accumulate(
    py: Python<'_>,
    k: &Bound<'_, PyAny>,
    g: &Bound<'_, PyAny>,
    a: &Bound<'_, PyAny>,
    block: i128,
    alpha: f64,
    positions: i128,
) -> PyResult<()> {
    let block = count(py, "block", block)?;
    let positions = count(py, "positions", positions)?;
    let (g, a) = (matrix("G", g)?, matrix("A", a)?);
    let k = matrix_mut("K", k)?;
    dispatch!(py, "hadamard_gram_factored_accumulate(K, G, A)", [k, g, a] => |T| {
        positions_impl::<T>(
            py,
            k,
            &g,
            ("A", &a),
            (positions, block),
            alpha,
            entk_core::hadamard::hadamard_gram_factored_accumulate::<T>,
        )
    })
}

/// hadamard_gram_factored_accumulate_many(K, Gs, As, blocks, positions, alpha) -> None: K +=
/// the sum of hadamard_gram_factored_accumulate's blocks of the terms (Gs[i], As[i],
/// blocks[i], positions[i]), with K checked, tiled and mirrored once; every term is checked
/// before K is touched.
#[pyfunction]
#[pyo3(signature = (k, gs, a_s, blocks, positions, alpha = 1.0))]
pub fn hadamard_gram_factored_accumulate_many(
    py: Python<'_>,
    k: &Bound<'_, PyAny>,
    gs: Vec<Bound<'_, PyAny>>,
    a_s: Vec<Bound<'_, PyAny>>,
    blocks: Vec<i128>,
    positions: Vec<i128>,
    alpha: f64,
) -> PyResult<()> {
    let n = gs.len();
    if a_s.len() != n || blocks.len() != n || positions.len() != n {
        return Err(invalid_argument(
            py,
            format!(
                "hadamard_gram_factored_accumulate_many: Gs, As, blocks and positions must \
                 have one entry per term, got {n}, {}, {} and {}",
                a_s.len(),
                blocks.len(),
                positions.len()
            ),
        ));
    }
    let blocks = blocks
        .into_iter()
        .map(|b| count(py, "blocks", b))
        .collect::<PyResult<Vec<_>>>()?;
    let positions = positions
        .into_iter()
        .map(|t| count(py, "positions", t))
        .collect::<PyResult<Vec<_>>>()?;
    let gs = gs
        .iter()
        .enumerate()
        .map(|(i, g)| matrix(&format!("Gs[{i}]"), g))
        .collect::<PyResult<Vec<_>>>()?;
    let a_s = a_s
        .iter()
        .enumerate()
        .map(|(i, a)| matrix(&format!("As[{i}]"), a))
        .collect::<PyResult<Vec<_>>>()?;
    let what = "hadamard_gram_factored_accumulate_many(K, Gs, As)";
    let mixed = || {
        type_error(
            py,
            format!("{what}: expected arrays of one dtype (all float32 or all float64)"),
        )
    };
    macro_rules! all_of {
        ($variant:ident, $list:expr) => {
            $list
                .into_iter()
                .map(|m| match m {
                    Float::$variant(x) => Ok(x),
                    _ => Err(mixed()),
                })
                .collect::<PyResult<Vec<_>>>()?
        };
    }
    match matrix_mut("K", k)? {
        Float::F64(k) => {
            let (gs, a_s) = (all_of!(F64, gs), all_of!(F64, a_s));
            factored_many_impl::<f64>(py, k, &gs, &a_s, &blocks, &positions, alpha)
        }
        Float::F32(k) => {
            let (gs, a_s) = (all_of!(F32, gs), all_of!(F32, a_s));
            factored_many_impl::<f32>(py, k, &gs, &a_s, &blocks, &positions, alpha)
        }
    }
}

fn factored_many_impl<T: Element + Scalar>(
    py: Python<'_>,
    mut k: PyReadwriteArray2<'_, T>,
    gs: &[PyReadonlyArray2<'_, T>],
    a_s: &[PyReadonlyArray2<'_, T>],
    blocks: &[usize],
    positions: &[usize],
    alpha: f64,
) -> PyResult<()> {
    let mut terms = Vec::with_capacity(gs.len());
    for (i, (g, a)) in gs.iter().zip(a_s).enumerate() {
        terms.push(entk_core::hadamard::FactoredTerm {
            g: view(py, &format!("Gs[{i}]"), g)?,
            a: view(py, &format!("As[{i}]"), a)?,
            positions: positions[i],
            block: blocks[i],
        });
    }
    let kv = view_mut(py, "K", &mut k)?;
    detach(py, move |par| {
        entk_core::hadamard::hadamard_gram_factored_accumulate_many(
            kv,
            &terms,
            T::from_f64(alpha),
            par,
        )
    })
}

/// hadamard_gram_cross(Ga, Gb, S, block, alpha) -> out with
/// out[i, j] = alpha * S[i // block, j // block] * <Ga[i], Gb[j]>.
#[pyfunction]
#[pyo3(signature = (ga, gb, s, block = 1, alpha = 1.0))]
pub fn hadamard_gram_cross<'py>(
    py: Python<'py>,
    ga: &Bound<'py, PyAny>,
    gb: &Bound<'py, PyAny>,
    s: &Bound<'py, PyAny>,
    block: i128,
    alpha: f64,
) -> PyResult<Bound<'py, PyAny>> {
    let block = count(py, "block", block)?;
    let (ga, gb, s) = (matrix("Ga", ga)?, matrix("Gb", gb)?, matrix("S", s)?);
    dispatch!(py, "hadamard_gram_cross(Ga, Gb, S)", [ga, gb, s] => |T| {
        hadamard_cross_impl::<T>(py, &ga, &gb, &s, block, alpha)
    })
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
    let (out, mut borrow) = new_output::<T>(py, gav.nrows(), gbv.nrows(), false)?;
    let outv = view_mut(py, "out", &mut borrow)?;
    detach(py, move |par| {
        entk_core::hadamard_gram_cross_into(outv, gav, gbv, sv, block, T::from_f64(alpha), par)
    })?;
    drop(borrow);
    Ok(out.into_any())
}

type EigOut<'py> = (Bound<'py, PyAny>, Bound<'py, PyAny>);

/// eigh(K) -> (eigenvalues descending (n,), eigenvectors (n, n) as columns).
#[pyfunction]
pub fn eigh<'py>(py: Python<'py>, k: &Bound<'py, PyAny>) -> PyResult<EigOut<'py>> {
    let k = matrix("K", k)?;
    dispatch!(py, "eigh(K)", [k] => |T| eigh_impl::<T>(py, &k))
}

fn eigh_impl<'py, T: Element + Scalar>(
    py: Python<'py>,
    k: &PyReadonlyArray2<'py, T>,
) -> PyResult<EigOut<'py>> {
    let kv = view(py, "K", k)?;
    let n = kv.nrows();
    // Eigenvectors are written straight into the returned (Fortran-ordered) array; a
    // non-square K gets an empty one and the core's shape error.
    let (vectors, mut borrow) = new_output::<T>(py, n, if kv.ncols() == n { n } else { 0 }, true)?;
    let vectors_view = view_mut(py, "vectors", &mut borrow)?;
    let values = detach(py, move |par| entk_core::eigh_into(kv, vectors_view, par))?;
    drop(borrow);
    Ok((vector(py, values).into_any(), vectors.into_any()))
}

type TopkOut<'py> = (Bound<'py, PyAny>, Bound<'py, PyAny>, Bound<'py, PyDict>);

fn info_dict<'py>(py: Python<'py>, info: &TopkInfo) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("method", info.method.name())?;
    d.set_item("cycles", info.cycles)?;
    d.set_item("n_matvec", info.n_matvec)?;
    d.set_item("block", info.block)?;
    d.set_item("max_residual", info.max_residual)?;
    d.set_item("residuals", vector(py, info.residuals.clone()))?;
    d.set_item("tol", info.tolerance)?;
    d.set_item("converged", info.converged)?;
    d.set_item("stagnated", info.stagnated)?;
    Ok(d)
}

fn topk_out<'py, T: Element + Scalar>(
    py: Python<'py>,
    pairs: EigenPairs<T>,
    info: &TopkInfo,
) -> PyResult<TopkOut<'py>> {
    Ok((
        vector(py, pairs.values).into_any(),
        to_numpy(py, pairs.vectors.as_ref())?.into_any(),
        info_dict(py, info)?,
    ))
}

#[allow(clippy::too_many_arguments)]
fn params(
    py: Python<'_>,
    tol: Option<f64>,
    seed: Option<i128>,
    oversample: Option<i128>,
    basis_blocks: Option<i128>,
    block: Option<i128>,
    maxiter: Option<i128>,
) -> PyResult<TopkParams> {
    let defaults = TopkParams::default();
    Ok(TopkParams {
        tolerance: tol,
        seed: seed_arg(py, seed)?.unwrap_or(defaults.seed),
        oversample: opt_count(py, "oversample", oversample)?.unwrap_or(defaults.oversample),
        basis_blocks: opt_count(py, "basis_blocks", basis_blocks)?,
        block: opt_count(py, "block", block)?,
        max_cycles: opt_count(py, "maxiter", maxiter)?.unwrap_or(defaults.max_cycles),
    })
}

/// eigh_topk(K, k, tol=None, seed=None, oversample=None, basis_blocks=None)
/// -> (values (k,), vectors (n, k), info dict).
#[pyfunction]
#[pyo3(signature = (k_matrix, k, tol = None, seed = None, oversample = None, basis_blocks = None))]
pub fn eigh_topk<'py>(
    py: Python<'py>,
    k_matrix: &Bound<'py, PyAny>,
    k: i128,
    tol: Option<f64>,
    seed: Option<i128>,
    oversample: Option<i128>,
    basis_blocks: Option<i128>,
) -> PyResult<TopkOut<'py>> {
    let nev = count(py, "k", k)?;
    let params = params(py, tol, seed, oversample, basis_blocks, None, None)?;
    let m = matrix("K", k_matrix)?;
    dispatch!(py, "eigh_topk(K)", [m] => |T| topk_impl::<T>(py, &m, nev, params))
}

fn topk_impl<'py, T: Element + Scalar>(
    py: Python<'py>,
    k: &PyReadonlyArray2<'py, T>,
    nev: usize,
    params: TopkParams,
) -> PyResult<TopkOut<'py>> {
    let kv = view(py, "K", k)?;
    let (pairs, info) = detach_serving::<T, _>(py, kv.nrows(), None, move |relay, par| {
        entk_core::eigh_topk_with(kv, nev, params, &mut || relay.check(), par)
    })?;
    topk_out(py, pairs, &info)
}

/// eigh_topk_operator(matmat, n, k, dtype, block=None, tol=None, maxiter=None, seed=None)
/// -> (values (k,), vectors (n, k), info dict); matmat(V (n, b)) -> K @ V.
#[pyfunction]
#[pyo3(signature = (matmat, n, k, dtype, block = None, tol = None, maxiter = None, seed = None, basis_blocks = None))]
#[allow(clippy::too_many_arguments)]
pub fn eigh_topk_operator<'py>(
    py: Python<'py>,
    matmat: Py<PyAny>,
    n: i128,
    k: i128,
    dtype: &str,
    block: Option<i128>,
    tol: Option<f64>,
    maxiter: Option<i128>,
    seed: Option<i128>,
    basis_blocks: Option<i128>,
) -> PyResult<TopkOut<'py>> {
    let n = count(py, "n", n)?;
    let nev = count(py, "k", k)?;
    let params = params(py, tol, seed, None, basis_blocks, block, maxiter)?;
    if !matmat.bind(py).is_callable() {
        return Err(type_error(
            py,
            "matmat: expected a callable V -> K @ V".to_string(),
        ));
    }
    match dtype {
        "float64" => operator_impl::<f64>(py, matmat, n, nev, params),
        "float32" => operator_impl::<f32>(py, matmat, n, nev, params),
        other => Err(type_error(
            py,
            format!("dtype: expected float32 or float64, got {other}"),
        )),
    }
}

fn operator_impl<'py, T: Element + Scalar>(
    py: Python<'py>,
    matmat: Py<PyAny>,
    n: usize,
    nev: usize,
    params: TopkParams,
) -> PyResult<TopkOut<'py>> {
    let (pairs, info) = detach_serving::<T, _>(py, n, Some(matmat), move |relay, par| {
        let mut op = relay;
        entk_core::eigh_topk_operator(&mut op, nev, params, &mut || relay.check(), par)
    })?;
    topk_out(py, pairs, &info)
}

/// principal_angles(A, B) -> float64 angles in radians, ascending.
#[pyfunction]
pub fn principal_angles<'py>(
    py: Python<'py>,
    a: &Bound<'py, PyAny>,
    b: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let (a, b) = (matrix("A", a)?, matrix("B", b)?);
    dispatch!(py, "principal_angles(A, B)", [a, b] => |T| {
        let (av, bv) = (view::<T>(py, "A", &a)?, view::<T>(py, "B", &b)?);
        let angles = detach(py, move |par| entk_core::principal_angles(av, bv, par))?;
        Ok(vector(py, angles).into_any())
    })
}

/// subspace_overlap(A, B) -> sum of squared cosines of the principal angles.
#[pyfunction]
pub fn subspace_overlap(
    py: Python<'_>,
    a: &Bound<'_, PyAny>,
    b: &Bound<'_, PyAny>,
) -> PyResult<f64> {
    let (a, b) = (matrix("A", a)?, matrix("B", b)?);
    dispatch!(py, "subspace_overlap(A, B)", [a, b] => |T| {
        let (av, bv) = (view::<T>(py, "A", &a)?, view::<T>(py, "B", &b)?);
        detach(py, move |par| entk_core::subspace_overlap(av, bv, par))
    })
}

/// set_num_threads(n) -> None; None means all cores.
#[pyfunction]
#[pyo3(signature = (n = None))]
pub fn set_num_threads(py: Python<'_>, n: Option<i128>) -> PyResult<()> {
    let max = threads::MAX_THREADS as i128;
    match n {
        None => threads::set_num_threads(0),
        Some(n) if (1..=max).contains(&n) => threads::set_num_threads(n as usize),
        Some(n) => {
            return Err(invalid_argument(
                py,
                format!("n: expected an integer in [1, {max}] (or None for all cores), got {n}"),
            ))
        }
    }
    Ok(())
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

/// Two float64 vectors returned to Python.
type F64Pair<'py> = (Bound<'py, PyArray1<f64>>, Bound<'py, PyArray1<f64>>);

/// rank_one_residual(G, S, W, positions) -> (lost, energy): per column k of G ((n·rows·T), K),
/// Σ (G − S ⊗ W)² and Σ G² in float64, with S (n·T, K) and W (rows, K).
#[pyfunction]
pub fn rank_one_residual<'py>(
    py: Python<'py>,
    g: &Bound<'py, PyAny>,
    s: &Bound<'py, PyAny>,
    w: &Bound<'py, PyAny>,
    positions: i128,
) -> PyResult<F64Pair<'py>> {
    let positions = count(py, "positions", positions)?;
    let (g, s, w) = (matrix("G", g)?, matrix("S", s)?, matrix("W", w)?);
    let (lost, energy) = dispatch!(py, "rank_one_residual(G, S, W)", [g, s, w] => |T| {
        let (gv, sv, wv) = (view(py, "G", &g)?, view(py, "S", &s)?, view(py, "W", &w)?);
        detach(py, move |par| entk_core::rank_one_residual::<T>(gv, sv, wv, positions, par))
    })?;
    Ok((vector(py, lost), vector(py, energy)))
}

/// column_pivots(G) -> (rows, values): per column of G (M, K), the row of its largest |value|
/// (int64) and that value.
#[pyfunction]
pub fn column_pivots<'py>(
    py: Python<'py>,
    g: &Bound<'py, PyAny>,
) -> PyResult<(Bound<'py, PyArray1<i64>>, Bound<'py, PyAny>)> {
    let g = matrix("G", g)?;
    dispatch!(py, "column_pivots(G)", [g] => |T| {
        let gv = view(py, "G", &g)?;
        let (rows, values) = detach(py, move |_| entk_core::column_pivots::<T>(gv))?;
        let rows: Vec<i64> = rows.into_iter().map(|r| r as i64).collect();
        Ok((vector(py, rows), vector(py, values).into_any()))
    })
}
