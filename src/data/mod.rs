//! Datasets for training and evaluating OFA networks on the CPU.
//!
//! This module reads the common small benchmark datasets (Fashion-MNIST, MNIST,
//! CIFAR-10, CIFAR-100) into memory and lists ImageFolder trees (decoded lazily,
//! batch by batch). It produces plain `Vec<f32>` batches in NCHW order; turning
//! them into tensors is somebody else's job, which keeps this module free of
//! any tensor library.
//!
//! Everything random (hold-out split, epoch order, augmentation) is seeded
//! explicitly and uses ChaCha8 plus our own integer/float derivations, so a
//! batch is a pure function of its arguments on every machine. That is what
//! makes exact resume and data-parallel workers possible.
//!
//! Malformed input never panics: every reader returns a [`DataError`] whose
//! message names the offending file or folder and what is wrong with it.

mod batch;
mod cifar;
mod dataset;
mod error;
mod folder;
mod idx;
mod memory;
mod prefetch;
mod rng;
mod sampling;
mod spec;
mod summary;
mod transform;

pub use batch::{Augment, Batch, make_batch, make_batch_slice};
pub use dataset::{
    CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, Dataset, FASHION_MNIST_MEAN,
    FASHION_MNIST_STD, FOLDER_NATIVE_RESOLUTION, FolderTransforms, IMAGENET_MEAN, IMAGENET_STD,
    MNIST_MEAN, MNIST_STD, Split, SplitKind, load, synthetic,
};
pub use error::DataError;
pub use prefetch::{BatchRequest, Prefetcher};
pub use sampling::{batch_seed, cap_indices, cap_indices_stratified, epoch_order, holdout};
pub use spec::{DatasetSpec, FASHION_MNIST_DEBIAN_DIR};
pub use summary::{ClassSummary, DataSummary, summary};
pub use summary::{DecodeReport, check_decode};
pub use transform::resize_bilinear;

#[cfg(test)]
mod test_util;
