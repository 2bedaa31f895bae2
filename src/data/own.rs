//! Your own data: an image folder in torchvision's `ImageFolder` layout
//! (`--data folder:DIR`) or raw arrays in a safetensors file
//! (`--data safetensors:FILE`).
//!
//! # Image folder
//!
//! ```text
//! DIR/train/<class>/*.png
//! DIR/test/<class>/*.png
//! ```
//!
//! The classes are the sub-folder names of `train`, sorted by their bytes
//! (label 0 is the first name); `test` must have the same set. Every image
//! is an 8-bit PNG, grey (1 channel) or RGB (3 channels), and all images of
//! both splits have the same size and channel count. Palette, alpha and
//! 16-bit (or 1/2/4-bit) PNGs are refused with the file's name: convert
//! them first (e.g. `convert in.png -alpha off -depth 8 out.png`). Within a
//! class, files are taken in name order; names starting with `.` (such as
//! `.DS_Store`) are skipped; any other entry that is not a `.png` file is
//! an error, as is an empty class or a file directly under `train`/`test`.
//!
//! # Arrays
//!
//! A safetensors file with four tensors: `images` and `labels` (the train
//! split), `test_images` and `test_labels`. Images are **NCHW** (`N,C,H,W`,
//! PyTorch's layout) or `N,H,W` for one channel, dtype `U8` (pixels
//! 0..=255) or `F32` (taken as they are); labels are `N` class indices,
//! dtype `I64` or `U8`. The class count is the largest label plus one. From
//! NumPy: `safetensors.numpy.save_file({"images": x.transpose(0, 3, 1, 2),
//! ...}, "data.safetensors")` for `N,H,W,C` arrays (or save them with
//! `np.savez` and give `npz:FILE`: `super::npz`).
//!
//! Both readers return raw values, as the CIFAR/MNIST readers do; the
//! run normalises per channel with statistics of the training split.

use super::{DataSplit, Dataset};
use crate::error::{Error, Result};
use crate::io::safetensors::{Dtype, SafeTensors};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// The shape of a data set, known without decoding every image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub classes: usize,
    /// training images
    pub train_n: usize,
}

fn format_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// Sorted entries of `dir` whose names do not start with `.`.
fn listing(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(|e| Error::io(dir, e))?;
        if !e.file_name().to_string_lossy().starts_with('.') {
            out.push(e.path());
        }
    }
    out.sort();
    Ok(out)
}

/// The class folders of one split and the PNG files of each class.
fn split_files(root: &Path, split: &str) -> Result<(Vec<String>, Vec<Vec<PathBuf>>)> {
    let dir = root.join(split);
    if !dir.is_dir() {
        return Err(format_err(
            &dir,
            format!("image folder: the {split} split is missing (expected {split}/<class>/*.png)"),
        ));
    }
    let mut names = Vec::new();
    let mut files = Vec::new();
    for class_dir in listing(&dir)? {
        if !class_dir.is_dir() {
            return Err(format_err(
                &class_dir,
                format!("image folder: {split}/ must hold only class folders"),
            ));
        }
        let mut pngs = Vec::new();
        for f in listing(&class_dir)? {
            let is_png = f.extension().is_some_and(|x| x.eq_ignore_ascii_case("png"));
            if !is_png || !f.is_file() {
                return Err(format_err(&f, "image folder: not a .png file"));
            }
            pngs.push(f);
        }
        if pngs.is_empty() {
            return Err(format_err(
                &class_dir,
                "image folder: the class has no images",
            ));
        }
        names.push(
            class_dir
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
        );
        files.push(pngs);
    }
    if names.is_empty() {
        return Err(format_err(
            &dir,
            format!("image folder: no class folders in {split}/"),
        ));
    }
    Ok((names, files))
}

/// Both splits' files, with the class sets checked to agree.
/// Per class, its files.
type ClassFiles = Vec<Vec<PathBuf>>;

fn folder_files(root: &Path) -> Result<(Vec<String>, [ClassFiles; 2])> {
    if !root.is_dir() {
        return Err(format_err(root, "image folder: not a directory"));
    }
    let (train_names, train) = split_files(root, "train")?;
    let (test_names, test) = split_files(root, "test")?;
    if train_names != test_names {
        let only = |a: &[String], b: &[String]| -> Vec<String> {
            a.iter().filter(|x| !b.contains(x)).cloned().collect()
        };
        return Err(format_err(
            root,
            format!(
                "image folder: train and test have different classes (only in train: {:?}; only in test: {:?})",
                only(&train_names, &test_names),
                only(&test_names, &train_names)
            ),
        ));
    }
    if train_names.len() > 256 {
        return Err(format_err(
            root,
            format!("image folder: {} classes (at most 256)", train_names.len()),
        ));
    }
    Ok((train_names, [train, test]))
}

/// Channels, height, width of an 8-bit grey or RGB PNG; the reader is
/// returned ready to decode.
fn png_open(path: &Path) -> Result<(png::Reader<std::io::BufReader<std::fs::File>>, usize)> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut dec = png::Decoder::new(std::io::BufReader::new(f));
    dec.set_transformations(png::Transformations::IDENTITY);
    let reader = dec
        .read_info()
        .map_err(|e| format_err(path, format!("not a readable PNG: {e}")))?;
    let info = reader.info();
    let c = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::Rgb => 3,
        png::ColorType::Indexed => {
            return Err(format_err(
                path,
                "palette PNG: save it as grey or RGB (8-bit)",
            ))
        }
        png::ColorType::GrayscaleAlpha | png::ColorType::Rgba => {
            return Err(format_err(
                path,
                "PNG with an alpha channel: save it as grey or RGB (8-bit)",
            ))
        }
    };
    if info.bit_depth != png::BitDepth::Eight {
        return Err(format_err(
            path,
            format!(
                "{}-bit PNG: only 8-bit images are read",
                info.bit_depth as u8
            ),
        ));
    }
    Ok((reader, c))
}

/// Decode one PNG into `out` as (c, h, w) raw 0..=255 values; checks the
/// geometry is `want`.
fn decode_png(path: &Path, want: (usize, usize, usize), out: &mut [f32]) -> Result<()> {
    let (mut reader, c) = png_open(path)?;
    let (w, h) = {
        let i = reader.info();
        (i.width as usize, i.height as usize)
    };
    if (c, h, w) != want {
        return Err(format_err(
            path,
            format!(
                "image is {c}x{h}x{w} (channels x height x width); the first image is {}x{}x{}: all images must agree",
                want.0, want.1, want.2
            ),
        ));
    }
    let mut buf = vec![0u8; reader.output_buffer_size()];
    let frame = reader
        .next_frame(&mut buf)
        .map_err(|e| format_err(path, format!("corrupt PNG: {e}")))?;
    let line = frame.line_size;
    for y in 0..h {
        let row = &buf[y * line..y * line + w * c];
        for x in 0..w {
            for ch in 0..c {
                out[(ch * h + y) * w + x] = row[x * c + ch] as f32;
            }
        }
    }
    Ok(())
}

/// Shape of an image folder: class folders, the first image's header and
/// the number of training files (images are not decoded).
pub fn folder_geometry(root: &Path) -> Result<Geometry> {
    let (names, [train, _]) = folder_files(root)?;
    let (reader, c) = png_open(&train[0][0])?;
    let i = reader.info();
    Ok(Geometry {
        c,
        h: i.height as usize,
        w: i.width as usize,
        classes: names.len(),
        train_n: train.iter().map(Vec::len).sum(),
    })
}

fn read_folder_split(
    root: &Path,
    split: &str,
    files: &[Vec<PathBuf>],
    geom: (usize, usize, usize),
    classes: usize,
) -> Result<Dataset> {
    let per = geom.0 * geom.1 * geom.2;
    let list: Vec<(&PathBuf, u8)> = files
        .iter()
        .enumerate()
        .flat_map(|(k, fs)| fs.iter().map(move |f| (f, k as u8)))
        .collect();
    let mut images = vec![0f32; list.len() * per];
    images
        .par_chunks_mut(per)
        .zip(list.par_iter())
        .try_for_each(|(out, (f, _))| decode_png(f, geom, out))?;
    let labels = list.iter().map(|(_, l)| *l).collect();
    let name = format!("{}/{split}", root.display());
    Dataset::new(name, images, labels, geom.0, geom.1, geom.2, classes)
}

/// Read an image folder (see the module doc): raw 0..=255 pixels, labels
/// from the sorted class-folder names.
pub fn read_image_folder(root: &Path) -> Result<DataSplit> {
    let (names, [train, test]) = folder_files(root)?;
    let (reader, c) = png_open(&train[0][0])?;
    let geom = (
        c,
        reader.info().height as usize,
        reader.info().width as usize,
    );
    drop(reader);
    let classes = names.len();
    Ok(DataSplit {
        train: read_folder_split(root, "train", &train, geom, classes)?,
        test: read_folder_split(root, "test", &test, geom, classes)?,
    })
}

/// The class names of an image folder (label order).
pub fn folder_classes(root: &Path) -> Result<Vec<String>> {
    Ok(folder_files(root)?.0)
}

/// (n, c, h, w) of an `images` tensor, checked.
fn image_dims(st: &SafeTensors, name: &str) -> Result<(usize, usize, usize, usize)> {
    let t = st.tensor(name).map_err(|_| {
        format_err(
            &st.origin,
            format!(
                "arrays: no tensor {name:?} (expected images, labels, test_images, test_labels)"
            ),
        )
    })?;
    let dims = match t.shape[..] {
        [n, c, h, w] => (n, c, h, w),
        [n, h, w] => (n, 1, h, w),
        _ => {
            return Err(format_err(
                &st.origin,
                format!(
                    "arrays: {name} has shape {:?}; expected N,C,H,W (or N,H,W for one channel)",
                    t.shape
                ),
            ))
        }
    };
    if dims.0 == 0 || dims.1 * dims.2 * dims.3 == 0 {
        return Err(format_err(
            &st.origin,
            format!("arrays: {name} has shape {:?}: no images", t.shape),
        ));
    }
    Ok(dims)
}

fn image_values(st: &SafeTensors, name: &str) -> Result<Vec<f32>> {
    let t = st.tensor(name)?;
    match t.dtype {
        Dtype::U8 => Ok(t.bytes.iter().map(|&b| b as f32).collect()),
        Dtype::F32 => {
            let v: Vec<f32> = t
                .bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(format_err(
                    &st.origin,
                    format!("arrays: {name} has a non-finite value at flat index {i}"),
                ));
            }
            Ok(v)
        }
        d => Err(format_err(
            &st.origin,
            format!("arrays: {name} has dtype {d}; expected U8 or F32"),
        )),
    }
}

fn label_values(st: &SafeTensors, name: &str, n: usize) -> Result<Vec<i64>> {
    let t = st
        .tensor(name)
        .map_err(|_| format_err(&st.origin, format!("arrays: no tensor {name:?}")))?;
    if t.shape != [n] {
        return Err(format_err(
            &st.origin,
            format!(
                "arrays: {name} has shape {:?}; expected [{n}] (one label per image)",
                t.shape
            ),
        ));
    }
    let v: Vec<i64> = match t.dtype {
        Dtype::U8 => t.bytes.iter().map(|&b| b as i64).collect(),
        Dtype::I64 => st.get_i64(name)?.1,
        d => {
            return Err(format_err(
                &st.origin,
                format!("arrays: {name} has dtype {d}; expected I64 or U8"),
            ))
        }
    };
    if let Some((i, l)) = v.iter().enumerate().find(|(_, &l)| !(0..256).contains(&l)) {
        return Err(format_err(
            &st.origin,
            format!("arrays: {name}[{i}] = {l} is not a class index in 0..=255"),
        ));
    }
    Ok(v)
}

/// Shape of an arrays file (reads the file, decodes only the labels).
pub fn arrays_geometry(file: &Path) -> Result<Geometry> {
    arrays_geometry_of(&SafeTensors::read(file)?)
}

fn arrays_geometry_of(st: &SafeTensors) -> Result<Geometry> {
    let file = &st.origin;
    let (n, c, h, w) = image_dims(st, "images")?;
    let (tn, tc, th, tw) = image_dims(st, "test_images")?;
    if (c, h, w) != (tc, th, tw) {
        return Err(format_err(
            file,
            format!("arrays: images are {c}x{h}x{w}, test_images {tc}x{th}x{tw}"),
        ));
    }
    let max = label_values(st, "labels", n)?
        .into_iter()
        .chain(label_values(st, "test_labels", tn)?)
        .max()
        .unwrap_or(0);
    Ok(Geometry {
        c,
        h,
        w,
        classes: max as usize + 1,
        train_n: n,
    })
}

/// Read an arrays file (see the module doc).
pub fn read_arrays(file: &Path) -> Result<DataSplit> {
    let st = SafeTensors::read(file)?;
    let g = arrays_geometry_of(&st)?;
    let split = |img: &str, lab: &str, part: &str| -> Result<Dataset> {
        let (n, c, h, w) = image_dims(&st, img)?;
        let labels = label_values(&st, lab, n)?
            .into_iter()
            .map(|l| l as u8)
            .collect();
        let name = format!("{}/{part}", file.display());
        Dataset::new(name, image_values(&st, img)?, labels, c, h, w, g.classes)
    };
    Ok(DataSplit {
        train: split("images", "labels", "train")?,
        test: split("test_images", "test_labels", "test")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::testutil::TempDir;

    /// Write an 8-bit PNG of `color` (bytes per pixel from the colour type).
    fn write_png(path: &Path, w: u32, h: u32, color: png::ColorType, depth: png::BitDepth) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let f = std::fs::File::create(path).unwrap();
        let mut enc = png::Encoder::new(f, w, h);
        enc.set_color(color);
        enc.set_depth(depth);
        if color == png::ColorType::Indexed {
            enc.set_palette(vec![0u8, 0, 0, 255, 255, 255]);
        }
        let mut wr = enc.write_header().unwrap();
        let bits = depth as usize * color.samples();
        let row = (w as usize * bits).div_ceil(8);
        let data: Vec<u8> = (0..row * h as usize).map(|i| (i % 7) as u8).collect();
        wr.write_image_data(&data).unwrap();
    }

    fn grey(path: &Path, w: u32, h: u32) {
        write_png(path, w, h, png::ColorType::Grayscale, png::BitDepth::Eight);
    }

    /// train: a (2 images), b (1); test: a (1), b (1); 4x3 grey.
    fn good_folder() -> TempDir {
        let t = TempDir::new("folder");
        for f in [
            "train/a/1.png",
            "train/a/2.png",
            "train/b/x.png",
            "test/a/1.png",
            "test/b/1.png",
        ] {
            grey(&t.path().join(f), 4, 3);
        }
        t
    }

    fn msg(e: Error) -> String {
        assert!(
            matches!(e, Error::Format { .. } | Error::Io { .. }),
            "{e:?}"
        );
        e.to_string()
    }

    #[test]
    fn reads_a_grey_folder_with_sorted_classes() {
        let t = good_folder();
        std::fs::write(t.path().join("train/a/.DS_Store"), b"junk").unwrap();
        let s = read_image_folder(t.path()).unwrap();
        assert_eq!((s.train.n, s.train.c, s.train.h, s.train.w), (3, 1, 3, 4));
        assert_eq!(s.train.labels, vec![0, 0, 1]);
        assert_eq!(s.test.labels, vec![0, 1]);
        assert_eq!(s.train.classes, 2);
        // pixel (y=1, x=2) of a grey 4-wide image is byte 1*4+2 = 6 -> 6 % 7
        assert_eq!(s.train.image(0)[6], 6.0);
        assert_eq!(folder_classes(t.path()).unwrap(), vec!["a", "b"]);
        let g = folder_geometry(t.path()).unwrap();
        assert_eq!(
            g,
            Geometry {
                c: 1,
                h: 3,
                w: 4,
                classes: 2,
                train_n: 3
            }
        );
    }

    #[test]
    fn rgb_is_planar_chw() {
        let t = TempDir::new("folder-rgb");
        for f in ["train/a/1.png", "test/a/1.png"] {
            write_png(
                &t.path().join(f),
                2,
                2,
                png::ColorType::Rgb,
                png::BitDepth::Eight,
            );
        }
        let s = read_image_folder(t.path()).unwrap();
        assert_eq!(s.train.c, 3);
        // interleaved bytes i % 7: pixel 0 = (0,1,2), pixel 1 = (3,4,5), pixel 2 = (6,0,1)
        assert_eq!(
            s.train.image(0),
            &[0., 3., 6., 2., 1., 4., 0., 3., 2., 5., 1., 4.]
        );
    }

    #[test]
    fn missing_split_is_named() {
        let t = good_folder();
        std::fs::remove_dir_all(t.path().join("test")).unwrap();
        let m = msg(read_image_folder(t.path()).unwrap_err());
        assert!(m.contains("test split is missing"), "{m}");
    }

    #[test]
    fn no_classes_and_empty_class() {
        let t = TempDir::new("folder-empty");
        std::fs::create_dir_all(t.path().join("train")).unwrap();
        std::fs::create_dir_all(t.path().join("test")).unwrap();
        let m = msg(read_image_folder(t.path()).unwrap_err());
        assert!(m.contains("no class folders in train/"), "{m}");
        let t = good_folder();
        std::fs::create_dir_all(t.path().join("train/c")).unwrap();
        let m = msg(read_image_folder(t.path()).unwrap_err());
        assert!(m.contains("train/c") && m.contains("no images"), "{m}");
    }

    #[test]
    fn class_sets_must_agree() {
        let t = good_folder();
        grey(&t.path().join("test/zebra/1.png"), 4, 3);
        let m = msg(read_image_folder(t.path()).unwrap_err());
        assert!(m.contains("only in test: [\"zebra\"]"), "{m}");
    }

    #[test]
    fn mixed_sizes_name_the_file() {
        let t = good_folder();
        grey(&t.path().join("test/b/big.png"), 5, 3);
        let m = msg(read_image_folder(t.path()).unwrap_err());
        assert!(m.contains("test/b/big.png") && m.contains("1x3x5"), "{m}");
        let t = good_folder();
        write_png(
            &t.path().join("train/b/rgb.png"),
            4,
            3,
            png::ColorType::Rgb,
            png::BitDepth::Eight,
        );
        let m = msg(read_image_folder(t.path()).unwrap_err());
        assert!(m.contains("train/b/rgb.png") && m.contains("3x3x4"), "{m}");
    }

    #[test]
    fn non_png_and_corrupt_files_are_named() {
        let t = good_folder();
        std::fs::write(t.path().join("train/a/notes.txt"), b"hello").unwrap();
        let m = msg(read_image_folder(t.path()).unwrap_err());
        assert!(
            m.contains("train/a/notes.txt") && m.contains("not a .png"),
            "{m}"
        );
        let t = good_folder();
        std::fs::write(t.path().join("train/a/fake.png"), b"GIF89a....").unwrap();
        let m = msg(read_image_folder(t.path()).unwrap_err());
        assert!(
            m.contains("train/a/fake.png") && m.contains("not a readable PNG"),
            "{m}"
        );
        // a valid header with the image data cut off
        let t = good_folder();
        let p = t.path().join("train/b/x.png");
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 20]).unwrap();
        let m = msg(read_image_folder(t.path()).unwrap_err());
        assert!(m.contains("train/b/x.png"), "{m}");
        let t = good_folder();
        std::fs::write(t.path().join("train/stray.png"), b"x").unwrap();
        let m = msg(read_image_folder(t.path()).unwrap_err());
        assert!(
            m.contains("train/stray.png") && m.contains("only class folders"),
            "{m}"
        );
    }

    #[test]
    fn unsupported_png_kinds_are_refused() {
        for (color, depth, want) in [
            (png::ColorType::Grayscale, png::BitDepth::Sixteen, "16-bit"),
            (png::ColorType::Grayscale, png::BitDepth::Four, "4-bit"),
            (png::ColorType::Indexed, png::BitDepth::Eight, "palette"),
            (png::ColorType::Rgba, png::BitDepth::Eight, "alpha"),
            (
                png::ColorType::GrayscaleAlpha,
                png::BitDepth::Eight,
                "alpha",
            ),
        ] {
            let t = good_folder();
            write_png(&t.path().join("test/a/odd.png"), 4, 3, color, depth);
            let m = msg(read_image_folder(t.path()).unwrap_err());
            assert!(
                m.contains("test/a/odd.png") && m.contains(want),
                "{want}: {m}"
            );
        }
    }

    fn arrays_file(dir: &Path, tweak: impl FnOnce(&mut SafeTensors)) -> PathBuf {
        use crate::io::safetensors::NamedTensor;
        let mut st = SafeTensors::new();
        let t = |dtype, shape: &[usize], bytes: Vec<u8>| NamedTensor {
            dtype,
            shape: shape.to_vec(),
            bytes,
        };
        st.tensors.insert(
            "images".into(),
            t(Dtype::U8, &[3, 1, 2, 2], (0..12).collect()),
        );
        st.tensors
            .insert("labels".into(), t(Dtype::U8, &[3], vec![0, 2, 1]));
        let f: Vec<u8> = [0.5f32, 1.0, 2.0, 4.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        st.tensors
            .insert("test_images".into(), t(Dtype::F32, &[1, 2, 2], f));
        st.tensors.insert(
            "test_labels".into(),
            t(Dtype::I64, &[1], 1i64.to_le_bytes().to_vec()),
        );
        tweak(&mut st);
        let p = dir.join("data.safetensors");
        st.write_atomic(&p).unwrap();
        p
    }

    #[test]
    fn reads_arrays_u8_and_f32() {
        let t = TempDir::new("arrays");
        let p = arrays_file(t.path(), |_| {});
        let s = read_arrays(&p).unwrap();
        assert_eq!(
            (s.train.n, s.train.c, s.train.h, s.train.w, s.train.classes),
            (3, 1, 2, 2, 3)
        );
        assert_eq!(s.train.image(2), &[8., 9., 10., 11.]);
        assert_eq!(s.train.labels, vec![0, 2, 1]);
        assert_eq!(s.test.images, vec![0.5, 1.0, 2.0, 4.0]);
        assert_eq!(arrays_geometry(&p).unwrap().train_n, 3);
    }

    #[test]
    fn malformed_arrays_name_the_problem() {
        let t = TempDir::new("arrays-bad");
        type Tweak = Box<dyn FnOnce(&mut SafeTensors)>;
        let cases: Vec<(Tweak, &str)> = vec![
            (
                Box::new(|st: &mut SafeTensors| {
                    st.tensors.remove("test_labels");
                }),
                "test_labels",
            ),
            (
                Box::new(|st: &mut SafeTensors| {
                    st.tensors.get_mut("labels").unwrap().shape = vec![1, 3];
                }),
                "expected [3]",
            ),
            (
                Box::new(|st: &mut SafeTensors| {
                    st.tensors.get_mut("images").unwrap().shape = vec![12];
                }),
                "expected N,C,H,W",
            ),
            (
                Box::new(|st: &mut SafeTensors| {
                    st.tensors.get_mut("test_images").unwrap().shape = vec![1, 4, 1];
                }),
                "test_images 1x4x1",
            ),
        ];
        for (tweak, want) in cases {
            let p = arrays_file(t.path(), tweak);
            let m = msg(read_arrays(&p).unwrap_err());
            assert!(
                m.contains("data.safetensors") && m.contains(want),
                "{want}: {m}"
            );
        }
    }
}
