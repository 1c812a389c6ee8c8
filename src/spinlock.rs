//! The lock of the I/O path's shared structures: index subtrees, open ksets
//! and data heads.
//!
//! A write stores its data with non-temporal stores and fences them before it
//! unlocks. Releasing a std lock is an atomic read-modify-write, and on x86 an
//! atomic waits until every earlier store — the whole data copy — has reached
//! memory, so each write would idle its core for the copy's full drain.
//! Releasing a spin lock is a plain store that queues behind the copy: the
//! core goes on with the next request while the data drains. The critical
//! sections are short and never block, which is what spinning needs; a waiter
//! that spins long yields its core, so that oversubscribed threads (tests,
//! tools) still make progress.

use std::cell::Cell;

/// Mutual exclusion whose release is a plain store.
pub type SpinLock<T> = spin::mutex::SpinMutex<T, Backoff>;
pub type SpinGuard<'a, T> = spin::mutex::SpinMutexGuard<'a, T, Backoff>;

/// Spins with a CPU hint, and yields the core every so often.
pub struct Backoff;

thread_local! {
    static SPINS: Cell<u32> = const { Cell::new(0) };
}

impl spin::RelaxStrategy for Backoff {
    #[inline]
    fn relax() {
        let n = SPINS.with(|c| {
            let n = c.get().wrapping_add(1);
            c.set(n);
            n
        });
        if n % 64 == 0 {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
}

/// Keeps a value on cache lines of its own (and off the neighbouring line the
/// prefetcher pairs with it), so that workers locking different ones do not
/// move a shared line between cores.
#[repr(align(128))]
#[derive(Default)]
pub struct Padded<T>(pub T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}
