//! Batches: a seeded, shuffled, augmented training loader that prepares
//! batches on a background thread, and a sequential evaluation iterator.
//!
//! Reproducibility: the permutation of epoch `e` comes from a ChaCha8 stream
//! seeded with `(seed, e)`, and the augmentation of batch `b` of epoch `e`
//! from one seeded with `(seed, e, b)`. Nothing depends on earlier epochs,
//! on thread timing or on how many batches were consumed, so a run resumed
//! at epoch `e` (or at batch `b` of it, [`Loader::epoch_from`]) sees exactly
//! the batches an uninterrupted run would have.

use std::sync::mpsc::{channel, sync_channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{mix_seed, Augment, Dataset};
use crate::{Error, Result};

/// One mini-batch: `images` is (n, c, h, w) row-major, `labels` has `n`
/// class indices.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Batch {
    pub images: Vec<f32>,
    pub labels: Vec<usize>,
    /// Samples in this batch (the batch size, or fewer for the last
    /// evaluation batch).
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    /// Epoch this batch belongs to (0 for evaluation batches).
    pub epoch: u64,
    /// Position of the batch within its epoch.
    pub index: usize,
}

impl Batch {
    /// `[n, c, h, w]`.
    pub fn dims(&self) -> [usize; 4] {
        [self.n, self.c, self.h, self.w]
    }
}

/// A training loader over a shared dataset: shuffled, optionally augmented,
/// fixed-size batches (the last partial batch of an epoch is dropped).
#[derive(Clone, Debug)]
pub struct Loader {
    data: Arc<Dataset>,
    batch_size: usize,
    seed: u64,
    augment: Option<Augment>,
    prefetch: usize,
}

/// Tag for the permutation stream (batch indices use 0..).
const PERM_TAG: u64 = u64::MAX;

impl Loader {
    /// A loader drawing `batch_size` samples per batch from `data`;
    /// `augment = None` (or an identity [`Augment`]) copies images as they are.
    pub fn new(
        data: Arc<Dataset>,
        batch_size: usize,
        seed: u64,
        augment: Option<Augment>,
    ) -> Result<Loader> {
        if batch_size == 0 || batch_size > data.n {
            return Err(Error::Config(format!(
                "batch size {batch_size} must be between 1 and the {} samples of {}",
                data.n, data.name
            )));
        }
        Ok(Loader {
            data,
            batch_size,
            seed,
            augment: augment.filter(|a| !a.is_identity()),
            prefetch: 2,
        })
    }

    /// How many batches the background thread may prepare ahead (1..=8,
    /// default 2).
    pub fn with_prefetch(mut self, prefetch: usize) -> Loader {
        self.prefetch = prefetch.clamp(1, 8);
        self
    }

    /// Full batches per epoch (`n / batch_size`, the remainder is dropped).
    pub fn batches_per_epoch(&self) -> usize {
        self.data.n / self.batch_size
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    pub fn dataset(&self) -> &Arc<Dataset> {
        &self.data
    }

    /// The sample order of `epoch` (all `n` indices; the first
    /// `batches_per_epoch() * batch_size` are used).
    pub fn permutation(&self, epoch: u64) -> Vec<usize> {
        let mut perm: Vec<usize> = (0..self.data.n).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(self.seed, epoch, PERM_TAG));
        perm.shuffle(&mut rng);
        perm
    }

    /// Build batch `index` of `epoch` into `batch` (reusing its buffers),
    /// given that epoch's permutation. Used by the background thread; also
    /// handy to fetch one batch synchronously.
    pub fn fill_batch(&self, perm: &[usize], epoch: u64, index: usize, batch: &mut Batch) {
        let bs = self.batch_size;
        let idx = &perm[index * bs..(index + 1) * bs];
        let ds = &*self.data;
        match self.augment {
            None => ds.gather_into(idx, batch),
            Some(aug) => {
                let p = ds.image_len();
                let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(self.seed, epoch, index as u64));
                batch.images.resize(bs * p, 0.0);
                batch.labels.clear();
                for (k, &i) in idx.iter().enumerate() {
                    aug.apply(
                        ds.image(i),
                        ds.c,
                        ds.h,
                        ds.w,
                        &mut rng,
                        &mut batch.images[k * p..(k + 1) * p],
                    );
                    batch.labels.push(ds.labels[i] as usize);
                }
                batch.n = bs;
                batch.c = ds.c;
                batch.h = ds.h;
                batch.w = ds.w;
            }
        }
        batch.epoch = epoch;
        batch.index = index;
    }

    /// The batches of `epoch`, prepared on a background thread.
    pub fn epoch(&self, epoch: u64) -> EpochIter {
        self.epoch_from(epoch, 0)
    }

    /// The batches of `epoch` starting at batch `start` (to resume a run
    /// mid-epoch with the same batches it would have seen).
    pub fn epoch_from(&self, epoch: u64, start: usize) -> EpochIter {
        let (tx, rx) = sync_channel::<Batch>(self.prefetch);
        let (free_tx, free_rx) = channel::<Batch>();
        let me = self.clone();
        let total = self.batches_per_epoch();
        let handle = std::thread::Builder::new()
            .name("resgrad-loader".into())
            .spawn(move || {
                let perm = me.permutation(epoch);
                for index in start..total {
                    let mut b = free_rx.try_recv().unwrap_or_default();
                    me.fill_batch(&perm, epoch, index, &mut b);
                    if tx.send(b).is_err() {
                        return; // consumer gone
                    }
                }
            });
        match handle {
            Ok(h) => EpochIter {
                rx: Some(rx),
                free: free_tx,
                handle: Some(h),
                remaining: total.saturating_sub(start),
                fallback: None,
            },
            // Could not start a thread: produce the batches synchronously.
            Err(_) => EpochIter {
                rx: None,
                free: free_tx,
                handle: None,
                remaining: total.saturating_sub(start),
                fallback: Some((self.clone(), self.permutation(epoch), epoch, start)),
            },
        }
    }
}

/// The batches of one epoch, in order. Hand finished batches back with
/// [`EpochIter::recycle`] so the producer reuses their buffers.
pub struct EpochIter {
    rx: Option<Receiver<Batch>>,
    free: Sender<Batch>,
    handle: Option<JoinHandle<()>>,
    remaining: usize,
    fallback: Option<(Loader, Vec<usize>, u64, usize)>,
}

impl EpochIter {
    /// Return a batch's buffers to the producer for reuse.
    pub fn recycle(&self, batch: Batch) {
        let _ = self.free.send(batch);
    }
}

impl Iterator for EpochIter {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        if self.remaining == 0 {
            return None;
        }
        let b = if let Some((loader, perm, epoch, next)) = &mut self.fallback {
            let mut b = Batch::default();
            loader.fill_batch(perm, *epoch, *next, &mut b);
            *next += 1;
            Some(b)
        } else {
            self.rx.as_ref().and_then(|rx| rx.recv().ok())
        };
        match b {
            Some(b) => {
                self.remaining -= 1;
                Some(b)
            }
            None => {
                self.remaining = 0;
                None
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl ExactSizeIterator for EpochIter {}

impl Drop for EpochIter {
    fn drop(&mut self) {
        // Dropping the receiver makes a blocked producer's send fail.
        self.rx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Sequential batches over a dataset, the last one partial; no shuffling
/// or augmentation (for evaluation). See [`Dataset::eval_batches`].
pub struct EvalIter<'a> {
    data: &'a Dataset,
    batch_size: usize,
    next: usize,
    index: usize,
}

impl<'a> EvalIter<'a> {
    pub(crate) fn new(data: &'a Dataset, batch_size: usize) -> EvalIter<'a> {
        EvalIter {
            data,
            batch_size: batch_size.max(1),
            next: 0,
            index: 0,
        }
    }

    /// Like `next`, but fills `batch` in place (no allocation once its
    /// buffers have grown). Returns false when the data is exhausted.
    pub fn next_into(&mut self, batch: &mut Batch) -> bool {
        if self.next >= self.data.n {
            return false;
        }
        let end = (self.next + self.batch_size).min(self.data.n);
        let (d, p) = (self.data, self.data.image_len());
        batch.images.clear();
        batch
            .images
            .extend_from_slice(&d.images[self.next * p..end * p]);
        batch.labels.clear();
        batch
            .labels
            .extend(d.labels[self.next..end].iter().map(|&l| l as usize));
        batch.n = end - self.next;
        (batch.c, batch.h, batch.w) = (d.c, d.h, d.w);
        batch.epoch = 0;
        batch.index = self.index;
        self.index += 1;
        self.next = end;
        true
    }
}

impl Iterator for EvalIter<'_> {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        let mut b = Batch::default();
        self.next_into(&mut b).then_some(b)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.data.n - self.next;
        let k = left.div_ceil(self.batch_size);
        (k, Some(k))
    }
}

impl ExactSizeIterator for EvalIter<'_> {}

#[cfg(test)]
mod tests {
    use super::super::testutil::toy;
    use super::*;

    fn loader(n: usize, bs: usize, seed: u64, aug: Option<Augment>) -> Loader {
        Loader::new(Arc::new(toy(n, 2, 6, 6, 10)), bs, seed, aug).unwrap()
    }

    fn all(l: &Loader, epoch: u64) -> Vec<Batch> {
        l.epoch(epoch).collect()
    }

    #[test]
    fn same_seed_same_batches() {
        let a = loader(50, 8, 7, Some(Augment::cifar()));
        let b = loader(50, 8, 7, Some(Augment::cifar()));
        assert_eq!(all(&a, 3), all(&b, 3));
        let c = loader(50, 8, 8, Some(Augment::cifar()));
        assert_ne!(all(&a, 3), all(&c, 3));
    }

    #[test]
    fn epochs_differ_and_visit_each_sample_once() {
        let l = loader(50, 8, 1, None);
        assert_eq!(l.batches_per_epoch(), 6);
        let e0 = all(&l, 0);
        let e1 = all(&l, 1);
        assert_eq!(e0.len(), 6);
        assert!(e0
            .iter()
            .all(|b| b.n == 8 && b.labels.len() == 8 && b.images.len() == 8 * 72));
        let order = |bs: &[Batch]| -> Vec<usize> {
            // recover the sample index from the toy pixel value
            bs.iter()
                .flat_map(|b| b.images.chunks(72).map(|im| (im[0] / 1000.0) as usize))
                .collect::<Vec<_>>()
        };
        let (o0, o1) = (order(&e0), order(&e1));
        assert_ne!(o0, o1);
        // each epoch: 48 distinct samples; with the 2 dropped ones, all 50
        for (o, e) in [(o0, 0), (o1, 1)] {
            let mut s = o.clone();
            s.sort_unstable();
            s.dedup();
            assert_eq!(s.len(), 48);
            let perm = l.permutation(e);
            assert_eq!(o, perm[..48].to_vec());
            let mut p = perm.clone();
            p.sort_unstable();
            assert_eq!(p, (0..50).collect::<Vec<_>>());
        }
        // labels match images
        for b in &e0 {
            for (k, im) in b.images.chunks(72).enumerate() {
                assert_eq!(b.labels[k], ((im[0] / 1000.0) as usize) % 10);
            }
        }
    }

    #[test]
    fn resume_mid_epoch_and_recycling_reproduce_batches() {
        let l = loader(64, 8, 5, Some(Augment::cifar()));
        let full = all(&l, 2);
        let tail: Vec<Batch> = l.epoch_from(2, 5).collect();
        assert_eq!(tail, full[5..].to_vec());
        // recycling buffers changes nothing
        let mut it = l.clone().with_prefetch(1).epoch(2);
        let mut got = Vec::new();
        while let Some(b) = it.next() {
            got.push(b.clone());
            it.recycle(b);
        }
        assert_eq!(got, full);
        // dropping an iterator early does not hang
        let mut it = l.epoch(3);
        let _ = it.next();
        drop(it);
    }

    #[test]
    fn bad_batch_size_is_config_error() {
        let d = Arc::new(toy(5, 1, 2, 2, 2));
        assert!(matches!(
            Loader::new(d.clone(), 0, 0, None),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            Loader::new(d.clone(), 6, 0, None),
            Err(Error::Config(_))
        ));
        assert!(Loader::new(d, 5, 0, None).is_ok());
    }

    #[test]
    fn eval_iter_is_sequential_and_keeps_last_partial() {
        let d = toy(10, 1, 3, 3, 4);
        let bs: Vec<Batch> = d.eval_batches(4).collect();
        assert_eq!(bs.iter().map(|b| b.n).collect::<Vec<_>>(), vec![4, 4, 2]);
        assert_eq!(d.eval_batches(4).len(), 3);
        let imgs: Vec<f32> = bs.iter().flat_map(|b| b.images.clone()).collect();
        assert_eq!(imgs, d.images);
        let labels: Vec<usize> = bs.iter().flat_map(|b| b.labels.clone()).collect();
        assert_eq!(
            labels,
            d.labels.iter().map(|&l| l as usize).collect::<Vec<_>>()
        );
        assert_eq!(bs[2].index, 2);
        // in-place variant
        let mut it = d.eval_batches(3);
        let mut b = Batch::default();
        let mut sizes = Vec::new();
        while it.next_into(&mut b) {
            sizes.push(b.n);
        }
        assert_eq!(sizes, vec![3, 3, 3, 1]);
    }
}
