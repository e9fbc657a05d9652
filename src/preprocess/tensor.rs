//! The encoder's input tensor: its spec ([`TensorSpec`], which a model card implements) and the
//! conversion of a decoded image into it: resize (SIMD, `fast_image_resize`), crop, normalise and
//! lay out the pixels.

use fast_image_resize as fr;
use fr::pixels::U8x3;
use image::RgbImage;
use serde::{Deserialize, Serialize};

use super::decode::ImageError;

/// The encoder's input tensor: one RGB image of `width` x `height`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    /// ONNX input name.
    pub name: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Order of the axes.
    pub layout: Layout,
}

/// The order of a tensor's axes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Layout {
    /// Batch, channels, height, width (PyTorch's order).
    Nchw,
    /// Batch, height, width, channels (TensorFlow's order).
    Nhwc,
}

/// How an image of any size is brought to the input size.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum ResizeRule {
    /// Resize the shorter side to `size / crop_fraction` (keeping aspect), then centre-crop `size`.
    ShorterSideCenterCrop {
        /// The part of the shorter side the crop keeps, in (0, 1].
        crop_fraction: f32,
    },
    /// Stretch to the input size, ignoring aspect ratio.
    Stretch,
}

/// Per-channel normalisation of 0..=255 pixel values: `(x - mean) / std`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normalize {
    /// Subtracted from each channel (R, G, B).
    pub mean: [f32; 3],
    /// Then divided by, per channel.
    pub std: [f32; 3],
}

/// The encoder input an image is turned into: its geometry, how an image is brought to it and the
/// normalisation of the pixel values. A model card is one ([`crate::model::ModelCard`]).
pub trait TensorSpec {
    /// Input tensor geometry.
    fn input(&self) -> &InputSpec;
    /// How an arbitrary image is brought to the input size.
    fn resize(&self) -> ResizeRule;
    /// Per-channel normalisation of 0..=255 pixel values.
    fn normalize(&self) -> &Normalize;
}

/// The smallest decoded size (width, height) that preprocessing for `card` needs without losing
/// detail: the input size for [`ResizeRule::Stretch`], and for a centre crop a square whose side
/// is the resized shorter side (`size / crop_fraction`).
pub fn needed_size(card: &(impl TensorSpec + ?Sized)) -> (u32, u32) {
    let (w, h) = (card.input().width, card.input().height);
    match card.resize() {
        ResizeRule::Stretch => (w, h),
        ResizeRule::ShorterSideCenterCrop { crop_fraction } => {
            let side = (w.max(h) as f32 / crop_fraction).ceil() as u32;
            (side, side)
        }
    }
}

/// Number of f32 values in the input tensor of one image.
pub fn tensor_len(card: &(impl TensorSpec + ?Sized)) -> usize {
    3 * card.input().width as usize * card.input().height as usize
}

/// Resizes `img` to the card's input size and returns the normalised tensor of one image
/// (`[3, H, W]` for NCHW, `[H, W, 3]` for NHWC, without the batch axis).
pub fn to_tensor(
    img: &RgbImage,
    card: &(impl TensorSpec + ?Sized),
) -> Result<Vec<f32>, ImageError> {
    let mut out = vec![0f32; tensor_len(card)];
    to_tensor_into(img, card, &mut out)?;
    Ok(out)
}

/// [`to_tensor`] into a caller's buffer of [`tensor_len`] values (e.g. a slice of a batch).
///
/// # Panics
/// If `out.len() != tensor_len(card)`.
pub fn to_tensor_into(
    img: &RgbImage,
    card: &(impl TensorSpec + ?Sized),
    out: &mut [f32],
) -> Result<(), ImageError> {
    assert_eq!(
        out.len(),
        tensor_len(card),
        "tensor buffer length does not match the model card's input"
    );
    let resized = resize(img, card)?;
    normalize_into(&resized, card, out);
    Ok(())
}

/// The crop (left, top, width, height) of a `sw` x `sh` source that ends up in the model input.
fn crop_box(sw: u32, sh: u32, card: &(impl TensorSpec + ?Sized)) -> (f64, f64, f64, f64) {
    let (sw, sh) = (f64::from(sw), f64::from(sh));
    match card.resize() {
        ResizeRule::Stretch => (0.0, 0.0, sw, sh),
        ResizeRule::ShorterSideCenterCrop { crop_fraction } => {
            let (dw, dh) = (
                f64::from(card.input().width),
                f64::from(card.input().height),
            );
            let cf = f64::from(crop_fraction);
            // Scale so that the output box, enlarged by 1/crop_fraction, just covers the image's
            // shorter side (for a square input: shorter side -> size / crop_fraction), then cut the
            // centre. Done as one resize of the source's centre region.
            let scale = (dw / cf / sw).max(dh / cf / sh);
            let (cw, ch) = ((dw / scale).min(sw), (dh / scale).min(sh));
            ((sw - cw) / 2.0, (sh - ch) / 2.0, cw, ch)
        }
    }
}

fn resize(img: &RgbImage, card: &(impl TensorSpec + ?Sized)) -> Result<RgbImage, ImageError> {
    let (sw, sh) = img.dimensions();
    if sw == 0 || sh == 0 {
        return Err(ImageError::TooSmall {
            width: sw,
            height: sh,
        });
    }
    let (dw, dh) = (card.input().width, card.input().height);
    // The typed API for the one pixel type we resize (8-bit RGB): the dynamic one
    // (`Resizer::resize`) dispatches on the pixel type at run time, which links the SIMD
    // convolutions of all fourteen types (about 3 MB of each function binary).
    let src = fr::images::TypedImageRef::<U8x3>::from_buffer(sw, sh, img.as_raw())
        .map_err(|e| ImageError::Decode(format!("resize: {e}")))?;
    let mut out = vec![0u8; dw as usize * dh as usize * 3];
    let mut dst = fr::images::TypedImage::<U8x3>::from_buffer(dw, dh, &mut out)
        .map_err(|e| ImageError::Decode(format!("resize: {e}")))?;
    let (left, top, cw, ch) = crop_box(sw, sh, card);
    // Catmull-Rom is PIL's BICUBIC, what the EfficientNet/timm reference preprocessing uses.
    let options = fr::ResizeOptions::new()
        .resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::CatmullRom))
        .crop(left, top, cw, ch);
    fr::Resizer::new()
        .resize_typed(&src, &mut dst, &options)
        .map_err(|e| ImageError::Decode(format!("resize: {e}")))?;
    RgbImage::from_raw(dw, dh, out).ok_or_else(|| ImageError::Decode("resize: bad buffer".into()))
}

fn normalize_into(img: &RgbImage, card: &(impl TensorSpec + ?Sized), out: &mut [f32]) {
    let n = card.normalize();
    let mut lut = [[0f32; 256]; 3];
    for (c, table) in lut.iter_mut().enumerate() {
        for (v, slot) in table.iter_mut().enumerate() {
            *slot = (v as f32 - n.mean[c]) / n.std[c];
        }
    }
    let raw = img.as_raw();
    match card.input().layout {
        Layout::Nhwc => {
            for (i, (o, &v)) in out.iter_mut().zip(raw.iter()).enumerate() {
                *o = lut[i % 3][v as usize];
            }
        }
        Layout::Nchw => {
            let plane = raw.len() / 3;
            let (r, rest) = out.split_at_mut(plane);
            let (g, b) = rest.split_at_mut(plane);
            for (i, px) in raw.chunks_exact(3).enumerate() {
                r[i] = lut[0][px[0] as usize];
                g[i] = lut[1][px[1] as usize];
                b[i] = lut[2][px[2] as usize];
            }
        }
    }
}
