//! The thread pool every parallel routine runs in, and its size.
//!
//! One pool owned by the core (not rayon's global pool), so that `set_num_threads` can
//! resize it at any time and a forked child can replace a pool whose threads did not
//! survive the fork.

use faer::Par;
use rayon::{ThreadPool, ThreadPoolBuilder};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// `Some(None)` records that no pool could be built: work then runs on the caller, sequentially.
static POOL: Mutex<Option<Option<Arc<ThreadPool>>>> = Mutex::new(None);

/// The most threads a pool may have (more only adds scheduling overhead).
pub const MAX_THREADS: usize = 1024;
static FORKED: AtomicBool = AtomicBool::new(false);
/// The thread count last asked for (0: all cores); a forked child rebuilds its pool with it.
static REQUESTED: AtomicUsize = AtomicUsize::new(0);

fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn build(n: usize) -> Option<Arc<ThreadPool>> {
    // Even one thread gets its own pool, so that rayon loops inside it stay on that thread.
    ThreadPoolBuilder::new()
        .num_threads(n.min(MAX_THREADS))
        .thread_name(|i| format!("entk-core-{i}"))
        .build()
        .ok()
        .map(Arc::new)
}

type Slot = Option<Option<Arc<ThreadPool>>>;

fn lock() -> std::sync::MutexGuard<'static, Slot> {
    let mut guard = match POOL.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    if FORKED.swap(false, Ordering::SeqCst) {
        // The old pool's threads do not exist in a forked child: leak it rather than join.
        if let Some(old) = guard.take() {
            std::mem::forget(old);
        }
    }
    guard
}

fn threads_for(requested: usize) -> usize {
    if requested == 0 {
        default_threads()
    } else {
        requested.min(MAX_THREADS)
    }
}

fn pool() -> Option<Arc<ThreadPool>> {
    let mut guard = lock();
    guard
        .get_or_insert_with(|| build(threads_for(REQUESTED.load(Ordering::SeqCst))))
        .clone()
}

/// Sets the number of threads used by every parallel routine; `0` means all cores
/// (at most [`MAX_THREADS`]). A forked child keeps the count its parent set.
pub fn set_num_threads(n: usize) {
    let mut guard = lock();
    REQUESTED.store(n.min(MAX_THREADS), Ordering::SeqCst);
    *guard = Some(build(threads_for(n)));
}

/// Number of threads the parallel routines use.
pub fn num_threads() -> usize {
    pool().map_or(1, |p| p.current_num_threads())
}

/// Marks the pool as lost; call in a child process right after `fork`.
pub fn after_fork_in_child() {
    FORKED.store(true, Ordering::SeqCst);
}

/// Runs `f` inside the core's pool, handing it the matching faer parallelism; with one thread
/// (or when no pool could be started) `f` runs on the caller with `Par::Seq`.
pub fn install<R: Send>(f: impl FnOnce(Par) -> R + Send) -> R {
    match pool() {
        Some(pool) => {
            let n = pool.current_num_threads();
            pool.install(move || f(if n <= 1 { Par::Seq } else { Par::rayon(n) }))
        }
        None => f(Par::Seq),
    }
}
