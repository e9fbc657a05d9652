//! Near-duplicates of a photo, as a catalogue collects them: the same photo re-encoded, resized,
//! cropped a little and mirrored (the duplicate finder's test and its benchmark).

use image::codecs::jpeg::JpegEncoder;
use image::DynamicImage;

/// The kinds of variant [`variants`] makes, in its order.
pub const KINDS: [&str; 4] = ["recompressed", "resized", "cropped", "mirrored"];

fn jpeg(img: &DynamicImage, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, quality)
        .encode_image(&img.to_rgb8())
        .expect("JPEG encoding of an RGB image");
    out
}

/// Four JPEG variants of the image in `bytes`, named by [`KINDS`]: re-encoded at quality 40,
/// halved in size, cropped by 6% on every side, and mirrored left to right.
pub fn variants(bytes: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let img = image::load_from_memory(bytes).expect("a decodable photo");
    let (w, h) = (img.width(), img.height());
    let (dx, dy) = (w * 6 / 100, h * 6 / 100);
    vec![
        ("recompressed", jpeg(&img, 40)),
        (
            "resized",
            jpeg(
                &img.resize(w / 2, h / 2, image::imageops::FilterType::Triangle),
                85,
            ),
        ),
        (
            "cropped",
            jpeg(&img.crop_imm(dx, dy, w - 2 * dx, h - 2 * dy), 85),
        ),
        ("mirrored", jpeg(&img.fliph(), 85)),
    ]
}
