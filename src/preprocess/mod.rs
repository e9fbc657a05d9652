//! Image decoding under limits and conversion to the encoder's input tensor.
//!
//! - [`decode`](decode()) (in `decode.rs`) turns untrusted bytes into an RGB image, checking
//!   [`Limits`] before any pixel buffer is allocated; [`decode_scaled`] lets big JPEGs be decoded
//!   at 1/2, 1/4 or 1/8 scale (DCT-domain downscaling) when the caller needs far fewer pixels.
//! - [`to_tensor`] (in `tensor.rs`) resizes, crops, normalises and lays out the pixels as the
//!   model card ([`TensorSpec`]) asks.
//! - [`preprocess`](preprocess()) does both, decoding at the smallest scale the tensor allows.

mod decode;
mod tensor;

pub use decode::{decode, decode_scaled, sniff, Format, ImageError, Limits, MIN_SIDE};
pub use tensor::{
    needed_size, tensor_len, to_tensor, to_tensor_into, InputSpec, Layout, Normalize, ResizeRule,
    TensorSpec,
};

/// Decodes `bytes` and turns them into the card's input tensor for one image.
pub fn preprocess(
    bytes: &[u8],
    card: &(impl TensorSpec + ?Sized),
    limits: &Limits,
) -> Result<Vec<f32>, ImageError> {
    let img = decode_scaled(bytes, limits, Some(needed_size(card)))?;
    to_tensor(&img, card)
}

/// [`preprocess`] into a caller's buffer of [`tensor_len`] values.
pub fn preprocess_into(
    bytes: &[u8],
    card: &(impl TensorSpec + ?Sized),
    limits: &Limits,
    out: &mut [f32],
) -> Result<(), ImageError> {
    let img = decode_scaled(bytes, limits, Some(needed_size(card)))?;
    to_tensor_into(&img, card, out)
}
