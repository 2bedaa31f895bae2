//! One PNG image as the network's input: raw 0..=255 values in CHW order,
//! as the data readers give them (before normalisation).
//!
//! Every PNG colour type and bit depth is decoded to 8 bits per sample
//! (`png`'s EXPAND and STRIP_16: palettes and low-bit grey expanded, 16-bit
//! samples cut to their high byte). Alpha is dropped. A colour image given
//! to a one-channel network becomes grey as `0.299 R + 0.587 G + 0.114 B`
//! (ITU-R BT.601, PIL's `"L"` conversion); a grey image given to a
//! three-channel network is repeated in R, G and B.

use crate::error::{Error, Result};
use std::path::Path;

/// Read `path` as `channels` (1 or 3) planes: `(values, height, width)`.
pub fn read_png(path: &Path, channels: usize) -> Result<(Vec<f32>, usize, usize)> {
    let bad = |msg: String| Error::Format {
        path: path.to_path_buf(),
        msg,
    };
    if channels != 1 && channels != 3 {
        return Err(bad(format!(
            "images for a {channels}-channel network cannot be read from PNG (1 or 3 channels)"
        )));
    }
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder
        .read_info()
        .map_err(|e| bad(format!("not a readable PNG: {e}")))?;
    let mut buf = vec![0u8; reader.output_buffer_size()];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| bad(format!("not a readable PNG: {e}")))?;
    let (h, w) = (info.height as usize, info.width as usize);
    let samples = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        // EXPAND turns palettes into RGB(A)
        png::ColorType::Indexed => {
            return Err(bad("an indexed PNG that did not expand".into()));
        }
    };
    let px = &buf[..info.buffer_size()];
    let plane = h * w;
    let mut out = vec![0f32; channels * plane];
    for (i, p) in px.chunks_exact(samples).take(plane).enumerate() {
        let (r, g, b) = if samples >= 3 {
            (p[0] as f32, p[1] as f32, p[2] as f32)
        } else {
            (p[0] as f32, p[0] as f32, p[0] as f32)
        };
        if channels == 1 {
            out[i] = if samples >= 3 {
                0.299 * r + 0.587 * g + 0.114 * b
            } else {
                r
            };
        } else {
            out[i] = r;
            out[plane + i] = g;
            out[2 * plane + i] = b;
        }
    }
    Ok((out, h, w))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_png(path: &Path, w: u32, h: u32, color: png::ColorType, data: &[u8]) {
        let f = std::fs::File::create(path).unwrap();
        let mut e = png::Encoder::new(f, w, h);
        e.set_color(color);
        e.set_depth(png::BitDepth::Eight);
        e.write_header().unwrap().write_image_data(data).unwrap();
    }

    #[test]
    fn grey_rgb_and_rgba_to_one_or_three_planes() {
        let dir = std::env::temp_dir().join(format!("resgrad-png-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let grey = dir.join("g.png");
        write_png(&grey, 2, 1, png::ColorType::Grayscale, &[10, 200]);
        assert_eq!(read_png(&grey, 1).unwrap(), (vec![10.0, 200.0], 1, 2));
        assert_eq!(
            read_png(&grey, 3).unwrap().0,
            vec![10.0, 200.0, 10.0, 200.0, 10.0, 200.0]
        );
        let rgba = dir.join("c.png");
        write_png(
            &rgba,
            1,
            2,
            png::ColorType::Rgba,
            &[255, 0, 0, 9, 0, 0, 255, 9],
        );
        let (v, h, w) = read_png(&rgba, 3).unwrap();
        assert_eq!((h, w), (2, 1));
        assert_eq!(v, vec![255.0, 0.0, 0.0, 0.0, 0.0, 255.0]);
        let (v, _, _) = read_png(&rgba, 1).unwrap();
        assert!((v[0] - 0.299 * 255.0).abs() < 1e-3 && (v[1] - 0.114 * 255.0).abs() < 1e-3);
        // not a PNG, and a channel count PNG cannot give
        std::fs::write(dir.join("x.png"), b"not a png").unwrap();
        let e = read_png(&dir.join("x.png"), 1).unwrap_err().to_string();
        assert!(
            e.contains("x.png") && e.contains("not a readable PNG"),
            "{e}"
        );
        assert!(read_png(&grey, 2).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
