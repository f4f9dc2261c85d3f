//! The structured eNTK blocks of linear layers against brute-force sums over positions.

mod common;

use common::*;
use entk_core::hadamard::FactoredTerm;
use entk_core::*;
use faer::{Mat, MatRef, Par};

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
