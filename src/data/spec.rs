//! Dataset names as written on the command line or in a config file.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::DataError;

/// Where Debian's `fashion-mnist` package installs the dataset; the bare name
/// `fashion-mnist` means this folder.
pub const FASHION_MNIST_DEBIAN_DIR: &str = "/usr/share/datasets/fashion-mnist/";

/// The accepted spellings, quoted in the error for an unknown name.
pub(crate) const ACCEPTED_FORMS: &str = "fashion-mnist, fashion-mnist:DIR, mnist:DIR, cifar10:DIR, \
     cifar100:DIR, folder:DIR, folder-bilinear:DIR";

/// Which dataset to load, and from where.
///
/// The string form (`FromStr`, `Display`, serde) is `KIND:DIR`, or the bare
/// `fashion-mnist` for the Debian location; parsing the displayed form gives
/// back an equal value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DatasetSpec {
    /// Fashion-MNIST IDX files (gzip or raw) in the folder.
    FashionMnist(PathBuf),
    /// MNIST IDX files (gzip or raw) in the folder.
    Mnist(PathBuf),
    /// CIFAR-10 binary version.
    Cifar10(PathBuf),
    /// CIFAR-100 binary version.
    Cifar100(PathBuf),
    /// ImageFolder tree with `train/` and `val/`, with the reference's
    /// ImageNet transforms.
    Folder(PathBuf),
    /// The same tree with our earlier, cheaper transforms: 2-tap bilinear
    /// resize without antialiasing, shorter side `round(r / 0.875)`, BN
    /// recalibration with the evaluation transform.
    FolderBilinear(PathBuf),
}

impl DatasetSpec {
    /// The kind prefix used in the string form.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::FashionMnist(_) => "fashion-mnist",
            Self::Mnist(_) => "mnist",
            Self::Cifar10(_) => "cifar10",
            Self::Cifar100(_) => "cifar100",
            Self::Folder(_) => "folder",
            Self::FolderBilinear(_) => "folder-bilinear",
        }
    }

    /// The folder the dataset is read from.
    pub fn dir(&self) -> &Path {
        match self {
            Self::FashionMnist(dir)
            | Self::Mnist(dir)
            | Self::Cifar10(dir)
            | Self::Cifar100(dir)
            | Self::Folder(dir)
            | Self::FolderBilinear(dir) => dir,
        }
    }

    fn is_debian_fashion_mnist(&self) -> bool {
        // `Path` equality is per component, so a missing trailing slash still matches.
        matches!(self, Self::FashionMnist(dir) if dir == Path::new(FASHION_MNIST_DEBIAN_DIR))
    }
}

impl FromStr for DatasetSpec {
    type Err = DataError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let unknown = || DataError::UnknownDataset {
            given: text.to_string(),
        };
        if text == "fashion-mnist" {
            return Ok(Self::FashionMnist(PathBuf::from(FASHION_MNIST_DEBIAN_DIR)));
        }
        // Split at the first colon only, so that the folder may contain colons.
        let (kind, dir) = text.split_once(':').ok_or_else(unknown)?;
        if dir.is_empty() {
            return Err(unknown());
        }
        let dir = PathBuf::from(dir);
        match kind {
            "fashion-mnist" => Ok(Self::FashionMnist(dir)),
            "mnist" => Ok(Self::Mnist(dir)),
            "cifar10" => Ok(Self::Cifar10(dir)),
            "cifar100" => Ok(Self::Cifar100(dir)),
            "folder" => Ok(Self::Folder(dir)),
            "folder-bilinear" => Ok(Self::FolderBilinear(dir)),
            _ => Err(unknown()),
        }
    }
}

impl fmt::Display for DatasetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_debian_fashion_mnist() {
            f.write_str(self.kind())
        } else {
            write!(f, "{}:{}", self.kind(), self.dir().display())
        }
    }
}

impl Serialize for DatasetSpec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DatasetSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_accepted_form() {
        let cases = [
            (
                "fashion-mnist",
                DatasetSpec::FashionMnist(FASHION_MNIST_DEBIAN_DIR.into()),
            ),
            ("fashion-mnist:/d", DatasetSpec::FashionMnist("/d".into())),
            ("mnist:/d", DatasetSpec::Mnist("/d".into())),
            ("cifar10:rel/d", DatasetSpec::Cifar10("rel/d".into())),
            ("cifar100:/d", DatasetSpec::Cifar100("/d".into())),
            ("folder:C:/x", DatasetSpec::Folder("C:/x".into())),
            (
                "folder-bilinear:/d",
                DatasetSpec::FolderBilinear("/d".into()),
            ),
        ];
        for (text, expected) in cases {
            let parsed: DatasetSpec = text.parse().expect(text);
            assert_eq!(parsed, expected);
            assert_eq!(parsed.to_string(), text);
        }
    }

    #[test]
    fn debian_dir_written_out_displays_as_bare_name() {
        let spec: DatasetSpec = "fashion-mnist:/usr/share/datasets/fashion-mnist"
            .parse()
            .expect("valid");
        assert_eq!(spec.to_string(), "fashion-mnist");
    }

    #[test]
    fn rejects_unknown_names_listing_accepted_forms() {
        for bad in [
            "imagenet",
            "mnist",
            "mnist:",
            "cifar-10:/d",
            "",
            "Folder:/x",
        ] {
            let err = bad.parse::<DatasetSpec>().expect_err(bad);
            let msg = err.to_string();
            assert!(msg.contains("cifar100:DIR"), "{msg}");
            assert!(msg.contains("fashion-mnist:DIR"), "{msg}");
        }
    }

    #[test]
    fn deserialises_from_the_string_form() {
        use serde::de::IntoDeserializer;
        use serde::de::value::{Error, StrDeserializer};

        let de: StrDeserializer<'_, Error> = "cifar10:/data/c10".into_deserializer();
        let spec = DatasetSpec::deserialize(de).expect("valid");
        assert_eq!(spec, DatasetSpec::Cifar10("/data/c10".into()));
        let de: StrDeserializer<'_, Error> = "nope".into_deserializer();
        let err = DatasetSpec::deserialize(de).expect_err("unknown");
        assert!(err.to_string().contains("folder:DIR"));
    }
}
