//! The thread pool every parallel routine runs in, and its size.
//!
//! One pool owned by the core (not rayon's global pool), so that `set_num_threads` can
//! resize it at any time and a forked child can replace a pool whose threads did not
//! survive the fork.

use faer::Par;
use rayon::{ThreadPool, ThreadPoolBuilder};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

static POOL: Mutex<Option<Arc<ThreadPool>>> = Mutex::new(None);
static FORKED: AtomicBool = AtomicBool::new(false);

fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn build(n: usize) -> Arc<ThreadPool> {
    let pool = ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("entk-core-{i}"))
        .build();
    match pool {
        Ok(p) => Arc::new(p),
        // A pool that cannot spawn threads still works single-threaded on the caller.
        Err(_) => Arc::new(
            ThreadPoolBuilder::new()
                .num_threads(1)
                .use_current_thread()
                .build()
                .expect("a one-thread pool on the current thread needs no spawning"),
        ),
    }
}

fn pool() -> Arc<ThreadPool> {
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
        .get_or_insert_with(|| build(default_threads()))
        .clone()
}

/// Sets the number of threads used by every parallel routine; `0` means all cores.
pub fn set_num_threads(n: usize) {
    let n = if n == 0 { default_threads() } else { n };
    let mut guard = match POOL.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    *guard = Some(build(n));
}

/// Number of threads the parallel routines use.
pub fn num_threads() -> usize {
    pool().current_num_threads()
}

/// Marks the pool as lost; call in a child process right after `fork`.
pub fn after_fork_in_child() {
    FORKED.store(true, Ordering::SeqCst);
}

/// Runs `f` inside the core's pool, handing it the matching faer parallelism.
pub fn install<R: Send>(f: impl FnOnce(Par) -> R + Send) -> R {
    let pool = pool();
    let n = pool.current_num_threads();
    pool.install(move || f(if n <= 1 { Par::Seq } else { Par::rayon(n) }))
}
