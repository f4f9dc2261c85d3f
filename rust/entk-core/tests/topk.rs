//! Top-k eigenpairs, dense and matrix-free, against the full solve and independent residuals.

// Index loops mirror the formulas they check.
#![allow(clippy::needless_range_loop)]

mod common;

use common::*;
use entk_core::*;
use faer::{Mat, MatRef, Par};

#[test]
fn topk_matches_full_solve_on_krylov_path_values_and_vectors() {
    let j = random(700, 120, 7);
    let k = gram(j.as_ref(), Par::rayon(2)).unwrap();
    let (top, info) = eigh_topk_with(
        k.as_ref(),
        6,
        TopkParams::default(),
        &mut no_cancel(),
        Par::rayon(2),
    )
    .unwrap();
    assert_eq!(info.method, TopkMethod::Krylov, "{info:?}");
    assert!(info.converged && info.n_matvec > 0 && info.cycles > 0);
    let full = eigh(k.as_ref(), Par::rayon(2)).unwrap();
    for i in 0..6 {
        assert!((top.values[i] - full.values[i]).abs() < 1e-10 * full.values[0]);
    }
    // The spectrum of a random Gram is simple at the top: compare each eigenvector's span.
    for i in 0..6 {
        let d = projector_distance(
            top.vectors.as_ref().subcols(i, 1),
            full.vectors.as_ref().subcols(i, 1),
        );
        assert!(d < 1e-8, "vector {i}: {d}");
    }
    // The documented bound: every returned pair meets the tolerance (default 1e-11).
    let bound = residual_bound(k.as_ref(), &top.values, top.vectors.as_ref());
    assert!(bound <= 1e-11, "{bound}");
    assert!(info.max_residual <= 1e-11 && (info.max_residual - bound).abs() < 1e-12);
}

#[test]
fn topk_krylov_on_low_rank_and_clustered_spectra_matches_full_solve() {
    // Rank 5 < k = 8: the Krylov space is exhausted after one block, later blocks lie in it
    // numerically (the ill-conditioned blocks go through Householder QR and random
    // replacement, not CholQR); then a cluster of 12 near-equal values at the top.
    let n = 400;
    let low: Vec<f64> = (0..n)
        .map(|i| if i < 5 { 10.0 - i as f64 } else { 0.0 })
        .collect();
    let cluster: Vec<f64> = (0..n)
        .map(|i| {
            if i < 12 {
                5.0 + 1e-9 * i as f64
            } else {
                1.0 / (1 + i) as f64
            }
        })
        .collect();
    for (values, seed) in [(low, 41), (cluster, 42)] {
        let k = with_spectrum(&values, seed);
        let (top, info) =
            eigh_topk_with(k.as_ref(), 8, TopkParams::default(), &mut no_cancel(), PAR).unwrap();
        assert_eq!(info.method, TopkMethod::Krylov, "{info:?}");
        let full = eigh(k.as_ref(), PAR).unwrap();
        for i in 0..8 {
            assert!((top.values[i] - full.values[i]).abs() < 1e-10 * full.values[0]);
        }
        let bound = residual_bound(k.as_ref(), &top.values, top.vectors.as_ref());
        assert!(bound <= 1e-11, "{bound}");
        let gram_v = naive_abt(top.vectors.transpose(), top.vectors.transpose());
        assert!(max_rel(gram_v.as_ref(), Mat::<f64>::identity(8, 8).as_ref()) < 1e-12);
    }
}

#[test]
fn topk_small_problem_uses_dense() {
    let x = random(10, 10, 8);
    let k = Mat::from_fn(10, 10, |i, j| x[(i, j)] + x[(j, i)]);
    let (top, info) =
        eigh_topk_with(k.as_ref(), 3, TopkParams::default(), &mut no_cancel(), PAR).unwrap();
    assert_eq!(info.method, TopkMethod::Dense);
    let full = eigh(k.as_ref(), PAR).unwrap();
    assert_eq!(top.values, full.values[..3].to_vec());
    assert!(info.max_residual < 1e-13);
}

#[test]
fn topk_degenerate_eigenvalues_subspaces_match() {
    // Four copies of 10, three of 7, then a simple spectrum: k = 6 cuts through the 7s.
    let n = 400;
    let mut values: Vec<f64> = vec![10.0; 4];
    values.extend([7.0; 3]);
    values.extend((0..n - 7).map(|i| 3.0 * (1.0 - i as f64 / n as f64)));
    let k = with_spectrum(&values, 9);
    let params = TopkParams {
        basis_blocks: Some(4),
        ..TopkParams::default()
    };
    let (top, info) = eigh_topk_with(k.as_ref(), 6, params, &mut no_cancel(), PAR).unwrap();
    assert_eq!(info.method, TopkMethod::Krylov, "{info:?}");
    let full = eigh(k.as_ref(), PAR).unwrap();
    for i in 0..6 {
        assert!((top.values[i] - values[i]).abs() < 1e-10 * 10.0);
    }
    // The 10-eigenspace is returned whole; the 7s partly (any two of the three are right).
    let d = projector_distance(
        top.vectors.as_ref().subcols(0, 4),
        full.vectors.as_ref().subcols(0, 4),
    );
    assert!(d < 1e-8, "{d}");
    let seven = full.vectors.as_ref().subcols(4, 3);
    for c in 4..6 {
        let v = top.vectors.col(c);
        let inside: f64 = (0..3)
            .map(|s| (0..n).map(|i| v[i] * seven[(i, s)]).sum::<f64>().powi(2))
            .sum();
        assert!((inside - 1.0).abs() < 1e-8, "{inside}");
    }
}

#[test]
fn topk_krylov_on_badly_scaled_matrices_scales_back() {
    let n = 300;
    let values: Vec<f64> = (0..n).map(|i| 0.97f64.powi(i as i32)).collect();
    let k = with_spectrum(&values, 15);
    for e in [-400, 400] {
        let s = 2f64.powi(e); // exact: the scaled matrix has the scaled spectrum
        let ks = Mat::from_fn(n, n, |i, j| k[(i, j)] * s);
        let (top, info) =
            eigh_topk_with(ks.as_ref(), 3, TopkParams::default(), &mut no_cancel(), PAR).unwrap();
        assert_eq!(info.method, TopkMethod::Krylov, "{info:?}");
        for i in 0..3 {
            assert!(
                (top.values[i] / s - values[i]).abs() < 1e-9,
                "2^{e}: {:?}",
                top.values
            );
        }
    }
}

#[test]
fn topk_method_names_are_the_bindings_strings() {
    assert_eq!(TopkMethod::Dense.name(), "dense");
    assert_eq!(TopkMethod::Krylov.name(), "krylov");
    assert_eq!(TopkMethod::DenseFallback.name(), "dense-fallback");
}

#[test]
fn topk_settings_are_checked_at_their_bounds() {
    let k = Mat::from_fn(10, 10, |i, j| if i == j { (10 - i) as f64 } else { 0.0 });
    let solve = |params: TopkParams| {
        eigh_topk_with(k.as_ref(), 2, params, &mut no_cancel(), PAR).map(|(top, _)| top.values)
    };
    let arg = |params: TopkParams| match solve(params) {
        Err(CoreError::OutOfRange { arg, .. }) => arg,
        other => panic!("{other:?}"),
    };
    let with = |f: fn(&mut TopkParams)| {
        let mut p = TopkParams::default();
        f(&mut p);
        p
    };
    assert_eq!(arg(with(|p| p.block = Some(0))), "block");
    assert_eq!(arg(with(|p| p.block = Some(11))), "block");
    assert_eq!(
        solve(with(|p| p.block = Some(10))).unwrap(),
        vec![10.0, 9.0]
    );
    assert_eq!(arg(with(|p| p.tolerance = Some(1.0))), "tol");
    assert_eq!(arg(with(|p| p.tolerance = Some(f64::EPSILON / 2.0))), "tol");
    assert!(solve(with(|p| p.tolerance = Some(f64::EPSILON))).is_ok());
    assert!(solve(with(|p| p.tolerance = Some(0.5))).is_ok());
    assert_eq!(arg(with(|p| p.basis_blocks = Some(2))), "basis_blocks");
    assert_eq!(arg(with(|p| p.basis_blocks = Some(257))), "basis_blocks");
    assert!(solve(with(|p| p.basis_blocks = Some(3))).is_ok());
    assert!(solve(with(|p| p.basis_blocks = Some(256))).is_ok());
    assert_eq!(arg(with(|p| p.max_cycles = 0)), "maxiter");
}

#[test]
fn cancel_callback_stops_the_iteration() {
    let j = random(700, 120, 13);
    let k = gram(j.as_ref(), PAR).unwrap();
    let mut polls = 0;
    let mut cancel = || {
        polls += 1;
        if polls >= 3 {
            Err(CoreError::Interrupted)
        } else {
            Ok(())
        }
    };
    let got = eigh_topk_with(k.as_ref(), 6, TopkParams::default(), &mut cancel, PAR);
    assert!(matches!(got, Err(CoreError::Interrupted)));
    assert_eq!(polls, 3);
}

#[test]
fn unreachable_tolerance_stagnates_instead_of_running_all_cycles() {
    let j = random(700, 120, 14);
    let k = gram(j.as_ref(), PAR).unwrap();
    let params = TopkParams {
        tolerance: Some(f64::EPSILON),
        ..TopkParams::default()
    };
    let (top, info) = eigh_topk_with(k.as_ref(), 6, params, &mut no_cancel(), PAR).unwrap();
    assert_eq!(info.method, TopkMethod::DenseFallback, "{info:?}");
    assert!(info.stagnated && info.cycles < 60, "{info:?}");
    let full = eigh(k.as_ref(), PAR).unwrap();
    assert_eq!(top.values, full.values[..6].to_vec());
}

/// A dense matrix seen only through products, counting them; each product waits `delay`
/// first (an expensive operator, as an eNTK's is).
struct Counted<'a> {
    k: MatRef<'a, f64>,
    columns: usize,
    widest: usize,
    delay: std::time::Duration,
}

impl<'a> Counted<'a> {
    fn new(k: MatRef<'a, f64>) -> Self {
        Counted {
            k,
            columns: 0,
            widest: 0,
            delay: std::time::Duration::ZERO,
        }
    }
}

impl SymmetricOperator<f64> for Counted<'_> {
    fn dim(&self) -> usize {
        self.k.nrows()
    }
    fn apply(
        &mut self,
        x: MatRef<'_, f64>,
        out: faer::MatMut<'_, f64>,
        par: Par,
    ) -> CoreResult<()> {
        std::thread::sleep(self.delay);
        self.columns += x.ncols();
        self.widest = self.widest.max(x.ncols());
        DenseOperator::new(self.k).apply(x, out, par)
    }
}

#[test]
fn operator_finds_every_copy_beyond_block_size_and_k() {
    // Multiplicity 12 at the top (more than k = 5 and than the block of 3), then 9 (×2).
    let n = 300;
    let mut values: Vec<f64> = vec![20.0; 12];
    values.extend([9.0; 2]);
    values.extend((0..n - 14).map(|i| 5.0 * (1.0 - i as f64 / n as f64)));
    let k = with_spectrum(&values, 10);
    for (want, block) in [(5, 3), (14, 3), (13, 4)] {
        let mut op = Counted::new(k.as_ref());
        let params = TopkParams {
            block: Some(block),
            ..TopkParams::default()
        };
        let (top, info) = eigh_topk_operator(&mut op, want, params, &mut no_cancel(), PAR).unwrap();
        assert!(info.converged, "{info:?}");
        assert_eq!(op.widest, block);
        assert_eq!(info.n_matvec, op.columns, "{info:?}");
        for i in 0..want {
            assert!(
                (top.values[i] - values[i]).abs() < 1e-9 * 20.0,
                "k={want} b={block} {i}: {} vs {}",
                top.values[i],
                values[i]
            );
        }
        let bound = residual_bound(k.as_ref(), &top.values, top.vectors.as_ref());
        assert!(bound <= info.tolerance * 1.01, "{bound} {info:?}");
        let full = eigh(k.as_ref(), PAR).unwrap();
        if want >= 12 {
            let d = projector_distance(
                top.vectors.as_ref().subcols(0, 12),
                full.vectors.as_ref().subcols(0, 12),
            );
            assert!(d < 1e-8, "{d}");
        }
    }
}

#[test]
fn operator_stops_growing_the_basis_once_converged() {
    // A wide gap after the top 4: their Krylov residuals fall below 1e-11 long before a
    // 12-block basis is full, and an expensive operator is then not applied further.
    let n = 400;
    let mut values: Vec<f64> = vec![100.0, 90.0, 80.0, 70.0];
    values.extend((0..n - 4).map(|i| 1.0 - i as f64 / n as f64));
    let k = with_spectrum(&values, 21);
    let params = TopkParams {
        block: Some(4),
        basis_blocks: Some(12),
        ..TopkParams::default()
    };
    let mut slow = Counted {
        delay: std::time::Duration::from_millis(20),
        ..Counted::new(k.as_ref())
    };
    let (top, info) = eigh_topk_operator(&mut slow, 4, params, &mut no_cancel(), PAR).unwrap();
    assert!(info.converged, "{info:?}");
    assert!(info.n_matvec < 48, "the full basis was built: {info:?}");
    for i in 0..4 {
        assert!(
            (top.values[i] - values[i]).abs() < 1e-9,
            "{i}: {}",
            top.values[i]
        );
    }
    let bound = residual_bound(k.as_ref(), &top.values, top.vectors.as_ref());
    assert!(bound <= info.tolerance * 1.01, "{bound} {info:?}");
    // The dense entry point (cheap products) fills its basis as before.
    let (_, dense) = eigh_topk_with(k.as_ref(), 4, params, &mut no_cancel(), PAR).unwrap();
    assert!(dense.n_matvec >= 48, "{dense:?}");
}

#[test]
fn operator_f32_is_accurate_to_its_tolerance() {
    let n = 300;
    let values: Vec<f64> = (0..n).map(|i| 0.97f64.powi(i as i32)).collect();
    let k = with_spectrum(&values, 12);
    let k32 = Mat::<f32>::from_fn(n, n, |i, j| k[(i, j)] as f32);
    let (top, info) = eigh_topk_with(
        k32.as_ref(),
        4,
        TopkParams {
            basis_blocks: Some(3),
            ..TopkParams::default()
        },
        &mut no_cancel(),
        PAR,
    )
    .unwrap();
    assert_eq!(info.method, TopkMethod::Krylov, "{info:?}");
    for i in 0..4 {
        assert!(
            // |θ − λ| ≤ ‖r‖ ≤ tol·λ_1 (Weyl), here with λ_1 = 1 and tol = 1e-4.
            (top.values[i] as f64 - values[i]).abs() < info.tolerance,
            "{i}: {} vs {} {info:?}",
            top.values[i],
            values[i]
        );
    }
    let top64 = Mat::from_fn(n, 4, |i, j| top.vectors[(i, j)] as f64);
    let values64: Vec<f64> = top.values.iter().map(|&v| v as f64).collect();
    assert!(residual_bound(k.as_ref(), &values64, top64.as_ref()) < 2e-4);
    // sin∠(v, u) ≤ ‖r‖ / gap (Davis–Kahan; gap ≥ 0.03 here).
    let full = eigh(k.as_ref(), PAR).unwrap();
    for i in 0..4 {
        let d = projector_distance(
            top64.as_ref().subcols(i, 1),
            full.vectors.as_ref().subcols(i, 1),
        );
        assert!(d < 1e-4 / 0.03, "{i}: {d}");
    }
}

#[test]
fn operator_reports_the_true_residuals() {
    // Repeated top eigenvalue (6 copies, block 2): pairs come from several phases, and the
    // reported residuals are remeasured on K; they must match an independent computation.
    let n = 200;
    let mut values: Vec<f64> = vec![4.0; 6];
    values.extend((0..n - 6).map(|i| 2.0 * (1.0 - i as f64 / n as f64)));
    let k = with_spectrum(&values, 16);
    let mut op = Counted::new(k.as_ref());
    let params = TopkParams {
        block: Some(2),
        ..TopkParams::default()
    };
    let (top, info) = eigh_topk_operator(&mut op, 4, params, &mut no_cancel(), PAR).unwrap();
    assert!(info.converged, "{info:?}");
    let bound = residual_bound(k.as_ref(), &top.values, top.vectors.as_ref());
    assert!(
        (info.max_residual - bound).abs() < 1e-13,
        "{} vs {bound}",
        info.max_residual
    );
}

#[test]
fn single_vector_blocks_still_find_every_copy() {
    // Block 1 sees one direction of the 3-fold eigenvalue per phase; the search for missed
    // copies must replace the 9 with a second 20.
    let n = 200;
    let mut values: Vec<f64> = vec![20.0, 20.0, 20.0, 9.0];
    values.extend((0..n - 4).map(|i| 5.0 * (1.0 - i as f64 / n as f64)));
    let k = with_spectrum(&values, 17);
    for want in [2, 3, 4] {
        let mut op = Counted::new(k.as_ref());
        let params = TopkParams {
            block: Some(1),
            ..TopkParams::default()
        };
        let (top, info) = eigh_topk_operator(&mut op, want, params, &mut no_cancel(), PAR).unwrap();
        assert!(info.converged, "{info:?}");
        for i in 0..want {
            assert!(
                (top.values[i] - values[i]).abs() < 1e-8,
                "{want}: {:?}",
                top.values
            );
        }
    }
}
