//! Decoding under limits and tensor layout. No model needed: the card is built here.

use std::io::Cursor;

use image::{ImageEncoder, Rgb, RgbImage, Rgba, RgbaImage};
use lookalike::model::card::{InputSpec, Layout, ModelCard, Normalize, Pooling, ResizeRule};
use lookalike::preprocess::{
    decode, decode_scaled, needed_size, preprocess, sniff, tensor_len, to_tensor, Format,
    ImageError, Limits, MIN_SIDE,
};

fn card(layout: Layout, resize: ResizeRule) -> ModelCard {
    ModelCard {
        id: "test-model".into(),
        input: InputSpec {
            name: "input".into(),
            width: 224,
            height: 224,
            layout,
        },
        resize,
        normalize: Normalize {
            mean: [127.0; 3],
            std: [128.0; 3],
        },
        output: "embedding".into(),
        dims: 16,
        pooling: Pooling::None,
        l2_normalize: true,
        logits: None,
        source: String::new(),
        license: String::new(),
        lineage: Vec::new(),
        labels: Vec::new(),
    }
}

fn center_crop() -> ResizeRule {
    ResizeRule::ShorterSideCenterCrop {
        crop_fraction: 0.875,
    }
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture")
}

/// A photo-like test image: smooth gradients, so JPEG keeps it faithfully.
fn gradient(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb([
            (x * 255 / w) as u8,
            (y * 255 / h) as u8,
            ((x + y) * 127 / (w + h)) as u8,
        ])
    })
}

fn jpeg(img: &RgbImage, exif: Option<Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90);
    if let Some(exif) = exif {
        enc.set_exif_metadata(exif)
            .expect("jpeg encoder takes exif");
    }
    enc.write_image(
        img.as_raw(),
        img.width(),
        img.height(),
        image::ExtendedColorType::Rgb8,
    )
    .unwrap();
    out
}

fn png(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

/// A little-endian TIFF/EXIF block holding only the Orientation tag.
fn exif_orientation(value: u16) -> Vec<u8> {
    let mut e = Vec::new();
    e.extend_from_slice(b"II*\0");
    e.extend_from_slice(&8u32.to_le_bytes()); // offset of IFD0
    e.extend_from_slice(&1u16.to_le_bytes()); // one entry
    e.extend_from_slice(&0x0112u16.to_le_bytes()); // Orientation
    e.extend_from_slice(&3u16.to_le_bytes()); // SHORT
    e.extend_from_slice(&1u32.to_le_bytes()); // count
    e.extend_from_slice(&value.to_le_bytes());
    e.extend_from_slice(&[0, 0]); // padding of the 4-byte value field
    e.extend_from_slice(&0u32.to_le_bytes()); // no next IFD
    e
}

use testkit::hostile::crc32;

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
}

/// A valid PNG signature + IHDR declaring `w` x `h` RGB8, a tiny IDAT, IEND: a decompression bomb's header.
fn png_declaring(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit, RGB, deflate, adaptive, no interlace
    png_chunk(&mut out, b"IHDR", &ihdr);
    png_chunk(
        &mut out,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    png_chunk(&mut out, b"IEND", &[]);
    out
}

#[test]
fn the_png_crc_helper_is_right() {
    // Known value: CRC-32 of "IEND" is 0xAE426082.
    assert_eq!(crc32(b"IEND"), 0xAE42_6082);
}

#[test]
fn zero_bytes_is_empty() {
    assert_eq!(decode(&[], &Limits::default()), Err(ImageError::Empty));
    let c = card(Layout::Nchw, center_crop());
    assert_eq!(
        preprocess(&[], &c, &Limits::default()),
        Err(ImageError::Empty)
    );
}

#[test]
fn too_many_bytes_is_refused_before_decoding() {
    let limits = Limits {
        max_bytes: 1000,
        ..Limits::default()
    };
    let bytes = fixture("chelsea.jpg");
    assert_eq!(
        decode(&bytes, &limits),
        Err(ImageError::TooManyBytes {
            size: bytes.len(),
            limit: 1000
        })
    );
}

#[test]
fn corrupt_bytes_are_a_decode_error() {
    // JPEG magic, then garbage.
    let mut bytes = vec![0xFF, 0xD8, 0xFF, 0xE0];
    bytes.extend((0..4000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    assert!(matches!(
        decode(&bytes, &Limits::default()),
        Err(ImageError::Decode(_))
    ));
    // PNG magic, then garbage.
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend((0..4000u32).map(|i| (i.wrapping_mul(40503) >> 3) as u8));
    assert!(matches!(
        decode(&bytes, &Limits::default()),
        Err(ImageError::Decode(_))
    ));
    // Random bytes are not any format.
    let bytes: Vec<u8> = (0..4000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8 | 1)
        .collect();
    assert!(matches!(
        decode(&bytes, &Limits::default()),
        Err(ImageError::UnsupportedFormat { .. })
    ));
}

#[test]
fn truncated_jpeg_is_a_decode_error() {
    let bytes = fixture("chelsea.jpg");
    let limits = Limits::default();
    let c = card(Layout::Nchw, center_crop());
    // Cut inside the headers, and right after the start of the entropy-coded data.
    for cut in [2usize, 20, 200, 600] {
        let r = decode(&bytes[..cut], &limits);
        assert!(
            matches!(r, Err(ImageError::Decode(_))),
            "cut at {cut}: {r:?}"
        );
        let r = preprocess(&bytes[..cut], &c, &limits);
        assert!(
            matches!(r, Err(ImageError::Decode(_))),
            "cut at {cut}: {r:?}"
        );
    }
}

#[test]
fn truncated_big_jpeg_never_panics() {
    // Exercises the scaled (DCT) path too: the image is big enough for it.
    let bytes = jpeg(&gradient(1200, 900), None);
    let c = card(Layout::Nchw, center_crop());
    for cut in [
        1usize,
        3,
        100,
        700,
        bytes.len() / 3,
        bytes.len() / 2,
        bytes.len() - 2,
    ] {
        let _ = decode(&bytes[..cut], &Limits::default());
        let _ = preprocess(&bytes[..cut], &c, &Limits::default());
    }
}

#[test]
fn damaged_files_never_panic() {
    let c = card(Layout::Nhwc, center_crop());
    let limits = Limits::default();
    let mut inputs = vec![fixture("chelsea.jpg"), png(&gradient(64, 48))];
    let mut gif = Vec::new();
    image::DynamicImage::ImageRgb8(gradient(40, 30))
        .write_to(&mut Cursor::new(&mut gif), image::ImageFormat::Gif)
        .unwrap();
    inputs.push(gif);
    let mut bmp = Vec::new();
    image::DynamicImage::ImageRgb8(gradient(40, 30))
        .write_to(&mut Cursor::new(&mut bmp), image::ImageFormat::Bmp)
        .unwrap();
    inputs.push(bmp);
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for input in &inputs {
        for _ in 0..30 {
            let mut b = input.clone();
            for _ in 0..1 + next() % 8 {
                let i = (next() as usize) % b.len();
                b[i] = next() as u8;
            }
            let _ = preprocess(&b, &c, &limits);
        }
    }
}

#[test]
fn one_pixel_png_is_too_small() {
    let one = png(&RgbImage::from_pixel(1, 1, Rgb([1, 2, 3])));
    assert_eq!(
        decode(&one, &Limits::default()),
        Err(ImageError::TooSmall {
            width: 1,
            height: 1
        })
    );
    let strip = png(&RgbImage::from_pixel(400, MIN_SIDE - 1, Rgb([1, 2, 3])));
    assert_eq!(
        decode(&strip, &Limits::default()),
        Err(ImageError::TooSmall {
            width: 400,
            height: MIN_SIDE - 1
        })
    );
    let ok = png(&RgbImage::from_pixel(MIN_SIDE, MIN_SIDE, Rgb([1, 2, 3])));
    assert_eq!(
        decode(&ok, &Limits::default()).unwrap().dimensions(),
        (MIN_SIDE, MIN_SIDE)
    );
}

#[test]
fn decompression_bomb_is_refused_from_the_header() {
    let bomb = png_declaring(100_000, 100_000);
    assert!(bomb.len() < 100);
    assert_eq!(
        decode(&bomb, &Limits::default()),
        Err(ImageError::TooLarge {
            width: 100_000,
            height: 100_000
        })
    );
    // Within the side limits but over the pixel limit.
    let bomb = png_declaring(15_000, 15_000);
    assert_eq!(
        decode(&bomb, &Limits::default()),
        Err(ImageError::TooLarge {
            width: 15_000,
            height: 15_000
        })
    );
    // Limits are the caller's: a small limit refuses an ordinary photo.
    let limits = Limits {
        max_pixels: 10_000,
        ..Limits::default()
    };
    let r = decode(&fixture("chelsea.jpg"), &limits);
    assert!(matches!(r, Err(ImageError::TooLarge { .. })), "{r:?}");
    let c = card(Layout::Nchw, center_crop());
    let big = jpeg(&gradient(1200, 900), None);
    assert_eq!(
        preprocess(&big, &c, &limits),
        Err(ImageError::TooLarge {
            width: 1200,
            height: 900
        })
    );
}

/// A PNG header declaring `w` x `h` at `depth` bits of colour type `color` (6: RGBA).
fn png_declaring_as(w: u32, h: u32, depth: u8, color: u8) -> Vec<u8> {
    let mut out = png_declaring(w, h);
    out[24] = depth;
    out[25] = color;
    // Re-sign the IHDR chunk (bytes 12..29 are its type and data, 29..33 its CRC).
    let crc = crc32(&out[12..29]);
    out[29..33].copy_from_slice(&crc.to_be_bytes());
    out
}

/// A query needs only the model's input: it decodes far fewer pixels than ingest, and neither
/// decodes a 10000x10000 16-bit RGBA PNG (793 KB when all one colour; 800 MB decoded).
#[test]
fn a_query_decodes_far_fewer_pixels_than_ingest() {
    let (ingest, query) = (Limits::default(), Limits::for_queries());
    let huge = png_declaring_as(10_000, 10_000, 16, 6);
    for limits in [&ingest, &query] {
        assert_eq!(
            decode(&huge, limits),
            Err(ImageError::TooLarge {
                width: 10_000,
                height: 10_000
            })
        );
    }
    // 25 megapixels of PNG: ingest goes on to decode it (this one's data is truncated), a query
    // refuses it from the header.
    let big = png_declaring_as(5_000, 5_000, 8, 2);
    assert_eq!(
        decode(&big, &query),
        Err(ImageError::TooLarge {
            width: 5_000,
            height: 5_000
        })
    );
    assert!(matches!(decode(&big, &ingest), Err(ImageError::Decode(_))));
    // A JPEG over the full-decode limit is still fine for a query: it is decoded at a reduced
    // DCT scale.
    let photo = jpeg(&gradient(4_200, 4_000), None);
    let c = card(Layout::Nchw, center_crop());
    assert!(preprocess(&photo, &c, &query).is_ok());
}

#[test]
fn unsupported_formats_are_named() {
    let cases: [(&[u8], &str); 4] = [
        (b"II*\0\x08\0\0\0\0\0\0\0\0\0\0\0", "TIFF"),
        (b"%PDF-1.7\n%\xE2\xE3\xCF\xD3\n1 0 obj", "PDF"),
        (b"\0\0\0\x1cftypheic\0\0\0\0mif1heic", "HEIF"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "SVG/XML/HTML"),
    ];
    for (bytes, name) in cases {
        assert_eq!(
            decode(bytes, &Limits::default()),
            Err(ImageError::UnsupportedFormat { detected: name })
        );
        assert_eq!(
            ImageError::UnsupportedFormat { detected: name }.http_status(),
            415
        );
    }
    // The extension is never consulted: a PNG is a PNG whatever it is called.
    assert_eq!(sniff(&png(&gradient(10, 10))), Ok(Format::Png));
}

#[test]
fn exif_orientation_is_applied() {
    // Stored: 64 wide x 32 high, left half red, right half blue. Orientation 6 = rotate 90° clockwise
    // for display: 32 wide x 64 high, red on top.
    let stored = RgbImage::from_fn(64, 32, |x, _| {
        if x < 32 {
            Rgb([255, 0, 0])
        } else {
            Rgb([0, 0, 255])
        }
    });
    let bytes = jpeg(&stored, Some(exif_orientation(6)));
    let img = decode(&bytes, &Limits::default()).unwrap();
    assert_eq!(img.dimensions(), (32, 64));
    let top = img.get_pixel(16, 8);
    let bottom = img.get_pixel(16, 56);
    assert!(top[0] > 200 && top[2] < 60, "top {top:?}");
    assert!(bottom[2] > 200 && bottom[0] < 60, "bottom {bottom:?}");
    // Orientation 1 leaves it alone.
    let img = decode(
        &jpeg(&stored, Some(exif_orientation(1))),
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(img.dimensions(), (64, 32));
}

#[test]
fn exif_orientation_is_applied_on_the_scaled_jpeg_path() {
    let stored = RgbImage::from_fn(1600, 800, |x, _| {
        if x < 800 {
            Rgb([255, 0, 0])
        } else {
            Rgb([0, 0, 255])
        }
    });
    let bytes = jpeg(&stored, Some(exif_orientation(6)));
    let img = decode_scaled(&bytes, &Limits::default(), Some((256, 256))).unwrap();
    // Decoded at 1/2 (400 >= 256 on the shorter side, 1/4 would give 200), then rotated.
    assert_eq!(img.dimensions(), (400, 800));
    assert!(img.get_pixel(200, 100)[0] > 200);
    assert!(img.get_pixel(200, 700)[2] > 200);
    let full = decode(&bytes, &Limits::default()).unwrap();
    assert_eq!(full.dimensions(), (800, 1600));
}

#[test]
fn scaled_jpeg_decode_matches_the_full_decode() {
    let c = card(Layout::Nchw, center_crop());
    let bytes = jpeg(&gradient(1600, 1200), None);
    let scaled = decode_scaled(&bytes, &Limits::default(), Some(needed_size(&c))).unwrap();
    // 1/8 would leave the shorter side at 150 < 256: 1/4 it is.
    assert_eq!(scaled.dimensions(), (400, 300));
    let full = decode(&bytes, &Limits::default()).unwrap();
    assert_eq!(full.dimensions(), (1600, 1200));
    let a = to_tensor(&scaled, &c).unwrap();
    let b = to_tensor(&full, &c).unwrap();
    let mean_abs = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32;
    assert!(mean_abs < 0.02, "mean abs difference {mean_abs}");
    assert_eq!(preprocess(&bytes, &c, &Limits::default()).unwrap(), a);
}

#[test]
fn tensor_shape_and_range_nchw() {
    let c = card(Layout::Nchw, center_crop());
    let img = RgbImage::from_pixel(300, 200, Rgb([255, 127, 0]));
    let t = to_tensor(&img, &c).unwrap();
    assert_eq!(t.len(), 3 * 224 * 224);
    assert_eq!(tensor_len(&c), t.len());
    let plane = 224 * 224;
    assert!(t[..plane].iter().all(|&v| (v - 1.0).abs() < 1e-6));
    assert!(t[plane..2 * plane].iter().all(|&v| v.abs() < 1e-6));
    assert!(t[2 * plane..]
        .iter()
        .all(|&v| (v + 127.0 / 128.0).abs() < 1e-6));
    // A real photo stays within the normalised range.
    let t = preprocess(&fixture("chelsea.jpg"), &c, &Limits::default()).unwrap();
    assert_eq!(t.len(), 3 * 224 * 224);
    assert!(t.iter().all(|v| (-127.0 / 128.0..=1.0).contains(v)));
    let spread =
        t.iter().cloned().fold(f32::MIN, f32::max) - t.iter().cloned().fold(f32::MAX, f32::min);
    assert!(spread > 1.0, "a photo has contrast: {spread}");
}

#[test]
fn tensor_shape_and_range_nhwc() {
    let c = card(Layout::Nhwc, ResizeRule::Stretch);
    let img = RgbImage::from_pixel(30, 500, Rgb([255, 127, 0]));
    let t = to_tensor(&img, &c).unwrap();
    assert_eq!(t.len(), 224 * 224 * 3);
    for px in t.chunks_exact(3) {
        assert!(
            (px[0] - 1.0).abs() < 1e-6
                && px[1].abs() < 1e-6
                && (px[2] + 127.0 / 128.0).abs() < 1e-6
        );
    }
    // NHWC and NCHW hold the same values, transposed.
    let nchw = card(Layout::Nchw, ResizeRule::Stretch);
    let photo = decode(&fixture("coffee.jpg"), &Limits::default()).unwrap();
    let a = to_tensor(&photo, &c).unwrap();
    let b = to_tensor(&photo, &nchw).unwrap();
    let plane = 224 * 224;
    for i in (0..plane).step_by(97) {
        for ch in 0..3 {
            assert_eq!(a[i * 3 + ch], b[ch * plane + i]);
        }
    }
}

#[test]
fn center_crop_keeps_the_middle() {
    // A wide image: black left and right thirds, white middle third. 600x200 -> shorter side 256,
    // width 768, crop 224 from the middle: all white.
    let img = RgbImage::from_fn(600, 200, |x, _| {
        if (200..400).contains(&x) {
            Rgb([255; 3])
        } else {
            Rgb([0; 3])
        }
    });
    let c = card(Layout::Nchw, center_crop());
    let t = to_tensor(&img, &c).unwrap();
    assert!(
        t.iter().all(|&v| v > 0.99),
        "min {}",
        t.iter().cloned().fold(f32::MAX, f32::min)
    );
    // Stretch sees the black sides.
    let t = to_tensor(&img, &card(Layout::Nchw, ResizeRule::Stretch)).unwrap();
    assert!(t[0] < -0.9);
}

#[test]
fn gif_first_frame_webp_and_bmp_decode() {
    use image::{Delay, Frame};
    // Animated GIF: a red frame then a green one; we take the first.
    let mut gif = Vec::new();
    {
        let mut enc = image::codecs::gif::GifEncoder::new(&mut gif);
        let red = RgbaImage::from_pixel(24, 16, Rgba([255, 0, 0, 255]));
        let green = RgbaImage::from_pixel(24, 16, Rgba([0, 255, 0, 255]));
        enc.encode_frames(vec![
            Frame::from_parts(red, 0, 0, Delay::from_numer_denom_ms(100, 1)),
            Frame::from_parts(green, 0, 0, Delay::from_numer_denom_ms(100, 1)),
        ])
        .unwrap();
    }
    assert_eq!(sniff(&gif), Ok(Format::Gif));
    let img = decode(&gif, &Limits::default()).unwrap();
    assert_eq!(img.dimensions(), (24, 16));
    assert_eq!(img.get_pixel(5, 5), &Rgb([255, 0, 0]));

    let src = gradient(48, 40);
    let mut webp = Vec::new();
    image::codecs::webp::WebPEncoder::new_lossless(&mut webp)
        .write_image(src.as_raw(), 48, 40, image::ExtendedColorType::Rgb8)
        .unwrap();
    assert_eq!(sniff(&webp), Ok(Format::WebP));
    assert_eq!(decode(&webp, &Limits::default()).unwrap(), src);

    let mut bmp = Vec::new();
    image::DynamicImage::ImageRgb8(src.clone())
        .write_to(&mut Cursor::new(&mut bmp), image::ImageFormat::Bmp)
        .unwrap();
    assert_eq!(sniff(&bmp), Ok(Format::Bmp));
    assert_eq!(decode(&bmp, &Limits::default()).unwrap(), src);

    // PNG with alpha: transparent pixels keep their colour channels, alpha is dropped.
    let rgba = RgbaImage::from_pixel(20, 20, Rgba([10, 20, 30, 0]));
    let mut p = Vec::new();
    rgba.write_to(&mut Cursor::new(&mut p), image::ImageFormat::Png)
        .unwrap();
    assert_eq!(
        decode(&p, &Limits::default()).unwrap().get_pixel(3, 3),
        &Rgb([10, 20, 30])
    );

    // Greyscale JPEG through the scaled path.
    let grey = image::GrayImage::from_fn(1200, 1000, |x, _| image::Luma([(x % 256) as u8]));
    let mut gj = Vec::new();
    image::DynamicImage::ImageLuma8(grey)
        .write_to(&mut Cursor::new(&mut gj), image::ImageFormat::Jpeg)
        .unwrap();
    let img = decode_scaled(&gj, &Limits::default(), Some((256, 256))).unwrap();
    assert_eq!(img.dimensions(), (600, 500));
    let px = img.get_pixel(10, 10);
    assert_eq!(px[0], px[1]);
}

#[test]
fn http_statuses() {
    assert_eq!(ImageError::Empty.http_status(), 422);
    assert_eq!(
        ImageError::TooManyBytes { size: 2, limit: 1 }.http_status(),
        413
    );
    assert_eq!(
        ImageError::TooLarge {
            width: 1,
            height: 1
        }
        .http_status(),
        413
    );
    assert_eq!(
        ImageError::TooSmall {
            width: 1,
            height: 1
        }
        .http_status(),
        422
    );
    assert_eq!(ImageError::Decode("x".into()).http_status(), 422);
}
