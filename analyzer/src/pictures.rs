//! The photos behind a store's image ids, for people to look at: the TUI draws them in the
//! terminal and the HTML report makes thumbnails of them. Decoded as a viewer would show them
//! (EXIF orientation applied) and shrunk; not the model's input, which the collector prepares.

use std::path::Path;

/// The picture at `path`, upright, at most `max_side` pixels a side; `None` when the file is
/// gone or does not decode (the store records where it was read; it may have moved since).
pub fn upright(path: &Path, max_side: u32) -> Option<image::DynamicImage> {
    use image::ImageDecoder;
    let mut decoder = image::ImageReader::open(path)
        .ok()?
        .with_guessed_format()
        .ok()?
        .into_decoder()
        .ok()?;
    let orientation = decoder.orientation().ok();
    let mut img = image::DynamicImage::from_decoder(decoder).ok()?;
    if let Some(o) = orientation {
        img.apply_orientation(o);
    }
    if img.width() > max_side || img.height() > max_side {
        img = img.thumbnail(max_side, max_side);
    }
    Some(img)
}
