//! The numeric policy's thresholds, as closed forms.

mod common;

use common::*;
use entk_core::*;
use faer::Mat;

// Kills a mutant cargo-mutants found alive (README, "Mutation testing").
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
