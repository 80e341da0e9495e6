//! Intra-kernel parallelism: ONE dedicated rayon pool, built lazily, capped by
//! `set_num_threads` (default: `DASK_VECOPS_NUM_THREADS`, else 1).
//!
//! With one thread (the default) every kernel runs serially on the calling thread, which is what
//! Dask's schedulers want: they already run one chunk per core. Rayon's global pool is never
//! used (it would be shared with, and sized by, whatever else in the process uses rayon), and no
//! pool is built per call (that would spawn and join OS threads every time).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rayon::ThreadPool;

/// The environment variable read for the default thread count.
pub const ENV: &str = "DASK_VECOPS_NUM_THREADS";

/// 0 until the first read (then the env default) or `set_num_threads`.
static NUM_THREADS: AtomicUsize = AtomicUsize::new(0);
/// The pool and its size; rebuilt when the size asked for changes.
static POOL: Mutex<Option<(usize, Arc<ThreadPool>)>> = Mutex::new(None);

/// Parses `DASK_VECOPS_NUM_THREADS`: a positive integer, else (unset, empty, 0 or garbage) 1.
fn from_env() -> usize {
    std::env::var(ENV)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n >= 1)
        .unwrap_or(1)
}

/// The number of threads a kernel call may use (>= 1).
pub fn num_threads() -> usize {
    match NUM_THREADS.load(Ordering::Relaxed) {
        0 => {
            let n = from_env();
            // Another thread may have set it meanwhile: keep theirs.
            let _ = NUM_THREADS.compare_exchange(0, n, Ordering::Relaxed, Ordering::Relaxed);
            NUM_THREADS.load(Ordering::Relaxed)
        }
        n => n,
    }
}

/// Sets the number of threads kernel calls may use (`n >= 1`). The pool is rebuilt lazily, on
/// the next call that needs it; calls already running keep the pool they started with.
pub fn set_num_threads(n: usize) {
    assert!(n >= 1, "the number of threads must be at least 1");
    NUM_THREADS.store(n, Ordering::Relaxed);
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if pool.as_ref().is_some_and(|(size, _)| *size != n) {
        *pool = None;
    }
}

/// The shared pool of `n` threads (built on first use).
fn pool(n: usize) -> Arc<ThreadPool> {
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    match pool.as_ref() {
        Some((size, p)) if *size == n => p.clone(),
        _ => {
            let p = Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .thread_name(|i| format!("dask-vecops-{i}"))
                    .build()
                    .expect("building the dask-vecops thread pool"),
            );
            *pool = Some((n, p.clone()));
            p
        }
    }
}

/// Runs `f` inside the pool when `threads > 1` (so rayon's parallel iterators inside use it),
/// else directly on this thread. Called from a thread of the pool itself, it just runs `f`
/// (its parallel iterators already use the pool).
pub fn install<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    if threads <= 1 {
        return f();
    }
    let pool = pool(threads);
    if pool.current_thread_index().is_some() {
        return f();
    }
    pool.install(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;

    #[test]
    fn one_pool_sized_by_the_setting() {
        set_num_threads(3);
        assert_eq!(num_threads(), 3);
        let seen = install(3, || {
            (0..64)
                .into_par_iter()
                .map(|_| rayon::current_num_threads())
                .max()
        });
        assert_eq!(seen, Some(3));
        let a = pool(3);
        let b = pool(3);
        assert!(Arc::ptr_eq(&a, &b), "the pool is reused, not rebuilt");
        set_num_threads(1);
        assert_eq!(num_threads(), 1);
        assert_eq!(install(1, rayon::current_thread_index), None);
    }
}
