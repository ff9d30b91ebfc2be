//! Pillow's `Image.resize` on RGB images, as `libImaging/Resample.c` and `Geometry.c` compute it.
//!
//! The convolution filters (box, bilinear, hamming, bicubic, lanczos) are separable: per output
//! pixel, the taps within `support * max(scale, 1)` of its centre are weighted by the filter
//! (scaled, so a downscale averages every source pixel it covers: antialiasing), normalised to
//! sum to 1 in `f64`, then turned into 22-bit fixed point (rounded away from zero). The
//! horizontal pass runs first, over the source rows the vertical pass will read, into an 8-bit
//! image (each sum rounded and clipped); the vertical pass reads that. Nearest neighbour is
//! Pillow's affine scale: source index `int(offset)`, the offset starting at half a step and
//! advanced by adding the step, in `f64`.

/// Pillow's resampling filters (`PIL.Image.Resampling`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    Nearest,
    Box,
    Bilinear,
    Hamming,
    Bicubic,
    Lanczos,
}

impl Filter {
    /// Half the filter's width at scale 1.
    fn support(self) -> f64 {
        match self {
            Filter::Nearest | Filter::Box => 0.5,
            Filter::Bilinear | Filter::Hamming => 1.0,
            Filter::Bicubic => 2.0,
            Filter::Lanczos => 3.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        match self {
            Filter::Nearest | Filter::Box => {
                if x > -0.5 && x <= 0.5 {
                    1.0
                } else {
                    0.0
                }
            }
            Filter::Bilinear => {
                let x = x.abs();
                if x < 1.0 { 1.0 - x } else { 0.0 }
            }
            Filter::Hamming => {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    let x = x * std::f64::consts::PI;
                    // The C source's constants are floats (0.54f, 0.46f), widened to double.
                    x.sin() / x * (f64::from(0.54f32) + f64::from(0.46f32) * x.cos())
                }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
            Filter::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        return 1.0;
    }
    let x = x * std::f64::consts::PI;
    x.sin() / x
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// One axis's taps: per output index, the first source index and the fixed-point weights.
struct Taps {
    first: Vec<usize>,
    weights: Vec<Vec<i32>>,
}

impl Taps {
    /// `precompute_coeffs` then `normalize_coeffs_8bpc`, for the whole input (box 0..in).
    fn new(src: u32, dst: u32, filter: Filter) -> Self {
        // The box is given in f32 and its length divided in f64, as in Pillow.
        let scale = f64::from(src as f32) / f64::from(dst);
        let filterscale = scale.max(1.0);
        let support = filter.support() * filterscale;
        let inv = 1.0 / filterscale;
        let (mut first, mut weights) = (Vec::new(), Vec::new());
        for d in 0..dst {
            let centre = (f64::from(d) + 0.5) * scale;
            // `(int)` truncates toward zero, as `as` does.
            let xmin = ((centre - support + 0.5) as i64).max(0);
            let xmax = ((centre + support + 0.5) as i64).min(i64::from(src));
            let mut k: Vec<f64> = (xmin..xmax)
                .map(|x| filter.weight((x as f64 - centre + 0.5) * inv))
                .collect();
            let sum: f64 = k.iter().sum();
            if sum != 0.0 {
                for w in &mut k {
                    *w /= sum;
                }
            }
            let one = f64::from(1u32 << PRECISION_BITS);
            weights.push(
                k.iter()
                    .map(|&w| {
                        if w < 0.0 {
                            (-0.5 + w * one) as i32
                        } else {
                            (0.5 + w * one) as i32
                        }
                    })
                    .collect(),
            );
            first.push(xmin.max(0) as usize);
        }
        Self { first, weights }
    }
}

/// Rounds a fixed-point sum (already holding the half) to a byte, clipping as Pillow's lookup
/// table does.
fn clip8(sum: i32) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// `Image.resize((dst_w, dst_h), filter)` on packed 8-bit RGB.
pub fn resize(src: &[u8], w: u32, h: u32, dst_w: u32, dst_h: u32, filter: Filter) -> Vec<u8> {
    if w == 0 || h == 0 || dst_w == 0 || dst_h == 0 || src.len() < w as usize * h as usize * 3 {
        return Vec::new();
    }
    if (w, h) == (dst_w, dst_h) {
        return src.to_vec();
    }
    if filter == Filter::Nearest {
        return nearest(src, w, h, dst_w, dst_h);
    }
    const CN: usize = 3;
    let half = 1i32 << (PRECISION_BITS - 1);
    let vertical = Taps::new(h, dst_h, filter);
    // The source rows the vertical pass reads.
    let (row_first, row_end) = match (vertical.first.first(), vertical.first.last()) {
        (Some(&a), Some(&b)) => (a, b + vertical.weights.last().map_or(0, Vec::len)),
        _ => return Vec::new(),
    };
    let (mut rows, mut width) = (
        src[row_first * w as usize * CN..row_end * w as usize * CN].to_vec(),
        w,
    );
    if dst_w != w {
        let horizontal = Taps::new(w, dst_w, filter);
        let mut out = Vec::with_capacity((row_end - row_first) * dst_w as usize * CN);
        for line in rows.chunks_exact(w as usize * CN) {
            for (&x0, k) in horizontal.first.iter().zip(&horizontal.weights) {
                let mut sum = [half; CN];
                for (i, &kx) in k.iter().enumerate() {
                    let px = &line[(x0 + i) * CN..][..CN];
                    for c in 0..CN {
                        sum[c] = sum[c].wrapping_add(i32::from(px[c]).wrapping_mul(kx));
                    }
                }
                out.extend(sum.map(clip8));
            }
        }
        (rows, width) = (out, dst_w);
    }
    if dst_h == h {
        return rows;
    }
    let line = width as usize * CN;
    let mut out = Vec::with_capacity(dst_h as usize * line);
    for (&y0, k) in vertical.first.iter().zip(&vertical.weights) {
        let y0 = y0 - row_first;
        for x in 0..line {
            let mut sum = half;
            for (i, &ky) in k.iter().enumerate() {
                sum = sum.wrapping_add(i32::from(rows[(y0 + i) * line + x]).wrapping_mul(ky));
            }
            out.push(clip8(sum));
        }
    }
    out
}

/// `ImagingScaleAffine`: nearest neighbour with the offset accumulated in `f64`.
fn nearest(src: &[u8], w: u32, h: u32, dst_w: u32, dst_h: u32) -> Vec<u8> {
    const CN: usize = 3;
    let index = |src_len: u32, dst_len: u32| -> Vec<usize> {
        let step = f64::from(src_len as f32) / f64::from(dst_len);
        let mut at = step * 0.5;
        (0..dst_len)
            .map(|_| {
                // Offsets start at half a step and grow: never negative, below src_len.
                let i = (at as usize).min(src_len as usize - 1);
                at += step;
                i
            })
            .collect()
    };
    let (xs, ys) = (index(w, dst_w), index(h, dst_h));
    let mut out = Vec::with_capacity(xs.len() * ys.len() * CN);
    for &y in &ys {
        let line = &src[y * w as usize * CN..][..w as usize * CN];
        for &x in &xs {
            out.extend_from_slice(&line[x * CN..][..CN]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gray(values: &[u8]) -> Vec<u8> {
        values.iter().flat_map(|&v| [v, v, v]).collect()
    }

    #[test]
    fn box_halving_averages_pairs_and_rounds_half_up() {
        // 4x1 -> 2x1 with a box: (10 + 21) / 2 = 15.5 -> 16, (30 + 40) / 2 = 35.
        let out = resize(&gray(&[10, 21, 30, 40]), 4, 1, 2, 1, Filter::Box);
        assert_eq!(out, gray(&[16, 35]));
    }

    #[test]
    fn weights_sum_to_one_in_fixed_point_within_rounding() {
        for filter in [
            Filter::Box,
            Filter::Bilinear,
            Filter::Hamming,
            Filter::Bicubic,
            Filter::Lanczos,
        ] {
            for (src, dst) in [(500, 256), (97, 256), (341, 342)] {
                let taps = Taps::new(src, dst, filter);
                for k in &taps.weights {
                    let sum: i32 = k.iter().sum();
                    assert!(
                        (sum - (1 << PRECISION_BITS)).abs() <= k.len() as i32,
                        "{filter:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_flat_image_stays_flat_under_every_filter() {
        let src = gray(&[77; 35]);
        for filter in [
            Filter::Nearest,
            Filter::Bilinear,
            Filter::Bicubic,
            Filter::Lanczos,
        ] {
            assert_eq!(
                resize(&src, 7, 5, 3, 9, filter),
                gray(&[77; 27]),
                "{filter:?}"
            );
        }
    }

    #[test]
    fn nearest_takes_the_pixel_under_each_centre() {
        // 4 -> 2: centres at 1.0 and 3.0 of the source.
        assert_eq!(
            resize(&gray(&[1, 2, 3, 4]), 4, 1, 2, 1, Filter::Nearest),
            gray(&[2, 4])
        );
    }
}
