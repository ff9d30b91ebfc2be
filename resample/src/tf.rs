//! `tf.image.resize(src, [h, w], method="bilinear")` (`antialias=False`, the default): the
//! `ResizeBilinear` kernel with half-pixel centres. `f32` arithmetic throughout, the scale
//! `in as f32 / out as f32`, the blend `top + (bottom - top) * y_lerp` of two horizontal
//! blends, and a float result that is never rounded back to 8 bits.

/// One axis of TensorFlow's bilinear resize: lower and upper source index and the weight of the
/// upper one.
fn tf_axis(src: u32, dst: u32) -> Vec<(usize, usize, f32)> {
    let scale = src as f32 / dst as f32;
    (0..dst)
        .map(|d| {
            let v = (d as f32 + 0.5) * scale - 0.5;
            let floor = v.floor();
            let lower = (floor as i64).max(0) as usize;
            let upper = (v.ceil() as i64).min(i64::from(src) - 1).max(0) as usize;
            (lower, upper, v - floor)
        })
        .collect()
}

/// `tf.image.resize(src, [dst_h, dst_w], method="bilinear")` on packed 8-bit RGB: packed `f32` RGB.
pub fn bilinear(src: &[u8], w: u32, h: u32, dst_w: u32, dst_h: u32) -> Vec<f32> {
    if w == 0 || h == 0 || dst_w == 0 || dst_h == 0 || src.len() < w as usize * h as usize * 3 {
        return Vec::new();
    }
    const CN: usize = 3;
    let w = w as usize;
    let cols = tf_axis(w as u32, dst_w);
    let rows = tf_axis(h, dst_h);
    let px = |y: usize, x: usize, c: usize| f32::from(src[(y * w + x) * CN + c]);
    let mut out = Vec::with_capacity(cols.len() * rows.len() * CN);
    for &(y0, y1, ylerp) in &rows {
        for &(x0, x1, xlerp) in &cols {
            for c in 0..CN {
                let (tl, tr, bl, br) = (px(y0, x0, c), px(y0, x1, c), px(y1, x0, c), px(y1, x1, c));
                let top = tl + (tr - tl) * xlerp;
                let bottom = bl + (br - bl) * xlerp;
                out.push(top + (bottom - top) * ylerp);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_is_the_identity() {
        let src: Vec<u8> = (0..5 * 3 * 3).map(|i| (i * 7 % 256) as u8).collect();
        let f: Vec<f32> = src.iter().map(|&v| f32::from(v)).collect();
        assert_eq!(bilinear(&src, 5, 3, 5, 3), f);
    }

    #[test]
    fn an_upscale_keeps_its_fractions() {
        // Two pixels 0 and 1 upscaled to four: 0.25 and 0.75 stay.
        let src = [0u8, 0, 0, 1, 1, 1];
        let reds: Vec<f32> = bilinear(&src, 2, 1, 4, 1).into_iter().step_by(3).collect();
        assert_eq!(reds, vec![0.0, 0.25, 0.75, 1.0]);
    }
}
