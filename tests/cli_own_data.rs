//! `resgrad train --data folder:DIR` and `--data safetensors:FILE` on tiny
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
