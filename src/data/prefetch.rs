//! Building upcoming batches on a background thread while the caller trains.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

#[cfg(test)]
use super::make_batch;
use super::{Augment, Batch, DataError, Dataset, SplitKind, make_batch_slice};

/// Everything [`make_batch`] needs besides the dataset and split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRequest {
    /// Images of the batch, in order.
    pub indices: Vec<usize>,
    /// Output side in pixels.
    pub resolution: usize,
    /// Augmentation to apply.
    pub augment: Augment,
    /// Seed of the batch's random choices.
    pub seed: u64,
    /// Position of the first image in the whole batch when this is one
    /// process's slice of it (0 otherwise): augmentation follows the
    /// position in the whole batch.
    pub first: usize,
}

type Outcome = Result<Batch, DataError>;

/// Iterator over batches built ahead of time by a worker thread.
///
/// Yields exactly what calling [`make_batch`] on each request would, in
/// request order. After an error it yields that error and then ends: the
/// caller is expected to stop training anyway. Dropping it early stops the
/// worker and waits for it (at most the batch it is building).
pub struct Prefetcher {
    receiver: Option<Receiver<Outcome>>,
    stop: Arc<AtomicBool>,
    worker: Option<JoinHandle<()>>,
}

impl Prefetcher {
    /// Batches kept ready by [`Prefetcher::new`].
    pub const DEFAULT_DEPTH: usize = 2;

    /// Starts building `requests` on `split` of `dataset`, keeping
    /// [`DEFAULT_DEPTH`](Self::DEFAULT_DEPTH) batches ready.
    pub fn new<I>(dataset: Arc<Dataset>, split: SplitKind, requests: I) -> Self
    where
        I: IntoIterator<Item = BatchRequest>,
        I::IntoIter: Send + 'static,
    {
        Self::with_depth(dataset, split, requests, Self::DEFAULT_DEPTH)
    }

    /// Like [`new`](Self::new) with `depth` ready batches (0 means the worker
    /// builds one batch and waits for it to be taken).
    pub fn with_depth<I>(dataset: Arc<Dataset>, split: SplitKind, requests: I, depth: usize) -> Self
    where
        I: IntoIterator<Item = BatchRequest>,
        I::IntoIter: Send + 'static,
    {
        let (sender, receiver) = sync_channel(depth);
        let stop = Arc::new(AtomicBool::new(false));
        let requests = requests.into_iter();
        let worker_stop = Arc::clone(&stop);
        let worker = std::thread::Builder::new()
            .name("ofa-data-prefetch".into())
            .spawn(move || work(&dataset, split, requests, &sender, &worker_stop));
        match worker {
            Ok(worker) => Self {
                receiver: Some(receiver),
                stop,
                worker: Some(worker),
            },
            // Without a thread we cannot prefetch; report it as the first item.
            Err(error) => Self::failed(DataError::Thread(error)),
        }
    }

    fn failed(error: DataError) -> Self {
        let (sender, receiver) = sync_channel(1);
        // The receiver is alive and the channel has room: this cannot fail.
        let _ = sender.send(Err(error));
        Self {
            receiver: Some(receiver),
            stop: Arc::new(AtomicBool::new(true)),
            worker: None,
        }
    }

    /// Joins a worker that hung up; a panic becomes an error item.
    fn finish(&mut self) -> Option<Outcome> {
        self.receiver = None;
        let worker = self.worker.take()?;
        worker.join().err().map(|_| Err(DataError::WorkerPanicked))
    }
}

impl Iterator for Prefetcher {
    type Item = Outcome;

    fn next(&mut self) -> Option<Outcome> {
        let received = self.receiver.as_ref()?.recv();
        match received {
            Ok(outcome) => Some(outcome),
            Err(_) => self.finish(),
        }
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receiver makes a worker blocked in `send` return.
        self.receiver = None;
        if let Some(worker) = self.worker.take() {
            // A panic was already lost with the dropped iterator; nothing to report.
            let _ = worker.join();
        }
    }
}

fn work(
    dataset: &Dataset,
    split: SplitKind,
    requests: impl Iterator<Item = BatchRequest>,
    sender: &SyncSender<Outcome>,
    stop: &AtomicBool,
) {
    let split = dataset.split(split);
    for request in requests {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let outcome = make_batch_slice(
            dataset,
            split,
            &request.indices,
            request.first,
            request.resolution,
            request.augment,
            request.seed,
        );
        let failed = outcome.is_err();
        if sender.send(outcome).is_err() || failed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synthetic;

    fn requests(count: usize) -> Vec<BatchRequest> {
        (0..count)
            .map(|i| BatchRequest {
                indices: (0..8).map(|j| (i * 8 + j) % 40).collect(),
                resolution: 6 + i % 3,
                augment: if i % 2 == 0 {
                    Augment::Train
                } else {
                    Augment::None
                },
                seed: i as u64,
                first: 0,
            })
            .collect()
    }

    #[test]
    fn yields_the_same_batches_as_make_batch_in_order() {
        let ds = Arc::new(synthetic(4, 1, 8, 40, 8, 0).expect("valid"));
        let reqs = requests(7);
        let got: Vec<Batch> = Prefetcher::new(Arc::clone(&ds), SplitKind::Train, reqs.clone())
            .collect::<Result<_, _>>()
            .expect("all batches build");
        assert_eq!(got.len(), reqs.len());
        for (batch, req) in got.iter().zip(&reqs) {
            let direct = make_batch(
                &ds,
                &ds.train,
                &req.indices,
                req.resolution,
                req.augment,
                req.seed,
            )
            .expect("valid");
            assert_eq!(batch, &direct);
        }
    }

    #[test]
    fn dropping_mid_stream_stops_cleanly() {
        let ds = Arc::new(synthetic(4, 1, 8, 40, 8, 0).expect("valid"));
        for depth in [0, 1, 2, 5] {
            let mut prefetcher =
                Prefetcher::with_depth(Arc::clone(&ds), SplitKind::Train, requests(1000), depth);
            assert!(prefetcher.next().is_some_and(|b| b.is_ok()));
            assert!(prefetcher.next().is_some_and(|b| b.is_ok()));
            drop(prefetcher);
        }
        // An endless request stream must also stop on drop.
        let endless = std::iter::repeat(requests(1).remove(0));
        let mut prefetcher = Prefetcher::new(ds, SplitKind::Test, endless);
        assert!(prefetcher.next().is_some_and(|b| b.is_ok()));
    }

    #[test]
    fn an_error_is_yielded_then_the_stream_ends() {
        let ds = Arc::new(synthetic(2, 1, 4, 40, 4, 0).expect("valid"));
        let mut reqs = requests(3);
        reqs[1].indices = vec![100];
        let mut prefetcher = Prefetcher::new(ds, SplitKind::Train, reqs);
        assert!(prefetcher.next().is_some_and(|b| b.is_ok()));
        assert!(prefetcher.next().is_some_and(|b| b.is_err()));
        assert!(prefetcher.next().is_none());
        assert!(prefetcher.next().is_none());
    }

    #[test]
    fn a_panicking_request_source_becomes_an_error() {
        let ds = Arc::new(synthetic(2, 1, 4, 40, 4, 0).expect("valid"));
        let first = requests(1).remove(0);
        let source = std::iter::once(first).chain(std::iter::from_fn(|| panic!("source broke")));
        let mut prefetcher = Prefetcher::new(ds, SplitKind::Train, source);
        assert!(prefetcher.next().is_some_and(|b| b.is_ok()));
        assert!(matches!(
            prefetcher.next(),
            Some(Err(DataError::WorkerPanicked))
        ));
        assert!(prefetcher.next().is_none());
    }
}
