//! The single error type of the data module.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Everything that can go wrong while loading datasets or building batches.
///
/// Underlying causes (I/O, gzip, image decoding) are rendered into the message
/// instead of being exposed through `source()`: the message alone must tell a
/// user which file is broken and how, and chaining would print the cause twice
/// under `anyhow`'s `{:#}`.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A dataset string that is none of the accepted forms.
    #[error(
        "unknown dataset {given:?}: expected one of {}",
        super::spec::ACCEPTED_FORMS
    )]
    UnknownDataset {
        /// What the user wrote.
        given: String,
    },

    /// A file the dataset layout requires is absent.
    #[error("missing file {}{}", path.display(), also_looked(alternatives))]
    MissingFile {
        /// Where the file was expected first.
        path: PathBuf,
        /// Other places that were tried as well.
        alternatives: Vec<PathBuf>,
    },

    /// A folder the dataset layout requires is absent.
    #[error("missing folder {}", path.display())]
    MissingFolder {
        /// The folder that should exist.
        path: PathBuf,
    },

    /// The operating system refused to read a file or folder.
    #[error("{}: {error}", path.display())]
    Io {
        /// The file or folder being read.
        path: PathBuf,
        /// What the OS reported.
        error: std::io::Error,
    },

    /// A file exists and was read, but its content is not what the format demands.
    #[error("{}: {problem}", path.display())]
    Invalid {
        /// The malformed file.
        path: PathBuf,
        /// What is wrong, in words.
        problem: String,
    },

    /// An image of an ImageFolder dataset could not be decoded.
    #[error("folder {}: failed to decode: {error}", path.display())]
    Decode {
        /// The image file.
        path: PathBuf,
        /// What the decoder reported.
        error: image::ImageError,
    },

    /// An ImageFolder split folder without any class sub-folder.
    #[error("folder {} has no class sub-folders", path.display())]
    NoClasses {
        /// The split folder (`DIR/train`).
        path: PathBuf,
    },

    /// A validation class folder whose name is not a training class.
    #[error("folder {}: class {class:?} does not exist in the training split", path.display())]
    UnknownClass {
        /// The offending class folder.
        path: PathBuf,
        /// Its name.
        class: String,
    },

    /// A caller passed arguments that cannot work (empty batch, index out of range…).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// The operating system would not start the prefetch worker thread.
    #[error("could not start the batch prefetch thread: {0}")]
    Thread(std::io::Error),

    /// The prefetch worker thread died without reporting an error (it panicked).
    #[error("the batch prefetch worker thread panicked")]
    WorkerPanicked,
}

impl DataError {
    /// Shorthand for the most common variant, used by every reader.
    pub(crate) fn invalid(path: &Path, problem: impl Into<String>) -> Self {
        Self::Invalid {
            path: path.to_path_buf(),
            problem: problem.into(),
        }
    }

    /// Wraps an I/O error with the path it concerns.
    pub(crate) fn io(path: &Path, error: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            error,
        }
    }
}

/// Formats the " (also looked for …)" tail of a missing-file message.
fn also_looked(alternatives: &[PathBuf]) -> String {
    let mut text = String::new();
    for (i, path) in alternatives.iter().enumerate() {
        let lead = if i == 0 { " (also looked for " } else { ", " };
        // Writing into a String cannot fail.
        let _ = write!(text, "{lead}{}", path.display());
    }
    if !alternatives.is_empty() {
        text.push(')');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_lists_alternatives() {
        let err = DataError::MissingFile {
            path: "a/x".into(),
            alternatives: vec!["b/x".into(), "c/x".into()],
        };
        assert_eq!(
            err.to_string(),
            "missing file a/x (also looked for b/x, c/x)"
        );
        let err = DataError::MissingFile {
            path: "a/x".into(),
            alternatives: vec![],
        };
        assert_eq!(err.to_string(), "missing file a/x");
    }

    #[test]
    fn error_is_send_and_sync() {
        // Batches travel between threads inside `Result`s.
        fn check<T: Send + Sync + 'static>() {}
        check::<DataError>();
    }
}
