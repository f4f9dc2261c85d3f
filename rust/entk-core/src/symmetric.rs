//! Mirroring a lower triangle into the upper one, in parallel.

use crate::scalar::Scalar;
use faer::{MatMut, MatRef};
use rayon::prelude::*;

/// Side of the square tiles in which symmetric pairs (i, j), (j, i) are compared or copied:
/// both tiles stay in cache whatever the memory order.
pub(crate) const SYM_TILE: usize = 64;

/// A raw pointer to a matrix that parallel tasks write through at disjoint indices.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut<T> {
    ptr: *mut T,
    row_stride: isize,
    col_stride: isize,
}

// SAFETY: tasks only write disjoint entries (each caller documents its partition).
unsafe impl<T: Send> Send for SharedMut<T> {}
unsafe impl<T: Send> Sync for SharedMut<T> {}

impl<T: Copy> SharedMut<T> {
    pub(crate) fn new(m: &mut MatMut<'_, T>) -> Self {
        Self {
            ptr: m.as_ptr_mut(),
            row_stride: m.row_stride(),
            col_stride: m.col_stride(),
        }
    }

    /// # Safety
    /// `(i, j)` must be in bounds and no other task may access it concurrently.
    #[inline(always)]
    pub(crate) unsafe fn at(&self, i: usize, j: usize) -> *mut T {
        self.ptr
            .offset(i as isize * self.row_stride + j as isize * self.col_stride)
    }

    /// Distance between neighbouring entries of a row.
    pub(crate) fn col_stride(&self) -> isize {
        self.col_stride
    }
}

/// A raw read-only view of a matrix for inner loops without bounds checks.
#[derive(Clone, Copy)]
pub(crate) struct RawRef<T> {
    ptr: *const T,
    row_stride: isize,
    col_stride: isize,
}

// SAFETY: only reads, of a matrix borrowed for the duration of the parallel section.
unsafe impl<T: Sync> Send for RawRef<T> {}
unsafe impl<T: Sync> Sync for RawRef<T> {}

impl<T: Copy> RawRef<T> {
    pub(crate) fn new(m: MatRef<'_, T>) -> Self {
        Self {
            ptr: m.as_ptr(),
            row_stride: m.row_stride(),
            col_stride: m.col_stride(),
        }
    }

    /// # Safety
    /// `(i, j)` must be in bounds of the matrix this view was made from, still alive.
    #[inline(always)]
    pub(crate) unsafe fn at(&self, i: usize, j: usize) -> *const T {
        self.ptr
            .offset(i as isize * self.row_stride + j as isize * self.col_stride)
    }

    /// Distance between neighbouring entries of a row.
    pub(crate) fn col_stride(&self) -> isize {
        self.col_stride
    }
}

/// Copies the strict lower triangle of the square `k` onto its upper triangle.
///
/// Works in square tiles so that both the read tile and the written (transposed) tile stay in
/// cache whatever the memory order; tasks own disjoint column strips of the lower triangle.
pub fn mirror_lower<T: Scalar>(mut k: MatMut<'_, T>) {
    let n = k.nrows();
    let shared = SharedMut::new(&mut k);
    let tiles = n.div_ceil(SYM_TILE);
    (0..tiles).into_par_iter().for_each(|tj| {
        let j0 = tj * SYM_TILE;
        let j1 = (j0 + SYM_TILE).min(n);
        for i0 in (j0..n).step_by(SYM_TILE) {
            let i1 = (i0 + SYM_TILE).min(n);
            for j in j0..j1 {
                for i in i0.max(j + 1)..i1 {
                    // SAFETY: (i, j) with i > j lies in this task's strip of the lower triangle
                    // and is only read; (j, i) is written by this task alone.
                    unsafe { *shared.at(j, i) = *shared.at(i, j) };
                }
            }
        }
    });
}
