//! A global allocator that counts live heap bytes, so the bench can report
//! the DRAM the index really uses.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering};

pub struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    /// # Safety
    /// As for [`GlobalAlloc::alloc`]: `l` has a non-zero size.
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as i64, Ordering::Relaxed);
        // SAFETY: the caller gives GlobalAlloc::alloc's guarantees, which System takes as they are.
        unsafe { System.alloc(l) }
    }
    /// # Safety
    /// As for [`GlobalAlloc::dealloc`]: `p` came from this allocator with layout `l`.
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as i64, Ordering::Relaxed);
        // SAFETY: p came from this allocator, that is from System, with layout l (caller's contract).
        unsafe { System.dealloc(p, l) }
    }
    /// # Safety
    /// As for [`GlobalAlloc::realloc`]: `p` came from this allocator with layout `l`, and `new` is a
    /// valid non-zero size for `l`'s alignment.
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as i64 - l.size() as i64, Ordering::Relaxed);
        // SAFETY: p came from this allocator, that is from System, with layout l, and new is valid
        // for it (caller's contract).
        unsafe { System.realloc(p, l, new) }
    }
}

pub fn live_bytes() -> i64 {
    LIVE.load(Ordering::Relaxed)
}
