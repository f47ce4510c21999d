//! Owns the global allocator: mimalloc, entered through its plain `mi_malloc` family
//! whenever that already gives the alignment a layout asks for.
//!
//! The `mimalloc` crate sends every allocation to `mi_malloc_aligned`. mimalloc (v2 and
//! v3) takes that call's fast path only while the size class has a free block at hand
//! and the size is at most 1 KiB; otherwise it falls to `..._aligned_at_generic`, which
//! for any size that is not a power of two over-allocates (`size + align - 1`, often the
//! next size class) instead of using the plain allocation. Measured with callgrind on
//! the plain proxied request, that was about 20 generic-path calls and 15 over-allocations
//! per request (benches/README.md). Rust asks for alignments of at most 16 almost always,
//! and mimalloc's bins already honour them: every block size is a multiple of 8 (of 16
//! above 16) and pages start 16-aligned, so a block of a size that is a multiple of the
//! alignment is aligned. Those layouts go to `mi_malloc`/`mi_zalloc`/`mi_realloc`; any
//! other keeps the aligned calls (the same rule as mimalloc_rust PR #170).
//!
//! Bottom layer; the one module with `unsafe`: implementing `GlobalAlloc` is unsafe by
//! definition, and each call only forwards the caller's contract to mimalloc.

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// What every `mi_malloc` block is aligned to, at least, when its size is a multiple of
/// that alignment (`MI_MAX_ALIGN_SIZE` on 64-bit targets).
const NATURAL_ALIGN: usize = 16;

/// The process allocator (`#[global_allocator]` in `main.rs`).
#[derive(Debug, Clone, Copy, Default)]
pub struct MiMalloc;

/// A block of `size` bytes from a plain bin is aligned to `align`.
#[inline]
fn natural(size: usize, align: usize) -> bool {
    align <= NATURAL_ALIGN && size.is_multiple_of(align)
}

// SAFETY: each method forwards to the mimalloc function with the same contract
// (a pointer from this allocator, a non-zero size); the plain functions are used only
// where their result is aligned as the layout requires (see `natural`), and `mi_free`
// frees blocks of either kind.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe {
            if natural(layout.size(), layout.align()) {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe {
            if natural(layout.size(), layout.align()) {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: see the impl.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe {
            if natural(new_size, layout.align()) {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_layout_gets_its_alignment() {
        let a = MiMalloc;
        for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
            for size in [
                1, 3, 8, 12, 16, 24, 40, 48, 100, 1000, 1024, 1500, 5000, 70_000,
            ] {
                let Ok(layout) = Layout::from_size_align(size, align) else {
                    continue;
                };
                // SAFETY: a non-zero size; freed with the same allocator.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    p.write_bytes(0xab, size);
                    let q = a.realloc(p, layout, size * 3);
                    assert_eq!(q as usize % align, 0, "realloc {size} align {align}");
                    assert_eq!(*q, 0xab);
                    a.dealloc(q, Layout::from_size_align(size * 3, align).unwrap());
                    let z = a.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0);
                    assert!((0..size).all(|i| *z.add(i) == 0));
                    a.dealloc(z, layout);
                }
            }
        }
    }
}
