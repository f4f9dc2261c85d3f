//! Blocked reduction of a symmetric matrix to tridiagonal form, and the full eigensolver on it.
//!
//! faer 0.24 reduces one column at a time, updating the whole trailing triangle at every
//! step: it reads and writes the triangle n times. This is LAPACK's blocked variant
//! (`dsytrd` with `dlatrd`, lower): each column reads the trailing triangle once
//! ([`symv_lower`]) and the updates of `PANEL` columns are applied together as one rank-2·PANEL
//! product, which runs at matrix-product speed. Beyond the last-level cache that halves the
//! memory traffic of the reduction, the largest part of a dense `eigh`.
//!
//! The reflectors are stored as faer stores them (essential parts below the subdiagonal, the
//! block factors in a `bs × (n − 1)` matrix), so faer's divide and conquer on the tridiagonal
//! matrix (in f64) and its blocked back-transformation finish the decomposition.

use crate::alloc;
use crate::eigen::round_into;
use crate::error::{CoreError, CoreResult};
use crate::scalar::Scalar;
use crate::symv::{column, symv_lower};
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::evd::{self, ComputeEigenvectors};
use faer::linalg::householder;
use faer::linalg::matmul::triangular::{self, BlockStructure};
use faer::linalg::matmul::{self, dot};
use faer::linalg::qr::no_pivoting::factor::recommended_block_size;
use faer::reborrow::{Reborrow, ReborrowMut};
use faer::{Accum, Conj, Mat, MatMut, MatRef, Par};
use std::any::TypeId;

/// Columns reduced per panel before the trailing triangle is updated (LAPACK's default).
const PANEL: usize = 32;

/// A symmetric matrix reduced to tridiagonal form, Qᵀ A Q = T.
pub(crate) struct Tridiagonal<T> {
    /// T's diagonal (n).
    pub diag: Vec<T>,
    /// T's subdiagonal (n − 1).
    pub subdiag: Vec<T>,
    /// faer's τ of each reflector (n − 1): H = I − v vᵀ / τ, ∞ for the identity.
    pub tau: Vec<T>,
}

/// Column `j` of `a` from row `r` on, as a mutable slice (`a` has unit row stride).
fn column_from_mut<T: Scalar>(a: MatMut<'_, T>, j: usize, r: usize) -> &mut [T] {
    &mut a
        .col_mut(j)
        .try_as_col_major_mut()
        .expect("tridiag: columns are contiguous")
        .as_slice_mut()[r..]
}

/// Reduces the symmetric `a` (n × n, unit row stride; only its lower triangle is read) in
/// place: on return its lower triangle below the subdiagonal holds the reflectors' essential
/// parts (faer's layout), and the tridiagonal matrix is returned.
pub(crate) fn tridiagonalize<T: Scalar>(
    mut a: MatMut<'_, T>,
    par: Par,
) -> CoreResult<Tridiagonal<T>> {
    let n = a.nrows();
    let threads = match par {
        Par::Seq => 1,
        Par::Rayon(t) => t.get(),
    };
    let mut w = alloc::zeros::<T>("eigh: tridiagonalisation panel", n, PANEL)?;
    let mut t = alloc::zeros::<T>("eigh: tridiagonalisation panel", PANEL, 1)?;
    let mut vw = alloc::zeros::<T>("eigh: tridiagonalisation panel", n, 2 * PANEL)?;
    let mut wv = alloc::zeros::<T>("eigh: tridiagonalisation panel", n, 2 * PANEL)?;
    let mut scratch = alloc::vec_zeros::<T>("eigh: tridiagonalisation sums", (threads - 1) * n)?;
    let mut diag = vec![T::ZERO; n];
    let mut subdiag = vec![T::ZERO; n.saturating_sub(1)];
    let mut tau = vec![T::ZERO; n.saturating_sub(1)];
    let mut i0 = 0;
    while i0 < n {
        let width = PANEL.min(n - i0);
        for i in 0..width {
            let g = i0 + i;
            if i > 0 {
                // Bring column g up to date with the panel's earlier reflectors.
                let (left, mut right) = a.rb_mut().split_at_col_mut(g);
                let mut col = right.rb_mut().submatrix_mut(g, 0, n - g, 1);
                let v = left.rb().submatrix(g, i0, n - g, i);
                let wv = w.as_ref().submatrix(g, 0, n - g, i);
                let minus = -T::ONE;
                matmul::matmul(
                    col.rb_mut(),
                    Accum::Add,
                    v,
                    wv.row(0).transpose().as_mat(),
                    minus,
                    Par::Seq,
                );
                matmul::matmul(
                    col.rb_mut(),
                    Accum::Add,
                    wv,
                    v.row(0).transpose().as_mat(),
                    minus,
                    Par::Seq,
                );
            }
            if g + 1 == n {
                break;
            }
            let rest = n - g - 1;
            let mut head = a[(g + 1, g)];
            let info = householder::make_householder_in_place(
                &mut head,
                a.rb_mut().col_mut(g).subrows_mut(g + 2, rest - 1),
            );
            tau[g] = info.tau;
            subdiag[g] = head;
            a[(g + 1, g)] = T::ONE;
            let scale = if info.tau.is_finite_val() {
                T::ONE / info.tau
            } else {
                T::ZERO
            };
            let (w_done, mut w_rest) = w.as_mut().split_at_col_mut(i);
            let wi = column_from_mut(w_rest.rb_mut(), 0, g + 1);
            let v = &column(a.rb(), g)[g + 1..];
            symv_lower(
                a.rb().submatrix(g + 1, g + 1, rest, rest),
                v,
                wi,
                &mut scratch,
                par,
            );
            let vm = a.rb().col(g).subrows(g + 1, rest).as_mat();
            let mut wm = w_rest.rb_mut().submatrix_mut(g + 1, 0, rest, 1);
            if i > 0 {
                let earlier_v = a.rb().submatrix(g + 1, i0, rest, i);
                let earlier_w = w_done.rb().submatrix(g + 1, 0, rest, i);
                let mut ti = t.as_mut().submatrix_mut(0, 0, i, 1);
                let minus = -T::ONE;
                matmul::matmul(
                    ti.rb_mut(),
                    Accum::Replace,
                    earlier_w.transpose(),
                    vm,
                    T::ONE,
                    Par::Seq,
                );
                matmul::matmul(wm.rb_mut(), Accum::Add, earlier_v, ti.rb(), minus, Par::Seq);
                matmul::matmul(
                    ti.rb_mut(),
                    Accum::Replace,
                    earlier_v.transpose(),
                    vm,
                    T::ONE,
                    Par::Seq,
                );
                matmul::matmul(wm.rb_mut(), Accum::Add, earlier_w, ti.rb(), minus, Par::Seq);
            }
            let wi = column_from_mut(w_rest.rb_mut(), 0, g + 1);
            for x in wi.iter_mut() {
                *x *= scale;
            }
            let half = T::from_f64(-0.5) * scale * dot_slices(wi, v);
            for (x, vx) in wi.iter_mut().zip(v) {
                *x += half * *vx;
            }
        }
        let r0 = i0 + width;
        if r0 < n {
            // The trailing triangle: A22 −= V Wᵀ + W Vᵀ = [V W] [W V]ᵀ for the panel's
            // reflectors V, one product so that A22 is read and written once.
            let rows = n - r0;
            let (left, mut right) = a.rb_mut().split_at_col_mut(r0);
            let v = left.rb().submatrix(r0, i0, rows, width);
            let wp = w.as_ref().submatrix(r0, 0, rows, width);
            let mut lhs = vw.as_mut().submatrix_mut(0, 0, rows, 2 * width);
            lhs.rb_mut().subcols_mut(0, width).copy_from(v);
            lhs.rb_mut().subcols_mut(width, width).copy_from(wp);
            let mut rhs = wv.as_mut().submatrix_mut(0, 0, rows, 2 * width);
            rhs.rb_mut().subcols_mut(0, width).copy_from(wp);
            rhs.rb_mut().subcols_mut(width, width).copy_from(v);
            triangular::matmul(
                right.rb_mut().submatrix_mut(r0, 0, rows, rows),
                BlockStructure::TriangularLower,
                Accum::Add,
                lhs.rb(),
                BlockStructure::Rectangular,
                rhs.rb().transpose(),
                BlockStructure::Rectangular,
                -T::ONE,
                par,
            );
        }
        for g in i0..r0 {
            diag[g] = a[(g, g)];
            if g + 1 < n {
                a[(g + 1, g)] = subdiag[g];
            }
        }
        i0 = r0;
    }
    Ok(Tridiagonal { diag, subdiag, tau })
}

fn dot_slices<T: Scalar>(a: &[T], b: &[T]) -> T {
    let a = faer::ColRef::from_slice(a);
    let b = faer::ColRef::from_slice(b);
    dot::inner_prod(a.transpose(), Conj::No, b, Conj::No)
}

/// faer's block factors (`bs × (n − 1)`) of the reflectors with the given τ, whose essential
/// parts lie in `a` below the subdiagonal.
fn block_factors<T: Scalar>(
    a: MatRef<'_, T>,
    tau: &[T],
    bs: usize,
    par: Par,
) -> CoreResult<Mat<T>> {
    let n = a.nrows();
    let m = n - 1;
    let mut h = alloc::zeros::<T>("eigh: reflector block factors", bs, m)?;
    let basis = a.submatrix(1, 0, m, m);
    let mut j = 0;
    while j < m {
        let b = bs.min(m - j);
        let mut block = h.as_mut().submatrix_mut(0, j, b, b);
        for k in 0..b {
            block[(k, k)] = tau[j + k];
        }
        householder::upgrade_householder_factor(block, basis.submatrix(j, j, m - j, b), b, 1, par);
        j += b;
    }
    Ok(h)
}

/// All eigenpairs of the symmetric `k` (n × n, lower triangle read), eigenvalues ascending
/// (returned) and the unit eigenvectors written to the columns of `u` (n × n).
///
/// The reduction and the back-transformation run in `T`; the tridiagonal eigenproblem (O(n²)
/// data) is solved in f64 whatever `T` is. For f32 that is what makes the result accurate:
/// faer's f32 divide and conquer left eigenvalue errors near 1e-5·‖K‖ and residuals near
/// 2e-4·‖K‖ at n = 1000, against 1e-7 and 4e-7 this way (LAPACK's `ssyevd` level).
pub(crate) fn self_adjoint_evd<T: Scalar>(
    k: MatRef<'_, T>,
    mut u: MatMut<'_, T>,
    par: Par,
) -> CoreResult<Vec<T>> {
    let n = k.nrows();
    if n == 0 {
        return Ok(Vec::new());
    }
    if n == 1 {
        u[(0, 0)] = T::ONE;
        return Ok(vec![k[(0, 0)]]);
    }
    let mut reduced = alloc::from_fn("eigh: working copy of K", n, n, |i, j| {
        if i >= j {
            k[(i, j)]
        } else {
            T::ZERO
        }
    })?;
    let tri = tridiagonalize(reduced.as_mut(), par)?;
    let bs = recommended_block_size::<T>(n, n);
    let factors = block_factors(reduced.as_ref(), &tri.tau, bs, par)?;
    let values = tridiagonal_evd(&tri, u.rb_mut(), par)?;
    let scratch = householder::apply_block_householder_sequence_on_the_left_in_place_scratch::<T>(
        n - 1,
        bs,
        n,
    );
    let mut buf = MemBuffer::try_new(scratch)
        .map_err(|_| CoreError::out_of_memory("eigh", scratch.size_bytes()))?;
    householder::apply_block_householder_sequence_on_the_left_in_place_with_conj(
        reduced.as_ref().submatrix(1, 0, n - 1, n - 1),
        factors.as_ref(),
        Conj::No,
        u.rb_mut().subrows_mut(1, n - 1),
        par,
        MemStack::new(&mut buf),
    );
    Ok(values.into_iter().map(T::from_f64).collect())
}

/// faer's divide and conquer on the tridiagonal matrix in f64: the eigenvalues ascending
/// (returned) and the eigenvectors in `u`, rounded to `T` when `T` is f32.
fn tridiagonal_evd<T: Scalar>(
    tri: &Tridiagonal<T>,
    u: MatMut<'_, T>,
    par: Par,
) -> CoreResult<Vec<f64>> {
    let n = tri.diag.len();
    let diag: Vec<f64> = tri.diag.iter().map(|v| v.to_f64()).collect();
    let mut subdiag: Vec<f64> = tri.subdiag.iter().map(|v| v.to_f64()).collect();
    subdiag.push(0.0);
    let solve = |mut out: MatMut<'_, f64>| -> CoreResult<Vec<f64>> {
        let scratch = evd::self_adjoint_evd_scratch::<f64>(
            n,
            ComputeEigenvectors::Yes,
            par,
            Default::default(),
        );
        let mut buf = MemBuffer::try_new(scratch)
            .map_err(|_| CoreError::out_of_memory("eigh", scratch.size_bytes()))?;
        let mut values = faer::diag::Diag::<f64>::zeros(n);
        evd::tridiagonal_self_adjoint_evd(
            faer::ColRef::from_slice(&diag).as_diagonal(),
            faer::ColRef::from_slice(&subdiag).as_diagonal(),
            values.as_mut(),
            Some(out.rb_mut()),
            par,
            MemStack::new(&mut buf),
            Default::default(),
        )
        .map_err(|_| CoreError::Solver("the symmetric eigensolver did not converge".into()))?;
        let values = values.column_vector();
        Ok((0..n).map(|i| values[i]).collect())
    };
    if TypeId::of::<T>() == TypeId::of::<f64>() {
        // SAFETY: T is f64 (same TypeId), so the view is reinterpreted as what it is.
        let out = unsafe { core::mem::transmute::<MatMut<'_, T>, MatMut<'_, f64>>(u) };
        return solve(out);
    }
    let mut wide = alloc::zeros::<f64>("eigh: float64 tridiagonal eigenvectors", n, n)?;
    let values = solve(wide.as_mut())?;
    round_into(u, wide.as_ref());
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    fn random_symmetric(n: usize, seed: u64) -> Mat<f64> {
        let mut rng = SplitMix64::new(seed);
        let b = Mat::<f64>::from_fn(n, n, |_, _| rng.symmetric_unit());
        Mat::from_fn(n, n, |i, j| b[(i, j)] + b[(j, i)])
    }

    fn faer_values(a: &Mat<f64>) -> Vec<f64> {
        let mut v: Vec<f64> = a
            .self_adjoint_eigenvalues(faer::Side::Lower)
            .expect("faer evd");
        v.sort_by(|x, y| x.partial_cmp(y).expect("finite"));
        v
    }

    fn check(a: &Mat<f64>, par: Par) {
        let n = a.nrows();
        let mut u = Mat::<f64>::zeros(n, n);
        let values = self_adjoint_evd(a.as_ref(), u.as_mut(), par).expect("evd");
        let scale = a.norm_max() * n as f64;
        for (got, want) in values.iter().zip(faer_values(a)) {
            assert!(
                (got - want).abs() <= 1e-12 * scale,
                "n={n}: {got} vs {want}"
            );
        }
        let residual =
            a * &u - &u * Mat::from_fn(n, n, |i, j| if i == j { values[i] } else { 0.0 });
        assert!(
            residual.norm_max() <= 1e-12 * scale,
            "n={n}: residual {}",
            residual.norm_max()
        );
        let orth = u.transpose() * &u - Mat::<f64>::identity(n, n);
        assert!(
            orth.norm_max() <= 1e-12 * n as f64,
            "n={n}: orthogonality {}",
            orth.norm_max()
        );
    }

    #[test]
    fn eigenpairs_match_faer_across_panel_boundaries() {
        for (n, seed) in [
            (1, 1),
            (2, 2),
            (3, 3),
            (31, 4),
            (32, 5),
            (33, 6),
            (65, 7),
            (200, 8),
            (301, 9),
            // Large enough for the matrix–vector product's threads (from 444 rows on).
            (600, 10),
        ] {
            check(&random_symmetric(n, seed), Par::Seq);
            check(&random_symmetric(n, seed), Par::rayon(2));
        }
    }

    #[test]
    fn reduction_reproduces_the_matrix() {
        // Qᵀ A Q = T with Q from the stored reflectors: apply Q to T's columns and rows.
        let n = 97;
        let a = random_symmetric(n, 11);
        let mut reduced = a.clone();
        let tri = tridiagonalize(reduced.as_mut(), Par::rayon(2)).expect("reduce");
        let bs = recommended_block_size::<f64>(n, n);
        let factors = block_factors(reduced.as_ref(), &tri.tau, bs, Par::Seq).expect("factors");
        let mut q = Mat::<f64>::identity(n, n);
        let mut buf = MemBuffer::new(
            householder::apply_block_householder_sequence_on_the_left_in_place_scratch::<f64>(
                n - 1,
                bs,
                n,
            ),
        );
        householder::apply_block_householder_sequence_on_the_left_in_place_with_conj(
            reduced.as_ref().submatrix(1, 0, n - 1, n - 1),
            factors.as_ref(),
            Conj::No,
            q.as_mut().subrows_mut(1, n - 1),
            Par::Seq,
            MemStack::new(&mut buf),
        );
        let t = Mat::<f64>::from_fn(n, n, |i, j| match i.abs_diff(j) {
            0 => tri.diag[i],
            1 => tri.subdiag[i.min(j)],
            _ => 0.0,
        });
        let back = &q * &t * q.transpose();
        assert!((back - &a).norm_max() <= 1e-12 * a.norm_max() * n as f64);
    }

    #[test]
    fn already_tridiagonal_and_diagonal_matrices_keep_identity_reflectors() {
        for n in [5, 40, 70] {
            let diagonal =
                Mat::<f64>::from_fn(n, n, |i, j| if i == j { (i as f64) - 3.0 } else { 0.0 });
            check(&diagonal, Par::Seq);
            let banded = Mat::<f64>::from_fn(n, n, |i, j| match i.abs_diff(j) {
                0 => 2.0,
                1 => -1.0,
                _ => 0.0,
            });
            check(&banded, Par::rayon(2));
            // Block diagonal, split inside a panel: a reflector of an empty tail (τ = ∞) in the
            // middle of a dense reduction.
            let split = 37 * n / 70;
            let mut a = random_symmetric(n, 13);
            for i in 0..n {
                for j in 0..n {
                    if (i < split) != (j < split) {
                        a[(i, j)] = 0.0;
                    }
                }
            }
            check(&a, Par::rayon(2));
        }
    }

    #[test]
    fn float32_reduction_reproduces_the_matrix_to_its_precision() {
        let n = 150;
        let a = random_symmetric(n, 17);
        let a32 = Mat::<f32>::from_fn(n, n, |i, j| a[(i, j)] as f32);
        let mut u = Mat::<f32>::zeros(n, n);
        let values = self_adjoint_evd(a32.as_ref(), u.as_mut(), Par::rayon(2)).expect("evd");
        let a64 = Mat::<f64>::from_fn(n, n, |i, j| a32[(i, j)] as f64);
        let u64 = Mat::<f64>::from_fn(n, n, |i, j| u[(i, j)] as f64);
        let lambda = Mat::<f64>::from_fn(n, n, |i, j| if i == j { values[i] as f64 } else { 0.0 });
        let scale = a64.norm_max() * n as f64;
        let residual = &a64 * &u64 - &u64 * lambda;
        assert!(
            residual.norm_max() <= 1e-5 * scale,
            "residual {}",
            residual.norm_max()
        );
        let orth = u64.transpose() * &u64 - Mat::<f64>::identity(n, n);
        assert!(orth.norm_max() <= 1e-5, "orthogonality {}", orth.norm_max());
        for (got, want) in values.iter().zip(faer_values(&a64)) {
            assert!(
                (*got as f64 - want).abs() <= 1e-5 * scale,
                "{got} vs {want}"
            );
        }
    }
}
