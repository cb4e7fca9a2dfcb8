//! Counting heap allocations of the bench process, for the deterministic
//! cost figures (`stem-bench phases`): how many allocations, and how many
//! bytes they asked for, a phase made per task.
//!
//! The counter is off unless a phase turns it on ([`counting`]), so the
//! wall-clock scenarios pay one uncontended relaxed load per allocation,
//! not two contended increments.
//!
//! The only unsafe code of the workspace outside dependencies: a
//! `GlobalAlloc` cannot be written without it (`Cargo.toml` says why the
//! crate denies rather than forbids it).

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The system allocator, counting while [`counting`] is on.
pub struct Counting;

static ON: AtomicBool = AtomicBool::new(false);
static CALLS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

fn count(size: usize) {
    if ON.load(Ordering::Relaxed) {
        CALLS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(size as u64, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to `System`; counting touches
// only atomics and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // A growth is an allocation as far as cost goes (a copy, and
        // usually a new block).
        count(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Allocations and bytes asked for since the counter was last turned on.
#[derive(Clone, Copy, Debug, Default)]
pub struct Allocated {
    pub calls: u64,
    pub bytes: u64,
}

/// Turns counting on from zero (`true`) or off (`false`); returns what
/// was counted until now.
pub fn counting(on: bool) -> Allocated {
    ON.store(false, Ordering::SeqCst);
    let seen = Allocated {
        calls: CALLS.swap(0, Ordering::SeqCst),
        bytes: BYTES.swap(0, Ordering::SeqCst),
    };
    ON.store(on, Ordering::SeqCst);
    seen
}
