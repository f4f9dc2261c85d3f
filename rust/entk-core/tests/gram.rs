//! Gram assembly (K = J Jᵀ, accumulation, cross tiles) against naive products.

mod common;

use common::*;
use entk_core::*;
use faer::{Mat, Par};

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

// Kills a mutant cargo-mutants found alive (README, "Mutation testing").
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
