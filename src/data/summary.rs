//! What `data check` prints: sizes and class balance of a loaded dataset.

use std::fmt;

use serde::Serialize;

use super::{DataError, Dataset};
use rayon::prelude::*;
use std::path::Path;

/// Image counts of a dataset, per split and per class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DataSummary {
    /// Dataset name.
    pub name: String,
    /// Whether pixels are held in memory (`true`) or read from image files.
    pub in_memory: bool,
    /// Channels per image.
    pub channels: usize,
    /// Native side in pixels (nominal 224 for folders).
    pub native_resolution: usize,
    /// Training images.
    pub train_images: usize,
    /// Test images.
    pub test_images: usize,
    /// Per-class counts, in label order.
    pub classes: Vec<ClassSummary>,
}

/// Image counts of one class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClassSummary {
    /// Class name.
    pub name: String,
    /// Training images of the class.
    pub train: usize,
    /// Test images of the class.
    pub test: usize,
}

/// Counts the images of `ds` per split and class.
pub fn summary(ds: &Dataset) -> DataSummary {
    let train = ds.train.class_counts();
    let test = ds.test.class_counts();
    let classes = ds
        .classes
        .iter()
        .enumerate()
        .map(|(label, name)| ClassSummary {
            name: name.clone(),
            train: train.get(label).copied().unwrap_or(0),
            test: test.get(label).copied().unwrap_or(0),
        })
        .collect();
    DataSummary {
        name: ds.name.clone(),
        in_memory: ds.is_in_memory(),
        channels: ds.channels,
        native_resolution: ds.native_resolution,
        train_images: ds.train.len(),
        test_images: ds.test.len(),
        classes,
    }
}

impl fmt::Display for DataSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let storage = if self.in_memory {
            "in memory"
        } else {
            "image files"
        };
        writeln!(f, "dataset     {} ({storage})", self.name)?;
        writeln!(f, "channels    {}", self.channels)?;
        writeln!(f, "resolution  {} (native)", self.native_resolution)?;
        writeln!(f, "classes     {}", self.classes.len())?;
        writeln!(f)?;
        let name_width = self
            .classes
            .iter()
            .map(|c| c.name.chars().count())
            .chain([5])
            .max()
            .unwrap_or(5);
        let count_width = self
            .train_images
            .max(self.test_images)
            .to_string()
            .len()
            .max(5);
        let row = |f: &mut fmt::Formatter<'_>,
                   name: &str,
                   train: &dyn fmt::Display,
                   test: &dyn fmt::Display| {
            writeln!(
                f,
                "{name:<name_width$}  {train:>count_width$}  {test:>count_width$}"
            )
        };
        row(f, "class", &"train", &"test")?;
        for class in &self.classes {
            row(f, &class.name, &class.train, &class.test)?;
        }
        row(f, "total", &self.train_images, &self.test_images)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synthetic;

    #[test]
    fn counts_and_table() {
        let ds = synthetic(3, 1, 2, 7, 3, 0).expect("valid");
        let s = summary(&ds);
        assert_eq!((s.train_images, s.test_images), (7, 3));
        let train: Vec<usize> = s.classes.iter().map(|c| c.train).collect();
        assert_eq!(train, vec![3, 2, 2]);
        let text = s.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.contains(&"class  train   test"), "{text}");
        assert!(lines.contains(&"0          3      1"), "{text}");
        assert!(lines.contains(&"total      7      3"), "{text}");
    }
}

/// Outcome of [`check_decode`].
#[derive(Debug, Default)]
pub struct DecodeReport {
    /// Image files decoded (0 for in-memory datasets, validated at load).
    pub decoded: usize,
    /// One error per file that failed, in split then file order.
    pub failures: Vec<DataError>,
}

impl DecodeReport {
    /// Whether every image decoded.
    pub fn is_ok(&self) -> bool {
        self.failures.is_empty()
    }
}

impl fmt::Display for DecodeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "decoded {} image files, {} failed",
            self.decoded,
            self.failures.len()
        )?;
        for failure in &self.failures {
            write!(f, "\n  {failure}")?;
        }
        Ok(())
    }
}

/// Decodes every image file of both splits in parallel and reports all
/// failures at once, so a broken dataset is found before training starts
/// rather than hours into it (`data check --decode`).
pub fn check_decode(ds: &Dataset) -> DecodeReport {
    let paths: Vec<&Path> = [&ds.train, &ds.test]
        .into_iter()
        .flat_map(|split| (0..split.len()).filter_map(|i| split.path(i)))
        .collect();
    let failures = paths
        .par_iter()
        .filter_map(|path| super::folder::decode(path).err())
        .collect();
    DecodeReport {
        decoded: paths.len(),
        failures,
    }
}
