//! The loaded dataset and its two splits.

use std::path::{Path, PathBuf};

use super::memory::MemoryData;
use super::rng::{below, stream_rng};
use super::{DataError, DatasetSpec, cifar, folder, idx};

/// Fashion-MNIST per-channel mean of pixel/255 over the training set.
pub const FASHION_MNIST_MEAN: [f32; 1] = [0.2860];
/// Fashion-MNIST per-channel standard deviation.
pub const FASHION_MNIST_STD: [f32; 1] = [0.3530];
/// MNIST per-channel mean.
pub const MNIST_MEAN: [f32; 1] = [0.1307];
/// MNIST per-channel standard deviation.
pub const MNIST_STD: [f32; 1] = [0.3081];
/// CIFAR-10 per-channel (RGB) mean.
pub const CIFAR10_MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
/// CIFAR-10 per-channel standard deviation.
pub const CIFAR10_STD: [f32; 3] = [0.2470, 0.2435, 0.2616];
/// CIFAR-100 per-channel (RGB) mean.
pub const CIFAR100_MEAN: [f32; 3] = [0.5071, 0.4865, 0.4409];
/// CIFAR-100 per-channel standard deviation.
pub const CIFAR100_STD: [f32; 3] = [0.2673, 0.2564, 0.2762];
/// ImageNet statistics, used for every ImageFolder dataset.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet per-channel standard deviation.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// Folder images have no fixed size; this is the customary ImageNet input size
/// reported as their native resolution.
pub const FOLDER_NATIVE_RESOLUTION: usize = 224;

const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Which of a dataset's two splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SplitKind {
    /// The training split (hold-outs for validation are carved from it).
    Train,
    /// The official test split (`val/` for ImageFolder trees).
    Test,
}

/// A dataset loaded and ready to serve batches.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Short name (`fashion-mnist`, `cifar10`, the folder's name…).
    pub name: String,
    /// Class names, indexed by label.
    pub classes: Vec<String>,
    /// Channels of the produced batches (1 for (Fashion-)MNIST, 3 otherwise).
    pub channels: usize,
    /// Side of the stored images: 28, 32, or a nominal 224 for folders.
    pub native_resolution: usize,
    /// Per-channel normalisation mean (of pixel / 255).
    pub mean: Vec<f32>,
    /// Per-channel normalisation standard deviation.
    pub std: Vec<f32>,
    /// Training images.
    pub train: Split,
    /// Test images.
    pub test: Split,
    /// How images stored as files are resized (in-memory images ignore it).
    pub transforms: FolderTransforms,
}

/// The transforms of ImageFolder images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FolderTransforms {
    /// The reference's (torchvision on PIL images): Pillow's antialiased
    /// bilinear resize, shorter side `ceil(r / 0.875)` for evaluation, the
    /// "tf" colour distortion in training, BN recalibration with the
    /// training transform.
    #[default]
    Reference,
    /// Ours before: 2-tap bilinear without antialiasing, `round(r / 0.875)`,
    /// no colour distortion, recalibration with the evaluation transform
    /// (`folder-bilinear:DIR`).
    Bilinear,
}

impl Dataset {
    /// The requested split.
    pub fn split(&self, kind: SplitKind) -> &Split {
        match kind {
            SplitKind::Train => &self.train,
            SplitKind::Test => &self.test,
        }
    }

    /// Whether images are held decoded in memory (as opposed to files on disk).
    pub fn is_in_memory(&self) -> bool {
        self.train.is_in_memory()
    }
}

/// One split's images and labels.
///
/// Small datasets keep their `u8` pixels in memory (N×C×H×W); ImageFolder
/// datasets keep only the file list and decode when a batch is built.
#[derive(Debug, Clone)]
pub struct Split {
    labels: Vec<usize>,
    num_classes: usize,
    images: Images,
}

#[derive(Debug, Clone)]
enum Images {
    Memory {
        pixels: Vec<u8>,
        channels: usize,
        size: usize,
    },
    Files(Vec<PathBuf>),
}

/// Where one image's pixels come from, as handed to the batch builder.
pub(crate) enum ImageSource<'a> {
    /// Decoded `u8` pixels, C×size×size.
    Pixels {
        pixels: &'a [u8],
        channels: usize,
        size: usize,
    },
    /// An encoded image file.
    File(&'a Path),
}

impl Split {
    /// An in-memory split of square `channels`×`size`×`size` images stored
    /// one after the other (N×C×H×W).
    pub fn in_memory(
        pixels: Vec<u8>,
        labels: Vec<usize>,
        channels: usize,
        size: usize,
        num_classes: usize,
    ) -> Result<Self, DataError> {
        let expected = labels
            .len()
            .checked_mul(channels)
            .and_then(|n| n.checked_mul(size))
            .and_then(|n| n.checked_mul(size));
        if channels == 0 || size == 0 || expected != Some(pixels.len()) {
            return Err(DataError::InvalidArgument(format!(
                "{} pixel bytes do not hold {} images of {channels}x{size}x{size}",
                pixels.len(),
                labels.len()
            )));
        }
        check_labels(&labels, num_classes)?;
        Ok(Self {
            labels,
            num_classes,
            images: Images::Memory {
                pixels,
                channels,
                size,
            },
        })
    }

    /// A split of image files with their labels.
    pub fn from_files(items: Vec<(PathBuf, usize)>, num_classes: usize) -> Result<Self, DataError> {
        let (paths, labels): (Vec<PathBuf>, Vec<usize>) = items.into_iter().unzip();
        check_labels(&labels, num_classes)?;
        Ok(Self {
            labels,
            num_classes,
            images: Images::Files(paths),
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the split has no image at all.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Label of image `index`, or `None` past the end.
    pub fn label(&self, index: usize) -> Option<usize> {
        self.labels.get(index).copied()
    }

    /// All labels, in image order.
    pub fn labels(&self) -> &[usize] {
        &self.labels
    }

    /// Number of classes the labels index into.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// Images per class, indexed by label.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes];
        for &label in &self.labels {
            // Labels were checked against `num_classes` on construction.
            counts[label] += 1;
        }
        counts
    }

    /// Whether pixels are held in memory.
    pub fn is_in_memory(&self) -> bool {
        matches!(self.images, Images::Memory { .. })
    }

    /// The stored pixels of image `index` (C×H×W), for in-memory splits.
    pub fn pixels(&self, index: usize) -> Option<&[u8]> {
        match self.source(index)? {
            ImageSource::Pixels { pixels, .. } => Some(pixels),
            ImageSource::File(_) => None,
        }
    }

    /// The file of image `index`, for file-backed splits.
    pub fn path(&self, index: usize) -> Option<&Path> {
        match self.source(index)? {
            ImageSource::File(path) => Some(path),
            ImageSource::Pixels { .. } => None,
        }
    }

    /// `(channels, side)` of in-memory images; `None` for file-backed splits,
    /// whose images each have their own size.
    pub fn image_shape(&self) -> Option<(usize, usize)> {
        match self.images {
            Images::Memory { channels, size, .. } => Some((channels, size)),
            Images::Files(_) => None,
        }
    }

    pub(crate) fn source(&self, index: usize) -> Option<ImageSource<'_>> {
        match &self.images {
            Images::Memory {
                pixels,
                channels,
                size,
            } => {
                let len = channels * size * size;
                let start = index.checked_mul(len)?;
                let pixels = pixels.get(start..start.checked_add(len)?)?;
                Some(ImageSource::Pixels {
                    pixels,
                    channels: *channels,
                    size: *size,
                })
            }
            Images::Files(paths) => paths.get(index).map(|p| ImageSource::File(p)),
        }
    }
}

fn check_labels(labels: &[usize], num_classes: usize) -> Result<(), DataError> {
    match labels.iter().position(|&l| l >= num_classes) {
        Some(i) => Err(DataError::InvalidArgument(format!(
            "label {} of image {i} is not below the number of classes {num_classes}",
            labels[i]
        ))),
        None => Ok(()),
    }
}

/// Loads the dataset named by `spec`: in-memory datasets are read and
/// validated completely; ImageFolder trees are only listed.
pub fn load(spec: &DatasetSpec) -> Result<Dataset, DataError> {
    match spec {
        DatasetSpec::FashionMnist(dir) => {
            let classes = FASHION_MNIST_CLASSES.map(String::from).to_vec();
            load_idx(
                dir,
                "fashion-mnist",
                classes,
                &FASHION_MNIST_MEAN,
                &FASHION_MNIST_STD,
            )
        }
        DatasetSpec::Mnist(dir) => {
            let classes: Vec<String> = (0..10).map(|d| d.to_string()).collect();
            load_idx(dir, "mnist", classes, &MNIST_MEAN, &MNIST_STD)
        }
        DatasetSpec::Cifar10(dir) => {
            let data = cifar::load_cifar10(dir)?;
            in_memory_dataset("cifar10", data, &CIFAR10_MEAN, &CIFAR10_STD)
        }
        DatasetSpec::Cifar100(dir) => {
            let data = cifar::load_cifar100(dir)?;
            in_memory_dataset("cifar100", data, &CIFAR100_MEAN, &CIFAR100_STD)
        }
        DatasetSpec::Folder(dir) => load_folder(dir, FolderTransforms::Reference),
        DatasetSpec::FolderBilinear(dir) => load_folder(dir, FolderTransforms::Bilinear),
    }
}

fn load_idx(
    dir: &Path,
    name: &str,
    classes: Vec<String>,
    mean: &[f32],
    std: &[f32],
) -> Result<Dataset, DataError> {
    let data = idx::load_dir(dir, classes)?;
    in_memory_dataset(name, data, mean, std)
}

fn in_memory_dataset(
    name: &str,
    data: MemoryData,
    mean: &[f32],
    std: &[f32],
) -> Result<Dataset, DataError> {
    let num_classes = data.classes.len();
    let split =
        |(pixels, labels)| Split::in_memory(pixels, labels, data.channels, data.size, num_classes);
    Ok(Dataset {
        name: name.to_string(),
        channels: data.channels,
        native_resolution: data.size,
        mean: mean.to_vec(),
        std: std.to_vec(),
        train: split(data.train)?,
        test: split(data.test)?,
        classes: data.classes,
        transforms: FolderTransforms::default(),
    })
}

fn load_folder(dir: &Path, transforms: FolderTransforms) -> Result<Dataset, DataError> {
    let listing = folder::list(dir)?;
    let num_classes = listing.classes.len();
    let name = dir.file_name().map_or_else(
        || "folder".to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    Ok(Dataset {
        name,
        channels: 3,
        native_resolution: FOLDER_NATIVE_RESOLUTION,
        mean: IMAGENET_MEAN.to_vec(),
        std: IMAGENET_STD.to_vec(),
        train: Split::from_files(listing.train, num_classes)?,
        test: Split::from_files(listing.val, num_classes)?,
        classes: listing.classes,
        transforms,
    })
}

/// A made-up in-memory dataset for smoke tests without real data: each class
/// has a fixed random prototype image and every sample is its prototype plus
/// noise, so a network can learn it quickly. Labels cycle through the classes.
pub fn synthetic(
    num_classes: usize,
    channels: usize,
    size: usize,
    train_len: usize,
    test_len: usize,
    seed: u64,
) -> Result<Dataset, DataError> {
    if num_classes == 0 || channels == 0 || size == 0 {
        return Err(DataError::InvalidArgument(format!(
            "a synthetic dataset needs at least one class, channel and pixel \
             (got {num_classes} classes, {channels} channels, size {size})"
        )));
    }
    let image_len = channels * size * size;
    let prototypes: Vec<Vec<u8>> = (0..num_classes)
        .map(|class| {
            let mut rng = stream_rng(seed, class as u64);
            (0..image_len).map(|_| below(&mut rng, 256) as u8).collect()
        })
        .collect();
    // Streams past the prototypes' keep the two splits' noise independent.
    let make = |len: usize, stream: u64| {
        let mut rng = stream_rng(seed, stream);
        let labels: Vec<usize> = (0..len).map(|i| i % num_classes).collect();
        let pixels = labels
            .iter()
            .flat_map(|&l| prototypes[l].iter())
            .map(|&p| (i32::from(p) + below(&mut rng, 65) as i32 - 32).clamp(0, 255) as u8)
            .collect::<Vec<u8>>();
        Split::in_memory(pixels, labels, channels, size, num_classes)
    };
    Ok(Dataset {
        name: "synthetic".to_string(),
        classes: (0..num_classes).map(|c| c.to_string()).collect(),
        channels,
        native_resolution: size,
        mean: vec![0.5; channels],
        std: vec![0.29; channels],
        train: make(train_len, u64::MAX)?,
        test: make(test_len, u64::MAX - 1)?,
        transforms: FolderTransforms::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_memory_split_checks_sizes_and_labels() {
        assert!(Split::in_memory(vec![0; 8], vec![0, 1], 1, 2, 2).is_ok());
        assert!(Split::in_memory(vec![0; 7], vec![0, 1], 1, 2, 2).is_err());
        assert!(Split::in_memory(vec![0; 8], vec![0, 2], 1, 2, 2).is_err());
        assert!(Split::in_memory(vec![], vec![], 0, 2, 2).is_err());
    }

    #[test]
    fn split_accessors() {
        let pixels: Vec<u8> = (0..12).collect();
        let split = Split::in_memory(pixels, vec![1, 0, 1], 1, 2, 3).expect("valid");
        assert_eq!(split.len(), 3);
        assert_eq!(split.label(2), Some(1));
        assert_eq!(split.label(3), None);
        assert_eq!(split.class_counts(), vec![1, 2, 0]);
        assert_eq!(split.pixels(1), Some(&[4u8, 5, 6, 7][..]));
        assert_eq!(split.pixels(3), None);
        assert_eq!(split.path(0), None);
        assert_eq!(split.image_shape(), Some((1, 2)));

        let files = Split::from_files(vec![("a.png".into(), 0)], 1).expect("valid");
        assert_eq!(files.path(0), Some(Path::new("a.png")));
        assert!(Split::from_files(vec![("a.png".into(), 1)], 1).is_err());
    }

    #[test]
    fn synthetic_is_deterministic() {
        let a = synthetic(3, 2, 4, 9, 6, 1).expect("valid");
        let b = synthetic(3, 2, 4, 9, 6, 1).expect("valid");
        assert_eq!(a.train.pixels(5), b.train.pixels(5));
        assert_eq!(a.train.class_counts(), vec![3, 3, 3]);
        assert_eq!(a.test.len(), 6);
        assert_ne!(a.train.pixels(0), a.train.pixels(1));
    }
}
