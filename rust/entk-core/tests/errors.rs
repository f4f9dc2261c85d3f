//! Bad input and failed allocations come back as errors, never as panics.

mod common;

use common::*;
use entk_core::*;
use faer::{Mat, MatRef};

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
