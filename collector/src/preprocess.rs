//! Image decoding and preprocessing: from file bytes to the float tensor a model expects.
//!
//! The reference pipeline (torchvision's, which MANIFEST.md's accuracy figures were measured with)
//! is: decode -> RGB -> resize the shorter side to round(size / crop) -> centre crop size x size
//! -> x / 255 -> (x - mean) / std -> CHW. Each step here copies its exact arithmetic: the
//! resized long side is truncated as `int()` does, the crop offset is rounded half-to-even as
//! Python's `round` does, and resampling is Pillow's convolution with antialiasing, bit for bit
//! (`deltann_resample::pillow`; other filters are offered because the choice of resize is one of
//! the environment differences deltann measures).
//!
//! Other libraries' pipelines are the [`Implementation`]s, each reproduced bit for bit and checked
//! against the real library (`tests/preprocess_reference.rs`): the same steps with the long side
//! rounded (hand-written Pillow code), OpenCV's and TensorFlow's bilinear resize (see
//! `deltann_resample`) with crop offsets floored as integer division does.
//!
//! Decoding applies the EXIF orientation (a photo's pixels are what its viewer shows), converts
//! grayscale, palette, 16-bit and CMYK images to 8-bit RGB, and drops alpha without compositing,
//! as Pillow's `convert("RGB")` does.

use std::fmt;
use std::io::Cursor;

use deltann_resample::{opencv, pillow, tf};
use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};
use serde::{Deserialize, Serialize};

/// Resampling used for the resize step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResizeFilter {
    /// Nearest neighbour.
    Nearest,
    /// Box (area average).
    Box,
    /// Bilinear with antialiasing (Pillow's `BILINEAR`, torchvision's default).
    Bilinear,
    /// Bilinear on a fixed 2x2 kernel, no antialiasing, in OpenCV's `INTER_LINEAR` arithmetic
    /// (what the opencv and tf implementations record; their own arithmetic is theirs).
    BilinearNoAntialias,
    /// Hamming.
    Hamming,
    /// Bicubic, Catmull-Rom (Pillow's `BICUBIC`).
    Bicubic,
    /// Lanczos, 3 lobes (Pillow's `LANCZOS`).
    Lanczos3,
}

impl ResizeFilter {
    /// Every filter, for help texts.
    pub const ALL: [ResizeFilter; 7] = [
        ResizeFilter::Nearest,
        ResizeFilter::Box,
        ResizeFilter::Bilinear,
        ResizeFilter::BilinearNoAntialias,
        ResizeFilter::Hamming,
        ResizeFilter::Bicubic,
        ResizeFilter::Lanczos3,
    ];

    /// The name used in sweep files and the store.
    pub fn name(self) -> &'static str {
        match self {
            ResizeFilter::Nearest => "nearest",
            ResizeFilter::Box => "box",
            ResizeFilter::Bilinear => "bilinear",
            ResizeFilter::BilinearNoAntialias => "bilinear-no-antialias",
            ResizeFilter::Hamming => "hamming",
            ResizeFilter::Bicubic => "bicubic",
            ResizeFilter::Lanczos3 => "lanczos3",
        }
    }

    /// The Pillow filter (`None` for [`ResizeFilter::BilinearNoAntialias`], which has none).
    fn pillow(self) -> Option<pillow::Filter> {
        use pillow::Filter as F;
        match self {
            ResizeFilter::Nearest => Some(F::Nearest),
            ResizeFilter::Box => Some(F::Box),
            ResizeFilter::Bilinear => Some(F::Bilinear),
            ResizeFilter::BilinearNoAntialias => None,
            ResizeFilter::Hamming => Some(F::Hamming),
            ResizeFilter::Bicubic => Some(F::Bicubic),
            ResizeFilter::Lanczos3 => Some(F::Lanczos),
        }
    }
}

impl fmt::Display for ResizeFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whose resize and crop the pipeline reproduces: a sweep's `preprocess` dimension.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Implementation {
    /// torchvision's `Resize` + `CenterCrop` on a PIL image: long side `int(short * long /
    /// short_side)`, Pillow's resampling with the recipe's filter, crop offsets rounded half to
    /// even.
    #[default]
    Torchvision,
    /// Hand-written Pillow code: as torchvision, but the long side rounded (`round()`, half to
    /// even) instead of truncated.
    PilRound,
    /// `cv2.resize(..., interpolation=cv2.INTER_LINEAR)` (no antialiasing, 8-bit fixed point) to
    /// torchvision's size, then `img[top:top + size, left:left + size]` with floored offsets.
    Opencv,
    /// `tf.image.resize(..., "bilinear")` (no antialiasing, float result, never rounded) to
    /// torchvision's size, then `tf.image.crop_to_bounding_box` with floored offsets.
    Tf,
}

impl Implementation {
    /// Every implementation, for help texts.
    pub const ALL: [Implementation; 4] = [
        Implementation::Torchvision,
        Implementation::PilRound,
        Implementation::Opencv,
        Implementation::Tf,
    ];

    /// The name used in sweep files and the store.
    pub fn name(self) -> &'static str {
        match self {
            Implementation::Torchvision => "torchvision",
            Implementation::PilRound => "pil-round",
            Implementation::Opencv => "opencv",
            Implementation::Tf => "tf",
        }
    }

    /// Whether the recipe's resize filter is used (Pillow's); OpenCV and TensorFlow resample with
    /// their own bilinear, recorded as [`ResizeFilter::BilinearNoAntialias`].
    pub fn uses_filter(self) -> bool {
        matches!(self, Implementation::Torchvision | Implementation::PilRound)
    }

    /// Bytes per value in the tensor cache: TensorFlow's resize yields floats, the others bytes.
    fn value_bytes(self) -> usize {
        if self == Implementation::Tf { 4 } else { 1 }
    }
}

impl fmt::Display for Implementation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Channel order of the model's input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channels {
    Rgb,
    Bgr,
}

/// Memory layout of the model's input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// Batch, channels, height, width (PyTorch, ONNX exports of it).
    Nchw,
    /// Batch, height, width, channels (TensorFlow).
    Nhwc,
}

/// Named starting points for a model's preprocessing; any field can be overridden.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// x / 255, ImageNet mean and std (torchvision's classifiers).
    Torchvision,
    /// (255 x - 127) / 128 (TensorFlow's EfficientNet-Lite, MobileNet and Inception ports).
    Tf127,
    /// x / 255 only.
    Unit,
}

impl Preset {
    /// The name used in sweep files.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Torchvision => "torchvision",
            Preset::Tf127 => "tf127",
            Preset::Unit => "unit",
        }
    }

    /// `(pixel_scale, mean, std)`: a pixel `p` in 0..=255 becomes `(p / pixel_scale - mean) / std`.
    pub fn normalization(self) -> (f32, [f32; 3], [f32; 3]) {
        match self {
            Preset::Torchvision => (255.0, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
            Preset::Tf127 => (1.0, [127.0; 3], [128.0; 3]),
            Preset::Unit => (255.0, [0.0; 3], [1.0; 3]),
        }
    }
}

/// A complete preprocessing recipe. Two models with equal recipes share their tensors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Preprocess {
    /// The preset the recipe started from (informational; the fields below are what count).
    pub preset: Preset,
    /// Side of the square crop fed to the model.
    pub size: u32,
    /// Crop ratio: the shorter side is first resized to `round(size / crop)`.
    pub crop: f64,
    /// Resampling filter.
    pub filter: ResizeFilter,
    /// Pixels (0..=255) are divided by this first.
    pub pixel_scale: f32,
    /// Subtracted per channel, in the model's channel order.
    pub mean: [f32; 3],
    /// Divides per channel, in the model's channel order.
    pub std: [f32; 3],
    /// Channel order.
    pub channels: Channels,
    /// Memory layout.
    pub layout: Layout,
    /// Whose resize and crop (the environment's `preprocess` dimension).
    #[serde(default)]
    pub implementation: Implementation,
}

impl Preprocess {
    /// A preset's recipe at a given size, with its defaults (crop 0.875, bilinear, RGB, NCHW).
    pub fn from_preset(preset: Preset, size: u32) -> Self {
        let (pixel_scale, mean, std) = preset.normalization();
        Self {
            preset,
            size,
            crop: 0.875,
            filter: ResizeFilter::Bilinear,
            pixel_scale,
            mean,
            std,
            channels: Channels::Rgb,
            layout: Layout::Nchw,
            implementation: Implementation::Torchvision,
        }
    }

    /// The shorter side before cropping: `round(size / crop)`, halves to even as in Python.
    pub fn resize_short(&self) -> u32 {
        // Saturating float-to-int: sizes are validated to be far below u32::MAX.
        (f64::from(self.size) / self.crop).round_ties_even() as u32
    }

    /// The per-image tensor shape (no batch dimension), in the model's layout.
    pub fn shape(&self) -> [usize; 3] {
        let s = self.size as usize;
        match self.layout {
            Layout::Nchw => [3, s, s],
            Layout::Nhwc => [s, s, 3],
        }
    }

    /// Elements per image.
    pub fn tensor_len(&self) -> usize {
        self.shape().iter().product()
    }

    /// Bytes per image in the tensor cache: the cropped RGB pixels (floats for TensorFlow's).
    pub fn pixels_len(&self) -> usize {
        self.size as usize * self.size as usize * 3 * self.implementation.value_bytes()
    }

    /// A short stable key of the geometry alone (size, crop, filter): recipes that differ only
    /// in normalisation, channel order or layout share their cached pixels.
    pub fn pixel_key(&self) -> String {
        let mut canonical = serde_json::json!({
            "size": self.size,
            "crop": self.crop,
            "filter": self.filter,
        });
        self.add_implementation(&mut canonical);
        deltann_store::ids::sha256_hex(canonical.to_string().as_bytes())[..12].to_string()
    }

    /// Keys name the implementation, always: torchvision's resize became Pillow's bit for bit
    /// with this field (it was within a few levels of it before), so recipes from before it are
    /// other recipes, and their cells other cells.
    fn add_implementation(&self, canonical: &mut serde_json::Value) {
        if let Some(map) = canonical.as_object_mut() {
            map.insert("implementation".into(), self.implementation.name().into());
        }
    }

    /// A short stable key: the first 12 hex digits of the sha256 of the recipe's JSON (preset
    /// name excluded: two presets that end up identical share tensors).
    pub fn key(&self) -> String {
        let mut canonical = serde_json::json!({
            "size": self.size,
            "crop": self.crop,
            "filter": self.filter,
            "pixel_scale": self.pixel_scale,
            "mean": self.mean,
            "std": self.std,
            "channels": self.channels,
            "layout": self.layout,
        });
        self.add_implementation(&mut canonical);
        deltann_store::ids::sha256_hex(canonical.to_string().as_bytes())[..12].to_string()
    }
}

/// What decoding learned about an image, for the `images` table.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ImageInfo {
    /// Container format, e.g. `Jpeg`.
    pub format: Option<String>,
    /// Width as stored (before EXIF rotation).
    pub width: u32,
    /// Height as stored.
    pub height: u32,
    /// Colour type as decoded, e.g. `Rgb8`, `L8`, `Rgba16`.
    pub color: String,
    /// EXIF orientation (1..=8) when the file has one.
    pub exif_orientation: Option<u8>,
}

/// Bounds on what one image may cost, so that no file can exhaust memory. A decompression bomb
/// (a small file whose header declares an enormous image) is refused from its header, before
/// anything is allocated for its pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    /// The largest file read, in bytes.
    pub max_file_bytes: u64,
    /// The most pixels (width x height) an image may have, decoded or resized.
    pub max_pixels: u64,
    /// The most bytes the decoder may allocate for one image's pixels.
    pub max_alloc: u64,
}

impl Default for DecodeLimits {
    /// 256 MiB files, 64 megapixels (8000 x 8000: beyond the photographs of any image dataset,
    /// far beyond any model's input), 512 MiB of decoded pixels (64 MP of 16-bit RGBA).
    fn default() -> Self {
        Self {
            max_file_bytes: 256 << 20,
            max_pixels: 64_000_000,
            max_alloc: 512 << 20,
        }
    }
}

/// An image whose header has been read and checked against [`DecodeLimits`], not yet decoded.
pub struct Header<'a> {
    decoder: Box<dyn ImageDecoder + 'a>,
    format: image::ImageFormat,
    orientation: Option<image::metadata::Orientation>,
    exif_orientation: Option<u8>,
    width: u32,
    height: u32,
}

impl Header<'_> {
    /// Bytes a decode holds at its peak: the decoded pixels, their 8-bit RGB copy, and a rotated
    /// copy when the EXIF orientation asks for one.
    pub fn peak_bytes(&self) -> u64 {
        let rgb = 3 * u64::from(self.width) * u64::from(self.height);
        self.decoder.total_bytes().saturating_add(2 * rgb)
    }

    /// Decodes to 8-bit RGB with the EXIF orientation applied.
    ///
    /// # Errors
    /// Returns a human-readable reason for truncated or corrupt data.
    pub fn decode(self) -> Result<(RgbImage, ImageInfo), String> {
        let format = self.format;
        let mut img = DynamicImage::from_decoder(self.decoder)
            .map_err(|e| format!("cannot decode {format:?}: {e}"))?;
        let color = format!("{:?}", img.color());
        if let Some(o) = self.orientation {
            img.apply_orientation(o);
        }
        let info = ImageInfo {
            format: Some(format!("{format:?}")),
            width: self.width,
            height: self.height,
            color,
            exif_orientation: self.exif_orientation,
        };
        Ok((img.to_rgb8(), info))
    }
}

/// Reads an image's header and checks it against `limits`.
///
/// # Errors
/// Returns a human-readable reason for files beyond the limits, unknown formats and headers that
/// cannot be read.
pub fn read_header<'a>(bytes: &'a [u8], limits: &DecodeLimits) -> Result<Header<'a>, String> {
    if bytes.is_empty() {
        return Err("empty file (0 bytes)".into());
    }
    if bytes.len() as u64 > limits.max_file_bytes {
        return Err(format!(
            "file of {} bytes, more than the {} deltann reads for one image",
            bytes.len(),
            limits.max_file_bytes
        ));
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| format!("cannot read: {e}"))?;
    let Some(format) = reader.format() else {
        return Err("not an image (unrecognised format)".into());
    };
    if format == image::ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        // The JPEG decoder fills a cut-off scan with grey and carries on; Pillow refuses
        // ("image file is truncated"), and so do we: half a photo is not the photo.
        return Err("truncated JPEG: no end-of-image marker after the image data".into());
    }
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| format!("cannot decode {format:?}: {e}"))?;
    let (width, height) = decoder.dimensions();
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Err(format!(
            "{format:?} header declares {width}x{height} pixels, more than the {} deltann \
             decodes (a decompression bomb, or an image far larger than any model input)",
            limits.max_pixels
        ));
    }
    let mut alloc = image::Limits::default();
    alloc.max_alloc = Some(limits.max_alloc);
    alloc
        .reserve(decoder.total_bytes())
        .and_then(|()| decoder.set_limits(alloc))
        .map_err(|e| {
            format!(
                "{format:?} {width}x{height} {:?} needs {} bytes of pixels, more than the {} \
                 deltann allows one image ({e})",
                decoder.color_type(),
                decoder.total_bytes(),
                limits.max_alloc
            )
        })?;
    let orientation = decoder.orientation().ok();
    let exif_orientation = orientation
        .map(image::metadata::Orientation::to_exif)
        .filter(|&o| o != 1 || decoder_has_exif(&mut decoder));
    Ok(Header {
        decoder: Box::new(decoder),
        format,
        orientation,
        exif_orientation,
        width,
        height,
    })
}

/// Decodes image bytes to 8-bit RGB with the EXIF orientation applied, within the default
/// [`DecodeLimits`].
///
/// # Errors
/// Returns a human-readable reason for unknown formats, truncated or corrupt data, and images
/// beyond the limits.
pub fn decode(bytes: &[u8]) -> Result<(RgbImage, ImageInfo), String> {
    read_header(bytes, &DecodeLimits::default())?.decode()
}

/// Whether an end-of-image marker (FF D9) follows the last start-of-scan marker (FF DA). Inside
/// entropy-coded data a 0xFF byte is always followed by 0x00 or a restart marker, so neither
/// marker can appear there by accident; an EXIF thumbnail's markers come before the main scan.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last_scan = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    match last_scan {
        Some(at) => bytes[at..].windows(2).any(|w| w == [0xFF, 0xD9]),
        None => false,
    }
}

fn decoder_has_exif(decoder: &mut impl ImageDecoder) -> bool {
    decoder.exif_metadata().ok().flatten().is_some()
}

/// Resizes, crops and normalises an RGB image into `out` (cleared first) following `p`:
/// [`crop`], then [`normalize`].
///
/// # Errors
/// Fails when the image is too small to crop or resampling fails.
pub fn preprocess(img: &RgbImage, p: &Preprocess, out: &mut Vec<f32>) -> Result<(), String> {
    let mut pixels = Vec::new();
    crop(img, p, &mut pixels)?;
    out.clear();
    out.resize(p.tensor_len(), 0.0);
    normalize(&pixels, p, out);
    Ok(())
}

/// Resizes and crops an RGB image into `out` (cleared first): `size` x `size` RGB values, row
/// by row; one byte each (little-endian `f32`s for [`Implementation::Tf`], whose resize keeps
/// fractions). These values are exact (normalisation comes after the resize, as in torchvision),
/// so they are what the tensor cache keeps.
///
/// # Errors
/// Fails when the image is too small to crop or resampling fails.
pub fn crop(img: &RgbImage, p: &Preprocess, out: &mut Vec<u8>) -> Result<(), String> {
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 {
        return Err(format!("image has no pixels ({w}x{h})"));
    }
    let short = p.resize_short();
    let (fw, fh) = resized_size(w, h, p);
    // A sliver (1 x 60000 pixels) resizes to an enormous image: refuse it before allocating.
    let max = DecodeLimits::default().max_pixels as f64;
    if fw * fh > max {
        return Err(format!(
            "resizing {w}x{h} to a short side of {short} would make {fw:.0}x{fh:.0} pixels, more \
             than the {max} deltann allows one image"
        ));
    }
    let (nw, nh) = (fw as u32, fh as u32);
    let size = p.size;
    if nw < size || nh < size {
        return Err(format!(
            "resized image {nw}x{nh} is smaller than the {size}x{size} crop"
        ));
    }
    let (top, left) = if p.implementation.uses_filter() {
        // torchvision's CenterCrop: int(round((h - size) / 2.0)).
        let centre = |n: u32| (f64::from(n - size) / 2.0).round_ties_even() as usize;
        (centre(nh), centre(nw))
    } else {
        // (h - size) // 2, as slicing code and crop_to_bounding_box callers write it.
        (((nh - size) / 2) as usize, ((nw - size) / 2) as usize)
    };
    let same = (nw, nh) == (w, h);
    let (size, row) = (size as usize, nw as usize * 3);
    out.clear();
    out.reserve(p.pixels_len());
    match p.implementation {
        Implementation::Torchvision | Implementation::PilRound | Implementation::Opencv => {
            let resized;
            let src: &[u8] = if same {
                img.as_raw()
            } else if p.implementation == Implementation::Opencv {
                resized = opencv::linear(img.as_raw(), w, h, nw, nh);
                &resized
            } else {
                resized = resize(img, nw, nh, p.filter);
                &resized
            };
            for y in 0..size {
                out.extend_from_slice(&src[(top + y) * row + left * 3..][..size * 3]);
            }
        }
        Implementation::Tf => {
            let resized = tf::bilinear(img.as_raw(), w, h, nw, nh);
            for y in 0..size {
                for v in &resized[(top + y) * row + left * 3..][..size * 3] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
    }
    Ok(())
}

/// The size a `w` x `h` image is resized to before its centre crop (before truncation to whole
/// pixels): the short side becomes [`Preprocess::resize_short`], the long side keeps the ratio
/// (torchvision truncates it; [`Implementation::PilRound`] rounds it, half to even).
fn resized_size(w: u32, h: u32, p: &Preprocess) -> (f64, f64) {
    let short = f64::from(p.resize_short());
    let long = |long_side: u32, short_side: u32| {
        let exact = short * f64::from(long_side) / f64::from(short_side);
        if p.implementation == Implementation::PilRound {
            exact.round_ties_even()
        } else {
            exact
        }
    };
    if w <= h {
        (short, long(h, w))
    } else {
        (long(w, h), short)
    }
}

/// Whether a `w` x `h` image is resized at all under `p` (if not, no resize filter touches it, and
/// cells that differ only in the filter agree bit for bit on it).
pub fn is_resized(w: u32, h: u32, p: &Preprocess) -> bool {
    let (fw, fh) = resized_size(w, h, p);
    (fw as u32, fh as u32) != (w, h)
}

/// An image file's width and height from its header (no pixels decoded); `None` when it cannot
/// be read.
pub fn header_size(path: &std::path::Path) -> Option<(u32, u32)> {
    image::ImageReader::open(path)
        .ok()?
        .with_guessed_format()
        .ok()?
        .into_dimensions()
        .ok()
}

/// Normalises cropped RGB values (from [`crop`]) into the model's tensor: channel order, scale,
/// mean, std and layout. `out` must hold [`Preprocess::tensor_len`] values.
pub fn normalize(pixels: &[u8], p: &Preprocess, out: &mut [f32]) {
    if p.implementation.value_bytes() == 4 {
        let values: Vec<f32> = pixels
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        normalize_values(&values, p, out);
    } else {
        normalize_values(pixels, p, out);
    }
}

fn normalize_values<T: Copy + Into<f32>>(pixels: &[T], p: &Preprocess, out: &mut [f32]) {
    let size = p.size as usize;
    let order: [usize; 3] = match p.channels {
        Channels::Rgb => [0, 1, 2],
        Channels::Bgr => [2, 1, 0],
    };
    for y in 0..size {
        let line = &pixels[y * size * 3..][..size * 3];
        for x in 0..size {
            for (c, &from) in order.iter().enumerate() {
                let v = (line[x * 3 + from].into() / p.pixel_scale - p.mean[c]) / p.std[c];
                let at = match p.layout {
                    Layout::Nchw => c * size * size + y * size + x,
                    Layout::Nhwc => (y * size + x) * 3 + c,
                };
                out[at] = v;
            }
        }
    }
}

fn resize(img: &RgbImage, nw: u32, nh: u32, filter: ResizeFilter) -> Vec<u8> {
    let (w, h) = img.dimensions();
    match filter.pillow() {
        Some(f) => pillow::resize(img.as_raw(), w, h, nw, nh, f),
        None => opencv::linear(img.as_raw(), w, h, nw, nh),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 7])
        })
    }

    #[test]
    fn crop_offsets_round_half_to_even_like_python() {
        // A 256x341 image with size 224: no resize (short side already 256), left offset
        // (341-224)/2 = 58.5 -> 58 in Python 3.
        let img = gradient(341, 256);
        let p = Preprocess::from_preset(Preset::Unit, 224);
        let mut out = Vec::new();
        preprocess(&img, &p, &mut out).unwrap();
        assert_eq!(out.len(), 3 * 224 * 224);
        // Channel 0 at (y=0, x=0) is the source column 58, scaled by 1/255.
        assert_eq!(out[0], 58.0 / 255.0);
        // Channel 1 at row 0 is source row 16 ((256-224)/2).
        assert_eq!(out[224 * 224], 16.0 / 255.0);
        assert_eq!(out[2 * 224 * 224], 7.0 / 255.0);
    }

    #[test]
    fn resize_short_side_rounds_like_python() {
        assert_eq!(
            Preprocess::from_preset(Preset::Unit, 224).resize_short(),
            256
        );
        assert_eq!(
            Preprocess::from_preset(Preset::Unit, 240).resize_short(),
            274
        );
    }

    #[test]
    fn long_side_is_truncated_like_int() {
        // 300x401 -> short 256, long int(256*401/300) = int(342.18) = 342.
        let img = gradient(300, 401);
        let mut p = Preprocess::from_preset(Preset::Unit, 224);
        p.filter = ResizeFilter::Nearest;
        let mut out = Vec::new();
        preprocess(&img, &p, &mut out).unwrap();
        assert_eq!(out.len(), 3 * 224 * 224);
    }

    #[test]
    fn tf127_and_bgr_and_nhwc() {
        let img = RgbImage::from_pixel(256, 256, image::Rgb([255, 127, 0]));
        let mut p = Preprocess::from_preset(Preset::Tf127, 224);
        p.channels = Channels::Bgr;
        p.layout = Layout::Nhwc;
        let mut out = Vec::new();
        preprocess(&img, &p, &mut out).unwrap();
        assert_eq!(&out[..3], &[-127.0 / 128.0, 0.0, 1.0]);
    }

    #[test]
    fn keys_differ_by_recipe_not_preset_name() {
        let a = Preprocess::from_preset(Preset::Torchvision, 224);
        let mut b = a.clone();
        assert_eq!(a.key(), b.key());
        b.filter = ResizeFilter::Bicubic;
        assert_ne!(a.key(), b.key());
        let mut c = a.clone();
        c.preset = Preset::Unit;
        assert_eq!(a.key(), c.key());
    }

    #[test]
    fn keys_name_the_implementation_and_tf_caches_floats() {
        let a = Preprocess::from_preset(Preset::Torchvision, 224);
        let mut keys = std::collections::HashSet::new();
        for implementation in Implementation::ALL {
            let mut p = a.clone();
            p.implementation = implementation;
            assert!(keys.insert((p.key(), p.pixel_key())), "{implementation}");
            let bytes = if implementation == Implementation::Tf {
                4
            } else {
                1
            };
            assert_eq!(p.pixels_len(), 224 * 224 * 3 * bytes);
        }
    }

    #[test]
    fn tf_values_normalise_with_their_fractions() {
        // A 3x3 ramp (0, 100, 200) upscaled to 4x4, cropped to 2x2 at offset 1: TensorFlow's
        // floats reach the tensor unrounded, OpenCV's are whole levels.
        let img = RgbImage::from_fn(3, 3, |x, _| image::Rgb([(x * 100) as u8, 0, 0]));
        let mut p = Preprocess::from_preset(Preset::Unit, 2);
        p.crop = 0.5; // short side 4: an upscale
        p.implementation = Implementation::Tf;
        let mut out = Vec::new();
        preprocess(&img, &p, &mut out).unwrap();
        // Column 1 of the 4-wide resize samples source x = 0.625: 62.5 / 255.
        assert_eq!(out[0], 62.5 / 255.0);
        p.implementation = Implementation::Opencv;
        preprocess(&img, &p, &mut out).unwrap();
        assert_eq!(out[0] * 255.0, (out[0] * 255.0).round());
    }

    #[test]
    fn exif_orientation_is_applied_and_recorded() {
        use image::ImageEncoder;
        // Big-endian TIFF with one IFD entry: Orientation (0x0112), SHORT, 1 value: 6.
        let exif = b"MM\0*\0\0\0\x08\0\x01\x01\x12\0\x03\0\0\0\x01\0\x06\0\0\0\0\0\0".to_vec();
        let stored = gradient(3, 2);
        let mut png = Vec::new();
        let mut encoder = image::codecs::png::PngEncoder::new(&mut png);
        encoder.set_exif_metadata(exif).unwrap();
        encoder
            .write_image(stored.as_raw(), 3, 2, image::ExtendedColorType::Rgb8)
            .unwrap();
        let (shown, info) = decode(&png).unwrap();
        assert_eq!(info.exif_orientation, Some(6));
        assert_eq!((info.width, info.height), (3, 2));
        assert_eq!(shown, image::imageops::rotate90(&stored));
    }

    #[test]
    fn truncated_jpeg_is_refused() {
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new(&mut jpeg)
            .encode_image(&gradient(64, 48))
            .unwrap();
        assert!(decode(&jpeg).is_ok());
        let err = decode(&jpeg[..jpeg.len() - 40]).unwrap_err();
        assert!(err.contains("truncated"), "{err}");
    }

    #[test]
    fn a_sliver_is_refused_before_its_resize_is_allocated() {
        // 1 x 60000 pixels resize to 256 x 15,360,000 for a 224 crop: 11 GB.
        let sliver = RgbImage::new(1, 60_000);
        let p = Preprocess::from_preset(Preset::Unit, 224);
        let err = crop(&sliver, &p, &mut Vec::new()).unwrap_err();
        assert!(err.contains("more than the"), "{err}");
        // An ordinary elongated image still resizes.
        assert!(crop(&gradient(900, 300), &p, &mut Vec::new()).is_ok());
    }

    #[test]
    fn decode_rejects_garbage_with_reasons() {
        assert!(decode(b"").unwrap_err().contains("empty"));
        assert!(
            decode(b"hello, world")
                .unwrap_err()
                .contains("not an image")
        );
    }
}
