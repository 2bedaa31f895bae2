//! `resgrad train --data folder:DIR`, `--data safetensors:FILE` and
//! `--data npz:FILE` on tiny
//! generated data sets: training runs end to end, the geometry comes from
//! the data, a spec that does not fit the data is exit 2 naming both.

mod common;

use common::{bin, metrics_rows, run_ok, TempDir};
use std::path::Path;

/// Two classes of 8x8 images: class `dark` near 40, class `light` near 200,
/// with a deterministic texture; `c` channels (1 or 3).
fn make_folder(root: &Path, c: usize) {
    let color = if c == 1 {
        png::ColorType::Grayscale
    } else {
        png::ColorType::Rgb
    };
    for (split, n) in [("train", 12), ("test", 4)] {
        for (k, class) in ["dark", "light"].iter().enumerate() {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..n {
                let f = std::fs::File::create(dir.join(format!("{i:03}.png"))).unwrap();
                let mut enc = png::Encoder::new(f, 8, 8);
                enc.set_color(color);
                enc.set_depth(png::BitDepth::Eight);
                let base = if k == 0 { 40 } else { 200 };
                let px: Vec<u8> = (0..64 * c)
                    .map(|j| (base + (j * 7 + i * 13) % 31) as u8)
                    .collect();
                enc.write_header().unwrap().write_image_data(&px).unwrap();
            }
        }
    }
}

#[test]
fn trains_an_mlp_on_a_grey_image_folder() {
    let t = TempDir::new("own-folder");
    let data = t.join("digits");
    make_folder(&data, 1);
    let out = t.join("run");
    let src = format!("folder:{}", data.display());
    run_ok(
        &[
            "train",
            "--arch",
            "mlp",
            "--hidden",
            "16",
            "--units",
            "2",
            "--data",
            &src,
            "--iters",
            "6",
            "--batch",
            "4",
            "--eval-every",
            "3",
            "--quiet",
        ],
        &out,
    );
    let rows = metrics_rows(&out);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[1][0], "6");
    let cfg = std::fs::read_to_string(out.join("config.json")).unwrap();
    assert!(cfg.contains(&format!("\"data\": \"{src}\"")), "{cfg}");
    // the geometry came from the images: 8x8 grey = 64 features, 2 classes
    assert!(
        cfg.contains("\"in_features\": 64") && cfg.contains("\"classes\": 2"),
        "{cfg}"
    );
    assert!(out.join("weights.safetensors").exists());
}

#[test]
fn trains_a_conv_net_on_an_rgb_image_folder() {
    let t = TempDir::new("own-folder-rgb");
    let data = t.join("rgb");
    make_folder(&data, 3);
    let out = t.join("run");
    let src = format!("folder:{}", data.display());
    run_ok(
        &[
            "train", "--depth", "8", "--width", "4", "--data", &src, "--iters", "3", "--batch",
            "4", "--quiet",
        ],
        &out,
    );
    assert_eq!(metrics_rows(&out).last().unwrap()[0], "3");
    let cfg = std::fs::read_to_string(out.join("config.json")).unwrap();
    assert!(cfg.contains("\"in_channels\": 3"), "{cfg}");
}

#[test]
fn a_spec_that_does_not_fit_the_data_is_exit_2() {
    let t = TempDir::new("own-folder-spec");
    let data = t.join("grey");
    make_folder(&data, 1);
    let spec = t.join("spec.json");
    std::fs::write(
        &spec,
        r#"{"arch": "cifar", "depth": 8, "block": "basic", "unit": "full_preact",
            "shortcut": {"kind": "identity"}, "downsample": "B", "width": 4,
            "classes": 2, "in_channels": 3}"#,
    )
    .unwrap();
    let o = bin()
        .args(["train", "--spec"])
        .arg(&spec)
        .arg("--data")
        .arg(format!("folder:{}", data.display()))
        .args(["--iters", "2", "--batch", "4", "--quiet", "--out"])
        .arg(t.join("run"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("1x8x8") && err.contains("in_channels 3"),
        "{err}"
    );
}

#[test]
fn a_broken_folder_is_exit_2_naming_the_file() {
    let t = TempDir::new("own-folder-broken");
    let data = t.join("d");
    make_folder(&data, 1);
    std::fs::write(data.join("test/light/002.png"), b"not a png").unwrap();
    let o = bin()
        .arg("train")
        .arg("--data")
        .arg(format!("folder:{}", data.display()))
        .args([
            "--arch", "mlp", "--iters", "2", "--batch", "4", "--quiet", "--out",
        ])
        .arg(t.join("run"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("test/light/002.png"), "{err}");
}

#[test]
fn trains_on_arrays_in_a_safetensors_file() {
    use resgrad::io::safetensors::{Dtype, NamedTensor, SafeTensors};
    let t = TempDir::new("own-arrays");
    let mut st = SafeTensors::new();
    let mk = |dtype, shape: Vec<usize>, bytes| NamedTensor {
        dtype,
        shape,
        bytes,
    };
    let imgs = |n: usize| -> Vec<u8> { (0..n * 36).map(|i| ((i * 37) % 251) as u8).collect() };
    let labels = |n: usize| -> Vec<u8> { (0..n).map(|i| (i % 3) as u8).collect() };
    st.tensors
        .insert("images".into(), mk(Dtype::U8, vec![24, 1, 6, 6], imgs(24)));
    st.tensors
        .insert("labels".into(), mk(Dtype::U8, vec![24], labels(24)));
    st.tensors
        .insert("test_images".into(), mk(Dtype::U8, vec![6, 6, 6], imgs(6)));
    st.tensors
        .insert("test_labels".into(), mk(Dtype::U8, vec![6], labels(6)));
    let file = t.join("arrays.safetensors");
    st.write_atomic(&file).unwrap();
    let out = t.join("run");
    run_ok(
        &[
            "train",
            "--arch",
            "mlp",
            "--hidden",
            "8",
            "--units",
            "2",
            "--data",
            &format!("safetensors:{}", file.display()),
            "--epochs",
            "2",
            "--batch",
            "8",
            "--quiet",
        ],
        &out,
    );
    // 24 images / batch 8 = 3 iterations an epoch, one evaluation each
    let rows = metrics_rows(&out);
    assert_eq!(
        rows.iter().map(|r| r[0].as_str()).collect::<Vec<_>>(),
        ["3", "6"]
    );
    let cfg = std::fs::read_to_string(out.join("config.json")).unwrap();
    assert!(
        cfg.contains("\"in_features\": 36") && cfg.contains("\"classes\": 3"),
        "{cfg}"
    );
}

#[test]
fn reads_npz_in_each_layout_and_dtype_alike() {
    use common::npz::{f32_bytes, npy, rgb_members, write_npz};
    let t = TempDir::new("own-npz-layouts");
    let m = rgb_members(8);
    // as np.savez writes it (stored) and as np.savez_compressed does
    let stored = t.join("stored.npz");
    write_npz(&stored, &m, false);
    let deflated = t.join("deflated.npz");
    write_npz(&deflated, &m, true);
    let want = resgrad::data::read_npz(&stored).unwrap();
    assert_eq!(want.train.n, 8);
    assert_eq!((want.train.c, want.train.h, want.train.w), (3, 6, 6));
    assert_eq!(want.train.classes, 2);
    // planar: image 0's red plane is its every third byte
    let Some((_, x)) = m.iter().find(|(k, _)| *k == "x_train") else {
        panic!()
    };
    let raw = &x[x.len() - 8 * 108..];
    let red: Vec<f32> = raw[..108].iter().step_by(3).map(|&b| b as f32).collect();
    assert_eq!(&want.train.images[..36], &red[..]);
    let got = resgrad::data::read_npz(&deflated).unwrap();
    assert_eq!(got.train.images, want.train.images);
    assert_eq!(got.test.labels, want.test.labels);
    // N,C,H,W float32 (PyTorch's layout) and int64 labels: the same data set
    let nchw = |n: usize, split: &resgrad::data::Dataset| {
        npy("<f4", &[n, 3, 6, 6], &f32_bytes(&split.images))
    };
    let labels64 = |split: &resgrad::data::Dataset| -> Vec<u8> {
        split
            .labels
            .iter()
            .flat_map(|&l| (l as i64).to_le_bytes())
            .collect()
    };
    let torch = t.join("torch.npz");
    write_npz(
        &torch,
        &[
            ("x_train", nchw(8, &want.train)),
            ("y_train", npy("<i8", &[8, 1], &labels64(&want.train))),
            ("x_test", nchw(4, &want.test)),
            ("y_test", npy("<i8", &[4], &labels64(&want.test))),
        ],
        false,
    );
    let got = resgrad::data::read_npz(&torch).unwrap();
    assert_eq!(got.train.images, want.train.images);
    assert_eq!(got.train.labels, want.train.labels);
    assert_eq!(got.test.images, want.test.images);
}

#[test]
fn trains_on_an_npz_and_stores_its_normalisation() {
    let t = TempDir::new("own-npz");
    let m = common::npz::rgb_members(16);
    let file = t.join("data.npz");
    common::npz::write_npz(&file, &m, true);
    let out = t.join("run");
    run_ok(
        &[
            "train",
            "--arch",
            "mlp",
            "--hidden",
            "8",
            "--units",
            "1",
            "--data",
            &format!("npz:{}", file.display()),
            "--iters",
            "4",
            "--batch",
            "8",
            "--quiet",
        ],
        &out,
    );
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["data"], format!("npz:{}", file.display()));
    assert_eq!(cfg["spec"]["in_features"], 108);
    assert_eq!(cfg["spec"]["classes"], 2);
    // the normalisation: per channel, of the training split's raw pixels
    let train = resgrad::data::read_npz(&file).unwrap().train;
    for c in 0..3 {
        let v: Vec<f64> = (0..16)
            .flat_map(|i| train.image(i)[c * 36..(c + 1) * 36].to_vec())
            .map(|x| x as f64)
            .collect();
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let got = cfg["norm"]["mean"][c].as_f64().unwrap();
        assert!((got - mean).abs() < 1e-3, "channel {c}: {got} vs {mean}");
    }
}
