//! y = A x for a symmetric A stored in its lower triangle, in one pass over the triangle.
//!
//! The memory-bound half of the tridiagonal reduction ([`crate::tridiag`]): each column is
//! read once and used twice (a dot product for y[j], an axpy for the rows below). The columns
//! are split over threads by equal triangle area, each thread summing into its own copy of y.

use crate::scalar::Scalar;
use faer::{MatRef, Par};
use rayon::prelude::*;

/// Below this many stored entries (m²/2) the product runs on one thread.
const PARALLEL_ENTRIES: usize = 96 * 1024;

/// `y += s · a` and the returned Σ a·x, over equally long slices (portable; 4 partial sums).
#[inline(always)]
fn dot_axpy<T: Scalar>(a: &[T], x: &[T], y: &mut [T], s: T) -> T {
    let mut acc = [T::ZERO; 4];
    let mut a4 = a.chunks_exact(4);
    let mut x4 = x.chunks_exact(4);
    let mut y4 = y.chunks_exact_mut(4);
    for ((a, x), y) in (&mut a4).zip(&mut x4).zip(&mut y4) {
        for k in 0..4 {
            acc[k] += a[k] * x[k];
            y[k] += s * a[k];
        }
    }
    let mut tail = T::ZERO;
    for ((a, x), y) in a4
        .remainder()
        .iter()
        .zip(x4.remainder())
        .zip(y4.into_remainder())
    {
        tail += *a * *x;
        *y += s * *a;
    }
    (acc[0] + acc[2]) + (acc[1] + acc[3]) + tail
}

/// `y += A[:, c0..c1] x[c0..c1]` and its mirror, for the lower-stored `a` (m × m); `y` is
/// indexed like the rows of `a`. Columns are contiguous (checked by the caller).
fn columns_portable<T: Scalar>(a: MatRef<'_, T>, x: &[T], y: &mut [T], c0: usize, c1: usize) {
    let m = a.nrows();
    for j in c0..c1 {
        let col = column(a, j);
        let xj = x[j];
        let below = dot_axpy(&col[j + 1..m], &x[j + 1..m], &mut y[j + 1..m], xj);
        y[j] += col[j] * xj + below;
    }
}

fn columns<T: Scalar>(a: MatRef<'_, T>, x: &[T], y: &mut [T], c0: usize, c1: usize) {
    let m = a.nrows();
    assert!(x.len() >= m && y.len() >= m && c0 <= c1 && c1 <= a.ncols());
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        use std::any::TypeId;
        // SAFETY: the CPU has AVX2 and FMA; T is f64 (resp. f32), checked by its TypeId, so
        // the slices and views are reinterpreted as what they are; x and y hold at least
        // a.nrows() entries and c1 ≤ a.ncols() (asserted above): the rows the kernel touches.
        unsafe {
            if TypeId::of::<T>() == TypeId::of::<f64>() {
                return avx2::columns::<f64>(
                    core::mem::transmute::<MatRef<'_, T>, MatRef<'_, f64>>(a),
                    &*(x as *const [T] as *const [f64]),
                    &mut *(y as *mut [T] as *mut [f64]),
                    c0,
                    c1,
                );
            }
            if TypeId::of::<T>() == TypeId::of::<f32>() {
                return avx2::columns::<f32>(
                    core::mem::transmute::<MatRef<'_, T>, MatRef<'_, f32>>(a),
                    &*(x as *const [T] as *const [f32]),
                    &mut *(y as *mut [T] as *mut [f32]),
                    c0,
                    c1,
                );
            }
        }
    }
    columns_portable(a, x, y, c0, c1)
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! The column kernel in AVX2 + FMA, [`WIDTH`] columns per pass.
    use super::column;
    use core::arch::x86_64::*;
    use faer::MatRef;

    /// One 256-bit register of f64 or f32 lanes.
    pub(super) trait Lanes: crate::scalar::Scalar {
        type V: Copy;
        const N: usize;
        unsafe fn splat(x: Self) -> Self::V;
        unsafe fn zeros() -> Self::V;
        unsafe fn load(p: *const Self) -> Self::V;
        unsafe fn store(p: *mut Self, v: Self::V);
        /// a·b + c
        unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
        unsafe fn sum(v: Self::V) -> Self;
    }

    impl Lanes for f64 {
        type V = __m256d;
        const N: usize = 4;
        #[inline(always)]
        unsafe fn splat(x: f64) -> __m256d {
            _mm256_set1_pd(x)
        }
        #[inline(always)]
        unsafe fn zeros() -> __m256d {
            _mm256_setzero_pd()
        }
        #[inline(always)]
        unsafe fn load(p: *const f64) -> __m256d {
            _mm256_loadu_pd(p)
        }
        #[inline(always)]
        unsafe fn store(p: *mut f64, v: __m256d) {
            _mm256_storeu_pd(p, v)
        }
        #[inline(always)]
        unsafe fn fma(a: __m256d, b: __m256d, c: __m256d) -> __m256d {
            _mm256_fmadd_pd(a, b, c)
        }
        #[inline(always)]
        unsafe fn sum(v: __m256d) -> f64 {
            let mut out = [0.0; 4];
            _mm256_storeu_pd(out.as_mut_ptr(), v);
            (out[0] + out[2]) + (out[1] + out[3])
        }
    }

    impl Lanes for f32 {
        type V = __m256;
        const N: usize = 8;
        #[inline(always)]
        unsafe fn splat(x: f32) -> __m256 {
            _mm256_set1_ps(x)
        }
        #[inline(always)]
        unsafe fn zeros() -> __m256 {
            _mm256_setzero_ps()
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m256 {
            _mm256_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, v: __m256) {
            _mm256_storeu_ps(p, v)
        }
        #[inline(always)]
        unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
            _mm256_fmadd_ps(a, b, c)
        }
        #[inline(always)]
        unsafe fn sum(v: __m256) -> f32 {
            let mut out = [0.0; 8];
            _mm256_storeu_ps(out.as_mut_ptr(), v);
            ((out[0] + out[4]) + (out[1] + out[5])) + ((out[2] + out[6]) + (out[3] + out[7]))
        }
    }

    /// Columns handled together: each row of x and y is loaded once for all of them.
    const WIDTH: usize = 8;
    /// How far ahead (in entries) each column is prefetched: the matrix streams from memory
    /// once the trailing triangle outgrows the last-level cache.
    const PREFETCH: usize = 64;

    /// See [`super::columns_portable`]; the caller guarantees AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn columns<T: Lanes>(
        a: MatRef<'_, T>,
        x: &[T],
        y: &mut [T],
        c0: usize,
        c1: usize,
    ) {
        let m = a.nrows();
        let xp = x.as_ptr();
        let yp = y.as_mut_ptr();
        let mut j = c0;
        while j + WIDTH <= c1 && j + WIDTH <= m {
            let p: [*const T; WIDTH] = core::array::from_fn(|c| column(a, j + c).as_ptr());
            let xs: [T; WIDTH] = core::array::from_fn(|c| x[j + c]);
            let mut dots = [T::ZERO; WIDTH];
            // The small triangle of rows j..j + WIDTH by hand.
            for c in 0..WIDTH {
                let r = j + c;
                *yp.add(r) += *p[c].add(r) * xs[c];
                for r in j + c + 1..j + WIDTH {
                    let v = *p[c].add(r);
                    *yp.add(r) += v * xs[c];
                    dots[c] += v * *xp.add(r);
                }
            }
            let s: [T::V; WIDTH] = core::array::from_fn(|c| T::splat(xs[c]));
            let mut acc: [T::V; WIDTH] = [T::zeros(); WIDTH];
            let mut r = j + WIDTH;
            while r + T::N <= m {
                let xv = T::load(xp.add(r));
                let mut yv = T::load(yp.add(r));
                for c in 0..WIDTH {
                    _mm_prefetch::<_MM_HINT_T0>(p[c].wrapping_add(r + PREFETCH) as *const i8);
                    let av = T::load(p[c].add(r));
                    acc[c] = T::fma(av, xv, acc[c]);
                    yv = T::fma(av, s[c], yv);
                }
                T::store(yp.add(r), yv);
                r += T::N;
            }
            while r < m {
                let xr = *xp.add(r);
                for c in 0..WIDTH {
                    let v = *p[c].add(r);
                    dots[c] += v * xr;
                    *yp.add(r) += v * xs[c];
                }
                r += 1;
            }
            for c in 0..WIDTH {
                *yp.add(j + c) += dots[c] + T::sum(acc[c]);
            }
            j += WIDTH;
        }
        if j < c1 {
            super::columns_portable(a, x, y, j, c1);
        }
    }
}

/// Column `j` of `a` as a slice (`a` has unit row stride).
#[inline(always)]
pub(crate) fn column<T: Scalar>(a: MatRef<'_, T>, j: usize) -> &[T] {
    a.col(j)
        .try_as_col_major()
        .expect("columns are contiguous")
        .as_slice()
}

/// First column of part `t` of `parts`, splitting the lower triangle of an m × m matrix into
/// parts of equal area.
fn split(t: usize, parts: usize, m: usize) -> usize {
    let share = t as f64 / parts as f64;
    (((1.0 - (1.0 - share).sqrt()) * m as f64) as usize).min(m)
}

/// `y = A x` for the symmetric `a` (m × m, unit row stride) of which only the lower triangle
/// is read. `scratch` holds at least (threads − 1)·m entries for the other threads' sums.
pub(crate) fn symv_lower<T: Scalar>(
    a: MatRef<'_, T>,
    x: &[T],
    y: &mut [T],
    scratch: &mut [T],
    par: Par,
) {
    let m = a.nrows();
    // One entry of x and y per row and column of A (`columns` asserts what its kernel needs).
    assert!(
        a.ncols() == m && x.len() == m && y.len() == m,
        "symv: mismatched lengths"
    );
    y.fill(T::ZERO);
    let parts = match par {
        Par::Seq => 1,
        Par::Rayon(n) => n.get().min(1 + scratch.len() / m.max(1)),
    };
    if parts <= 1 || m * m / 2 < PARALLEL_ENTRIES {
        columns(a, x, y, 0, m);
        return;
    }
    let (first, others) = (y, &mut scratch[..(parts - 1) * m]);
    let mut slots: Vec<&mut [T]> = vec![first];
    slots.extend(others.chunks_exact_mut(m));
    slots.par_iter_mut().enumerate().for_each(|(t, slot)| {
        let (c0, c1) = (split(t, parts, m), split(t + 1, parts, m));
        if t > 0 {
            slot[c0..].fill(T::ZERO);
        }
        columns(a, x, slot, c0, c1);
    });
    let (first, others) = slots.split_first_mut().expect("one slot at least");
    for (t, other) in others.iter().enumerate() {
        let c0 = split(t + 1, parts, m);
        for (yi, oi) in first[c0..].iter_mut().zip(&other[c0..]) {
            *yi += *oi;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use faer::Mat;

    fn reference(a: &Mat<f64>, x: &[f64]) -> Vec<f64> {
        let m = a.nrows();
        (0..m)
            .map(|i| {
                (0..m)
                    .map(|j| if i >= j { a[(i, j)] } else { a[(j, i)] } * x[j])
                    .sum()
            })
            .collect()
    }

    #[test]
    fn matches_the_full_symmetric_product_serial_and_parallel() {
        let mut rng = crate::rng::SplitMix64::new(5);
        for m in [1, 2, 7, 9, 17, 300, 513] {
            // Only the lower triangle is read: the upper holds garbage.
            let a = Mat::<f64>::from_fn(
                m,
                m,
                |i, j| {
                    if i >= j {
                        rng.symmetric_unit()
                    } else {
                        1e300
                    }
                },
            );
            let x: Vec<f64> = (0..m).map(|_| rng.symmetric_unit()).collect();
            let want = reference(&a, &x);
            let a32 = Mat::<f32>::from_fn(m, m, |i, j| a[(i, j)] as f32);
            let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
            let want32 = reference(&Mat::from_fn(m, m, |i, j| a32[(i, j)] as f64), &x);
            // The portable kernel (the path of CPUs without AVX2) on its own.
            let mut y = vec![0.0; m];
            columns_portable(a.as_ref(), &x, &mut y, 0, m);
            for (got, want) in y.iter().zip(&want) {
                assert!(
                    (got - want).abs() <= 1e-12 * (1.0 + want.abs()),
                    "m={m} portable"
                );
            }
            for par in [Par::Seq, Par::rayon(2), Par::rayon(3)] {
                let mut y = vec![f64::NAN; m];
                let mut scratch = vec![f64::NAN; 2 * m];
                symv_lower(a.as_ref(), &x, &mut y, &mut scratch, par);
                for (got, want) in y.iter().zip(&want) {
                    assert!((got - want).abs() <= 1e-12 * (1.0 + want.abs()), "m={m}");
                }
                let mut y32 = vec![f32::NAN; m];
                let mut scratch32 = vec![f32::NAN; 2 * m];
                symv_lower(a32.as_ref(), &x32, &mut y32, &mut scratch32, par);
                for (got, want) in y32.iter().zip(&want32) {
                    let tol = 1e-5 * (1.0 + (m as f64).sqrt());
                    assert!((*got as f64 - want).abs() <= tol, "m={m} float32");
                }
            }
        }
    }
}
