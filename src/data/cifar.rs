//! Reader for the binary versions of CIFAR-10 and CIFAR-100.
//!
//! Both are flat sequences of fixed-size records: label byte(s) followed by
//! 32×32 pixels stored as a red, a green and a blue plane — already the C×H×W
//! layout we keep in memory, so records are copied without reordering.

use std::path::{Path, PathBuf};

use super::DataError;
use super::memory::MemoryData;

const SIZE: usize = 32;
const CHANNELS: usize = 3;
const PIXELS: usize = CHANNELS * SIZE * SIZE;

const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// What distinguishes the two CIFAR variants.
struct Format {
    /// Name used in error messages.
    name: &'static str,
    /// Sub-folder the official archive unpacks to.
    subdir: &'static str,
    train_files: &'static [&'static str],
    test_file: &'static str,
    names_file: &'static str,
    /// Exclusive upper bound of each label byte of a record, in order.
    label_limits: &'static [usize],
}

impl Format {
    fn record_len(&self) -> usize {
        self.label_limits.len() + PIXELS
    }

    /// The label used for training is the record's last label byte (the fine
    /// label for CIFAR-100).
    fn num_classes(&self) -> usize {
        self.label_limits.last().copied().unwrap_or(0)
    }
}

const CIFAR10: Format = Format {
    name: "CIFAR-10",
    subdir: "cifar-10-batches-bin",
    train_files: &[
        "data_batch_1.bin",
        "data_batch_2.bin",
        "data_batch_3.bin",
        "data_batch_4.bin",
        "data_batch_5.bin",
    ],
    test_file: "test_batch.bin",
    names_file: "batches.meta.txt",
    label_limits: &[10],
};

const CIFAR100: Format = Format {
    name: "CIFAR-100",
    subdir: "cifar-100-binary",
    train_files: &["train.bin"],
    test_file: "test.bin",
    names_file: "fine_label_names.txt",
    label_limits: &[20, 100],
};

/// Loads CIFAR-10 from `dir` or `dir/cifar-10-batches-bin/`.
pub(crate) fn load_cifar10(dir: &Path) -> Result<MemoryData, DataError> {
    let defaults = CIFAR10_CLASSES.map(String::from).to_vec();
    load(dir, &CIFAR10, defaults)
}

/// Loads CIFAR-100 (fine labels) from `dir` or `dir/cifar-100-binary/`.
pub(crate) fn load_cifar100(dir: &Path) -> Result<MemoryData, DataError> {
    let defaults = (0..100).map(|c: usize| c.to_string()).collect();
    load(dir, &CIFAR100, defaults)
}

fn load(dir: &Path, format: &Format, default_names: Vec<String>) -> Result<MemoryData, DataError> {
    let base = locate_base(dir, format)?;
    let train_paths: Vec<PathBuf> = format.train_files.iter().map(|f| base.join(f)).collect();
    let train = read_all(&train_paths, format)?;
    let test = read_all(&[base.join(format.test_file)], format)?;
    let names_path = base.join(format.names_file);
    let classes = if names_path.is_file() {
        read_class_names(&names_path, format.num_classes())?
    } else {
        default_names
    };
    Ok(MemoryData {
        classes,
        channels: CHANNELS,
        size: SIZE,
        train,
        test,
    })
}

/// The folder holding the record files: `dir` itself, or the sub-folder the
/// official archive unpacks to.
fn locate_base(dir: &Path, format: &Format) -> Result<PathBuf, DataError> {
    if !dir.is_dir() {
        return Err(DataError::MissingFolder {
            path: dir.to_path_buf(),
        });
    }
    let probe = format.test_file;
    let nested = dir.join(format.subdir);
    if dir.join(probe).is_file() {
        Ok(dir.to_path_buf())
    } else if nested.join(probe).is_file() {
        Ok(nested)
    } else {
        Err(DataError::MissingFile {
            path: dir.join(probe),
            alternatives: vec![nested.join(probe)],
        })
    }
}

/// Reads and concatenates the records of several files.
fn read_all(paths: &[PathBuf], format: &Format) -> Result<(Vec<u8>, Vec<usize>), DataError> {
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for path in paths {
        if !path.is_file() {
            return Err(DataError::MissingFile {
                path: path.clone(),
                alternatives: vec![],
            });
        }
        let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
        append_records(path, &bytes, format, &mut pixels, &mut labels)?;
    }
    Ok((pixels, labels))
}

fn append_records(
    path: &Path,
    bytes: &[u8],
    format: &Format,
    pixels: &mut Vec<u8>,
    labels: &mut Vec<usize>,
) -> Result<(), DataError> {
    let record_len = format.record_len();
    if bytes.is_empty() || !bytes.len().is_multiple_of(record_len) {
        return Err(DataError::invalid(
            path,
            format!(
                "size {} is not a multiple of the {record_len}-byte {} record",
                bytes.len(),
                format.name
            ),
        ));
    }
    let label_bytes = format.label_limits.len();
    pixels.reserve(bytes.len() / record_len * PIXELS);
    for (i, record) in bytes.chunks_exact(record_len).enumerate() {
        check_record_labels(path, i, &record[..label_bytes], format.label_limits)?;
        labels.push(usize::from(record[label_bytes - 1]));
        pixels.extend_from_slice(&record[label_bytes..]);
    }
    Ok(())
}

fn check_record_labels(
    path: &Path,
    record: usize,
    labels: &[u8],
    limits: &[usize],
) -> Result<(), DataError> {
    for (&label, &limit) in labels.iter().zip(limits) {
        if usize::from(label) >= limit {
            return Err(DataError::invalid(
                path,
                format!("record {record} has label {label}, expected less than {limit}"),
            ));
        }
    }
    Ok(())
}

/// One class name per non-empty line (the official files end in blank lines).
fn read_class_names(path: &Path, expected: usize) -> Result<Vec<String>, DataError> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(String::from)
        .collect();
    if names.len() != expected {
        return Err(DataError::invalid(
            path,
            format!("expected {expected} class names, found {}", names.len()),
        ));
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::test_util::{cifar_records, write};
    use crate::data::{DatasetSpec, load};

    fn write_cifar10(dir: &Path) {
        for b in 1..=5u8 {
            let records = cifar_records(&[(&[b], 10 * b), (&[b - 1], 0)]);
            write(&dir.join(format!("data_batch_{b}.bin")), &records);
        }
        write(&dir.join("test_batch.bin"), &cifar_records(&[(&[9], 200)]));
    }

    #[test]
    fn reads_cifar10_planes_and_labels() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_cifar10(dir.path());
        let ds = load(&DatasetSpec::Cifar10(dir.path().to_path_buf())).expect("valid");
        assert_eq!(ds.train.len(), 10);
        assert_eq!(ds.train.labels(), &[1, 0, 2, 1, 3, 2, 4, 3, 5, 4]);
        assert_eq!(ds.test.labels(), &[9]);
        let first = ds.train.pixels(0).expect("in range");
        assert_eq!((first[0], first[1024], first[2048]), (10, 11, 12));
        assert_eq!(ds.classes[0], "airplane");
        assert_eq!((ds.channels, ds.native_resolution), (3, 32));
    }

    #[test]
    fn finds_nested_folder_and_meta_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let nested = dir.path().join("cifar-10-batches-bin");
        write_cifar10(&nested);
        let names: String = (0..10).map(|i| format!("c{i}\n")).collect::<String>() + "\n\n";
        write(&nested.join("batches.meta.txt"), names.as_bytes());
        let ds = load(&DatasetSpec::Cifar10(dir.path().to_path_buf())).expect("valid");
        assert_eq!(ds.classes[7], "c7");
    }

    #[test]
    fn wrong_size_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_cifar10(dir.path());
        let mut bad = cifar_records(&[(&[1], 0), (&[2], 0), (&[3], 0)]);
        bad.extend_from_slice(&[0; 10]);
        write(&dir.path().join("data_batch_3.bin"), &bad);
        let err = load(&DatasetSpec::Cifar10(dir.path().to_path_buf())).expect_err("bad size");
        let msg = err.to_string();
        assert!(
            msg.contains(
                "data_batch_3.bin: size 9229 is not a multiple of the 3073-byte CIFAR-10 record"
            ),
            "{msg}"
        );
    }

    #[test]
    fn bad_label_and_missing_batch_are_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_cifar10(dir.path());
        write(
            &dir.path().join("test_batch.bin"),
            &cifar_records(&[(&[10], 0)]),
        );
        let spec = DatasetSpec::Cifar10(dir.path().to_path_buf());
        let msg = load(&spec).expect_err("bad label").to_string();
        assert!(
            msg.contains("test_batch.bin: record 0 has label 10"),
            "{msg}"
        );

        std::fs::remove_file(dir.path().join("data_batch_4.bin")).expect("remove");
        let msg = load(&spec).expect_err("missing").to_string();
        assert!(
            msg.starts_with("missing file") && msg.contains("data_batch_4.bin"),
            "{msg}"
        );
    }

    #[test]
    fn reads_cifar100_fine_labels() {
        let dir = tempfile::tempdir().expect("tempdir");
        let nested = dir.path().join("cifar-100-binary");
        write(
            &nested.join("train.bin"),
            &cifar_records(&[(&[3, 77], 5), (&[19, 99], 6)]),
        );
        write(&nested.join("test.bin"), &cifar_records(&[(&[0, 0], 7)]));
        let spec = DatasetSpec::Cifar100(dir.path().to_path_buf());
        let ds = load(&spec).expect("valid");
        assert_eq!(ds.train.labels(), &[77, 99]);
        assert_eq!(ds.classes.len(), 100);
        assert_eq!(ds.classes[42], "42");
        assert_eq!(ds.train.pixels(1).map(|p| p[2048]), Some(8));

        write(&nested.join("test.bin"), &[0; 3073]);
        let msg = load(&spec).expect_err("bad size").to_string();
        assert!(
            msg.contains("test.bin: size 3073 is not a multiple of the 3074-byte CIFAR-100 record"),
            "{msg}"
        );

        write(&nested.join("test.bin"), &cifar_records(&[(&[20, 0], 7)]));
        let msg = load(&spec).expect_err("bad coarse label").to_string();
        assert!(
            msg.contains("record 0 has label 20, expected less than 20"),
            "{msg}"
        );
    }

    #[test]
    fn wrong_number_of_names_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_cifar10(dir.path());
        write(&dir.path().join("batches.meta.txt"), b"a\nb\n");
        let msg = load(&DatasetSpec::Cifar10(dir.path().to_path_buf()))
            .expect_err("bad names")
            .to_string();
        assert!(
            msg.contains("batches.meta.txt: expected 10 class names, found 2"),
            "{msg}"
        );
    }
}
