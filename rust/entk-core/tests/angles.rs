//! Principal angles and subspace overlap against closed forms.

mod common;

use common::*;
use entk_core::*;
use faer::Mat;

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
