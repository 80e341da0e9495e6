//! Per-thread reusable buffers. A kernel call asks for a few buffers (packed operands, row
//! scales, selector keys) and gives them back when it returns, so repeated calls from the same
//! thread (Dask's workers, the rayon pool's threads) neither allocate nor fault fresh pages.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};

/// Buffers larger than this are freed rather than kept for the next call.
const KEEP_BYTES: usize = 64 << 20;
/// At most this many idle buffers per element type and thread.
const KEEP_COUNT: usize = 8;

/// An element type with a per-thread pool of idle buffers.
pub trait Pooled: Sized + 'static {
    /// `None` once this thread's pool is gone (during thread teardown).
    fn with_pool<R>(f: impl FnOnce(&mut Vec<Vec<Self>>) -> R) -> Option<R>;
}

macro_rules! pooled {
    ($($t:ty => $pool:ident),*) => {
        thread_local! {
            $(static $pool: RefCell<Vec<Vec<$t>>> = const { RefCell::new(Vec::new()) };)*
        }
        $(impl Pooled for $t {
            fn with_pool<R>(f: impl FnOnce(&mut Vec<Vec<Self>>) -> R) -> Option<R> {
                $pool.try_with(|pool| f(&mut pool.borrow_mut())).ok()
            }
        })*
    };
}

pooled!(f32 => F32_POOL, f64 => F64_POOL, u32 => U32_POOL, u64 => U64_POOL, u128 => U128_POOL);

/// A `Vec` borrowed from this thread's pool (empty, with whatever capacity it had); it goes
/// back to the pool when dropped.
pub struct Buf<T: Pooled>(Vec<T>);

impl<T: Pooled> Buf<T> {
    pub fn take() -> Self {
        let mut b = Self::take_dirty();
        b.0.clear();
        b
    }

    /// A buffer with whatever length and contents it was given back with: for callers that
    /// overwrite it whole, so resizing it skips clearing it.
    pub fn take_dirty() -> Self {
        Buf(T::with_pool(|pool| pool.pop())
            .flatten()
            .unwrap_or_default())
    }

    /// A buffer of `len` copies of `value`.
    pub fn filled(len: usize, value: T) -> Self
    where
        T: Clone,
    {
        let mut b = Self::take();
        b.0.resize(len, value);
        b
    }
}

impl<T: Pooled> Drop for Buf<T> {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        if v.capacity() > 0 && v.capacity() * std::mem::size_of::<T>() <= KEEP_BYTES {
            let _ = T::with_pool(|pool| {
                if pool.len() < KEEP_COUNT {
                    pool.push(v);
                }
            });
        }
    }
}

impl<T: Pooled> Deref for Buf<T> {
    type Target = Vec<T>;
    fn deref(&self) -> &Vec<T> {
        &self.0
    }
}

impl<T: Pooled> DerefMut for Buf<T> {
    fn deref_mut(&mut self) -> &mut Vec<T> {
        &mut self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_on_the_same_thread() {
        let ptr = {
            let mut b = Buf::<f32>::filled(1000, 1.0);
            b[3] = 2.0;
            b.as_ptr()
        };
        let b = Buf::<f32>::take();
        assert!(b.is_empty() && b.capacity() >= 1000);
        assert_eq!(b.as_ptr(), ptr);
        let other = std::thread::spawn(|| Buf::<f32>::take().capacity())
            .join()
            .unwrap();
        assert_eq!(other, 0);
    }
}
