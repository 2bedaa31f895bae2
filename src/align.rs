//! The global allocator: the system's, with every block of at least a page
//! aligned to a cache line (64 bytes).
//!
//! glibc serves a large block from its own `mmap` and returns the address
//! 16 bytes past the mapping's start, so every 64-byte vector of an
//! activation plane straddled two cache lines: a load split in two, a
//! store split in two, and a store that the next load cannot forward.
//! The SIMD passes and the conv kernels' stores all read and write whole
//! vectors from the planes' starts, so aligning the blocks aligns them.
//! Small blocks keep the system's alignment (no waste).
//!
//! A block of [`HUGE`] bytes or more (the activations and gradients of a
//! batch) starts on a 2 MiB boundary and is advised to the kernel as
//! wanting transparent huge pages (`madvise(MADV_HUGEPAGE)`, Linux; the
//! common `madvise` setting of `/sys/kernel/mm/transparent_hugepage`
//! gives huge pages only where asked). A conv kernel's tile reads and
//! writes 8 or more planes at once, each in its own 4 KiB page: with
//! 2 MiB pages they share a TLB entry, and the hardware prefetchers,
//! which stop at a page's end, run on.
//!
//! A library does not choose its users' allocator: the `resgrad` binary,
//! the benches and the crate's own tests declare it
//! (`#[global_allocator] static A: resgrad::align::LineAligned =
//! resgrad::align::LineAligned;`), and a program built on the library
//! gets the same speed by declaring it too.

use std::alloc::{GlobalAlloc, Layout, System};

/// Blocks of this many bytes or more get [`LINE`] alignment.
const LARGE: usize = 4096;
/// A cache line.
const LINE: usize = 64;
/// Blocks of this many bytes or more get [`HUGE_PAGE`] alignment and the
/// huge-page advice.
const HUGE: usize = 4 << 20;
/// A transparent huge page (x86-64).
const HUGE_PAGE: usize = 2 << 20;

/// See the module docs.
pub struct LineAligned;

impl LineAligned {
    /// The layout the system allocator sees for `layout`: the same for a
    /// given `layout` at allocation and at release, as `GlobalAlloc` needs.
    #[inline]
    fn widen(layout: Layout) -> Layout {
        if layout.size() >= HUGE && layout.align() < HUGE_PAGE {
            Layout::from_size_align(layout.size(), HUGE_PAGE).unwrap_or(layout)
        } else if layout.size() >= LARGE && layout.align() < LINE {
            // only fails for a size within LINE of isize::MAX: then the
            // block keeps its own alignment
            Layout::from_size_align(layout.size(), LINE).unwrap_or(layout)
        } else {
            layout
        }
    }
}

// SAFETY: every call forwards to `System` with the layout `widen` gives,
// which satisfies the caller's layout (same size, larger or equal align)
// and is the same at allocation, reallocation and release.
unsafe impl GlobalAlloc for LineAligned {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(Self::widen(layout));
        advise(p, layout.size());
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() < HUGE {
            return System.alloc_zeroed(Self::widen(layout));
        }
        // advised before the zeros are written: the first touch then
        // faults in huge pages
        let p = self.alloc(layout);
        if !p.is_null() {
            p.write_bytes(0, layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, Self::widen(layout))
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = Self::widen(layout);
        // SAFETY (of the unchecked layout): the caller guarantees new_size
        // with layout.align() is a valid layout
        let new = Self::widen(Layout::from_size_align_unchecked(new_size, layout.align()));
        if old.align() == new.align() && new_size < HUGE {
            System.realloc(ptr, old, new_size)
        } else {
            // the alignment changes across LARGE or HUGE, or a huge block
            // grows or shrinks: a new block (advised), the bytes both
            // hold, the old block released
            let p = System.alloc(new);
            advise(p, new_size);
            if !p.is_null() {
                std::ptr::copy_nonoverlapping(ptr, p, old.size().min(new_size));
                System.dealloc(ptr, old);
            }
            p
        }
    }
}

/// Advises the kernel that the `size` bytes at `p` (a block from
/// `System`, [`HUGE_PAGE`]-aligned when `size >= HUGE`) want transparent
/// huge pages; nothing for a smaller block, a null one or off Linux. The
/// advice is a hint: where the kernel refuses it the block keeps 4 KiB
/// pages, so its result is not checked.
unsafe fn advise(p: *mut u8, size: usize) {
    #[cfg(target_os = "linux")]
    if size >= HUGE && !p.is_null() {
        // whole huge pages of the block (its start is on one)
        let len = size / HUGE_PAGE * HUGE_PAGE;
        libc::madvise(p as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (p, size);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The crate's tests run on [`LineAligned`] (see lib.rs): a large
    /// block starts on a cache line (a huge one on a huge page), a block
    /// that grows across [`LARGE`] and [`HUGE`] keeps its bytes and ends up
    /// aligned, and one that shrinks back keeps them too.
    #[test]
    fn large_blocks_start_on_a_line_and_keep_their_bytes() {
        for n in [1024usize, 4097, 1 << 20, 3 << 20] {
            let v = vec![1f32; n];
            assert_eq!(v.as_ptr() as usize % LINE, 0, "{n} floats");
        }
        let mut v: Vec<u32> = (0..100).collect();
        for n in [1000, 5000, 300_000] {
            v.extend(v.len() as u32..n);
            assert!(v.iter().enumerate().all(|(i, &x)| x == i as u32));
            if n as usize * 4 >= LARGE {
                assert_eq!(v.as_ptr() as usize % LINE, 0, "grown to {n}");
            }
        }
        // across HUGE: on a huge page's boundary, the bytes kept
        for n in [(HUGE / 4) as u32, (3 * HUGE / 4) as u32] {
            v.extend(v.len() as u32..n);
            assert!(v.iter().enumerate().all(|(i, &x)| x == i as u32));
            assert_eq!(v.as_ptr() as usize % HUGE_PAGE, 0, "grown to {n}");
        }
        let z = vec![0f64; HUGE / 8 + 1];
        assert_eq!(z.as_ptr() as usize % HUGE_PAGE, 0);
        assert!(z.iter().all(|&x| x == 0.0));
        v.truncate(10);
        v.shrink_to_fit();
        assert_eq!(v, (0..10).collect::<Vec<u32>>());
        // a bare layout through every entry point
        let a = LineAligned;
        let l = Layout::from_size_align(8192, 4).unwrap();
        // SAFETY: a non-zero-size layout, released with the same layout
        unsafe {
            let p = a.alloc_zeroed(l);
            assert!(!p.is_null());
            assert_eq!(p as usize % LINE, 0);
            assert!(std::slice::from_raw_parts(p, 8192).iter().all(|&b| b == 0));
            p.write_bytes(7, 8192);
            let q = a.realloc(p, l, 100);
            assert!(std::slice::from_raw_parts(q, 100).iter().all(|&b| b == 7));
            a.dealloc(q, Layout::from_size_align(100, 4).unwrap());
        }
    }
}
