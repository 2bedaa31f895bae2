//! The fuzz targets' bodies, shared by the cargo-fuzz binaries in
//! `fuzz_targets/` and by the normal test suite (`tests/fuzz_corpus.rs`
//! replays every committed seed and every past crash through them).
//!
//! Each function takes arbitrary bytes, feeds them to one of resgrad's
//! parsers and checks the parser's promise: an `Err` or a value that keeps
//! the format's invariants, never a panic.

#![allow(dead_code)]

use std::io::Write;
use std::path::Path;

use resgrad::data::{
    cifar_records_from_bytes, idx_images_from_bytes, idx_labels_from_bytes, parse_mnist_csv,
};
use resgrad::io::safetensors::SafeTensors;
use resgrad::model::{Net, Spec};

const ORIGIN: &str = "<fuzz input>";

/// CIFAR batch bytes. First byte: bit 0 selects CIFAR-100; the rest is the file.
pub fn cifar(data: &[u8]) {
    let Some((&mode, bytes)) = data.split_first() else {
        return;
    };
    let cifar100 = mode & 1 == 1;
    if let Ok((images, labels)) = cifar_records_from_bytes(bytes, cifar100, Path::new(ORIGIN)) {
        let classes = if cifar100 { 100 } else { 10 };
        assert_eq!(images.len(), labels.len() * 3072);
        assert!(!labels.is_empty());
        assert!(labels.iter().all(|&l| (l as usize) < classes));
        assert!(images.iter().all(|&v| (0.0..=255.0).contains(&v)));
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).expect("gzip into memory");
    e.finish().expect("gzip into memory")
}

/// IDX bytes. First byte: bit 0 selects labels (else images); bit 1
/// gzips the rest first (so the gz path sees well-formed streams with
/// fuzzed contents; raw inputs that start with the gzip magic exercise the
/// decoder on broken streams).
pub fn idx(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let owned;
    let bytes = if mode & 2 == 2 {
        owned = gzip(rest);
        &owned[..]
    } else {
        rest
    };
    if mode & 1 == 1 {
        if let Ok(labels) = idx_labels_from_bytes(bytes, Path::new(ORIGIN), 10) {
            assert!(labels.iter().all(|&l| l < 10));
        }
    } else if let Ok((n, r, c, px)) = idx_images_from_bytes(bytes, Path::new(ORIGIN)) {
        assert!(n > 0 && r > 0 && c > 0);
        assert_eq!(px.len(), n * r * c);
    }
}

/// MNIST-style CSV bytes (raw or gzipped).
pub fn csv(data: &[u8]) {
    if let Ok(d) = parse_mnist_csv(data, Path::new(ORIGIN), "fuzz") {
        assert!(d.n > 0);
        assert_eq!(d.labels.len(), d.n);
        assert_eq!(d.images.len(), d.n * 784);
        assert!(d.labels.iter().all(|&l| l < 10));
    }
}

/// A JSON model spec. A spec that parses must validate, survive a
/// serialisation round trip and stay within the size limit.
pub fn spec(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(s) = Spec::from_json(text) {
        s.validate().expect("a parsed spec validates");
        assert!(s.param_bound() <= resgrad::model::MAX_PARAMS);
        let _ = s.label();
        let _ = s.num_units().expect("a valid spec has a unit count");
        let back = serde_json::to_string(&s).expect("a spec serialises");
        assert_eq!(Spec::from_json(&back).expect("round trip parses"), s);
    }
}

/// The small MLP specs whose weights the safetensors target loads.
pub const SMALL_SPECS: [&str; 2] = [
    r#"{"arch":"mlp","in_features":4,"hidden":3,"units":1,"classes":3,"unit":"full_preact","shortcut":{"kind":"identity"}}"#,
    r#"{"arch":"mlp","in_features":4,"hidden":3,"units":2,"classes":3,"unit":"original","shortcut":{"kind":"exclusive_gate","bias_init":-1},"batchnorm":false}"#,
];

/// A safetensors image, then loaded as the weights of a small MLP. First
/// byte: bit 0 picks one of [`SMALL_SPECS`]; the rest is the file.
pub fn safetensors(data: &[u8]) {
    let Some((&mode, bytes)) = data.split_first() else {
        return;
    };
    let Ok(st) = SafeTensors::from_bytes(bytes, Path::new(ORIGIN)) else {
        return;
    };
    // what was read can be written and reads back the same
    let again = st.to_bytes().expect("a parsed file re-encodes");
    let back = SafeTensors::from_bytes(&again, Path::new(ORIGIN)).expect("re-encoded file parses");
    assert_eq!(back.tensors, st.tensors);
    assert_eq!(back.metadata, st.metadata);
    for name in st.tensors.keys() {
        let _ = st.get_f64(name);
        let _ = st.get_i64(name);
    }
    let spec = Spec::from_json(SMALL_SPECS[(mode & 1) as usize]).expect("small spec");
    let mut net: Net<f32> = Net::new(&spec, 1, 0).expect("small net");
    if net.load_state(&st).is_ok() {
        // every parameter is then finite and of its shape: a save gives the same tensors
        let mut out = SafeTensors::new();
        net.save_state(&mut out).expect("save_state");
        for (name, t) in &out.tensors {
            if name.ends_with("num_batches_tracked") {
                continue;
            }
            let (shape, v) = st.get_f64(name).expect("loaded tensor");
            assert_eq!(shape, t.shape);
            assert!(v.iter().all(|x| x.is_finite()));
        }
    }
}

/// Seed inputs for every target: valid files of each format (so the
/// fuzzer starts inside the formats) and a few near misses. Returns
/// (target, name, bytes).
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut v: Vec<(&'static str, String, Vec<u8>)> = Vec::new();
    // CIFAR: two records each
    for (mode, lb, classes) in [(0u8, 1usize, 10u8), (1, 2, 100)] {
        let mut b = vec![mode];
        for i in 0..2u8 {
            if lb == 2 {
                b.push(i % 20);
            }
            b.push(i % classes);
            b.extend((0..3072).map(|j| ((i as usize + j) % 256) as u8));
        }
        v.push(("cifar", format!("seed-valid-{lb}label"), b.clone()));
        b.truncate(b.len() - 7);
        v.push(("cifar", format!("seed-truncated-{lb}label"), b));
    }
    // IDX: 2 images of 3x2, 2 labels; raw and gzipped
    let mut img = vec![];
    for x in [2051u32, 2, 3, 2] {
        img.extend_from_slice(&x.to_be_bytes());
    }
    img.extend(0..12u8);
    let mut lab = vec![];
    for x in [2049u32, 2] {
        lab.extend_from_slice(&x.to_be_bytes());
    }
    lab.extend([3u8, 9]);
    for (mode, name, b) in [
        (0u8, "images", &img),
        (1, "labels", &lab),
        (2, "images-gz", &img),
        (3, "labels-gz", &lab),
    ] {
        let mut s = vec![mode];
        s.extend_from_slice(b);
        v.push(("idx", format!("seed-{name}"), s));
    }
    let mut s = vec![0u8];
    s.extend(gzip(&img));
    v.push(("idx", "seed-images-gz-raw".into(), s));
    // CSV: one row, plain and gzipped
    let row: Vec<String> = (0..784).map(|j| (j % 256).to_string()).collect();
    let text = format!("{},7\n\n", row.join(","));
    v.push(("csv", "seed-row".into(), text.clone().into_bytes()));
    v.push(("csv", "seed-row-gz".into(), gzip(text.as_bytes())));
    v.push(("csv", "seed-short".into(), b"1,2,3\n".to_vec()));
    // specs
    for (i, s) in [
        r#"{"arch":"cifar","depth":20,"unit":"full_preact","shortcut":{"kind":"identity"},"downsample":"A"}"#,
        r#"{"depth":164,"block":"bottleneck","unit":"original","shortcut":{"kind":"scale","shortcut":0.5}}"#,
        r#"{"depth":56,"unit":"bn_after_add","shortcut":{"kind":"dropout","p":0.5},"width":8,"classes":100}"#,
        SMALL_SPECS[0],
        SMALL_SPECS[1],
        r#"{"arch":"mlp","in_features":784,"hidden":64,"units":4,"unit":"relu_before_add","shortcut":{"kind":"shortcut_gate","bias_init":2}}"#,
    ]
    .iter()
    .enumerate()
    {
        v.push(("spec", format!("seed-{i}"), s.as_bytes().to_vec()));
    }
    // safetensors: the weights of each small spec
    for (mode, s) in SMALL_SPECS.iter().enumerate() {
        let spec = Spec::from_json(s).expect("small spec");
        let mut net: Net<f32> = Net::new(&spec, 1, 7).expect("small net");
        let mut st = SafeTensors::new();
        net.save_state(&mut st).expect("save_state");
        st.metadata.insert("format".into(), "fuzz-seed".into());
        let mut b = vec![mode as u8];
        b.extend(st.to_bytes().expect("encode"));
        v.push(("safetensors", format!("seed-weights-{mode}"), b));
    }
    v
}

/// Run `target` on `data`.
pub fn run(target: &str, data: &[u8]) {
    match target {
        "cifar" => cifar(data),
        "idx" => idx(data),
        "csv" => csv(data),
        "spec" => spec(data),
        "safetensors" => safetensors(data),
        t => panic!("unknown fuzz target {t}"),
    }
}

/// The targets, by name.
pub const TARGETS: [&str; 5] = ["cifar", "idx", "csv", "spec", "safetensors"];
