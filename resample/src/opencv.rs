//! `cv2.resize(src, (w, h), interpolation=cv2.INTER_LINEAR)` on 8-bit images.
//!
//! A destination pixel `d` maps to the source coordinate `(d + 0.5) * in / out - 0.5` (half-pixel
//! centres) and blends the two nearest source pixels on each axis, without antialiasing: a
//! downscale by more than 2 skips source pixels. Weights are in 11-bit fixed point
//! (`saturate_cast<short>(w * 2048)`, rounded half to even); a horizontal pass makes 32-bit sums,
//! and the vertical blend is that of OpenCV's SIMD path (`VResizeLinearVec_32s8u`): each row sum
//! shifted right by 4, multiplied by its weight keeping the high 16 bits, the two added and
//! rounded by `(x + 2) >> 2`. Source rows above or below the image are clamped but keep their
//! weights (OpenCV clamps only the columns' weights). The exact halving OpenCV routes to
//! `INTER_AREA` gives the same numbers.

/// One axis of OpenCV's linear resize: per destination index, the source index and the weights
/// of it and of the next source index, in 11-bit fixed point.
struct CvAxis {
    /// Source index (columns: clamped into the image; rows: may be -1 or `len - 1`).
    index: Vec<i64>,
    weights: Vec<(i32, i32)>,
}

const CV_ONE: f32 = 2048.0;

impl CvAxis {
    fn new(src: u32, dst: u32, clamp_weights: bool) -> Self {
        // OpenCV keeps the inverse scale and inverts it again: `1. / (dst / src)`, in f64.
        let scale = 1.0 / (f64::from(dst) / f64::from(src));
        let (mut index, mut weights) = (Vec::new(), Vec::new());
        for d in 0..dst {
            let f = ((f64::from(d) + 0.5) * scale - 0.5) as f32;
            let mut s = f.floor() as i64;
            let mut frac = f - s as f32;
            if clamp_weights {
                if s < 0 {
                    (s, frac) = (0, 0.0);
                }
                if s >= i64::from(src) - 1 {
                    (s, frac) = (i64::from(src) - 1, 0.0);
                }
            }
            let w0 = ((1.0 - frac) * CV_ONE).round_ties_even() as i32;
            let w1 = (frac * CV_ONE).round_ties_even() as i32;
            index.push(s);
            weights.push((w0, w1));
        }
        Self { index, weights }
    }
}

/// `cv2.resize(src, (dst_w, dst_h), interpolation=cv2.INTER_LINEAR)` on packed 8-bit RGB.
pub fn linear(src: &[u8], w: u32, h: u32, dst_w: u32, dst_h: u32) -> Vec<u8> {
    if w == 0 || h == 0 || dst_w == 0 || dst_h == 0 || src.len() < w as usize * h as usize * 3 {
        return Vec::new();
    }
    const CN: usize = 3;
    let (w_us, h_us) = (w as usize, h as usize);
    let cols = CvAxis::new(w, dst_w, true);
    let rows = CvAxis::new(h, dst_h, false);
    let row_len = dst_w as usize * CN;
    // Horizontal pass, one source row at a time, kept for the rows that use it.
    let horizontal = |y: usize| -> Vec<i32> {
        let line = &src[y * w_us * CN..][..w_us * CN];
        let mut out = Vec::with_capacity(row_len);
        for (&s, &(a0, a1)) in cols.index.iter().zip(&cols.weights) {
            let s0 = s as usize;
            let s1 = (s0 + 1).min(w_us - 1);
            for c in 0..CN {
                out.push(i32::from(line[s0 * CN + c]) * a0 + i32::from(line[s1 * CN + c]) * a1);
            }
        }
        out
    };
    let clamp = |y: i64| y.clamp(0, h_us as i64 - 1) as usize;
    // The last two source rows through the horizontal pass: the source row only grows.
    let mut held: [(usize, Vec<i32>); 2] = [(usize::MAX, Vec::new()), (usize::MAX, Vec::new())];
    let mut out = Vec::with_capacity(row_len * dst_h as usize);
    for (&sy, &(b0, b1)) in rows.index.iter().zip(&rows.weights) {
        let (y0, y1) = (clamp(sy), clamp(sy + 1));
        if held[0].0 != y0 {
            held[0] = if held[1].0 == y0 {
                std::mem::replace(&mut held[1], (usize::MAX, Vec::new()))
            } else {
                (y0, horizontal(y0))
            };
        }
        if held[1].0 != y1 {
            held[1] = (y1, horizontal(y1));
        }
        let (r0, r1) = (&held[0].1, &held[1].1);
        for (&v0, &v1) in r0.iter().zip(r1) {
            let hi = |v: i32, b: i32| ((v >> 4) * b) >> 16;
            let v = (hi(v0, b0) + hi(v1, b1) + 2) >> 2;
            out.push(v.clamp(0, 255) as u8);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halving_is_the_rounded_mean_of_each_two_by_two_block() {
        // 4x2 -> 2x1: each output is (a + b + c + d + 2) >> 2, as OpenCV's INTER_AREA gives.
        let mut src = Vec::new();
        for v in [10u8, 20, 30, 41, 50, 60, 70, 80] {
            src.extend([v, v, v]);
        }
        let (a, b) = ((10 + 20 + 50 + 60 + 2) / 4, (30 + 41 + 70 + 80 + 2) / 4);
        assert_eq!(linear(&src, 4, 2, 2, 1), vec![a, a, a, b, b, b]);
    }

    #[test]
    fn same_size_is_the_identity() {
        let src: Vec<u8> = (0..5 * 3 * 3).map(|i| (i * 7 % 256) as u8).collect();
        assert_eq!(linear(&src, 5, 3, 5, 3), src);
    }

    #[test]
    fn an_upscale_rounds_to_bytes() {
        // Two pixels 0 and 1 upscaled to four: 0.25 and 0.75 become 0 and 1.
        let src = [0u8, 0, 0, 1, 1, 1];
        let reds: Vec<u8> = linear(&src, 2, 1, 4, 1).into_iter().step_by(3).collect();
        assert_eq!(reds, vec![0, 0, 1, 1]);
    }
}
