//! Building normalised float batches from a split.

use rand::Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::dataset::{FolderTransforms, ImageSource};
use super::rng::{coin, stream_rng};
use super::transform::{
    Image, random_padded_crop, random_resized_crop_box, resize_and_centre_crop,
};
use super::{DataError, Dataset, Split, folder};

/// A batch ready to become a tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// `batch_size`×`channels`×`resolution`×`resolution`, row-major NCHW,
    /// normalised with the dataset's mean and std.
    pub images: Vec<f32>,
    /// Class index of each image (i64 as loss functions expect).
    pub labels: Vec<i64>,
    /// Number of images.
    pub batch_size: usize,
    /// Channels per image.
    pub channels: usize,
    /// Height and width of every image.
    pub resolution: usize,
}

/// Which data augmentation to apply; passed explicitly with every batch so
/// there is no hidden global state to get wrong in evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Augment {
    /// Deterministic resize (and centre crop for folders): evaluation.
    #[default]
    None,
    /// Random crop and horizontal flip: training.
    Train,
}

/// Builds the batch of `split` images at `indices`, resized to `resolution`.
///
/// * In-memory images, [`Augment::Train`]: zero-padded random crop back to the
///   native size (padding `round(native / 8)`: 4 for both 28 and 32 pixels,
///   the CIFAR recipe scaled to the image), horizontal flip with p = 0.5, then
///   bilinear resize to `resolution`.
/// * In-memory images, [`Augment::None`]: bilinear resize only (none at all at
///   the native resolution).
/// * Folder images, `Train`: torchvision-style random-resized crop to
///   `resolution`, then flip, then (reference transforms) the reference's
///   "tf" colour distortion; `None`: shorter side to
///   `ceil(resolution / 0.875)`, then the centred square — both resized
///   with Pillow's antialiased bilinear filter, as the reference's ImageNet
///   pipeline does.
///
/// Then `(x - mean) / std` per channel. The random choices for the image at
/// position `p` come from a generator seeded with `(seed, p)`, so the batch
/// is a pure function of the arguments whatever the thread count; use a
/// different `seed` for every batch (see [`batch_seed`](super::batch_seed)).
pub fn make_batch(
    ds: &Dataset,
    split: &Split,
    indices: &[usize],
    resolution: usize,
    augment: Augment,
    seed: u64,
) -> Result<Batch, DataError> {
    make_batch_slice(ds, split, indices, 0, resolution, augment, seed)
}

/// [`make_batch`] of the slice of a larger batch whose first image sits at
/// position `first`: the image at `first + p` gets the random choices it
/// gets in the whole batch (one process's share of a data-parallel step).
pub fn make_batch_slice(
    ds: &Dataset,
    split: &Split,
    indices: &[usize],
    first: usize,
    resolution: usize,
    augment: Augment,
    seed: u64,
) -> Result<Batch, DataError> {
    check_request(ds, split, indices, resolution)?;
    let image_len = ds.channels * resolution * resolution;
    let mut images = vec![0.0; indices.len() * image_len];
    let outcomes: Vec<Result<(), DataError>> = images
        .par_chunks_mut(image_len)
        .zip(indices.par_iter())
        .enumerate()
        .map(|(position, (out, &index))| {
            let mut rng = stream_rng(seed, (first + position) as u64);
            let image = prepare(ds, split, index, resolution, augment, &mut rng)?;
            out.copy_from_slice(&image.data);
            Ok(())
        })
        .collect();
    // Report the first failure in batch order, so the message is stable.
    outcomes.into_iter().collect::<Result<(), DataError>>()?;
    let labels = indices
        .iter()
        .filter_map(|&i| split.label(i))
        .map(|label| label as i64)
        .collect();
    Ok(Batch {
        images,
        labels,
        batch_size: indices.len(),
        channels: ds.channels,
        resolution,
    })
}

fn check_request(
    ds: &Dataset,
    split: &Split,
    indices: &[usize],
    resolution: usize,
) -> Result<(), DataError> {
    let invalid = |text: String| Err(DataError::InvalidArgument(text));
    if indices.is_empty() {
        return invalid("a batch needs at least one image".into());
    }
    if resolution == 0 {
        return invalid("the batch resolution must be at least 1 pixel".into());
    }
    if ds.mean.len() != ds.channels || ds.std.len() != ds.channels {
        return invalid(format!(
            "dataset {} has {} channels but {} means and {} standard deviations",
            ds.name,
            ds.channels,
            ds.mean.len(),
            ds.std.len()
        ));
    }
    // Decoded folder images are always RGB.
    let split_channels = split.image_shape().map_or(3, |(channels, _)| channels);
    if split_channels != ds.channels {
        return invalid(format!(
            "split images have {split_channels} channels but dataset {} has {}",
            ds.name, ds.channels
        ));
    }
    if let Some(&bad) = indices.iter().find(|&&i| i >= split.len()) {
        return invalid(format!(
            "index {bad} is outside the split of {} images",
            split.len()
        ));
    }
    Ok(())
}

/// Loads, augments, resizes and normalises one image.
fn prepare(
    ds: &Dataset,
    split: &Split,
    index: usize,
    resolution: usize,
    augment: Augment,
    rng: &mut impl Rng,
) -> Result<Image, DataError> {
    let source = split
        .source(index)
        .ok_or_else(|| DataError::InvalidArgument(format!("index {index} is outside the split")))?;
    let mut image = match source {
        ImageSource::Pixels {
            pixels,
            channels,
            size,
        } => {
            let image = Image::from_planes(pixels, channels, size, size);
            small_image(image, resolution, augment, rng)
        }
        ImageSource::File(path) => large_image(
            folder::decode(path)?,
            resolution,
            augment,
            ds.transforms,
            rng,
        ),
    };
    image.normalise(&ds.mean, &ds.std);
    Ok(image)
}

/// Padding of the training crop: `native / 8` rounded half up.
fn crop_padding(native: usize) -> usize {
    (native + 4) / 8
}

fn small_image(image: Image, resolution: usize, augment: Augment, rng: &mut impl Rng) -> Image {
    let image = match augment {
        Augment::None => image,
        Augment::Train => {
            let mut image = random_padded_crop(&image, crop_padding(image.height), rng);
            if coin(rng) {
                image.flip_horizontal();
            }
            image
        }
    };
    image.resize(resolution, resolution)
}

fn large_image(
    image: Image,
    resolution: usize,
    augment: Augment,
    transforms: FolderTransforms,
    rng: &mut impl Rng,
) -> Image {
    match augment {
        Augment::None => resize_and_centre_crop(image, resolution, transforms),
        Augment::Train => {
            let area = random_resized_crop_box(image.height, image.width, rng);
            let image = image.crop(area);
            let mut image = match transforms {
                FolderTransforms::Reference => image.resize_pil(resolution, resolution),
                FolderTransforms::Bilinear => image.resize(resolution, resolution),
            };
            if coin(rng) {
                image.flip_horizontal();
            }
            // The reference's colour distortion follows the flip.
            if transforms == FolderTransforms::Reference {
                image.tf_colour_jitter(rng);
            }
            image
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::test_util::{write, write_tree};
    use crate::data::transform::CropBox;
    use crate::data::{DatasetSpec, load, resize_bilinear, synthetic};

    fn small() -> Dataset {
        synthetic(3, 3, 8, 12, 6, 42).expect("valid")
    }

    #[test]
    fn same_arguments_give_bit_identical_batches() {
        let ds = small();
        let indices = [3, 1, 4, 1, 5, 9, 2, 6];
        let a = make_batch(&ds, &ds.train, &indices, 12, Augment::Train, 7).expect("valid");
        let b = make_batch(&ds, &ds.train, &indices, 12, Augment::Train, 7).expect("valid");
        let bits = |batch: &Batch| batch.images.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a), bits(&b));
        assert_eq!(a.labels, vec![0, 1, 1, 1, 2, 0, 2, 0]);
        assert_eq!((a.batch_size, a.channels, a.resolution), (8, 3, 12));
        assert_eq!(a.images.len(), 8 * 3 * 12 * 12);
    }

    #[test]
    fn different_seed_gives_different_augmentation() {
        let ds = small();
        let indices: Vec<usize> = (0..12).collect();
        let a = make_batch(&ds, &ds.train, &indices, 8, Augment::Train, 1).expect("valid");
        let b = make_batch(&ds, &ds.train, &indices, 8, Augment::Train, 2).expect("valid");
        assert_ne!(a.images, b.images);
        assert_eq!(a.labels, b.labels);
    }

    #[test]
    fn no_augmentation_at_native_resolution_is_exact_normalisation() {
        let ds = small();
        let batch = make_batch(&ds, &ds.test, &[4, 0], 8, Augment::None, 99).expect("valid");
        let mut expected = Vec::new();
        for index in [4, 0] {
            let pixels = ds.test.pixels(index).expect("in range");
            for (i, &p) in pixels.iter().enumerate() {
                let c = i / 64;
                expected.push((f32::from(p) / 255.0 - ds.mean[c]) / ds.std[c]);
            }
        }
        assert_eq!(batch.images, expected);
        // The seed plays no part without augmentation.
        let other = make_batch(&ds, &ds.test, &[4, 0], 8, Augment::None, 1).expect("valid");
        assert_eq!(batch.images, other.images);
    }

    #[test]
    fn no_augmentation_resizes_bilinearly() {
        let ds = small();
        let batch = make_batch(&ds, &ds.train, &[2], 5, Augment::None, 0).expect("valid");
        let pixels = ds.train.pixels(2).expect("in range");
        let floats: Vec<f32> = pixels.iter().map(|&p| f32::from(p) / 255.0).collect();
        let resized = resize_bilinear(&floats, 3, 8, 8, 5, 5);
        let expected: Vec<f32> = resized
            .iter()
            .enumerate()
            .map(|(i, v)| (v - ds.mean[i / 25]) / ds.std[i / 25])
            .collect();
        assert_eq!(batch.images, expected);
    }

    #[test]
    fn train_augmentation_is_a_padded_shift_possibly_mirrored() {
        // 4x4 images: padding (4 + 4) / 8 = 1, so 9 shifts × 2 mirrors.
        let ds = synthetic(2, 1, 4, 4, 2, 3).expect("valid");
        let indices = [0usize; 16];
        let batch = make_batch(&ds, &ds.train, &indices, 4, Augment::Train, 5).expect("valid");
        let pixels = ds.train.pixels(0).expect("in range");
        let original = Image::from_planes(pixels, 1, 4, 4);
        let mut candidates = Vec::new();
        for top in -1..=1 {
            for left in -1..=1 {
                let area = CropBox {
                    top,
                    left,
                    height: 4,
                    width: 4,
                };
                let mut shifted = original.crop(area);
                shifted.normalise(&ds.mean, &ds.std);
                candidates.push(shifted.data.clone());
                shifted.flip_horizontal();
                candidates.push(shifted.data);
            }
        }
        let outputs: Vec<&[f32]> = batch.images.chunks_exact(16).collect();
        assert!(
            outputs
                .iter()
                .all(|out| candidates.iter().any(|c| c == out))
        );
        // 16 draws from 18 outcomes: several distinct ones must appear.
        let distinct = candidates
            .iter()
            .filter(|c| outputs.contains(&c.as_slice()))
            .count();
        assert!(distinct > 3, "only {distinct} distinct augmentations");
    }

    #[test]
    fn crop_padding_choice() {
        assert_eq!(crop_padding(32), 4);
        assert_eq!(crop_padding(28), 4);
        assert_eq!(crop_padding(4), 1);
    }

    #[test]
    fn bad_requests_are_errors() {
        let ds = small();
        assert!(make_batch(&ds, &ds.train, &[], 8, Augment::None, 0).is_err());
        assert!(make_batch(&ds, &ds.train, &[0], 0, Augment::None, 0).is_err());
        let msg = make_batch(&ds, &ds.train, &[0, 12], 8, Augment::None, 0)
            .expect_err("out of range")
            .to_string();
        assert!(msg.contains("index 12"), "{msg}");
    }

    #[test]
    fn folder_batches_have_the_requested_shape() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_tree(dir.path());
        let ds = load(&DatasetSpec::Folder(dir.path().to_path_buf())).expect("valid");
        for augment in [Augment::None, Augment::Train] {
            let batch = make_batch(&ds, &ds.train, &[0, 1, 2, 3], 6, augment, 3).expect("decodes");
            assert_eq!(batch.images.len(), 4 * 3 * 6 * 6);
            assert_eq!(batch.labels, vec![0, 0, 1, 1]);
            assert!(batch.images.iter().all(|v| v.is_finite()));
            let again = make_batch(&ds, &ds.train, &[0, 1, 2, 3], 6, augment, 3).expect("decodes");
            assert_eq!(batch, again);
        }
    }

    #[test]
    fn corrupt_folder_image_fails_the_batch_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_tree(dir.path());
        write(&dir.path().join("train/cat/x.jpg"), b"this is no jpeg");
        let ds = load(&DatasetSpec::Folder(dir.path().to_path_buf())).expect("lists fine");
        let position = (0..ds.train.len())
            .find(|&i| ds.train.path(i).is_some_and(|p| p.ends_with("cat/x.jpg")))
            .expect("listed");
        let msg = make_batch(&ds, &ds.train, &[0, position], 8, Augment::Train, 0)
            .expect_err("corrupt")
            .to_string();
        assert!(msg.starts_with("folder "), "{msg}");
        assert!(msg.contains("train/cat/x.jpg: failed to decode"), "{msg}");
    }
}
