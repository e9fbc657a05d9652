//! A corpus of nasty image files, made in code (none is checked in): truncated and damaged
//! files, decompression bombs, 16-bit, CMYK, animated, oversized headers and EXIF. Each comes
//! with a name for messages.

use std::io::Write;

use image::codecs::gif::{GifEncoder, Repeat};
use image::{Delay, Frame, RgbImage, RgbaImage};

/// A small real photo-like image (a gradient with a few blocks).
fn photo(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x * 255 / w) as u8,
            (y * 255 / h) as u8,
            ((x ^ y) & 0xFF) as u8,
        ])
    })
}

fn jpeg_of(img: &RgbImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    out.into_inner()
}

/// A PNG of `w` x `h`, `depth` 8 or 16, RGBA, written row by row from `row`.
fn png_rows(w: u32, h: u32, depth: u8, row: impl Fn(u32) -> Vec<u8>) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(png::ColorType::Rgba);
        enc.set_depth(if depth == 16 {
            png::BitDepth::Sixteen
        } else {
            png::BitDepth::Eight
        });
        let mut writer = enc.write_header().unwrap();
        let mut stream = writer.stream_writer().unwrap();
        for y in 0..h {
            stream.write_all(&row(y)).unwrap();
        }
        stream.finish().unwrap();
    }
    out
}

/// A JPEG with an APP1 segment of `payload` inserted after SOI.
fn with_app1(jpeg: &[u8], payload: &[u8]) -> Vec<u8> {
    let len = u16::try_from(payload.len() + 2).expect("an APP1 segment holds at most 65533 bytes");
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// EXIF whose first IFD claims `entries` entries, then `filler` bytes of junk.
fn exif(entries: u16, filler: usize) -> Vec<u8> {
    let mut e = b"Exif\0\0II*\0\x08\0\0\0".to_vec();
    e.extend_from_slice(&entries.to_le_bytes());
    // One orientation entry (rotate 90), then junk where the other entries should be.
    e.extend_from_slice(&[0x12, 0x01, 3, 0, 1, 0, 0, 0, 6, 0, 0, 0]);
    e.extend((0..filler).map(|i| (i * 31 % 251) as u8));
    e
}

/// A PNG whose IHDR declares `w` x `h` RGB8, with a few bytes of image data.
fn png_header(w: u32, h: u32) -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    for body in [
        ihdr,
        b"IDAT\x78\x9c\x03\x00\x00\x00\x00\x01".to_vec(),
        b"IEND".to_vec(),
    ] {
        out.extend_from_slice(&(body.len() as u32 - 4).to_be_bytes());
        let crc = crc32(&body);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc.to_be_bytes());
    }
    out
}

/// CRC-32 (the PNG chunk checksum).
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// The corpus: (name, bytes).
pub fn corpus() -> Vec<(String, Vec<u8>)> {
    let photo_jpeg = jpeg_of(&photo(320, 240));
    let mut v: Vec<(String, Vec<u8>)> = vec![
        ("empty".into(), Vec::new()),
        ("one byte".into(), vec![0xFF]),
        ("JPEG SOI only".into(), vec![0xFF, 0xD8, 0xFF]),
        ("PNG signature only".into(), b"\x89PNG\r\n\x1a\n".to_vec()),
        (
            "PNG declaring 100000x100000".into(),
            png_header(100_000, 100_000),
        ),
        ("PNG declaring 0x0".into(), png_header(0, 0)),
        (
            "PNG declaring 4096x4096 with no data".into(),
            png_header(4096, 4096),
        ),
        (
            "16-bit RGBA PNG 64x64".into(),
            png_rows(64, 64, 16, |y| {
                (0..64 * 8).map(|i| (i as u32 ^ y) as u8).collect()
            }),
        ),
        (
            "16-bit RGBA PNG 3000x3000 of one colour (72 MB decoded)".into(),
            png_rows(3000, 3000, 16, |_| vec![0x5A; 3000 * 8]),
        ),
        (
            "8-bit RGBA PNG 8000x8000 of one colour (256 MB decoded)".into(),
            png_rows(8000, 8000, 8, |_| vec![0x33; 8000 * 4]),
        ),
        (
            "JPEG with 65 KB of EXIF claiming 65535 entries".into(),
            with_app1(&photo_jpeg, &exif(0xFFFF, 65_000)),
        ),
        (
            "JPEG with EXIF cut inside its first entry".into(),
            with_app1(&photo_jpeg, &exif(1, 0)[..20]),
        ),
        (
            "WebP header only".into(),
            b"RIFF\x20\0\0\0WEBPVP8 \x14\0\0\0junkjunkjunkjunkjunk".to_vec(),
        ),
        ("BMP declaring 1000000 x -1000000".into(), {
            let mut b = b"BM".to_vec();
            b.extend_from_slice(&[0; 8]);
            b.extend_from_slice(&54u32.to_le_bytes());
            b.extend_from_slice(&40u32.to_le_bytes());
            b.extend_from_slice(&1_000_000i32.to_le_bytes());
            b.extend_from_slice(&(-1_000_000i32).to_le_bytes());
            b.extend_from_slice(&[1, 0, 24, 0]);
            b.extend_from_slice(&[0; 24]);
            b
        }),
        (
            "GIF declaring a 65535x65535 screen".into(),
            b"GIF89a\xff\xff\xff\xff\0\0\0,\0\0\0\0\xff\xff\xff\xff\0\x02\x02D\x01\0;".to_vec(),
        ),
    ];
    // CMYK (Adobe) JPEG.
    let mut cmyk = Vec::new();
    let data: Vec<u8> = (0..64 * 64 * 4).map(|i| (i * 7 % 256) as u8).collect();
    jpeg_encoder::Encoder::new(&mut cmyk, 90)
        .encode(&data, 64, 64, jpeg_encoder::ColorType::Cmyk)
        .unwrap();
    v.push(("CMYK JPEG 64x64".into(), cmyk));
    // Animated GIF: two frames.
    let mut gif = Vec::new();
    {
        let mut enc = GifEncoder::new(&mut gif);
        enc.set_repeat(Repeat::Infinite).unwrap();
        let frames = (0..2).map(|i| {
            Frame::from_parts(
                RgbaImage::from_pixel(48, 48, image::Rgba([i * 200, 50, 50, 255])),
                0,
                0,
                Delay::from_numer_denom_ms(100, 1),
            )
        });
        enc.encode_frames(frames).unwrap();
    }
    v.push(("animated GIF, 2 frames".into(), gif));
    // A real JPEG cut at ten points, and one with every 97th byte flipped.
    for k in 1..10 {
        let cut = photo_jpeg.len() * k / 10;
        v.push((
            format!("JPEG truncated at {k}/10"),
            photo_jpeg[..cut].to_vec(),
        ));
    }
    let mut flipped = photo_jpeg.clone();
    for i in (0..flipped.len()).step_by(97) {
        flipped[i] ^= 0xA5;
    }
    v.push(("JPEG with every 97th byte flipped".into(), flipped));
    v.push(("a plain JPEG 320x240".into(), photo_jpeg));
    v
}
