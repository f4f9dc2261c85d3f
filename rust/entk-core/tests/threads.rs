//! The resizable thread pool and its fork hook.

use entk_core::*;
use faer::Par;

#[test]
fn thread_pool_resizes_and_survives_a_fork_marker() {
    threads::set_num_threads(1);
    assert_eq!(threads::num_threads(), 1);
    let n = threads::install(|par| matches!(par, Par::Seq));
    assert!(n);
    // A forked child rebuilds its pool with the count the parent set, not all cores...
    threads::after_fork_in_child();
    assert_eq!(threads::num_threads(), 1);
    // ...and a count set first thing in the child is kept.
    threads::after_fork_in_child();
    threads::set_num_threads(3);
    assert_eq!(threads::num_threads(), 3);
    threads::set_num_threads(0);
    assert!(threads::num_threads() >= 1);
}
