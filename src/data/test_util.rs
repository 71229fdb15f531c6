//! Helpers that write tiny dataset files for the tests.

use std::io::Write;
use std::path::Path;

use flate2::Compression;
use flate2::write::GzEncoder;

pub(crate) fn write(path: &Path, bytes: &[u8]) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create test folder");
    }
    std::fs::write(path, bytes).expect("write test file");
}

pub(crate) fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder.write_all(bytes).expect("gzip into memory");
    encoder.finish().expect("gzip into memory")
}

/// An IDX image file of `count` square images of side `size`.
pub(crate) fn idx_images(count: u32, size: u32, pixels: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0, 0, 8, 3];
    for dim in [count, size, size] {
        bytes.extend_from_slice(&dim.to_be_bytes());
    }
    bytes.extend_from_slice(pixels);
    bytes
}

/// An IDX label file.
pub(crate) fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0, 0, 8, 1];
    bytes.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    bytes.extend_from_slice(labels);
    bytes
}

/// CIFAR records: the label bytes, then 3072 pixels whose value is
/// `fill + plane` (0 for R, 1 for G, 2 for B) so tests can tell planes apart.
pub(crate) fn cifar_records(records: &[(&[u8], u8)]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for &(labels, fill) in records {
        bytes.extend_from_slice(labels);
        for plane in 0..3u8 {
            bytes.extend(std::iter::repeat_n(fill.wrapping_add(plane), 1024));
        }
    }
    bytes
}

/// Writes a small RGB image in the format implied by the extension; the
/// colour depends on `shade` so images differ.
pub(crate) fn write_image(path: &Path, width: u32, height: u32, shade: u8) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create test folder");
    }
    let image = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([shade, (x * 20) as u8, (y * 20) as u8])
    });
    image.save(path).expect("write test image");
}

/// Two classes (`cat`, `dog`) with PNG and JPEG files of different sizes.
pub(crate) fn write_tree(dir: &Path) {
    write_image(&dir.join("train/dog/b.png"), 12, 9, 10);
    write_image(&dir.join("train/dog/a.JPG"), 7, 11, 20);
    write_image(&dir.join("train/cat/z.jpeg"), 8, 8, 30);
    write_image(&dir.join("train/cat/y.png"), 16, 5, 40);
    write_image(&dir.join("val/cat/v.png"), 9, 9, 50);
    write_image(&dir.join("val/dog/w.png"), 10, 6, 60);
    write(&dir.join("train/cat/notes.txt"), b"not an image");
    std::fs::create_dir_all(dir.join("train/.hidden")).expect("mkdir");
}
