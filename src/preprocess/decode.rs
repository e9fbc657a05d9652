//! Decoding untrusted image bytes under limits: the format is sniffed from the magic bytes
//! (JPEG, PNG, WebP, GIF first frame, BMP; never the file name), the declared size is checked
//! against [`Limits`] from the header before any pixel buffer is allocated (decompression bombs),
//! EXIF orientation is applied, big JPEGs can be decoded at a reduced DCT scale, and no input makes
//! it panic.

use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};

use crate::config::{env_or, ConfigError};

/// Smallest accepted side, in pixels. Anything narrower or lower (a 1x1 tracking pixel, a 1000x4
/// strip) carries no usable visual content for an image encoder and is refused as
/// [`ImageError::TooSmall`].
pub const MIN_SIDE: u32 = 8;

/// Resource limits for decoding untrusted images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted encoded size, in bytes.
    pub max_bytes: usize,
    /// Largest accepted width, in pixels (checked from the header, before decoding).
    pub max_width: u32,
    /// Largest accepted height, in pixels (checked from the header, before decoding).
    pub max_height: u32,
    /// Largest accepted width x height (checked from the header, before decoding).
    pub max_pixels: u64,
    /// Upper bound on what a decoder may allocate, in bytes.
    pub max_alloc: u64,
    /// Largest width x height decoded at full size. A JPEG can be decoded at a reduced DCT scale
    /// (cheap, up to `max_pixels`); any other image above this is refused before decoding, so
    /// that a small, highly compressed upload cannot buy seconds of CPU.
    pub max_full_pixels: u64,
}

impl Limits {
    /// `base` with what the environment overrides: `LOOKALIKE_MAX_IMAGE_BYTES`,
    /// `LOOKALIKE_MAX_PIXELS`, `LOOKALIKE_MAX_FULL_PIXELS` and `LOOKALIKE_MAX_SIDE` (both sides).
    pub fn from_env(base: Limits) -> Result<Limits, ConfigError> {
        let side: u32 = env_or("LOOKALIKE_MAX_SIDE", base.max_width.max(base.max_height))?;
        let max_pixels: u64 = env_or("LOOKALIKE_MAX_PIXELS", base.max_pixels)?;
        Ok(Limits {
            max_bytes: env_or("LOOKALIKE_MAX_IMAGE_BYTES", base.max_bytes)?,
            max_pixels,
            max_full_pixels: env_or(
                "LOOKALIKE_MAX_FULL_PIXELS",
                base.max_full_pixels.min(max_pixels),
            )?,
            max_width: side,
            max_height: side,
            ..base
        })
    }
}

impl Default for Limits {
    /// What ingest accepts: 40 MiB of input, sides up to 20000 px, 100 megapixels (all decoded at
    /// full size if need be), 512 MiB of decoder allocations (a 16-bit RGBA image of up to 64
    /// megapixels).
    fn default() -> Self {
        Limits {
            max_bytes: 40 << 20,
            max_width: 20_000,
            max_height: 20_000,
            max_pixels: 100_000_000,
            max_alloc: 512 << 20,
            max_full_pixels: 100_000_000,
        }
    }
}

impl Limits {
    /// What a query image may take: a search needs only the model's input size, so besides
    /// JPEGs of up to 50 megapixels (decoded at a reduced DCT scale) only images of up to 16
    /// megapixels are decoded, within 256 MiB.
    pub fn for_queries() -> Limits {
        Limits {
            max_pixels: 50_000_000,
            max_full_pixels: 16_000_000,
            max_alloc: 256 << 20,
            ..Limits::default()
        }
    }
}

/// Why an image was refused. Every variant is the client's fault (a 4xx), see [`ImageError::http_status`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// No bytes at all.
    #[error("the image is empty (0 bytes)")]
    Empty,
    /// More bytes than the limit.
    #[error("the image is {size} bytes, more than the limit of {limit} bytes")]
    TooManyBytes {
        /// The image's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Not a format we decode.
    #[error("unsupported image format ({detected}); expected JPEG, PNG, WebP, GIF or BMP")]
    UnsupportedFormat {
        /// What the bytes look like, when known.
        detected: &'static str,
    },
    /// More pixels than the limits allow (from the header, before decoding).
    #[error("the image is {width}x{height} pixels, more than the limits allow")]
    TooLarge {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
    /// A side under [`MIN_SIDE`] pixels.
    #[error("the image is {width}x{height} pixels; each side must be at least {MIN_SIDE} pixels")]
    TooSmall {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
    /// The decoder failed (corrupt or truncated data).
    #[error("cannot decode the image: {0}")]
    Decode(String),
}

impl ImageError {
    /// The HTTP status an API should answer with: 413 for too many bytes or pixels, 415 for an
    /// unsupported format, 422 for an image that is empty, too small or corrupt.
    pub fn http_status(&self) -> u16 {
        match self {
            ImageError::TooManyBytes { .. } | ImageError::TooLarge { .. } => 413,
            ImageError::UnsupportedFormat { .. } => 415,
            ImageError::Empty | ImageError::TooSmall { .. } | ImageError::Decode(_) => 422,
        }
    }
}

/// The formats we decode, sniffed from the first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// JPEG.
    Jpeg,
    /// PNG.
    Png,
    /// WebP.
    WebP,
    /// GIF (the first frame).
    Gif,
    /// BMP.
    Bmp,
}

impl Format {
    fn image_format(self) -> ImageFormat {
        match self {
            Format::Jpeg => ImageFormat::Jpeg,
            Format::Png => ImageFormat::Png,
            Format::WebP => ImageFormat::WebP,
            Format::Gif => ImageFormat::Gif,
            Format::Bmp => ImageFormat::Bmp,
        }
    }
}

/// Identifies the format from the magic bytes. The error names what the bytes look like, when known.
pub fn sniff(bytes: &[u8]) -> Result<Format, ImageError> {
    let starts = |m: &[u8]| bytes.starts_with(m);
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    // SOI; a third byte (0xFF, the next marker) follows in any real JPEG.
    if starts(&[0xFF, 0xD8]) {
        return Ok(Format::Jpeg);
    }
    if starts(b"\x89PNG\r\n\x1a\n") {
        return Ok(Format::Png);
    }
    if starts(b"GIF87a") || starts(b"GIF89a") {
        return Ok(Format::Gif);
    }
    if bytes.len() >= 12 && starts(b"RIFF") && &bytes[8..12] == b"WEBP" {
        return Ok(Format::WebP);
    }
    if starts(b"BM") && bytes.len() >= 14 {
        return Ok(Format::Bmp);
    }
    let detected = if starts(b"II*\0") || starts(b"MM\0*") {
        "TIFF"
    } else if starts(b"%PDF") {
        "PDF"
    } else if bytes.len() >= 12 && &bytes[4..8] == b"ftyp" {
        match &bytes[8..12] {
            b"avif" | b"avis" => "AVIF",
            b"heic" | b"heix" | b"heim" | b"heis" | b"hevc" | b"mif1" | b"msf1" => "HEIF",
            _ => "ISO media (video?)",
        }
    } else if starts(&[0, 0, 1, 0]) {
        "ICO"
    } else if starts(b"qoif") {
        "QOI"
    } else if starts(b"8BPS") {
        "PSD"
    } else if starts(&[0xFF, 0x0A]) || starts(b"\0\0\0\x0cJXL ") {
        "JPEG XL"
    } else if starts(b"\0\0\0\x0cjP  ") {
        "JPEG 2000"
    } else if starts(b"<") || starts(b"\xEF\xBB\xBF<") {
        "SVG/XML/HTML"
    } else if starts(b"P1")
        || starts(b"P2")
        || starts(b"P3")
        || starts(b"P4")
        || starts(b"P5")
        || starts(b"P6")
    {
        "PNM"
    } else {
        "unknown"
    };
    Err(ImageError::UnsupportedFormat { detected })
}

/// Decodes an image at full resolution, applying EXIF orientation.
pub fn decode(bytes: &[u8], limits: &Limits) -> Result<RgbImage, ImageError> {
    decode_scaled(bytes, limits, None)
}

/// Like [`decode`], but a JPEG may be decoded at 1/2, 1/4 or 1/8 scale (in the DCT domain, much
/// faster than decoding everything) as long as the result stays at least `min_size` =
/// `(width, height)` in the image's displayed orientation. Other formats, and JPEGs too small to
/// gain from it, are decoded at full size.
pub fn decode_scaled(
    bytes: &[u8],
    limits: &Limits,
    min_size: Option<(u32, u32)>,
) -> Result<RgbImage, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    if bytes.len() > limits.max_bytes {
        return Err(ImageError::TooManyBytes {
            size: bytes.len(),
            limit: limits.max_bytes,
        });
    }
    let format = sniff(bytes)?;
    guarded(|| {
        if let (Format::Jpeg, Some(min)) = (format, min_size) {
            match jpeg_scaled(bytes, limits, min) {
                Ok(Some(img)) => return Ok(img),
                // Not worth scaling, or a JPEG flavour the fast path does not take: decode normally.
                Ok(None) => {}
                Err(e @ (ImageError::TooLarge { .. } | ImageError::TooSmall { .. })) => {
                    return Err(e)
                }
                // The fast path's decoder is stricter than the general one on damaged files: let the
                // general one have its say.
                Err(_) => {}
            }
        }
        decode_general(bytes, format, limits)
    })
}

/// Runs a decoder, turning a panic inside third-party code into [`ImageError::Decode`].
fn guarded<T>(f: impl FnOnce() -> Result<T, ImageError>) -> Result<T, ImageError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "decoder panicked".into());
            Err(ImageError::Decode(format!("decoder failure: {what}")))
        }
    }
}

fn check_dimensions(width: u32, height: u32, limits: &Limits) -> Result<(), ImageError> {
    if width > limits.max_width
        || height > limits.max_height
        || u64::from(width) * u64::from(height) > limits.max_pixels
    {
        return Err(ImageError::TooLarge { width, height });
    }
    if width < MIN_SIDE || height < MIN_SIDE {
        return Err(ImageError::TooSmall { width, height });
    }
    Ok(())
}

fn image_limits(limits: &Limits, with_dimensions: bool) -> image::Limits {
    let mut l = image::Limits::default();
    l.max_alloc = Some(limits.max_alloc);
    if with_dimensions {
        l.max_image_width = Some(limits.max_width);
        l.max_image_height = Some(limits.max_height);
    }
    l
}

fn decode_error(e: image::ImageError) -> ImageError {
    match e {
        image::ImageError::Unsupported(u) => {
            ImageError::Decode(format!("unsupported feature: {u}"))
        }
        other => ImageError::Decode(other.to_string()),
    }
}

fn decode_general(bytes: &[u8], format: Format, limits: &Limits) -> Result<RgbImage, ImageError> {
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format.image_format());
    // Dimensions are checked by us from the header (to report them); the allocation cap is the
    // decoder's own.
    reader.limits(image_limits(limits, false));
    let mut decoder = match reader.into_decoder() {
        Ok(d) => d,
        Err(image::ImageError::Limits(_)) => {
            // The header already broke a limit: report the declared size if it can be read.
            let mut r = ImageReader::with_format(Cursor::new(bytes), format.image_format());
            r.no_limits();
            let (width, height) = r.into_dimensions().unwrap_or((u32::MAX, u32::MAX));
            return Err(ImageError::TooLarge { width, height });
        }
        Err(e) => return Err(decode_error(e)),
    };
    let (width, height) = decoder.dimensions();
    check_dimensions(width, height, limits)?;
    // The decoded buffer's size, from the header: not every decoder checks `max_alloc` itself
    // before it allocates.
    if u64::from(width) * u64::from(height) > limits.max_full_pixels
        || decoder.total_bytes() > limits.max_alloc
    {
        return Err(ImageError::TooLarge { width, height });
    }
    decoder
        .set_limits(image_limits(limits, true))
        .map_err(|_| ImageError::TooLarge { width, height })?;
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let img = DynamicImage::from_decoder(decoder).map_err(|e| match e {
        image::ImageError::Limits(_) => ImageError::TooLarge { width, height },
        other => decode_error(other),
    })?;
    // To 8-bit RGB first (dropping a 16-bit or alpha buffer), then the orientation: a rotation
    // copies the smaller buffer.
    let mut img = DynamicImage::ImageRgb8(img.into_rgb8());
    img.apply_orientation(orientation);
    Ok(img.into_rgb8())
}

/// The JPEG fast path: decode at a reduced DCT scale with `jpeg-decoder`. `Ok(None)` when the
/// image is not big enough to gain from it, or is not plain 8-bit RGB/greyscale (CMYK, 16-bit).
fn jpeg_scaled(
    bytes: &[u8],
    limits: &Limits,
    min: (u32, u32),
) -> Result<Option<RgbImage>, ImageError> {
    use image::metadata::Orientation;
    use jpeg_decoder::PixelFormat;

    let derr = |e: jpeg_decoder::Error| ImageError::Decode(e.to_string());
    let mut dec = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    dec.set_max_decoding_buffer_size(usize::try_from(limits.max_alloc).unwrap_or(usize::MAX));
    dec.read_info().map_err(derr)?;
    let Some(info) = dec.info() else {
        return Ok(None);
    };
    let (width, height) = (u32::from(info.width), u32::from(info.height));
    check_dimensions(width, height, limits)?;
    if !matches!(info.pixel_format, PixelFormat::RGB24 | PixelFormat::L8) {
        return Ok(None);
    }
    let orientation = dec
        .exif_data()
        .and_then(Orientation::from_exif_chunk)
        .unwrap_or(Orientation::NoTransforms);
    let transposed = matches!(
        orientation,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    );
    // `min` is in displayed orientation; the decoder works in stored orientation.
    let (min_w, min_h) = if transposed { (min.1, min.0) } else { min };
    let (min_w, min_h) = (min_w.max(1), min_h.max(1));
    // The largest reduction (smallest scale of 1/8, 2/8, 4/8) that keeps both sides >= the minimum.
    // `Decoder::scale` picks the first scale where *either* side reaches the request, so ask for
    // exactly the size of the scale chosen here.
    let scaled = |len: u32, s: u32| (len * s).div_ceil(8);
    let Some(s) = [1u32, 2, 4]
        .into_iter()
        .find(|&s| scaled(width, s) >= min_w && scaled(height, s) >= min_h)
    else {
        return Ok(None);
    };
    let (want_w, want_h) = (scaled(width, s), scaled(height, s));
    let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
    let (sw, sh) = dec.scale(clamp(want_w), clamp(want_h)).map_err(derr)?;
    if (u32::from(sw), u32::from(sh)) != (want_w, want_h) {
        return Ok(None);
    }
    let pixels = dec.decode().map_err(derr)?;
    let (sw, sh) = (u32::from(sw), u32::from(sh));
    let npix = sw as usize * sh as usize;
    let rgb = match info.pixel_format {
        PixelFormat::RGB24 if pixels.len() == npix * 3 => pixels,
        PixelFormat::L8 if pixels.len() == npix => pixels.iter().flat_map(|&v| [v, v, v]).collect(),
        _ => {
            return Err(ImageError::Decode(
                "JPEG decoder returned an unexpected buffer size".into(),
            ))
        }
    };
    let img = RgbImage::from_raw(sw, sh, rgb)
        .ok_or_else(|| ImageError::Decode("bad JPEG buffer".into()))?;
    let mut img = DynamicImage::ImageRgb8(img);
    img.apply_orientation(orientation);
    Ok(Some(img.into_rgb8()))
}
