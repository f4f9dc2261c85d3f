//! Integration tests of entk-core against naive reference loops and closed forms.

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
fn topk_matches_full_solve_on_krylov_path() {
    let j = random(700, 120, 7);
    let k = gram(j.as_ref(), Par::rayon(2)).unwrap();
    let (top, method) =
        eigh_topk_with(k.as_ref(), 6, TopkParams::default(), Par::rayon(2)).unwrap();
    assert!(matches!(method, TopkMethod::Krylov { .. }), "{method:?}");
    let full = eigh(k.as_ref(), Par::rayon(2)).unwrap();
    for i in 0..6 {
        assert!((top.values[i] - full.values[i]).abs() < 1e-10 * full.values[0]);
    }
}

#[test]
fn topk_small_problem_uses_dense() {
    let x = random(10, 10, 8);
    let k = Mat::from_fn(10, 10, |i, j| x[(i, j)] + x[(j, i)]);
    let (top, method) = eigh_topk_with(k.as_ref(), 3, TopkParams::default(), PAR).unwrap();
    assert_eq!(method, TopkMethod::Dense);
    let full = eigh(k.as_ref(), PAR).unwrap();
    assert_eq!(top.values, full.values[..3].to_vec());
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
fn f32_paths_work() {
    let j = Mat::<f32>::from_fn(30, 8, |i, p| ((i * 7 + p * 3) % 11) as f32 - 5.0);
    let k = gram(j.as_ref(), PAR).unwrap();
    let pairs = eigh(k.as_ref(), PAR).unwrap();
    assert!(pairs.values[0] > 0.0 && pairs.values.windows(2).all(|w| w[0] >= w[1]));
}

#[test]
fn thread_pool_resizes() {
    threads::set_num_threads(1);
    assert_eq!(threads::num_threads(), 1);
    let n = threads::install(|par| matches!(par, Par::Seq));
    assert!(n);
    threads::set_num_threads(0);
    assert!(threads::num_threads() >= 1);
}
