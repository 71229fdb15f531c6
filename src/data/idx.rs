//! Reader for the IDX files of MNIST and Fashion-MNIST.
//!
//! An IDX file is a big-endian header (magic number, then one `u32` per
//! dimension) followed by the raw `u8` values. The four files of a dataset may
//! each be gzipped (`.gz`) or not.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

use super::DataError;
use super::memory::MemoryData;

const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;
const IMAGES_HEADER: usize = 16;
const LABELS_HEADER: usize = 8;

/// One split read from its image and label files.
struct IdxSplit {
    pixels: Vec<u8>,
    labels: Vec<usize>,
    size: usize,
    images_path: PathBuf,
}

/// Reads `train-*` and `t10k-*` from `dir` into memory, checking everything
/// that can be checked: magic numbers, dimensions, file sizes, counts, labels.
pub(crate) fn load_dir(dir: &Path, classes: Vec<String>) -> Result<MemoryData, DataError> {
    if !dir.is_dir() {
        return Err(DataError::MissingFolder {
            path: dir.to_path_buf(),
        });
    }
    let train = load_split(dir, "train", classes.len())?;
    let test = load_split(dir, "t10k", classes.len())?;
    if test.size != train.size {
        return Err(DataError::invalid(
            &test.images_path,
            format!(
                "images are {0}x{0} but the training images are {1}x{1}",
                test.size, train.size
            ),
        ));
    }
    Ok(MemoryData {
        classes,
        channels: 1,
        size: train.size,
        train: (train.pixels, train.labels),
        test: (test.pixels, test.labels),
    })
}

fn load_split(dir: &Path, prefix: &str, num_classes: usize) -> Result<IdxSplit, DataError> {
    let images_path = locate(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let labels_path = locate(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    let (pixels, count, size) = parse_images(&images_path, read_maybe_gzip(&images_path)?)?;
    let labels = parse_labels(&labels_path, &read_maybe_gzip(&labels_path)?, num_classes)?;
    if labels.len() != count {
        return Err(DataError::invalid(
            &images_path,
            format!(
                "has {count} images but {} has {} labels",
                labels_path.display(),
                labels.len()
            ),
        ));
    }
    Ok(IdxSplit {
        pixels,
        labels,
        size,
        images_path,
    })
}

/// Finds `stem` or `stem.gz` in `dir`. The raw file wins when both exist:
/// someone unpacked it on purpose, and it skips the decompression.
fn locate(dir: &Path, stem: &str) -> Result<PathBuf, DataError> {
    let raw = dir.join(stem);
    let gz = dir.join(format!("{stem}.gz"));
    if raw.is_file() {
        Ok(raw)
    } else if gz.is_file() {
        Ok(gz)
    } else {
        Err(DataError::MissingFile {
            path: gz,
            alternatives: vec![raw],
        })
    }
}

/// Reads a whole file, decompressing it when its name ends in `.gz`.
fn read_maybe_gzip(path: &Path) -> Result<Vec<u8>, DataError> {
    let is_gzip = path.extension().is_some_and(|ext| ext == "gz");
    if !is_gzip {
        return std::fs::read(path).map_err(|e| DataError::io(path, e));
    }
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut bytes = Vec::new();
    GzDecoder::new(file)
        .read_to_end(&mut bytes)
        .map_err(|e| DataError::invalid(path, format!("corrupt gzip data: {e}")))?;
    Ok(bytes)
}

fn be_u32(bytes: &[u8], offset: usize) -> Option<u32> {
    let word = bytes.get(offset..offset + 4)?;
    Some(u32::from_be_bytes([word[0], word[1], word[2], word[3]]))
}

/// Checks the magic number and that the whole header is present.
fn check_header(
    path: &Path,
    bytes: &[u8],
    magic: u32,
    header_len: usize,
    what: &str,
) -> Result<(), DataError> {
    let found = be_u32(bytes, 0).ok_or_else(|| {
        DataError::invalid(
            path,
            format!("truncated: only {} bytes, no IDX header", bytes.len()),
        )
    })?;
    if found != magic {
        return Err(DataError::invalid(
            path,
            format!("wrong magic number 0x{found:08x}, expected 0x{magic:08x} ({what})"),
        ));
    }
    if bytes.len() < header_len {
        return Err(DataError::invalid(
            path,
            format!(
                "truncated: {} bytes is shorter than the {header_len}-byte {what} header",
                bytes.len()
            ),
        ));
    }
    Ok(())
}

/// Checks that the file holds exactly the header plus `payload` bytes.
fn check_size(
    path: &Path,
    file_len: usize,
    header_len: usize,
    payload: Option<usize>,
    claim: &str,
) -> Result<(), DataError> {
    let expected = payload.and_then(|p| p.checked_add(header_len));
    match expected {
        Some(expected) if expected == file_len => Ok(()),
        Some(expected) if expected < file_len => Err(DataError::invalid(
            path,
            format!(
                "header says {claim} ({expected} bytes with the header) but file has \
                 {file_len} bytes ({} trailing bytes)",
                file_len - expected
            ),
        )),
        _ => Err(DataError::invalid(
            path,
            format!(
                "truncated: header says {claim} ({} bytes with the header) but file has \
                 {file_len} bytes",
                expected.map_or_else(|| "too many".to_string(), |e| e.to_string())
            ),
        )),
    }
}

/// Returns the pixels (header stripped), the image count and the side.
fn parse_images(path: &Path, mut bytes: Vec<u8>) -> Result<(Vec<u8>, usize, usize), DataError> {
    let what = "IDX images";
    check_header(path, &bytes, IMAGES_MAGIC, IMAGES_HEADER, what)?;
    // The header is complete, so these reads cannot miss.
    let dims: Vec<usize> = (1..4)
        .map(|i| be_u32(&bytes, 4 * i).map_or(0, |d| d as usize))
        .collect();
    let (count, rows, cols) = (dims[0], dims[1], dims[2]);
    if rows == 0 || cols == 0 || rows != cols {
        return Err(DataError::invalid(
            path,
            format!("images are {rows}x{cols}; only square, non-empty images are supported"),
        ));
    }
    if count == 0 {
        return Err(DataError::invalid(
            path,
            "header says the file holds 0 images",
        ));
    }
    let payload = count.checked_mul(rows).and_then(|n| n.checked_mul(cols));
    let claim = format!("{count} images of {rows}x{cols}");
    check_size(path, bytes.len(), IMAGES_HEADER, payload, &claim)?;
    bytes.drain(..IMAGES_HEADER);
    Ok((bytes, count, rows))
}

fn parse_labels(path: &Path, bytes: &[u8], num_classes: usize) -> Result<Vec<usize>, DataError> {
    let what = "IDX labels";
    check_header(path, bytes, LABELS_MAGIC, LABELS_HEADER, what)?;
    let count = be_u32(bytes, 4).map_or(0, |c| c as usize);
    check_size(
        path,
        bytes.len(),
        LABELS_HEADER,
        Some(count),
        &format!("{count} labels"),
    )?;
    let labels = &bytes[LABELS_HEADER..];
    if let Some(i) = labels.iter().position(|&l| usize::from(l) >= num_classes) {
        return Err(DataError::invalid(
            path,
            format!(
                "label {} at index {i} is out of range (expected 0..{num_classes})",
                labels[i]
            ),
        ));
    }
    Ok(labels.iter().map(|&l| usize::from(l)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::test_util::{gzip, idx_images, idx_labels, write};
    use crate::data::{DatasetSpec, load};

    /// Writes a complete tiny dataset: 3 train and 2 test images of 2x2.
    fn write_dataset(dir: &Path, gzipped: bool) {
        let wrap = |bytes: Vec<u8>| if gzipped { gzip(&bytes) } else { bytes };
        let suffix = if gzipped { ".gz" } else { "" };
        let train: Vec<u8> = (0..12).collect();
        let test: Vec<u8> = (100..108).collect();
        let files = [
            ("train-images-idx3-ubyte", idx_images(3, 2, &train)),
            ("train-labels-idx1-ubyte", idx_labels(&[0, 9, 4])),
            ("t10k-images-idx3-ubyte", idx_images(2, 2, &test)),
            ("t10k-labels-idx1-ubyte", idx_labels(&[1, 2])),
        ];
        for (name, bytes) in files {
            write(&dir.join(format!("{name}{suffix}")), &wrap(bytes));
        }
    }

    fn load_mnist(dir: &Path) -> Result<crate::data::Dataset, DataError> {
        load(&DatasetSpec::Mnist(dir.to_path_buf()))
    }

    fn error_of(dir: &Path) -> String {
        load_mnist(dir).expect_err("must fail").to_string()
    }

    #[test]
    fn reads_raw_and_gzip() {
        for gzipped in [false, true] {
            let dir = tempfile::tempdir().expect("tempdir");
            write_dataset(dir.path(), gzipped);
            let ds = load_mnist(dir.path()).expect("valid dataset");
            assert_eq!((ds.channels, ds.native_resolution), (1, 2));
            assert_eq!(ds.train.labels(), &[0, 9, 4]);
            assert_eq!(ds.test.labels(), &[1, 2]);
            assert_eq!(ds.train.pixels(2), Some(&[8u8, 9, 10, 11][..]));
            assert_eq!(ds.test.pixels(1), Some(&[104u8, 105, 106, 107][..]));
            assert_eq!(ds.classes[3], "3");
        }
    }

    #[test]
    fn fashion_mnist_has_named_classes() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_dataset(dir.path(), true);
        let ds = load(&DatasetSpec::FashionMnist(dir.path().to_path_buf())).expect("valid");
        assert_eq!(ds.classes[0], "T-shirt/top");
        assert_eq!(ds.classes[9], "Ankle boot");
        assert_eq!(ds.mean, vec![0.2860]);
    }

    #[test]
    fn wrong_magic_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_dataset(dir.path(), true);
        let mut bad = idx_images(3, 2, &[0; 12]);
        bad[3] = 0x02;
        write(&dir.path().join("train-images-idx3-ubyte.gz"), &gzip(&bad));
        let msg = error_of(dir.path());
        let expected = "train-images-idx3-ubyte.gz: wrong magic number 0x00000802, \
                        expected 0x00000803 (IDX images)";
        assert!(msg.contains(expected), "{msg}");
    }

    #[test]
    fn truncated_images_name_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_dataset(dir.path(), false);
        let mut bad = idx_images(3, 2, &[0; 12]);
        bad.truncate(20);
        write(&dir.path().join("train-images-idx3-ubyte"), &bad);
        let msg = error_of(dir.path());
        let expected = "train-images-idx3-ubyte: truncated: header says 3 images of 2x2 \
                        (28 bytes with the header) but file has 20 bytes";
        assert!(msg.contains(expected), "{msg}");
    }

    #[test]
    fn truncated_header_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_dataset(dir.path(), false);
        write(&dir.path().join("t10k-labels-idx1-ubyte"), &[0, 0, 8, 1, 0]);
        let msg = error_of(dir.path());
        assert!(msg.contains("t10k-labels-idx1-ubyte: truncated"), "{msg}");
    }

    #[test]
    fn gzip_garbage_is_a_clean_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_dataset(dir.path(), true);
        let mut bad = gzip(&idx_labels(&[0, 1, 2]));
        let mid = bad.len() / 2;
        bad.truncate(mid);
        write(&dir.path().join("train-labels-idx1-ubyte.gz"), &bad);
        let msg = error_of(dir.path());
        assert!(
            msg.contains("train-labels-idx1-ubyte.gz: corrupt gzip data"),
            "{msg}"
        );

        write(
            &dir.path().join("train-labels-idx1-ubyte.gz"),
            b"definitely not gzip",
        );
        let msg = error_of(dir.path());
        assert!(
            msg.contains("train-labels-idx1-ubyte.gz: corrupt gzip data"),
            "{msg}"
        );
    }

    #[test]
    fn count_mismatch_names_both_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_dataset(dir.path(), false);
        write(
            &dir.path().join("train-labels-idx1-ubyte"),
            &idx_labels(&[0, 1]),
        );
        let msg = error_of(dir.path());
        assert!(
            msg.contains("train-images-idx3-ubyte: has 3 images but"),
            "{msg}"
        );
        assert!(
            msg.contains("train-labels-idx1-ubyte has 2 labels"),
            "{msg}"
        );
    }

    #[test]
    fn out_of_range_label_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_dataset(dir.path(), true);
        write(
            &dir.path().join("t10k-labels-idx1-ubyte.gz"),
            &gzip(&idx_labels(&[1, 10])),
        );
        let msg = error_of(dir.path());
        assert!(
            msg.contains("t10k-labels-idx1-ubyte.gz: label 10 at index 1 is out of range"),
            "{msg}"
        );
    }

    #[test]
    fn missing_file_and_folder_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_dataset(dir.path(), true);
        std::fs::remove_file(dir.path().join("t10k-images-idx3-ubyte.gz")).expect("remove");
        let msg = error_of(dir.path());
        assert!(msg.starts_with("missing file"), "{msg}");
        assert!(msg.contains("t10k-images-idx3-ubyte.gz"), "{msg}");
        let msg = error_of(&dir.path().join("nope"));
        assert!(msg.starts_with("missing folder"), "{msg}");
    }

    #[test]
    fn trailing_bytes_and_non_square_are_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_dataset(dir.path(), false);
        let mut bad = idx_images(3, 2, &[0; 12]);
        bad.push(0);
        write(&dir.path().join("train-images-idx3-ubyte"), &bad);
        assert!(error_of(dir.path()).contains("1 trailing bytes"));

        let mut bad = idx_images(3, 2, &[0; 12]);
        bad[15] = 3; // 2x3 images
        write(&dir.path().join("train-images-idx3-ubyte"), &bad);
        assert!(error_of(dir.path()).contains("only square"));
    }

    #[test]
    fn real_fashion_mnist_when_installed() {
        let dir = Path::new(crate::data::FASHION_MNIST_DEBIAN_DIR);
        if !dir.is_dir() {
            eprintln!("skipping: {} is absent", dir.display());
            return;
        }
        let ds = load(&"fashion-mnist".parse().expect("valid name")).expect("loads");
        assert_eq!((ds.train.len(), ds.test.len()), (60_000, 10_000));
        assert_eq!((ds.channels, ds.native_resolution), (1, 28));
        assert_eq!(ds.train.pixels(0).map(<[u8]>::len), Some(28 * 28));
        assert_eq!(ds.train.class_counts(), vec![6000; 10]);
        assert_eq!(ds.test.class_counts(), vec![1000; 10]);
    }
}
