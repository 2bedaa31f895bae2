//! Keeping the pool's workers awake through a training step.
//!
//! A training step is hundreds of short parallel passes (every conv pass,
//! BN reduction and elementwise pass) separated by short sequential gaps
//! (the next layer's setup, small reductions). A rayon worker that finds no
//! work spins only briefly, then sleeps; on a virtual machine whose idle
//! vCPUs halt at once (KVM guests with `haltpoll` and `guest_halt_poll_ns =
//! 0`, as on this project's machines), waking it for the next pass costs a
//! VM exit and a host reschedule. Measured here (2 threads, a 200 us pass on
//! each, a sequential gap between passes): 4-11 us of overhead per pass
//! with a gap under 5 us, **39-91 us** with gaps of 20 us to 1 ms; kept
//! awake, 6-20 us, and a ResNet-20 training step 8% faster (BENCHMARKS.md,
//! stop 13). OpenMP runtimes (PyTorch's) avoid this by
//! spin-waiting for up to a few hundred microseconds before sleeping.
//!
//! [`on_warm_pool`] runs a closure on a worker of the current pool while
//! every other worker runs a *keeper*: a loop that takes pending rayon work
//! (`rayon::yield_now`) and otherwise spins, so the worker is running, not
//! asleep, when the next pass arrives. Keepers stop when the closure
//! returns. A keeper only ever spins at the bottom of an idle worker's
//! stack: one that starts on the closure's own thread, or on a thread that
//! already runs a keeper, returns at once; and a keeper that has found no
//! work for [`IDLE_LIMIT`] returns too (the pool then sleeps as usual), so a
//! keeper that a waiting worker picks up above an unfinished job (possible
//! with 3 or more threads) delays that job by at most that long, never
//! deadlocks it. Results are unchanged: the keepers run the same jobs the
//! workers would have run.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A keeper that finds no work for this long goes back to rayon's sleep.
pub const IDLE_LIMIT: Duration = Duration::from_millis(2);

thread_local! {
    /// True while this thread runs a keeper.
    static KEEPING: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` on a worker of the current rayon pool with the pool's other
/// workers kept awake until it returns (see the module docs). With one
/// thread, `f()` on that worker (nothing to keep awake): called from
/// outside the pool (the main thread of `--threads 1`), every parallel
/// pass inside `f` would otherwise be sent to the pool's one worker and
/// waited for, a futex wake-up and a sleep per pass (measured: ~10% of a
/// 1-thread ResNet-56 bf16 step in the kernel's wake-up path, BENCHMARKS.md
/// stop 17); once on the worker, they run inline.
pub fn on_warm_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let threads = rayon::current_num_threads();
    if threads <= 1 {
        return match rayon::current_thread_index() {
            Some(_) => f(),
            None => rayon::scope(|_| f()),
        };
    }
    let done = AtomicBool::new(false);
    rayon::scope(|s| {
        let owner = rayon::current_thread_index();
        let done = &done;
        // one keeper per worker, each in that worker's own queue (a spawn
        // into the owner's deque could be popped back by the owner itself
        // while it waits in a join); the owner's copy returns at once
        s.spawn_broadcast(move |_, _| keep_awake(done, owner));
        let r = f();
        done.store(true, Ordering::Release);
        r
    })
}

/// Takes pending work or spins until `done`, or until idle for
/// [`IDLE_LIMIT`]; returns at once on the owner's thread or inside another
/// keeper.
fn keep_awake(done: &AtomicBool, owner: Option<usize>) {
    if rayon::current_thread_index() == owner || KEEPING.get() {
        return;
    }
    KEEPING.set(true);
    let mut idle_since = Instant::now();
    let mut spins = 0u32;
    while !done.load(Ordering::Acquire) {
        match rayon::yield_now() {
            Some(rayon::Yield::Executed) => {
                idle_since = Instant::now();
                spins = 0;
            }
            _ => {
                std::hint::spin_loop();
                spins += 1;
                // read the clock every 256 idle rounds only
                if spins.is_multiple_of(256) && idle_since.elapsed() > IDLE_LIMIT {
                    break;
                }
            }
        }
    }
    KEEPING.set(false);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_pool_returns_the_value_and_runs_nested_parallel_work() {
        for threads in [1, 2, 3, 4] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let sum = pool.install(|| {
                on_warm_pool(|| {
                    use rayon::prelude::*;
                    (0..1000u64)
                        .map(|k| (0..k).into_par_iter().map(|x| x * x).sum::<u64>())
                        .sum::<u64>()
                })
            });
            let want: u64 = (0..1000u64)
                .map(|k| (0..k).map(|x| x * x).sum::<u64>())
                .sum();
            assert_eq!(sum, want, "{threads} threads");
        }
    }

    #[test]
    fn keepers_stop_and_clear_their_mark_after_the_closure() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        for _ in 0..3 {
            // a keeper spins on the second worker while the closure runs
            let kept = pool.install(|| {
                on_warm_pool(|| {
                    let t = Instant::now();
                    let mut seen = false;
                    while !seen && t.elapsed() < Duration::from_secs(1) {
                        seen = pool.broadcast(|_| KEEPING.get()).iter().any(|&k| k);
                    }
                    seen
                })
            });
            assert!(kept, "no keeper ran");
            // and every worker is free of it afterwards
            assert!(pool.broadcast(|_| KEEPING.get()).iter().all(|&k| !k));
        }
    }
}
