//! The full symmetric eigensolver: closed forms, reconstruction, f32 accuracy, extreme scales.

mod common;

use common::*;
use entk_core::*;
use faer::Mat;

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
    // n = 400 takes the float64 detour, n = 900 the f32 blocked reduction with the
    // tridiagonal problem solved in f64.
    for n in [400, 900] {
        let x = random(n, 2 * n, 11);
        let wide = &x * x.transpose();
        let k32 = Mat::from_fn(n, n, |i, j| wide[(i, j)] as f32);
        let k64 = Mat::from_fn(n, n, |i, j| k32[(i, j)] as f64);
        let exact = eigh(k64.as_ref(), PAR).unwrap();
        let ours = eigh(k32.as_ref(), PAR).unwrap();
        let top = exact.values[0];
        let worst = (0..n)
            .map(|i| (ours.values[i] as f64 - exact.values[i]).abs() / top)
            .fold(0.0, f64::max);
        assert!(worst < 1e-6, "n = {n}: eigenvalue error {worst:e} of ‖K‖");
        let vectors = Mat::from_fn(n, n, |i, j| ours.vectors[(i, j)] as f64);
        let values: Vec<f64> = ours.values.iter().map(|&v| v as f64).collect();
        let residual = residual_from_product((&k64 * &vectors).as_ref(), &values, vectors.as_ref());
        assert!(residual < 1e-5, "n = {n}: residual {residual:e} of ‖K‖");
    }
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

/// Q diag(λ) Qᵀ with Q = I − c v vᵀ, c = 2 / ‖v‖² (a reflector, so the eigenpairs are closed
/// form), entry by entry: λ_i δ_ij − c v_i v_j (λ_i + λ_j) + c² (vᵀΛv) v_i v_j.
fn reflected_spectrum(n: usize, lambda: &[f64]) -> (Mat<f64>, Mat<f64>) {
    let v: Vec<f64> = (0..n).map(|i| ((i * 37 + 11) % 23) as f64 - 11.0).collect();
    let c = 2.0 / v.iter().map(|x| x * x).sum::<f64>();
    let vlv: f64 = v.iter().zip(lambda).map(|(x, l)| x * x * l).sum();
    let q = Mat::from_fn(n, n, |i, j| f64::from(u8::from(i == j)) - c * v[i] * v[j]);
    let k = Mat::from_fn(n, n, |i, j| {
        let diag = if i == j { lambda[i] } else { 0.0 };
        diag - c * v[i] * v[j] * (lambda[i] + lambda[j]) + c * c * vlv * v[i] * v[j]
    });
    (k, q)
}

#[test]
fn eigh_large_orders_take_the_blocked_reduction_and_match_the_closed_form() {
    // The blocked reduction runs from order 2304 on in float64 and from 768 on in float32:
    // eigenvalues and eigenvectors against the closed form on both sides of each threshold
    // (float32: its reduction in float32, the tridiagonal problem in float64).
    for (n, float32) in [(2303, false), (2304, false), (767, true), (800, true)] {
        // Distinct, both signs, gaps of at least 1.
        let lambda: Vec<f64> = (0..n)
            .map(|i| (i as f64 + 1.0) * if i % 3 == 0 { -1.0 } else { 1.0 })
            .collect();
        let (k, q) = reflected_spectrum(n, &lambda);
        let mut sorted = lambda.clone();
        sorted.sort_by(|a, b| b.partial_cmp(a).unwrap());
        let top = sorted.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        let (values, vectors, tol) = if float32 {
            let pairs = eigh(Mat::from_fn(n, n, |i, j| k[(i, j)] as f32).as_ref(), PAR).unwrap();
            let values: Vec<f64> = pairs.values.iter().map(|&v| v as f64).collect();
            (
                values,
                Mat::from_fn(n, n, |i, j| pairs.vectors[(i, j)] as f64),
                1e-6,
            )
        } else {
            let pairs = eigh(k.as_ref(), PAR).unwrap();
            (pairs.values, pairs.vectors, 1e-12)
        };
        for (got, want) in values.iter().zip(&sorted) {
            assert!((got - want).abs() <= tol * top, "n = {n}: {got} vs {want}");
        }
        assert!(
            residual_from_product((&k * &vectors).as_ref(), &values, vectors.as_ref()) < 10.0 * tol,
            "n = {n}"
        );
        // The eigenvalues are distinct: each eigenvector is ± the matching column of Q.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| lambda[b].partial_cmp(&lambda[a]).unwrap());
        for (c, &src) in order.iter().enumerate() {
            let dot: f64 = (0..n).map(|i| vectors[(i, c)] * q[(i, src)]).sum();
            let err = (dot.abs() - 1.0).abs();
            assert!(
                err < 1e3 * tol,
                "n = {n}, column {c}: |⟨u, q⟩| = {}",
                dot.abs()
            );
        }
    }
}
