//! ImageFolder trees: `DIR/train/CLASS/*.{jpg,jpeg,png}` and `DIR/val/CLASS/*`.
//!
//! Loading only lists files (sorted, so labels and order are the same on every
//! machine); images are decoded when a batch needs them.

use std::path::{Path, PathBuf};

use image::ImageReader;

use super::DataError;
use super::transform::Image;

const EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// The result of listing a tree.
pub(crate) struct Listing {
    pub classes: Vec<String>,
    pub train: Vec<(PathBuf, usize)>,
    pub val: Vec<(PathBuf, usize)>,
}

/// Lists `dir/train` and `dir/val`. Classes come from `train/` (sorted by
/// name); a `val/` class that is not among them is an error.
pub(crate) fn list(dir: &Path) -> Result<Listing, DataError> {
    let train_dir = existing_folder(dir.join("train"))?;
    let val_dir = existing_folder(dir.join("val"))?;
    let train_classes = class_folders(&train_dir)?;
    let classes: Vec<String> = train_classes.iter().map(|(name, _)| name.clone()).collect();
    let mut train = Vec::new();
    for (label, (_, folder)) in train_classes.iter().enumerate() {
        let images = images_in(folder)?;
        if images.is_empty() {
            return Err(DataError::invalid(
                folder,
                "contains no .jpg, .jpeg or .png images",
            ));
        }
        train.extend(images.into_iter().map(|path| (path, label)));
    }
    let val = list_val(&val_dir, &classes)?;
    Ok(Listing {
        classes,
        train,
        val,
    })
}

fn list_val(val_dir: &Path, classes: &[String]) -> Result<Vec<(PathBuf, usize)>, DataError> {
    let mut val = Vec::new();
    for (name, folder) in class_folders(val_dir)? {
        // `classes` is sorted, as `class_folders` returns them.
        let label = classes
            .binary_search(&name)
            .map_err(|_| DataError::UnknownClass {
                path: folder.clone(),
                class: name.clone(),
            })?;
        val.extend(images_in(&folder)?.into_iter().map(|path| (path, label)));
    }
    if val.is_empty() {
        return Err(DataError::invalid(
            val_dir,
            "contains no .jpg, .jpeg or .png images",
        ));
    }
    Ok(val)
}

fn existing_folder(path: PathBuf) -> Result<PathBuf, DataError> {
    if path.is_dir() {
        Ok(path)
    } else {
        Err(DataError::MissingFolder { path })
    }
}

/// Sub-folders of `dir` sorted by name. Hidden ones (`.ipynb_checkpoints`…)
/// are tooling litter, not classes, and are skipped.
fn class_folders(dir: &Path) -> Result<Vec<(String, PathBuf)>, DataError> {
    let mut folders = Vec::new();
    for path in entries(dir)? {
        let name = file_name(&path)?;
        if !name.starts_with('.') && path.is_dir() {
            folders.push((name, path));
        }
    }
    if folders.is_empty() {
        return Err(DataError::NoClasses {
            path: dir.to_path_buf(),
        });
    }
    folders.sort();
    Ok(folders)
}

/// Image files directly inside `dir` (extension checked case-insensitively),
/// sorted by path.
fn images_in(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut images: Vec<PathBuf> = entries(dir)?
        .into_iter()
        .filter(|path| has_image_extension(path) && path.is_file())
        .collect();
    images.sort();
    Ok(images)
}

fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|ext| ext.to_str())
        .is_some_and(|ext| {
            EXTENSIONS
                .iter()
                .any(|known| ext.eq_ignore_ascii_case(known))
        })
}

fn entries(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let read = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    read.map(|entry| entry.map(|e| e.path()).map_err(|e| DataError::io(dir, e)))
        .collect()
}

/// Class names must be text: they end up in reports and JSON.
fn file_name(path: &Path) -> Result<String, DataError> {
    path.file_name()
        .and_then(|name| name.to_str())
        .map(String::from)
        .ok_or_else(|| DataError::invalid(path, "folder name is not valid UTF-8"))
}

/// Decodes one image file to RGB floats in `[0, 1]`. The format is sniffed
/// from the content, so a PNG named `.jpg` still loads.
pub(crate) fn decode(path: &Path) -> Result<Image, DataError> {
    let decode_error = |error| DataError::Decode {
        path: path.to_path_buf(),
        error,
    };
    let reader = ImageReader::open(path)
        .and_then(ImageReader::with_guessed_format)
        .map_err(|e| DataError::io(path, e))?;
    let rgb = reader.decode().map_err(decode_error)?.to_rgb8();
    if rgb.width() == 0 || rgb.height() == 0 {
        return Err(DataError::invalid(path, "image has no pixels"));
    }
    Ok(Image::from_rgb(&rgb))
}

#[cfg(test)]
mod tests {
    use crate::data::test_util::{write, write_image, write_tree};
    use crate::data::{DatasetSpec, check_decode, load};

    #[test]
    fn lists_sorted_classes_and_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_tree(dir.path());
        let ds = load(&DatasetSpec::Folder(dir.path().to_path_buf())).expect("valid");
        assert_eq!(ds.classes, vec!["cat", "dog"]);
        let names: Vec<String> = (0..ds.train.len())
            .filter_map(|i| ds.train.path(i))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        assert_eq!(names, vec!["y.png", "z.jpeg", "a.JPG", "b.png"]);
        assert_eq!(ds.train.labels(), &[0, 0, 1, 1]);
        assert_eq!(ds.test.labels(), &[0, 1]);
        assert_eq!((ds.channels, ds.native_resolution), (3, 224));
        assert!(check_decode(&ds).is_ok());
        assert_eq!(check_decode(&ds).decoded, 6);
    }

    #[test]
    fn unknown_val_class_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_tree(dir.path());
        write_image(&dir.path().join("val/bird/q.png"), 4, 4, 0);
        let msg = load(&DatasetSpec::Folder(dir.path().to_path_buf()))
            .expect_err("unknown class")
            .to_string();
        assert!(
            msg.contains("\"bird\" does not exist in the training split"),
            "{msg}"
        );
    }

    #[test]
    fn layout_errors_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = DatasetSpec::Folder(dir.path().to_path_buf());
        let msg = load(&spec).expect_err("no train").to_string();
        assert!(
            msg.starts_with("missing folder") && msg.ends_with("train"),
            "{msg}"
        );

        std::fs::create_dir_all(dir.path().join("train")).expect("mkdir");
        std::fs::create_dir_all(dir.path().join("val")).expect("mkdir");
        let msg = load(&spec).expect_err("no classes").to_string();
        assert!(msg.contains("has no class sub-folders"), "{msg}");

        std::fs::create_dir_all(dir.path().join("train/empty")).expect("mkdir");
        let msg = load(&spec).expect_err("empty class").to_string();
        assert!(msg.contains("empty: contains no .jpg"), "{msg}");
    }

    #[test]
    fn corrupt_image_is_reported_by_check() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_tree(dir.path());
        write(
            &dir.path().join("train/dog/broken.jpg"),
            b"\xff\xd8\xff garbage",
        );
        let ds = load(&DatasetSpec::Folder(dir.path().to_path_buf())).expect("lists fine");
        let report = check_decode(&ds);
        assert_eq!(report.failures.len(), 1);
        let msg = report.failures[0].to_string();
        assert!(
            msg.contains("train/dog/broken.jpg: failed to decode"),
            "{msg}"
        );
        assert!(report.to_string().contains("1 failed"));
    }
}
