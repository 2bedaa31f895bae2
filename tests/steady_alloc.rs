//! No tensor-sized allocation in the steady state: after the first steps
//! (which size every activation, gradient and conv workspace buffer), a
//! training step allocates only small bookkeeping (per-channel statistics,
//! the parameter list). Counted with a global allocator that tallies bytes.

use resgrad::gemm::{matmul, Mat, MatMut};
use resgrad::model::Net;
use resgrad::train::bench::cifar_spec;
use resgrad::train::optim::{Sgd, SgdConfig};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static BYTES: AtomicUsize = AtomicUsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        BYTES.fetch_add(l.size(), Ordering::Relaxed);
        LARGEST.fetch_max(l.size(), Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        BYTES.fetch_add(new, Ordering::Relaxed);
        LARGEST.fetch_max(new, Ordering::Relaxed);
        System.realloc(p, l, new)
    }
}

#[global_allocator]
static A: Counting = Counting;

/// (bytes allocated in all, largest single allocation) of the third
/// training step of a small net at batch `n` (32x32 inputs).
fn step_allocs(unit: &str, n: usize) -> (usize, usize) {
    let spec = cifar_spec(8, unit, "basic").unwrap();
    let mut net: Net<f32> = Net::new(&spec, 32, 0).unwrap();
    let x: Vec<f32> = (0..n * 3 * 32 * 32)
        .map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0)
        .collect();
    let labels: Vec<usize> = (0..n).map(|i| i % 10).collect();
    let mut opt: Sgd<f32> = Sgd::new(SgdConfig::default());
    let mut step = |net: &mut Net<f32>| {
        net.zero_grad();
        net.forward_backward(&x, &labels, false).unwrap();
        opt.step(&mut net.params_mut(), 0.01);
    };
    step(&mut net);
    step(&mut net);
    BYTES.store(0, Ordering::SeqCst);
    LARGEST.store(0, Ordering::SeqCst);
    step(&mut net);
    (BYTES.load(Ordering::SeqCst), LARGEST.load(Ordering::SeqCst))
}

/// Every activation and gradient buffer is N x C x H x W: allocated per
/// step, it would show up twice as large at twice the batch. What a
/// steady-state step does allocate is independent of the batch: the `gemm`
/// crate's packing buffer of each per-image GEMM call (fixed size, one per
/// call), per-channel statistics, the parameter list.
#[test]
fn training_step_allocates_no_tensors_after_warm_up() {
    // every pool thread (and this one) runs a GEMM first: the `gemm` crate
    // allocates a per-thread cache-sized slab at a thread's first call
    let warm = || {
        let a = vec![1.0f32; 64 * 64];
        let mut c = vec![0.0f32; 64 * 64];
        matmul(
            MatMut::rm(&mut c, 64, 64),
            Mat::rm(&a, 64, 64),
            Mat::rm(&a, 64, 64),
            false,
        );
    };
    rayon::broadcast(|_| warm());
    warm();
    for unit in ["original", "full_preact"] {
        let (b8, l8) = step_allocs(unit, 8);
        let (b16, l16) = step_allocs(unit, 16);
        // the biggest tensor at batch 8: 8 x 16 x 32 x 32 f32 = 512 KiB
        assert!(
            l16 <= l8 && l8 < 512 * 1024,
            "{unit}: largest block allocated in a steady-state step: {l8} bytes at batch 8 \
             ({b8} in all), {l16} at batch 16 ({b16} in all)"
        );
    }
}
