//! Image resizes of three libraries, reproduced bit for bit, so that the choice of library is an
//! environment deltann can measure rather than an approximation of one. Each works on packed
//! 8-bit RGB and copies its library's arithmetic, rounding and all:
//!
//! - [`pillow`]: `Image.resize` (torchvision's resize of a PIL image), a separable convolution
//!   whose support widens with the scale (antialiasing), in 22-bit fixed point, horizontal pass
//!   first through an 8-bit intermediate; and its nearest neighbour.
//! - [`opencv`]: `cv2.resize` with `INTER_LINEAR`, two taps per axis (no antialiasing) in 11-bit
//!   fixed point.
//! - [`tf`]: `tf.image.resize` bilinear, two taps per axis in `f32`, the result left as floats.
//!
//! Each was checked against the real library (deltann's `tests/preprocess_reference.rs` runs them
//! on photos and synthetic images, up and down, through Pillow 13.0, OpenCV 4.14 and TensorFlow
//! 2.21). This crate is compiled optimised even in debug builds: it is on the path of every image.

pub mod opencv;
pub mod pillow;
pub mod tf;
