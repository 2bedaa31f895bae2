//! Prefetching the next image's operands while a kernel computes.
//!
//! The direct and Winograd kernels run at their arithmetic peak from L1
//! and L2; the passes that make their operands (a BN's input gradient from
//! `dy` and `x`, a BN-ReLU input made as it is paired or read) read
//! tensors the forward wrote long before, from DRAM, and stall on it. The
//! memory bus is idle while a kernel computes, so the image loops hand the
//! next image's operand planes to [`set`] before the current image's
//! kernels run, and the kernels call [`step`] once per tile: each call
//! prefetches the next few cache lines of those planes into L2
//! (`prefetcht1`), spread over the kernel's tiles so the fill buffers never
//! back up. When the next image's pass runs, its planes are in L2.
//!
//! A prefetch never faults and changes no value: results are the same
//! bits with or without it (`RESGRAD_AHEAD=0` turns it off, for A/B
//! measurements).

use std::cell::Cell;

/// One thread's queue: up to [`REGIONS`] byte ranges, the range and the
/// offset in it where the next prefetch goes, and how many lines a
/// [`step`] prefetches.
#[derive(Clone, Copy)]
pub(super) struct Queue {
    regions: [(*const u8, usize); REGIONS],
    r: usize,
    off: usize,
    per: usize,
}

/// The most ranges one queue holds.
const REGIONS: usize = 4;
/// A cache line.
const LINE: usize = 64;

const EMPTY: Queue = Queue {
    regions: [(std::ptr::null(), 0); REGIONS],
    r: REGIONS,
    off: 0,
    per: 0,
};

thread_local! {
    static QUEUE: Cell<Queue> = const { Cell::new(EMPTY) };
}

/// Whether prefetching is on (`RESGRAD_AHEAD=0` turns it off).
pub(super) fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("RESGRAD_AHEAD").map_or(true, |v| v != "0"))
}

/// Queues `regions` (at most [`REGIONS`], empty ones skipped) to be
/// prefetched over the next `steps` calls of [`step`] on this thread,
/// replacing what was left of the previous queue.
pub(super) fn set(regions: &[&[f32]], steps: usize) {
    if !enabled() {
        return;
    }
    let mut q = EMPTY;
    let mut n = 0;
    let mut lines = 0;
    for r in regions.iter().filter(|r| !r.is_empty()).take(REGIONS) {
        // from the line the range starts in
        let p = r.as_ptr() as *const u8;
        let lead = p as usize % LINE;
        let len = std::mem::size_of_val(*r) + lead;
        q.regions[n] = (p.wrapping_sub(lead), len);
        lines += len.div_ceil(LINE);
        n += 1;
    }
    q.r = if n == 0 { REGIONS } else { 0 };
    q.per = lines.div_ceil(steps.max(1));
    QUEUE.with(|c| c.set(q));
}

/// This thread's queue, for a kernel to [`Queue::step`] through locally
/// and [`put`] back when it returns.
#[inline(always)]
pub(super) fn take() -> Queue {
    QUEUE.with(|c| c.replace(EMPTY))
}

/// Gives back what a kernel left of the queue [`take`] gave it.
#[inline(always)]
pub(super) fn put(q: Queue) {
    QUEUE.with(|c| c.set(q))
}

/// Empties this thread's queue (at the end of an image loop: what is left
/// belongs to buffers the next loop may not have).
pub(super) fn clear() {
    QUEUE.with(|c| c.set(EMPTY))
}

impl Queue {
    /// Prefetches the next lines into L2 (see the module docs); nothing
    /// when the queue is empty.
    #[inline(always)]
    pub(super) fn step(&mut self) {
        self.step_with(|line| {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: a prefetch reads nothing architecturally and never
            // faults; the line is one of a live slice's anyway
            unsafe {
                use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
                _mm_prefetch::<_MM_HINT_T1>(line as *const i8);
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = line;
        })
    }

    /// [`step`](Queue::step) with `touch` called on each line's address
    /// instead of the prefetch (the tests watch it).
    #[inline(always)]
    fn step_with(&mut self, mut touch: impl FnMut(*const u8)) {
        if self.r >= REGIONS {
            return;
        }
        for _ in 0..self.per {
            let (p, len) = self.regions[self.r];
            touch(p.wrapping_add(self.off));
            self.off += LINE;
            if self.off >= len {
                self.off = 0;
                self.r += 1;
                if self.r >= REGIONS || self.regions[self.r].1 == 0 {
                    self.r = REGIONS;
                    return;
                }
            }
        }
    }
}

/// How many times `f` steps this thread's queue (with the queue on and
/// one line per step; at most 65535): what the kernels' tests compare
/// with the counts the batch loops pace the queue by.
#[cfg(test)]
pub(super) fn count_steps(f: impl FnOnce()) -> usize {
    const LINES: usize = 1 << 16;
    let buf = vec![0f32; LINES * LINE / 4];
    let mut q = EMPTY;
    (q.regions[0], q.r, q.per) = ((buf.as_ptr() as *const u8, LINES * LINE), 0, 1);
    QUEUE.with(|c| c.set(q));
    f();
    let q = QUEUE.with(|c| c.replace(EMPTY));
    let steps = if q.r >= REGIONS { LINES } else { q.off / LINE };
    assert!(steps < LINES, "count_steps: {steps} steps or more");
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every line of every queued range is touched once, in order, spread
    /// over the steps asked for (no step touches more than its share),
    /// and nothing after; take leaves the thread's queue empty, put
    /// gives it back.
    #[test]
    fn steps_cover_each_line_once() {
        if !enabled() {
            return;
        }
        let a = vec![1.0f32; 1000];
        let b = vec![2.0f32; 37];
        let c = vec![3.0f32; 4096];
        // an unaligned start, an empty range, a range of one float
        let regions: [&[f32]; 5] = [&a[3..], &[], &b[..1], &c, &b];
        let steps = 7;
        set(&regions[..4], steps);
        let mut q = take();
        assert!(take().r >= REGIONS, "take left the queue");
        let mut want = Vec::new();
        for r in regions[..4].iter().filter(|r| !r.is_empty()) {
            let (s, e) = (r.as_ptr() as usize, r.as_ptr() as usize + 4 * r.len());
            want.extend((s / LINE..e.div_ceil(LINE)).map(|l| l * LINE));
        }
        let per = want.len().div_ceil(steps);
        let mut got = Vec::new();
        for _ in 0..steps {
            let before = got.len();
            q.step_with(|p| got.push(p as usize));
            assert!(got.len() - before <= per);
        }
        assert_eq!(got, want);
        q.step_with(|_| panic!("a line after the queue ran out"));
        // put gives the queue back; clear empties it
        set(&[&a], 1);
        let q = take();
        put(q);
        assert_eq!(take().regions[0].1, q.regions[0].1);
        put(q);
        clear();
        assert!(take().r >= REGIONS);
    }
}
