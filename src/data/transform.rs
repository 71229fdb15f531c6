//! Pixel-level operations on one C×H×W float image.

use rand::Rng;

use super::dataset::FolderTransforms;
use super::rng::{below, uniform};

/// One image as floats in `[0, 1]` (before normalisation), C×H×W.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Image {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub data: Vec<f32>,
}

/// A rectangle of an image; `top`/`left` may be negative and the rectangle
/// may reach past the edges, the outside reading as zero (padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CropBox {
    pub top: isize,
    pub left: isize,
    pub height: usize,
    pub width: usize,
}

impl Image {
    /// From stored `u8` planes (C×H×W), scaled to `[0, 1]` like torchvision's
    /// `ToTensor`.
    pub fn from_planes(pixels: &[u8], channels: usize, height: usize, width: usize) -> Self {
        Self {
            channels,
            height,
            width,
            data: pixels.iter().map(|&p| f32::from(p) / 255.0).collect(),
        }
    }

    /// From interleaved RGB (H×W×3), as decoders produce it.
    pub fn from_rgb(rgb: &image::RgbImage) -> Self {
        let (width, height) = (rgb.width() as usize, rgb.height() as usize);
        let plane = width * height;
        let mut data = vec![0.0; 3 * plane];
        for (i, pixel) in rgb.pixels().enumerate() {
            for (c, &value) in pixel.0.iter().enumerate() {
                data[c * plane + i] = f32::from(value) / 255.0;
            }
        }
        Self {
            channels: 3,
            height,
            width,
            data,
        }
    }

    /// Copies `area` out of the image, filling what lies outside with zeros.
    pub fn crop(&self, area: CropBox) -> Self {
        let mut data = vec![0.0; self.channels * area.height * area.width];
        let cols = visible(area.left, area.width, self.width);
        for c in 0..self.channels {
            for y in 0..area.height {
                let Some(sy) = offset(area.top, y, self.height) else {
                    continue;
                };
                let src_row = (c * self.height + sy) * self.width;
                let dst_row = (c * area.height + y) * area.width;
                for x in cols.clone() {
                    // `visible` only yields columns whose source is inside.
                    let sx = (area.left + x as isize) as usize;
                    data[dst_row + x] = self.data[src_row + sx];
                }
            }
        }
        Self {
            channels: self.channels,
            height: area.height,
            width: area.width,
            data,
        }
    }

    /// Mirrors the image left to right.
    pub fn flip_horizontal(&mut self) {
        for row in self.data.chunks_exact_mut(self.width.max(1)) {
            row.reverse();
        }
    }

    /// Bilinear resize; a no-op when the size already matches, so native
    /// resolution batches are bit-exact copies of the stored pixels.
    pub fn resize(self, height: usize, width: usize) -> Self {
        self.resized_with(height, width, resize_bilinear)
    }

    /// [`resize_pil_bilinear`]: Pillow's antialiased bilinear resize, for
    /// large decoded images as the reference's ImageNet pipeline resizes
    /// them.
    pub fn resize_pil(self, height: usize, width: usize) -> Self {
        self.resized_with(height, width, resize_pil_bilinear)
    }

    /// Resized by `filter(data, c, h, w, out_h, out_w)`; a no-op at the same
    /// size.
    fn resized_with(
        self,
        height: usize,
        width: usize,
        filter: fn(&[f32], usize, usize, usize, usize, usize) -> Vec<f32>,
    ) -> Self {
        if (height, width) == (self.height, self.width) {
            return self;
        }
        let data = filter(
            &self.data,
            self.channels,
            self.height,
            self.width,
            height,
            width,
        );
        Self {
            channels: self.channels,
            height,
            width,
            data,
        }
    }

    /// The reference's "tf" colour distortion, which `train_ofa_net.py`
    /// turns on (`distort_color = "tf"`; the transform is
    /// `ColorJitter(brightness=32/255, saturation=0.5)` in
    /// ofa/imagenet_classification/data_providers/imagenet.py,
    /// `build_train_transform`): a brightness factor drawn from
    /// `[1 − 32/255, 1 + 32/255]` and a saturation factor from `[0.5, 1.5]`,
    /// applied in a random order as torchvision draws a random permutation.
    /// Grey images get the brightness change only (saturation is a no-op on
    /// them in Pillow too).
    pub fn tf_colour_jitter(&mut self, rng: &mut impl Rng) {
        let brightness = uniform(rng, 1.0 - 32.0 / 255.0, 1.0 + 32.0 / 255.0) as f32;
        let saturation = uniform(rng, 0.5, 1.5) as f32;
        let saturation_first = super::rng::coin(rng);
        self.colour_jitter(brightness, saturation, saturation_first);
    }

    /// [`Image::tf_colour_jitter`] with given factors, on the image's 8-bit
    /// values the way Pillow computes them (`ImageEnhance.Brightness` blends
    /// with black, `ImageEnhance.Color` with the image's `L` conversion;
    /// `Image.blend` computes `a + f·(b − a)` in `f32` and truncates to 8
    /// bits, clipping when extrapolating), so the result is Pillow's pixel
    /// for pixel (test: `colour_jitter_matches_pillow`).
    pub fn colour_jitter(&mut self, brightness: f32, saturation: f32, saturation_first: bool) {
        let mut px: Vec<u8> = self
            .data
            .iter()
            .map(|&v| (v * 255.0).round().clamp(0.0, 255.0) as u8)
            .collect();
        let plane = self.height * self.width;
        let saturate = |px: &mut Vec<u8>| {
            if self.channels != 3 {
                return;
            }
            let (r, rest) = px.split_at_mut(plane);
            let (g, b) = rest.split_at_mut(plane);
            for i in 0..plane {
                let grey = pil_luma(r[i], g[i], b[i]);
                r[i] = pil_blend(grey, r[i], saturation);
                g[i] = pil_blend(grey, g[i], saturation);
                b[i] = pil_blend(grey, b[i], saturation);
            }
        };
        let brighten = |px: &mut Vec<u8>| {
            px.iter_mut()
                .for_each(|p| *p = pil_blend(0, *p, brightness))
        };
        if saturation_first {
            saturate(&mut px);
            brighten(&mut px);
        } else {
            brighten(&mut px);
            saturate(&mut px);
        }
        for (v, p) in self.data.iter_mut().zip(px) {
            *v = f32::from(p) / 255.0;
        }
    }

    /// `(x - mean) / std` per channel. Division (not multiplication by the
    /// inverse) keeps results identical to the textbook formula.
    pub fn normalise(&mut self, mean: &[f32], std: &[f32]) {
        let plane = self.height * self.width;
        for ((values, &m), &s) in self.data.chunks_exact_mut(plane.max(1)).zip(mean).zip(std) {
            for v in values {
                *v = (*v - m) / s;
            }
        }
    }
}

/// Pillow's RGB → L conversion: ITU-R 601-2 luma in 16-bit fixed point,
/// rounded (`L24` in libImaging/Convert.c).
fn pil_luma(r: u8, g: u8, b: u8) -> u8 {
    ((u32::from(r) * 19595 + u32::from(g) * 38470 + u32::from(b) * 7471 + 0x8000) >> 16) as u8
}

/// Pillow's `Image.blend(a, b, factor)` for one 8-bit value: `a + f·(b − a)`
/// in `f32`, clipped to `[0, 255]` and truncated.
fn pil_blend(a: u8, b: u8, factor: f32) -> u8 {
    let v = f32::from(a) + factor * (i32::from(b) - i32::from(a)) as f32;
    v.clamp(0.0, 255.0) as u8
}

/// Output positions `0..len`, starting at source position `start`, whose
/// source lies inside `0..limit`.
fn visible(start: isize, len: usize, limit: usize) -> std::ops::Range<usize> {
    let first = (-start).clamp(0, len as isize) as usize;
    let end = (limit as isize - start).clamp(0, len as isize) as usize;
    first..end.max(first)
}

/// `start + step` if it lies in `0..limit`.
fn offset(start: isize, step: usize, limit: usize) -> Option<usize> {
    let position = start + step as isize;
    (0..limit as isize)
        .contains(&position)
        .then_some(position as usize)
}

/// Bilinear resize of a C×H×W image to C×`out_h`×`out_w`, matching PyTorch's
/// `F.interpolate(mode="bilinear", align_corners=False)` (no antialiasing).
///
/// # Panics
/// If `src.len() != c * h * w`, or if the source is empty while the output
/// is not: both are programming errors, not data errors.
pub fn resize_bilinear(
    src: &[f32],
    c: usize,
    h: usize,
    w: usize,
    out_h: usize,
    out_w: usize,
) -> Vec<f32> {
    assert_eq!(
        src.len(),
        c * h * w,
        "resize_bilinear: buffer is not {c}x{h}x{w}"
    );
    let mut out = vec![0.0; c * out_h * out_w];
    if out.is_empty() {
        return out;
    }
    assert!(
        h > 0 && w > 0,
        "resize_bilinear: cannot resize an empty image"
    );
    let rows = axis_taps(h, out_h);
    let cols = axis_taps(w, out_w);
    for (src_plane, out_plane) in src
        .chunks_exact(h * w)
        .zip(out.chunks_exact_mut(out_h * out_w))
    {
        for (out_row, row) in out_plane.chunks_exact_mut(out_w).zip(&rows) {
            let upper = &src_plane[row.low * w..][..w];
            let lower = &src_plane[row.high * w..][..w];
            for (value, col) in out_row.iter_mut().zip(&cols) {
                let top = col.w_low * upper[col.low] + col.w_high * upper[col.high];
                let bottom = col.w_low * lower[col.low] + col.w_high * lower[col.high];
                *value = row.w_low * top + row.w_high * bottom;
            }
        }
    }
    out
}

/// Pillow's fixed-point precision for 8-bit images (`PRECISION_BITS` in
/// its `Resample.c`).
const PIL_PRECISION_BITS: u32 = 22;

/// Pillow's bilinear coefficients along one axis for the whole image
/// (`precompute_coeffs` with the triangle filter, support 1): the filter is
/// widened by the scale factor when shrinking, so every source pixel under
/// an output pixel counts (antialiasing). Returns (first source index,
/// fixed-point weights) per output coordinate.
fn pil_taps(in_len: usize, out_len: usize) -> Vec<(usize, Vec<i64>)> {
    let scale = in_len as f64 / out_len as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale;
    let triangle = |x: f64| {
        let x = x.abs();
        if x < 1.0 { 1.0 - x } else { 0.0 }
    };
    (0..out_len)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            // C's (int) truncates toward zero.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_len as i64) as usize;
            let w: Vec<f64> = (xmin..xmax.max(xmin))
                .map(|x| triangle((x as f64 - center + 0.5) / filterscale))
                .collect();
            let total: f64 = w.iter().sum();
            let one = f64::from(1u32 << PIL_PRECISION_BITS);
            let fixed = w
                .iter()
                .map(|&k| {
                    let k = if total != 0.0 { k / total } else { k };
                    if k < 0.0 {
                        (-0.5 + k * one) as i64
                    } else {
                        (0.5 + k * one) as i64
                    }
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

/// One 8-bit resampling pass along the last axis of `rows` rows of `len`
/// values, Pillow's rounding and clipping included.
fn pil_pass(src: &[u8], rows: usize, len: usize, taps: &[(usize, Vec<i64>)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows * taps.len());
    for row in src.chunks_exact(len).take(rows) {
        for (start, k) in taps {
            let mut acc: i64 = 1 << (PIL_PRECISION_BITS - 1);
            for (i, &w) in k.iter().enumerate() {
                acc += i64::from(row[start + i]) * w;
            }
            out.push((acc >> PIL_PRECISION_BITS).clamp(0, 255) as u8);
        }
    }
    out
}

/// Transposes each `h×w` plane of `c` planes.
fn transpose_planes(src: &[u8], c: usize, h: usize, w: usize) -> Vec<u8> {
    let mut out = vec![0u8; src.len()];
    for p in 0..c {
        let (a, b) = (
            &src[p * h * w..(p + 1) * h * w],
            &mut out[p * h * w..(p + 1) * h * w],
        );
        for y in 0..h {
            for x in 0..w {
                b[x * h + y] = a[y * w + x];
            }
        }
    }
    out
}

/// Pillow's bilinear resize (`Image.resize(size, BILINEAR)`, which
/// torchvision's `Resize` and `RandomResizedCrop` call on PIL images, as
/// the reference's ImageNet pipeline does): antialiased when shrinking,
/// horizontal pass then vertical, on 8-bit values with Pillow's fixed-point
/// weights and rounding, so the result is Pillow's pixel for pixel. `src`
/// holds C×H×W values in `[0, 1]` that are multiples of 1/255 (decoded
/// 8-bit images); the output is again in `[0, 1]`.
pub fn resize_pil_bilinear(
    src: &[f32],
    c: usize,
    h: usize,
    w: usize,
    out_h: usize,
    out_w: usize,
) -> Vec<f32> {
    assert_eq!(
        src.len(),
        c * h * w,
        "resize_pil_bilinear: buffer is not {c}x{h}x{w}"
    );
    let mut px: Vec<u8> = src
        .iter()
        .map(|&v| (v * 255.0).round().clamp(0.0, 255.0) as u8)
        .collect();
    let mut cur_w = w;
    if out_w != w {
        px = pil_pass(&px, c * h, w, &pil_taps(w, out_w));
        cur_w = out_w;
    }
    if out_h != h {
        let t = transpose_planes(&px, c, h, cur_w);
        let t = pil_pass(&t, c * cur_w, h, &pil_taps(h, out_h));
        px = transpose_planes(&t, c, cur_w, out_h);
    }
    px.iter().map(|&p| f32::from(p) / 255.0).collect()
}

/// The two source samples of one output coordinate and their weights.
struct Tap {
    low: usize,
    high: usize,
    w_low: f32,
    w_high: f32,
}

/// Source taps along one axis, computed the way PyTorch does (in `f32`, the
/// source coordinate clamped at 0 and the upper sample at the last index).
fn axis_taps(in_len: usize, out_len: usize) -> Vec<Tap> {
    let scale = in_len as f32 / out_len as f32;
    (0..out_len)
        .map(|dst| {
            let src = ((dst as f32 + 0.5) * scale - 0.5).max(0.0);
            let low = (src as usize).min(in_len - 1);
            let high = (low + 1).min(in_len - 1);
            let w_high = src - low as f32;
            Tap {
                low,
                high,
                w_low: 1.0 - w_high,
                w_high,
            }
        })
        .collect()
}

/// Zero-padded random crop back to the original size, as in the classic
/// CIFAR recipe (`RandomCrop(32, padding=4)`): offsets in `-pad..=pad`.
pub(crate) fn random_padded_crop(image: &Image, pad: usize, rng: &mut impl Rng) -> Image {
    let top = below(rng, 2 * pad + 1) as isize - pad as isize;
    let left = below(rng, 2 * pad + 1) as isize - pad as isize;
    image.crop(CropBox {
        top,
        left,
        height: image.height,
        width: image.width,
    })
}

/// torchvision's `RandomResizedCrop` box: area fraction in `[0.08, 1)`,
/// aspect ratio log-uniform in `[3/4, 4/3]`, 10 attempts, then the largest
/// centred box of admissible aspect ratio.
pub(crate) fn random_resized_crop_box(height: usize, width: usize, rng: &mut impl Rng) -> CropBox {
    const MIN_RATIO: f64 = 3.0 / 4.0;
    const MAX_RATIO: f64 = 4.0 / 3.0;
    let area = (height * width) as f64;
    for _ in 0..10 {
        let target = area * uniform(rng, 0.08, 1.0);
        let aspect = uniform(rng, MIN_RATIO.ln(), MAX_RATIO.ln()).exp();
        let w = (target * aspect).sqrt().round() as usize;
        let h = (target / aspect).sqrt().round() as usize;
        if (1..=width).contains(&w) && (1..=height).contains(&h) {
            let top = below(rng, height - h + 1);
            let left = below(rng, width - w + 1);
            return CropBox {
                top: top as isize,
                left: left as isize,
                height: h,
                width: w,
            };
        }
    }
    let ratio = width as f64 / height as f64;
    let (h, w) = if ratio < MIN_RATIO {
        ((width as f64 / MIN_RATIO).round() as usize, width)
    } else if ratio > MAX_RATIO {
        (height, (height as f64 * MAX_RATIO).round() as usize)
    } else {
        (height, width)
    };
    centred(height, width, h.clamp(1, height), w.clamp(1, width))
}

/// A `crop_h`×`crop_w` box centred in a `height`×`width` image (torchvision's
/// rounding of the offsets).
pub(crate) fn centred(height: usize, width: usize, crop_h: usize, crop_w: usize) -> CropBox {
    // torchvision's CenterCrop: `int(round((full - part) / 2))`, Python's
    // round, which rounds halves to even.
    let start =
        |full: usize, part: usize| ((full as f64 - part as f64) / 2.0).round_ties_even() as isize;
    CropBox {
        top: start(height, crop_h),
        left: start(width, crop_w),
        height: crop_h,
        width: crop_w,
    }
}

/// Evaluation transform for large images. [`FolderTransforms::Reference`]
/// is the reference's ImageNet one (`Resize(int(ceil(r / 0.875)))`,
/// `CenterCrop(r)` on PIL images): shorter side to `ceil(resolution /
/// 0.875)` (256 for 224) with Pillow's antialiased bilinear resize, the
/// longer side truncated as torchvision does, then the centred square;
/// [`FolderTransforms::Bilinear`] rounds the shorter side and resizes with
/// the 2-tap filter.
pub(crate) fn resize_and_centre_crop(
    image: Image,
    resolution: usize,
    transforms: FolderTransforms,
) -> Image {
    let ratio = (resolution as f64) / 0.875;
    let short = match transforms {
        FolderTransforms::Reference => ratio.ceil(),
        FolderTransforms::Bilinear => ratio.round(),
    } as usize;
    let (h, w) = (image.height, image.width);
    let (new_h, new_w) = if h <= w {
        (short, (short * w / h).max(1))
    } else {
        ((short * h / w).max(1), short)
    };
    let resized = match transforms {
        FolderTransforms::Reference => image.resize_pil(new_h, new_w),
        FolderTransforms::Bilinear => image.resize(new_h, new_w),
    };
    resized.crop(centred(new_h, new_w, resolution, resolution))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::rng::stream_rng;

    /// A JSON array of 8-bit values (the Pillow fixtures).
    fn fixture_u8(v: &serde_json::Value) -> Vec<u8> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u8)
            .collect()
    }

    /// An RGB image as Pillow stores it: H×W×3 interleaved 8-bit values.
    fn as_hwc(im: &Image) -> Vec<u8> {
        let plane = im.height * im.width;
        (0..plane)
            .flat_map(|i| (0..3).map(move |c| (c, i)))
            .map(|(c, i)| (im.data[c * plane + i] * 255.0).round() as u8)
            .collect()
    }

    /// Pillow's own output (tests/data/pil_resize.json, written by
    /// tests/data/make_pil_fixture.py with Pillow 13): shrinking, growing,
    /// one axis at a time, and torchvision's ImageNet evaluation transform.
    #[test]
    fn pil_resize_and_eval_transform_match_pillow() {
        let fixture: serde_json::Value = serde_json::from_str(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/pil_resize.json"
        )))
        .unwrap();
        let (h, w) = (
            fixture["height"].as_u64().unwrap() as usize,
            fixture["width"].as_u64().unwrap() as usize,
        );
        // H×W×3 interleaved, as PIL stores it.
        let hwc = fixture_u8(&fixture["pixels"]);
        let rgb = image::RgbImage::from_raw(w as u32, h as u32, hwc).unwrap();
        let img = Image::from_rgb(&rgb);
        for case in fixture["resize"].as_array().unwrap() {
            let (oh, ow) = (
                case["height"].as_u64().unwrap() as usize,
                case["width"].as_u64().unwrap() as usize,
            );
            let ours = as_hwc(&img.clone().resize_pil(oh, ow));
            assert_eq!(ours, fixture_u8(&case["pixels"]), "{h}x{w} → {oh}x{ow}");
        }
        let r = fixture["eval"]["resolution"].as_u64().unwrap() as usize;
        let ours = as_hwc(&resize_and_centre_crop(img, r, FolderTransforms::Reference));
        assert_eq!(
            ours,
            fixture_u8(&fixture["eval"]["pixels"]),
            "eval transform at {r}"
        );
    }

    /// A hand-worked pixel: brightness 1.1 then saturation 0.5 on
    /// (200, 100, 50). Brightness: 220, 110, 55. Luma: (220·19595 +
    /// 110·38470 + 55·7471 + 32768) >> 16 = 137; blend halfway to it:
    /// 178.5 → 178, 123.5 → 123, 96. In the other order the luma of the
    /// original is 124: 162, 112, 87, then ×1.1 = 178.2, 123.2, 95.7 →
    /// 178, 123, 95.
    #[test]
    fn colour_jitter_hand_worked_pixel() {
        let make = || Image {
            channels: 3,
            height: 1,
            width: 1,
            data: vec![200.0 / 255.0, 100.0 / 255.0, 50.0 / 255.0],
        };
        let to8 =
            |im: &Image| -> Vec<u8> { im.data.iter().map(|v| (v * 255.0).round() as u8).collect() };
        let mut a = make();
        a.colour_jitter(1.1, 0.5, false);
        assert_eq!(to8(&a), [178, 123, 96]);
        let mut b = make();
        b.colour_jitter(1.1, 0.5, true);
        assert_eq!(to8(&b), [178, 123, 95]);
        // Brightening clips at white; a grey image ignores saturation.
        let mut grey = Image {
            channels: 1,
            height: 1,
            width: 2,
            data: vec![250.0 / 255.0, 10.0 / 255.0],
        };
        grey.colour_jitter(1.2, 1.5, true);
        assert_eq!(to8(&grey), [255, 12]);
    }

    /// Pillow's own output (tests/data/pil_jitter.json, written by
    /// tests/data/make_pil_fixture.py): `ImageEnhance.Brightness` and
    /// `ImageEnhance.Color` at the ends of the reference's ranges and in
    /// between, in both orders.
    #[test]
    fn colour_jitter_matches_pillow() {
        let fixture: serde_json::Value = serde_json::from_str(include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/pil_jitter.json"
        )))
        .unwrap();
        let (h, w) = (
            fixture["height"].as_u64().unwrap() as u32,
            fixture["width"].as_u64().unwrap() as u32,
        );
        let rgb = image::RgbImage::from_raw(w, h, fixture_u8(&fixture["pixels"])).unwrap();
        let cases = fixture["jitter"].as_array().unwrap();
        assert_eq!(cases.len(), 8);
        for case in cases {
            let b = case["brightness"].as_f64().unwrap() as f32;
            let s = case["saturation"].as_f64().unwrap() as f32;
            let saturation_first = case["order"] == "saturation_first";
            let mut img = Image::from_rgb(&rgb);
            img.colour_jitter(b, s, saturation_first);
            assert_eq!(
                as_hwc(&img),
                fixture_u8(&case["pixels"]),
                "b {b}, s {s}, {}",
                case["order"]
            );
        }
    }

    #[test]
    fn tf_colour_jitter_stays_in_range_and_changes_the_image() {
        let mut rng = stream_rng(3, 0);
        let base = Image {
            channels: 3,
            height: 4,
            width: 5,
            data: (0..60).map(|i| (i * 4) as f32 / 255.0).collect(),
        };
        let mut changed = 0;
        for _ in 0..20 {
            let mut img = base.clone();
            img.tf_colour_jitter(&mut rng);
            assert!(img.data.iter().all(|v| (0.0..=1.0).contains(v)));
            changed += usize::from(img != base);
        }
        assert!(
            changed >= 18,
            "jitter left {} of 20 images unchanged",
            20 - changed
        );
    }

    #[test]
    fn bilinear_upsample_2x2_to_4x4_matches_pytorch() {
        // torch.nn.functional.interpolate(torch.tensor([[[[1., 2.], [3., 4.]]]]),
        //     size=(4, 4), mode="bilinear", align_corners=False)
        // Source coordinates of the four outputs: -0.25→0 (clamped), 0.25,
        // 0.75, 1.25→upper sample clamped to index 1; so weights of the
        // second sample are 0, 0.25, 0.75, 1 along each axis.
        let expected = [
            1.0, 1.25, 1.75, 2.0, //
            1.5, 1.75, 2.25, 2.5, //
            2.5, 2.75, 3.25, 3.5, //
            3.0, 3.25, 3.75, 4.0,
        ];
        let out = resize_bilinear(&[1.0, 2.0, 3.0, 4.0], 1, 2, 2, 4, 4);
        assert_eq!(out, expected);
    }

    #[test]
    fn bilinear_downsample_and_channels() {
        // 4 → 2 along each axis: source coordinates 0.5 and 2.5, i.e. the
        // mean of each 2x2 block. Second channel is the first plus 10.
        let plane: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let src: Vec<f32> = plane
            .iter()
            .chain(&plane.iter().map(|v| v + 10.0).collect::<Vec<_>>())
            .copied()
            .collect();
        let out = resize_bilinear(&src, 2, 4, 4, 2, 2);
        assert_eq!(out, vec![2.5, 4.5, 10.5, 12.5, 12.5, 14.5, 20.5, 22.5]);
        // Non-square: 1x3 → 2x2.
        let out = resize_bilinear(&[0.0, 3.0, 6.0], 1, 1, 3, 2, 2);
        // x: scale 1.5, sources 0.25 and 1.75 → 0.75 and 5.25.
        assert_eq!(out, vec![0.75, 5.25, 0.75, 5.25]);
    }

    #[test]
    fn resize_to_same_size_is_identity() {
        let image = Image::from_planes(&[1, 2, 3, 4], 1, 2, 2);
        assert_eq!(image.clone().resize(2, 2), image);
    }

    #[test]
    fn crop_pads_with_zeros() {
        let image = Image::from_planes(&[255, 0, 0, 255], 1, 2, 2);
        let area = CropBox {
            top: -1,
            left: 1,
            height: 2,
            width: 2,
        };
        let out = image.crop(area);
        assert_eq!(out.data, vec![0.0, 0.0, 0.0, 0.0]);
        let area = CropBox {
            top: 1,
            left: -1,
            height: 2,
            width: 3,
        };
        assert_eq!(image.crop(area).data, vec![0.0, 0.0, 1.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn flip_mirrors_each_row() {
        let mut image = Image::from_planes(&[0, 51, 102, 153, 204, 255], 2, 1, 3);
        image.flip_horizontal();
        assert_eq!(image.data, vec![0.4, 0.2, 0.0, 1.0, 0.8, 0.6]);
    }

    #[test]
    fn padded_crop_keeps_shape_and_content() {
        let pixels: Vec<u8> = (0..64).collect();
        let image = Image::from_planes(&pixels, 1, 8, 8);
        let mut rng = stream_rng(5, 0);
        for _ in 0..20 {
            let out = random_padded_crop(&image, 4, &mut rng);
            assert_eq!((out.height, out.width, out.data.len()), (8, 8, 64));
            assert!(out.data.iter().all(|v| *v == 0.0 || image.data.contains(v)));
        }
    }

    #[test]
    fn random_resized_crop_box_stays_inside() {
        let mut rng = stream_rng(6, 0);
        for (h, w) in [(100, 80), (30, 200), (200, 30), (1, 1), (3, 500)] {
            for _ in 0..50 {
                let b = random_resized_crop_box(h, w, &mut rng);
                assert!(b.top >= 0 && b.left >= 0 && b.height >= 1 && b.width >= 1);
                assert!(b.top as usize + b.height <= h, "{b:?} in {h}x{w}");
                assert!(b.left as usize + b.width <= w, "{b:?} in {h}x{w}");
            }
        }
    }

    #[test]
    fn eval_transform_shapes() {
        for t in [FolderTransforms::Reference, FolderTransforms::Bilinear] {
            let image = Image::from_planes(&vec![128; 3 * 60 * 90], 3, 60, 90);
            let out = resize_and_centre_crop(image, 28, t);
            assert_eq!((out.channels, out.height, out.width), (3, 28, 28));
            // No padding can appear: the shorter side is resized to 32 ≥ 28.
            assert!(out.data.iter().all(|&v| (v - 128.0 / 255.0).abs() < 1e-6));
        }
    }

    #[test]
    fn normalise_is_textbook_formula() {
        let mut image = Image::from_planes(&[0, 255, 51, 102], 2, 1, 2);
        image.normalise(&[0.5, 0.25], &[0.5, 2.0]);
        let expect = [
            (0.0 - 0.5) / 0.5,
            (1.0 - 0.5) / 0.5,
            (51.0f32 / 255.0 - 0.25) / 2.0,
            (102.0f32 / 255.0 - 0.25) / 2.0,
        ];
        assert_eq!(image.data, expect);
    }
}
