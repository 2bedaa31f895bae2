//! The paper's training augmentation (He et al. 2016, sec. 4.2, after Lee
//! et al.): pad each side with `pad` zeros, take a random HxW crop, flip
//! horizontally with probability 1/2. Applied after normalisation, so the
//! padded zeros are the (train) channel mean.

use rand::Rng;

/// Augmentation settings. `pad = 0` turns cropping off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Augment {
    /// Zero padding on each side before the random crop back to HxW.
    pub pad: usize,
    /// Random horizontal flip with probability 1/2.
    pub flip: bool,
}

impl Augment {
    /// The CIFAR recipe: pad 4, random 32x32 crop, random flip.
    pub fn cifar() -> Augment {
        Augment { pad: 4, flip: true }
    }

    /// For digits: small shifts (pad 2), no flip (a flipped digit is a
    /// different glyph).
    pub fn digits() -> Augment {
        Augment {
            pad: 2,
            flip: false,
        }
    }

    /// No augmentation.
    pub fn none() -> Augment {
        Augment {
            pad: 0,
            flip: false,
        }
    }

    /// Whether this does anything.
    pub fn is_identity(&self) -> bool {
        self.pad == 0 && !self.flip
    }

    /// Write a randomly augmented copy of `src` (c, h, w) into `out` (same
    /// size): offsets `dy, dx` uniform in `0..=2*pad`, then a flip with
    /// probability 1/2 if enabled. Draws the same number of random values
    /// whatever the settings' outcome, so streams stay aligned.
    pub fn apply<R: Rng + ?Sized>(
        &self,
        src: &[f32],
        c: usize,
        h: usize,
        w: usize,
        rng: &mut R,
        out: &mut [f32],
    ) {
        let dy = rng.gen_range(0..=2 * self.pad);
        let dx = rng.gen_range(0..=2 * self.pad);
        let flip = self.flip && rng.gen::<bool>();
        pad_crop_flip(src, c, h, w, self.pad, dy, dx, flip, out);
    }
}

/// `out[ch][y][x] = padded[ch][y + dy][x + dx]` where `padded` is `src`
/// surrounded by `pad` zeros on each side; `dy, dx` in `0..=2*pad`
/// (`dy = dx = pad` is the identity). Offsets beyond `2*pad` are clamped.
#[allow(clippy::too_many_arguments)]
pub fn pad_crop_into(
    src: &[f32],
    c: usize,
    h: usize,
    w: usize,
    pad: usize,
    dy: usize,
    dx: usize,
    out: &mut [f32],
) {
    pad_crop_flip(src, c, h, w, pad, dy, dx, false, out);
}

/// Mirror each row of `src` (c, h, w) into `out`.
pub fn hflip_into(src: &[f32], c: usize, h: usize, w: usize, out: &mut [f32]) {
    pad_crop_flip(src, c, h, w, 0, 0, 0, true, out);
}

/// Crop (with zero padding) and optionally mirror, in one pass.
#[allow(clippy::too_many_arguments)]
fn pad_crop_flip(
    src: &[f32],
    c: usize,
    h: usize,
    w: usize,
    pad: usize,
    dy: usize,
    dx: usize,
    flip: bool,
    out: &mut [f32],
) {
    let hw = h * w;
    debug_assert!(src.len() >= c * hw && out.len() >= c * hw);
    let (dy, dx) = (dy.min(2 * pad), dx.min(2 * pad));
    // source column of output column x is x + dx - pad (if inside 0..w)
    let sx0 = dx as isize - pad as isize;
    let sy0 = dy as isize - pad as isize;
    // output columns that map inside the source: x in [x_lo, x_hi)
    let x_lo = (-sx0).clamp(0, w as isize) as usize;
    let x_hi = (w as isize - sx0).clamp(0, w as isize) as usize;
    for ch in 0..c {
        let sp = &src[ch * hw..(ch + 1) * hw];
        let op = &mut out[ch * hw..(ch + 1) * hw];
        for y in 0..h {
            let orow = &mut op[y * w..(y + 1) * w];
            let sy = y as isize + sy0;
            if sy < 0 || sy >= h as isize || x_lo >= x_hi {
                orow.fill(0.0);
                continue;
            }
            let srow = &sp[sy as usize * w..(sy as usize + 1) * w];
            let s_lo = (x_lo as isize + sx0) as usize;
            let s_hi = (x_hi as isize + sx0) as usize;
            if !flip {
                orow[..x_lo].fill(0.0);
                orow[x_lo..x_hi].copy_from_slice(&srow[s_lo..s_hi]);
                orow[x_hi..].fill(0.0);
            } else {
                // unflipped row r[x]; flipped out[x] = r[w-1-x]
                orow[w - x_lo..].fill(0.0);
                orow[..w - x_hi].fill(0.0);
                for (o, s) in orow[w - x_hi..w - x_lo]
                    .iter_mut()
                    .zip(srow[s_lo..s_hi].iter().rev())
                {
                    *o = *s;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn img(c: usize, h: usize, w: usize) -> Vec<f32> {
        (0..c * h * w).map(|i| i as f32 + 1.0).collect()
    }

    #[test]
    fn flip_twice_is_identity() {
        let (c, h, w) = (3, 5, 7);
        let a = img(c, h, w);
        let mut b = vec![0.0; a.len()];
        let mut cc = vec![0.0; a.len()];
        hflip_into(&a, c, h, w, &mut b);
        assert_ne!(a, b);
        assert_eq!(b[0], a[w - 1]);
        hflip_into(&b, c, h, w, &mut cc);
        assert_eq!(a, cc);
    }

    #[test]
    fn crop_at_offset_pad_is_identity() {
        let (c, h, w) = (2, 6, 6);
        let a = img(c, h, w);
        let mut b = vec![-1.0; a.len()];
        pad_crop_into(&a, c, h, w, 4, 4, 4, &mut b);
        assert_eq!(a, b);
        pad_crop_into(&a, c, h, w, 0, 0, 0, &mut b);
        assert_eq!(a, b);
    }

    #[test]
    fn pad_zeros_appear_and_shift_is_exact() {
        let (c, h, w) = (2, 8, 8);
        let a = img(c, h, w);
        let mut b = vec![-1.0; a.len()];
        // dy = dx = 0: content moves down-right by 4, zeros top/left
        pad_crop_into(&a, c, h, w, 4, 0, 0, &mut b);
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    let v = b[ch * 64 + y * 8 + x];
                    if y < 4 || x < 4 {
                        assert_eq!(v, 0.0);
                    } else {
                        assert_eq!(v, a[ch * 64 + (y - 4) * 8 + (x - 4)]);
                    }
                }
            }
        }
        // dy = 8, dx = 5: content moves up by 4 and left by 1
        pad_crop_into(&a, c, h, w, 4, 8, 5, &mut b);
        for y in 0..h {
            for x in 0..w {
                let v = b[y * 8 + x];
                if y >= 4 || x >= 7 {
                    assert_eq!(v, 0.0, "({y},{x})");
                } else {
                    assert_eq!(v, a[(y + 4) * 8 + (x + 1)]);
                }
            }
        }
        // pad larger than the image: all zeros at the extreme offset
        pad_crop_into(&a, c, h, w, 10, 0, 0, &mut b);
        assert!(b.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn flip_with_crop_matches_crop_then_flip() {
        let (c, h, w) = (3, 5, 6);
        let a = img(c, h, w);
        for dy in 0..=4 {
            for dx in 0..=4 {
                let mut cropped = vec![0.0; a.len()];
                let mut want = vec![0.0; a.len()];
                let mut got = vec![0.0; a.len()];
                pad_crop_into(&a, c, h, w, 2, dy, dx, &mut cropped);
                hflip_into(&cropped, c, h, w, &mut want);
                pad_crop_flip(&a, c, h, w, 2, dy, dx, true, &mut got);
                assert_eq!(want, got, "dy {dy} dx {dx}");
            }
        }
    }

    #[test]
    fn random_augment_uses_all_offsets_and_both_flips() {
        let (c, h, w) = (1, 4, 4);
        let a = img(c, h, w);
        let mut out = vec![0.0; a.len()];
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2000 {
            Augment::cifar().apply(&a, c, h, w, &mut rng, &mut out);
            seen.insert(out.iter().map(|v| *v as i32).collect::<Vec<_>>());
        }
        // 9 x 9 offsets x 2 flips, all distinct for a 4x4 image with pad 4?
        // Offsets with |shift| >= 4 give all-zero images, so count fewer.
        assert!(seen.len() > 50, "{}", seen.len());
        // digits: never flipped
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        for _ in 0..200 {
            Augment::none().apply(&a, c, h, w, &mut rng, &mut out);
            assert_eq!(out, a);
        }
    }
}
