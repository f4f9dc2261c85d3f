//! Mirroring a lower triangle into the upper one, in parallel.

use crate::scalar::Scalar;
use faer::MatMut;
use rayon::prelude::*;

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
}

/// Copies the strict lower triangle of the square `k` onto its upper triangle.
pub fn mirror_lower<T: Scalar>(mut k: MatMut<'_, T>) {
    let n = k.nrows();
    let shared = SharedMut::new(&mut k);
    // Task j writes row j of the upper triangle (entries (j, i), i > j) from column j of the
    // lower one: the written sets are disjoint and never read by another task.
    (0..n).into_par_iter().with_min_len(16).for_each(|j| {
        for i in j + 1..n {
            // SAFETY: (i, j) with i > j is only read, (j, i) is only written by task j.
            unsafe { *shared.at(j, i) = *shared.at(i, j) };
        }
    });
}
