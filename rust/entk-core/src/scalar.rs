//! The real floating-point types the core is generic over (f32 and f64).

use faer::traits::RealField;
use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub, SubAssign};

/// A real scalar the core computes in. Implemented for `f32` and `f64` only.
pub trait Scalar:
    RealField
    + Copy
    + Send
    + Sync
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + 'static
{
    /// Machine epsilon.
    const EPSILON: Self;
    const ZERO: Self;
    const ONE: Self;
    fn from_f64(x: f64) -> Self;
    fn to_f64(self) -> f64;
    fn abs_val(self) -> Self;
    fn sqrt_val(self) -> Self;
    fn is_finite_val(self) -> bool;
}

macro_rules! impl_scalar {
    ($t:ty) => {
        impl Scalar for $t {
            const EPSILON: Self = <$t>::EPSILON;
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            #[inline(always)]
            fn from_f64(x: f64) -> Self {
                x as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn abs_val(self) -> Self {
                self.abs()
            }
            #[inline(always)]
            fn sqrt_val(self) -> Self {
                self.sqrt()
            }
            #[inline(always)]
            fn is_finite_val(self) -> bool {
                self.is_finite()
            }
        }
    };
}

impl_scalar!(f32);
impl_scalar!(f64);
