//! Integration tests of entk-core against naive reference loops and closed forms.

// Index loops mirror the formulas they check.
#![allow(clippy::needless_range_loop)]

use entk_core::hadamard::FactoredTerm;
use entk_core::*;
use faer::{Mat, MatRef, Par};

fn lcg(seed: u64) -> impl FnMut() -> f64 {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }
}

fn random(rows: usize, cols: usize, seed: u64) -> Mat<f64> {
    let mut r = lcg(seed);
    Mat::from_fn(rows, cols, |_, _| r())
}

fn naive_abt(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> Mat<f64> {
    Mat::from_fn(a.nrows(), b.nrows(), |i, j| {
        (0..a.ncols()).map(|p| a[(i, p)] * b[(j, p)]).sum()
    })
}

fn max_rel(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> f64 {
    let mut worst = 0.0f64;
    let mut scale = f64::MIN_POSITIVE;
    for j in 0..a.ncols() {
        for i in 0..a.nrows() {
            worst = worst.max((a[(i, j)] - b[(i, j)]).abs());
            scale = scale.max(b[(i, j)].abs());
        }
    }
    worst / scale
}

const PAR: Par = Par::Seq;

#[test]
fn gram_matches_naive_and_is_symmetric() {
    for (r, p) in [(1, 1), (3, 17), (40, 5), (130, 70)] {
        let j = random(r, p, (r * 100 + p) as u64);
        let k = gram(j.as_ref(), Par::rayon(2)).unwrap();
        assert!(max_rel(k.as_ref(), naive_abt(j.as_ref(), j.as_ref()).as_ref()) < 1e-13);
        for a in 0..r {
            for b in 0..r {
                assert_eq!(k[(a, b)], k[(b, a)]);
            }
        }
    }
}

#[test]
fn accumulate_over_column_blocks_equals_gram() {
    let j = random(50, 33, 1);
    let mut k = Mat::<f64>::zeros(50, 50);
    for start in (0..33).step_by(10) {
        let width = (33 - start).min(10);
        gram_accumulate(k.as_mut(), j.as_ref().subcols(start, width), 1.0, PAR).unwrap();
    }
    assert!(max_rel(k.as_ref(), gram(j.as_ref(), PAR).unwrap().as_ref()) < 1e-13);
}

#[test]
fn cross_matches_naive() {
    let a = random(20, 9, 2);
    let b = random(7, 9, 3);
    let c = gram_cross(a.as_ref(), b.as_ref(), PAR).unwrap();
    assert!(max_rel(c.as_ref(), naive_abt(a.as_ref(), b.as_ref()).as_ref()) < 1e-14);
}

#[test]
fn tiled_parallel_products_match_naive_in_both_memory_orders() {
    // Orders above the tile side (64 to 256), not multiples of it, several thread counts:
    // every tile boundary, the diagonal tiles and the ragged last row/column are exercised.
    // 1030 rows: the Gram takes its tiled path (faer's own triangular product below 1024)
    for (r, s, p, threads) in [
        (300, 170, 40, 2),
        (523, 300, 9, 3),
        (140, 700, 13, 16),
        (1030, 50, 7, 3),
    ] {
        let j = random(r, p, (r + s) as u64);
        let b = random(s, p, (r * s) as u64);
        let jt = j.transpose().to_owned();
        let row_major = jt.as_ref().transpose();
        let want = naive_abt(j.as_ref(), j.as_ref());
        for view in [j.as_ref(), row_major] {
            let k = gram(view, Par::rayon(threads)).unwrap();
            assert!(max_rel(k.as_ref(), want.as_ref()) < 1e-13, "{r} {threads}");
            for a in 0..r {
                for c in 0..a {
                    assert_eq!(k[(a, c)], k[(c, a)]);
                }
            }
            let mut acc = Mat::<f64>::identity(r, r);
            gram_accumulate(acc.as_mut(), view, -0.5, Par::rayon(threads)).unwrap();
            let expect = Mat::from_fn(r, r, |a, c| f64::from(a == c) - 0.5 * want[(a, c)]);
            assert!(max_rel(acc.as_ref(), expect.as_ref()) < 1e-13);
            let cross = gram_cross(view, b.as_ref(), Par::rayon(threads)).unwrap();
            let expect = naive_abt(j.as_ref(), b.as_ref());
            assert!(max_rel(cross.as_ref(), expect.as_ref()) < 1e-13);
        }
    }
}

#[test]
fn hadamard_accumulate_matches_kron_formula() {
    let (n, block, q) = (300, 2, 5); // 600 rows: more than one 256-row tile
    let g = random(n * block, q, 4);
    let a = random(n, 3, 5);
    let s = naive_abt(a.as_ref(), a.as_ref());
    let mut k = Mat::<f64>::zeros(n * block, n * block);
    hadamard_gram_accumulate(
        k.as_mut(),
        g.as_ref(),
        s.as_ref(),
        block,
        0.5,
        Par::rayon(2),
    )
    .unwrap();
    let gg = naive_abt(g.as_ref(), g.as_ref());
    let want = Mat::from_fn(n * block, n * block, |i, j| {
        0.5 * s[(i / block, j / block)] * gg[(i, j)]
    });
    assert!(max_rel(k.as_ref(), want.as_ref()) < 1e-13);
}

/// Brute force of the position kernels: `start + alpha · Σ_{t,u} S[t·m + i/block, u·m + j/block]
/// · (G Gᵀ)[t·R + i, u·R + j]` with S the input Gram, m = R / block, every pair and column.
fn positions_brute_force(
    start: &Mat<f64>,
    s: &Mat<f64>,
    g: MatRef<'_, f64>,
    positions: usize,
    block: usize,
    alpha: f64,
) -> Mat<f64> {
    let r = start.nrows();
    let m = r / block;
    let gg = naive_abt(g, g);
    Mat::from_fn(r, r, |i, j| {
        let mut sum = start[(i, j)];
        for pt in 0..positions {
            for pu in 0..positions {
                sum += alpha
                    * s[(pt * m + i / block, pu * m + j / block)]
                    * gg[(pt * r + i, pu * r + j)];
            }
        }
        sum
    })
}

#[test]
fn hadamard_positions_accumulate_matches_the_sum_over_position_pairs() {
    // 3 positions, 130 samples of 2 rows (260 rows: two row tiles of 256 rows), inputs of
    // width 4; position 2's inputs never meet the others' (a zero block of S is skipped).
    let (t, n, block, q) = (3, 130, 2, 6);
    let r = n * block;
    let g = random(t * r, q, 11);
    let mut a = random(t * n, 4, 12);
    for i in 2 * n..3 * n {
        for c in 0..2 {
            a[(i, c)] = 0.0;
        }
    }
    for i in 0..2 * n {
        for c in 2..4 {
            a[(i, c)] = 0.0;
        }
    }
    let s = naive_abt(a.as_ref(), a.as_ref());
    let mut k = Mat::<f64>::from_fn(r, r, |i, j| ((i + j) % 7) as f64);
    let before = k.clone();
    entk_core::hadamard::hadamard_gram_positions_accumulate(
        k.as_mut(),
        g.as_ref(),
        s.as_ref(),
        t,
        block,
        0.25,
        Par::rayon(2),
    )
    .unwrap();
    let want = positions_brute_force(&before, &s, g.as_ref(), t, block, 0.25);
    assert!(max_rel(k.as_ref(), want.as_ref()) < 1e-13);
    // rows of G that are not a multiple of the positions: an error naming the argument
    let err = entk_core::hadamard::hadamard_gram_positions_accumulate(
        k.as_mut(),
        g.subrows(0, t * r - 1),
        s.as_ref(),
        t,
        block,
        1.0,
        PAR,
    )
    .unwrap_err();
    assert!(err.to_string().contains("positions"), "{err}");
}

#[test]
fn hadamard_factored_accumulate_equals_the_input_gram_form() {
    // 2 positions, 150 samples of 3 rows (450 rows: several 128-row tiles, tiles that start
    // inside a sample's block of rows).
    let (t, n, block, q, d) = (2, 150, 3, 5, 4);
    let r = n * block;
    let g = random(t * r, q, 21);
    let a = random(t * n, d, 22);
    let s = naive_abt(a.as_ref(), a.as_ref());
    let start = Mat::<f64>::from_fn(r, r, |i, j| ((i * j) % 5) as f64);
    let mut want = start.clone();
    entk_core::hadamard::hadamard_gram_positions_accumulate(
        want.as_mut(),
        g.as_ref(),
        s.as_ref(),
        t,
        block,
        0.5,
        PAR,
    )
    .unwrap();
    let mut k = start.clone();
    entk_core::hadamard::hadamard_gram_factored_accumulate(
        k.as_mut(),
        g.as_ref(),
        a.as_ref(),
        t,
        block,
        0.5,
        Par::rayon(2),
    )
    .unwrap();
    assert!(max_rel(k.as_ref(), want.as_ref()) < 1e-13);
    let err = entk_core::hadamard::hadamard_gram_factored_accumulate(
        k.as_mut(),
        g.as_ref(),
        a.subrows(0, t * n - 1),
        t,
        block,
        1.0,
        PAR,
    )
    .unwrap_err();
    assert!(err.to_string().contains('A'), "{err}");
}

#[test]
fn eigh_diagonal_closed_form_descending() {
    let d = [3.0f64, -1.0, 7.0, 0.5];
    let k = Mat::from_fn(4, 4, |i, j| if i == j { d[i] } else { 0.0 });
    let pairs = eigh(k.as_ref(), PAR).unwrap();
    assert_eq!(pairs.values, vec![7.0, 3.0, 0.5, -1.0]);
    assert!((pairs.vectors[(2, 0)].abs() - 1.0f64).abs() < 1e-15);
}

#[test]
fn eigh_reconstructs_random_symmetric() {
    let x = random(60, 60, 6);
    let k = Mat::from_fn(60, 60, |i, j| x[(i, j)] + x[(j, i)]);
    let pairs = eigh(k.as_ref(), PAR).unwrap();
    let v = &pairs.vectors;
    let rebuilt = Mat::from_fn(60, 60, |i, j| {
        (0..60)
            .map(|c| v[(i, c)] * pairs.values[c] * v[(j, c)])
            .sum()
    });
    assert!(max_rel(rebuilt.as_ref(), k.as_ref()) < 1e-12);
    assert!(pairs.values.windows(2).all(|w| w[0] >= w[1]));
}

#[test]
fn eigh_f32_is_as_accurate_as_its_input() {
    // A Wishart matrix rounded to f32: its exact eigenpairs (f64 solve of the same f32
    // entries) against ours. faer's own f32 solver was off by 6e-5·‖K‖ here (2e-3 residuals).
    let n = 400;
    let x = random(n, 2 * n, 11);
    let wide = naive_abt(x.as_ref(), x.as_ref());
    let k32 = Mat::from_fn(n, n, |i, j| wide[(i, j)] as f32);
    let k64 = Mat::from_fn(n, n, |i, j| k32[(i, j)] as f64);
    let exact = eigh(k64.as_ref(), PAR).unwrap();
    let ours = eigh(k32.as_ref(), PAR).unwrap();
    let top = exact.values[0];
    let worst = (0..n)
        .map(|i| (ours.values[i] as f64 - exact.values[i]).abs() / top)
        .fold(0.0, f64::max);
    assert!(worst < 1e-6, "eigenvalue error {worst:e} of ‖K‖");
    let vectors = Mat::from_fn(n, n, |i, j| ours.vectors[(i, j)] as f64);
    let values: Vec<f64> = ours.values.iter().map(|&v| v as f64).collect();
    let residual = residual_bound(k64.as_ref(), &values, vectors.as_ref());
    assert!(residual < 1e-5, "residual {residual:e} of ‖K‖");
}

fn no_cancel() -> impl FnMut() -> CoreResult<()> {
    || Ok(())
}

/// ‖P_a − P_b‖_max of the projectors onto the column spans of two orthonormal bases.
fn projector_distance(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> f64 {
    let pa = naive_abt(a, a);
    let pb = naive_abt(b, b);
    let mut worst = 0.0f64;
    for j in 0..pa.ncols() {
        for i in 0..pa.nrows() {
            worst = worst.max((pa[(i, j)] - pb[(i, j)]).abs());
        }
    }
    worst
}

/// Q diag(values) Qᵀ for a random orthogonal Q (n = values.len()).
fn with_spectrum(values: &[f64], seed: u64) -> Mat<f64> {
    let n = values.len();
    let x = random(n, n, seed);
    let q = x.qr().compute_thin_Q();
    Mat::from_fn(n, n, |i, j| {
        let s: f64 = (0..n).map(|c| q[(i, c)] * values[c] * q[(j, c)]).sum();
        let t: f64 = (0..n).map(|c| q[(j, c)] * values[c] * q[(i, c)]).sum();
        0.5 * (s + t)
    })
}

/// max_j ‖K v_j − λ_j v_j‖ / |λ_1|, computed independently of the solver.
fn residual_bound(k: MatRef<'_, f64>, values: &[f64], vectors: MatRef<'_, f64>) -> f64 {
    let kv = naive_abt(k, vectors.transpose());
    let top = values[0].abs().max(f64::MIN_POSITIVE);
    (0..values.len())
        .map(|j| {
            (0..k.nrows())
                .map(|i| (kv[(i, j)] - values[j] * vectors[(i, j)]).powi(2))
                .sum::<f64>()
                .sqrt()
                / top
        })
        .fold(0.0, f64::max)
}

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

#[test]
fn subnormal_and_huge_scales_are_solved() {
    for scale in [1e-310, 1e-300, 1e300] {
        let k = Mat::from_fn(
            4,
            4,
            |i, j| if i == j { (i + 1) as f64 * scale } else { 0.0 },
        );
        let pairs = eigh(k.as_ref(), PAR).unwrap();
        for (i, v) in pairs.values.iter().enumerate() {
            assert!(
                (v - (4 - i) as f64 * scale).abs() <= 1e-12 * 4.0 * scale + 5e-324,
                "{v}"
            );
        }
        let a = Mat::from_fn(3, 1, |i, _| [1.0, 0.0, 0.0][i] * scale);
        let b = Mat::from_fn(3, 1, |i, _| [1.0, 1.0, 0.0][i] * scale);
        let angles = principal_angles(a.as_ref(), b.as_ref(), PAR).unwrap();
        assert!((angles[0] - std::f64::consts::FRAC_PI_4).abs() < 1e-12);
    }
    let k32 = Mat::<f32>::from_fn(4, 4, |i, j| if i == j { 1e-40 } else { 0.0 });
    let pairs = eigh(k32.as_ref(), PAR).unwrap();
    assert!(pairs.values.iter().all(|&v| (v - 1e-40).abs() < 1e-44));
}

#[test]
fn allocation_failure_is_an_error_not_a_panic() {
    // A (1e7 × 1) Jacobian viewed without memory: its Gram would need 800 TB.
    let one = [1.0f64];
    let j = unsafe { MatRef::from_raw_parts(one.as_ptr(), 10_000_000, 1, 0, 0) };
    match gram(j, PAR) {
        Err(CoreError::OutOfMemory { what, bytes }) => {
            assert_eq!(what, "gram");
            assert_eq!(bytes, 8 * 10_000_000usize.pow(2));
        }
        other => panic!("{other:?}"),
    }
    let msg = gram(j, PAR).unwrap_err().to_string();
    assert!(msg.starts_with("gram: could not allocate"), "{msg}");
}

#[test]
fn angles_closed_form() {
    let t = 0.4f64;
    let a = Mat::from_fn(3, 1, |i, _| [1.0, 0.0, 0.0][i]);
    let b = Mat::from_fn(3, 1, |i, _| [t.cos(), t.sin(), 0.0][i]);
    let angles = principal_angles(a.as_ref(), b.as_ref(), PAR).unwrap();
    assert!((angles[0] - t).abs() < 1e-15);
    let overlap = subspace_overlap(a.as_ref(), b.as_ref(), PAR).unwrap();
    assert!((overlap - t.cos().powi(2)).abs() < 1e-15);
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let empty = Mat::<f64>::zeros(0, 3);
    assert!(matches!(
        gram(empty.as_ref(), PAR),
        Err(CoreError::Empty { arg: "J" })
    ));
    let mut nan = Mat::<f64>::zeros(2, 2);
    nan[(1, 0)] = f64::NAN;
    assert!(matches!(
        gram(nan.as_ref(), PAR),
        Err(CoreError::NonFinite {
            arg: "J",
            row: 1,
            col: 0
        })
    ));
    let rect = Mat::<f64>::zeros(2, 3);
    assert!(matches!(
        eigh(rect.as_ref(), PAR),
        Err(CoreError::Shape { arg: "K", .. })
    ));
    let mut asym = Mat::<f64>::identity(2, 2);
    asym[(0, 1)] = 1.0;
    assert!(matches!(
        eigh(asym.as_ref(), PAR),
        Err(CoreError::NotSymmetric { .. })
    ));
    let eye = Mat::<f64>::identity(3, 3);
    assert!(matches!(
        eigh_topk(eye.as_ref(), 0, PAR),
        Err(CoreError::OutOfRange { arg: "k", .. })
    ));
    assert!(matches!(
        eigh_topk(eye.as_ref(), 4, PAR),
        Err(CoreError::OutOfRange { arg: "k", .. })
    ));
    let mut k = Mat::<f64>::zeros(3, 3);
    let g = Mat::<f64>::zeros(3, 1);
    let err = hadamard_gram_accumulate(k.as_mut(), g.as_ref(), eye.as_ref(), 2, 1.0, PAR);
    assert!(matches!(
        err,
        Err(CoreError::OutOfRange { arg: "block", .. })
    ));
    let zero = Mat::<f64>::zeros(3, 2);
    assert!(principal_angles(zero.as_ref(), eye.as_ref(), PAR).is_err());
    let msg = gram(empty.as_ref(), PAR).unwrap_err().to_string();
    assert!(msg.starts_with("J: expected a non-empty array"), "{msg}");
}

#[test]
fn f32_paths_work_and_are_accurate() {
    let j = Mat::<f32>::from_fn(30, 8, |i, p| ((i * 7 + p * 3) % 11) as f32 - 5.0);
    let k = gram(j.as_ref(), PAR).unwrap();
    let j64 = Mat::from_fn(30, 8, |i, p| j[(i, p)] as f64);
    let k64 = naive_abt(j64.as_ref(), j64.as_ref());
    let k_err = Mat::from_fn(30, 30, |a, b| k[(a, b)] as f64);
    assert!(max_rel(k_err.as_ref(), k64.as_ref()) < 1e-6);
    let pairs = eigh(k.as_ref(), PAR).unwrap();
    let want = eigh(k64.as_ref(), PAR).unwrap();
    assert!(pairs.values.windows(2).all(|w| w[0] >= w[1]));
    for i in 0..30 {
        assert!((pairs.values[i] as f64 - want.values[i]).abs() < 1e-5 * want.values[0]);
    }
    let top = eigh_topk(k.as_ref(), 2, PAR).unwrap();
    let v64 = Mat::from_fn(30, 2, |i, c| top.vectors[(i, c)] as f64);
    assert!(projector_distance(v64.as_ref(), want.vectors.as_ref().subcols(0, 2)) < 1e-4);
}

#[test]
fn thread_pool_resizes_and_survives_a_fork_marker() {
    threads::set_num_threads(1);
    assert_eq!(threads::num_threads(), 1);
    let n = threads::install(|par| matches!(par, Par::Seq));
    assert!(n);
    // A forked child rebuilds its pool with the count the parent set, not all cores...
    threads::after_fork_in_child();
    assert_eq!(threads::num_threads(), 1);
    // ...and a count set first thing in the child is kept.
    threads::after_fork_in_child();
    threads::set_num_threads(3);
    assert_eq!(threads::num_threads(), 3);
    threads::set_num_threads(0);
    assert!(threads::num_threads() >= 1);
}

// --- Tests that kill mutants cargo-mutants found alive (README, "Mutation testing") ---

#[test]
fn gram_accumulate_refuses_exactly_the_updates_that_could_overflow() {
    let refused = |k0: f64, j: &Mat<f64>, alpha: f64| {
        let mut k = Mat::from_fn(j.nrows(), j.nrows(), |a, b| if a == b { k0 } else { 0.0 });
        let got = gram_accumulate(k.as_mut(), j.as_ref(), alpha, PAR);
        if got.is_err() {
            assert!(matches!(got, Err(CoreError::Solver(_))), "{got:?}");
            assert_eq!(k[(0, 0)], k0, "K must be left unchanged");
        }
        got.is_err()
    };
    let big = f64::MAX;
    // K's own entries count: 0.3·MAX is already past the 4× margin below MAX.
    assert!(refused(0.3 * big, &Mat::from_fn(1, 1, |_, _| 0.5), 1.0));
    // Every column adds a square: 1000 columns of 1e153 sum to 1e309.
    assert!(refused(0.0, &Mat::from_fn(1, 1000, |_, _| 1e153), 1.0));
    // alpha multiplies the squares: 1e300 · (1e5)² = 1e310.
    assert!(refused(0.0, &Mat::from_fn(1, 1, |_, _| 1e5), 1e300));
    // Well inside the range the update is made, exactly: 10 · (1e152)² = 1e305.
    let j = Mat::from_fn(1, 10, |_, _| 1e152);
    let mut k = Mat::<f64>::zeros(1, 1);
    gram_accumulate(k.as_mut(), j.as_ref(), 1.0, PAR).unwrap();
    assert!((k[(0, 0)] / 1e305 - 1.0).abs() < 1e-14, "{}", k[(0, 0)]);
}

#[test]
fn policy_closed_forms() {
    use entk_core::policy::*;
    let p2 = |e: i32| 2f64.powi(e);
    // Asymmetry allowed: √eps of the largest entry, per dtype.
    assert_eq!(symmetry_tolerance(4.0f64), f64::EPSILON.sqrt() * 4.0);
    assert_eq!(
        symmetry_tolerance(4.0f32),
        (f32::EPSILON as f64).sqrt() * 4.0
    );
    let mut k = Mat::from_fn(2, 2, |i, j| if i == j { 1e4 } else { 1.0 });
    k[(1, 0)] = 1.0 + 1e-4; // 1e-4 < √eps · 1e4 ≈ 1.5e-4: symmetric enough
    assert!(eigh(k.as_ref(), PAR).is_ok());
    k[(1, 0)] = 1.0 + 2e-4;
    assert!(matches!(
        eigh(k.as_ref(), PAR),
        Err(CoreError::NotSymmetric { .. })
    ));
    // Sums of squares against MAX/4 (f64: 4.49e307; f32: 8.5e37).
    assert!(overflow_safe::<f64>(1e153, 10));
    assert!(!overflow_safe::<f64>(1e153, 100));
    assert!(!overflow_safe::<f64>(1e154, 0)); // no terms counts as one
    assert!(overflow_safe::<f32>(9e18, 1));
    assert!(!overflow_safe::<f32>(1e19, 1));
    // Rescaling outside [1e-100, 1e100] (f64) or [1e-12, 1e12] (f32), by an exact power of two.
    assert_eq!(rescale_exponent::<f64>(p2(-400)), Some(400));
    assert_eq!(rescale_exponent::<f64>(p2(340)), Some(-340));
    assert_eq!(rescale_exponent::<f64>(p2(-330)), None);
    assert_eq!(rescale_exponent::<f64>(p2(330)), None);
    assert_eq!(rescale_exponent::<f64>(0.0), None);
    assert_eq!(rescale_exponent::<f64>(f64::INFINITY), None);
    assert_eq!(rescale_exponent::<f32>(p2(-45)), Some(45));
    assert_eq!(rescale_exponent::<f32>(p2(-39)), None);
    assert_eq!(rescale_exponent::<f32>(p2(41)), Some(-41));
    assert_eq!(pow2_steps::<f64>(1200), vec![p2(500), p2(500), p2(200)]);
    assert_eq!(pow2_steps::<f64>(-1030), vec![p2(-500), p2(-500), p2(-30)]);
    assert!(pow2_steps::<f64>(0).is_empty());
    // Krylov basis width: 16 blocks once the basis is at most a quarter of n, else 10.
    assert_eq!(topk_basis_blocks(2560, 40), 16);
    assert_eq!(topk_basis_blocks(2559, 40), 10);
    assert_eq!(topk_basis_blocks(100, usize::MAX), 10);
    let steps32 = pow2_steps::<f32>(133);
    assert_eq!(steps32, vec![p2(60) as f32, p2(60) as f32, p2(13) as f32]);
    // 3 · 2^-1030 is subnormal but exact: 3 · 2^44 units of 2^-1074.
    let tiny = scale_pow2(3.0f64, &pow2_steps::<f64>(-1030));
    assert_eq!(tiny, f64::from_bits(3 << 44));
    assert_eq!(scale_pow2(3.0f64, &[]), 3.0);
    assert_eq!(topk_tolerance::<f64>(), 1e-11);
    assert_eq!(topk_tolerance::<f32>(), 1e-4);
    assert_eq!(topk_min_tolerance::<f64>(), f64::EPSILON);
    assert_eq!(rank_cutoff::<f64>(3, 5, 2.0), 5.0 * f64::EPSILON * 2.0);
    // Stagnation: two full windows, and the recent best not 10% below the earlier best.
    let w = STAGNATION_WINDOW;
    assert!(!stagnated(&vec![1e-15; 2 * w - 1]));
    let history = |recent: f64| {
        let mut h = vec![1.0; w];
        h.extend(vec![recent; w]);
        h
    };
    assert!(stagnated(&history(0.95)));
    assert!(!stagnated(&history(0.85)));
    let mut late = history(0.95);
    late[2 * w - 1] = 0.5; // progress in the last cycle alone counts
    assert!(!stagnated(&late));
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

#[test]
fn angles_two_small_angles_closed_form() {
    // span(e1, e2) against span(cos a·e1 + sin a·e3, cos b·e2 + sin b·e4): angles a and b, both
    // small (the sine branch), and the sines must pair with the right cosines.
    let (a, b) = (0.1f64, 0.3f64);
    let x = Mat::from_fn(4, 2, |i, j| if i == j { 1.0 } else { 0.0 });
    let cols = [[a.cos(), 0.0, a.sin(), 0.0], [0.0, b.cos(), 0.0, b.sin()]];
    let y = Mat::from_fn(4, 2, |i, j| cols[j][i]);
    let angles = principal_angles(x.as_ref(), y.as_ref(), PAR).unwrap();
    assert!(
        (angles[0] - a).abs() < 1e-14 && (angles[1] - b).abs() < 1e-14,
        "{angles:?}"
    );
    let overlap = subspace_overlap(x.as_ref(), y.as_ref(), PAR).unwrap();
    assert!((overlap - a.cos().powi(2) - b.cos().powi(2)).abs() < 1e-14);
}

#[test]
fn hadamard_accumulates_skip_positions_whose_cotangents_are_zero() {
    // 3 positions of 40 samples, 2 rows each; zero cotangents at some positions (a causal
    // model read at its last position) must give the brute-force sum over every pair.
    let (t, n, block, q, d) = (3, 40, 2, 6, 5);
    let r = n * block;
    let a = random(t * n, d, 31);
    let s = naive_abt(a.as_ref(), a.as_ref());
    for dead in [vec![0], vec![1], vec![0, 1], vec![0, 1, 2]] {
        let mut g = random(t * r, q, 32);
        for &p in &dead {
            for i in 0..r {
                for c in 0..q {
                    g[(p * r + i, c)] = 0.0;
                }
            }
        }
        let start = Mat::<f64>::from_fn(r, r, |i, j| {
            ((i + 2 * j) % 3) as f64 + ((2 * i + j) % 3) as f64
        });
        let want = positions_brute_force(&start, &s, g.as_ref(), t, block, 0.5);
        let mut factored = start.clone();
        entk_core::hadamard::hadamard_gram_factored_accumulate(
            factored.as_mut(),
            g.as_ref(),
            a.as_ref(),
            t,
            block,
            0.5,
            Par::rayon(2),
        )
        .unwrap();
        assert!(
            max_rel(factored.as_ref(), want.as_ref()) < 1e-13,
            "dead {dead:?}"
        );
        let mut positions = start.clone();
        entk_core::hadamard::hadamard_gram_positions_accumulate(
            positions.as_mut(),
            g.as_ref(),
            s.as_ref(),
            t,
            block,
            0.5,
            PAR,
        )
        .unwrap();
        assert!(
            max_rel(positions.as_ref(), want.as_ref()) < 1e-13,
            "dead {dead:?}"
        );
    }
}

#[test]
fn hadamard_factored_uses_only_the_columns_each_position_pair_shares() {
    // Per-position column supports in G (query columns only the last position uses, a zero
    // column inside a span) and in A (an embedding whose indices never meet across two
    // positions): the brute-force sum over every pair and every column.
    let (t, n, block, q, d) = (4, 30, 3, 7, 6);
    let r = n * block;
    let mut g = random(t * r, q, 41);
    let mut a = random(t * n, d, 42);
    for i in 0..r {
        for c in 0..3 {
            g[(i, c)] = 0.0; // position 0: columns 3..7
            g[(r + i, c + 4)] = 0.0; // position 1: columns 0..4, the last three zero
        }
        g[(2 * r + i, 5)] = 0.0; // position 2: a zero column inside its span
        for c in 0..6 {
            g[(3 * r + i, c)] = 0.0; // position 3: column 6 only
        }
    }
    for i in 0..n {
        for c in 0..d {
            // position 0: even samples only columns 0..3; position 1: columns 0..3;
            // position 3: column 5 only, so it meets no other position but 0 and 2
            if c >= 3 && i % 2 == 0 {
                a[(i, c)] = 0.0;
            }
            if c >= 3 {
                a[(n + i, c)] = 0.0;
            }
            if c != 5 {
                a[(3 * n + i, c)] = 0.0;
            }
        }
    }
    let s = naive_abt(a.as_ref(), a.as_ref());
    let start = Mat::<f64>::from_fn(r, r, |i, j| ((i * j) % 4) as f64);
    let want = positions_brute_force(&start, &s, g.as_ref(), t, block, 0.75);
    let mut k = start.clone();
    entk_core::hadamard::hadamard_gram_factored_accumulate(
        k.as_mut(),
        g.as_ref(),
        a.as_ref(),
        t,
        block,
        0.75,
        Par::rayon(2),
    )
    .unwrap();
    assert!(max_rel(k.as_ref(), want.as_ref()) < 1e-13);
}

#[test]
fn hadamard_factored_many_equals_the_brute_force_sum_and_checks_every_term_first() {
    // Two layers adding into one kernel: 2 positions with 3 rows per input row, and 3
    // positions with one (the first position's cotangents zero).
    let (n, block) = (40, 3);
    let r = n * block;
    let g1 = random(2 * r, 5, 51);
    let a1 = random(2 * n, 4, 52);
    let mut g2 = random(3 * r, 6, 53);
    for i in 0..r {
        for c in 0..6 {
            g2[(i, c)] = 0.0;
        }
    }
    let a2 = random(3 * r, 7, 54);
    let start = Mat::<f64>::from_fn(r, r, |i, j| ((i + j) % 5) as f64);
    // brute force: every term, every position pair, every column
    let mut want = start.clone();
    for (g, a, t, b) in [(&g1, &a1, 2, block), (&g2, &a2, 3, 1)] {
        let s = naive_abt(a.as_ref(), a.as_ref());
        want = positions_brute_force(&want, &s, g.as_ref(), t, b, 0.5);
    }
    let terms = [
        FactoredTerm {
            g: g1.as_ref(),
            a: a1.as_ref(),
            positions: 2,
            block,
        },
        FactoredTerm {
            g: g2.as_ref(),
            a: a2.as_ref(),
            positions: 3,
            block: 1,
        },
    ];
    let mut k = start.clone();
    entk_core::hadamard::hadamard_gram_factored_accumulate_many(
        k.as_mut(),
        &terms,
        0.5,
        Par::rayon(2),
    )
    .unwrap();
    assert!(max_rel(k.as_ref(), want.as_ref()) < 1e-13);
    // a bad second term: an error naming it, and K untouched by the first
    let mut bad = g2.clone();
    bad[(r + 2, 1)] = f64::NAN;
    let broken = [
        terms[0],
        FactoredTerm {
            g: bad.as_ref(),
            ..terms[1]
        },
    ];
    let mut k = start.clone();
    let err =
        entk_core::hadamard::hadamard_gram_factored_accumulate_many(k.as_mut(), &broken, 0.5, PAR)
            .unwrap_err();
    assert!(err.to_string().contains('G'), "{err}");
    assert_eq!(k, start);
}
