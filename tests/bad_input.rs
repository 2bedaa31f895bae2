//! Bad input, tried systematically against the built binary: every reader
//! and parser gets malformed input and must answer with exit code 2 and a
//! one-line `error: ...` on stderr that names the file or the field, never
//! a panic. The cases are listed in TESTING.md.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use resgrad::io::safetensors::SafeTensors;
use resgrad::model::{Net, Spec};
use resgrad::Tensor;

mod common;
use common::npz::{npy, rgb_members, write_npz};
use common::train_tiny as train_on;
use common::TempDir;

// ------------------------------------------------------------ helpers --

fn resgrad<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_resgrad"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run resgrad")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Exit code 2, stderr starts with `error:` and contains every needle, no panic.
#[track_caller]
fn expect_bad(case: &str, o: &Output, needles: &[&str]) {
    let (out, err) = text(o);
    let ctx = format!(
        "case {case:?}: exit {:?}\nstdout:\n{out}\nstderr:\n{err}",
        o.status
    );
    assert!(!err.contains("panicked"), "panic in {ctx}");
    assert!(!err.contains("RUST_BACKTRACE"), "panic in {ctx}");
    assert_ne!(o.status.code(), Some(101), "panic exit code in {ctx}");
    assert_eq!(o.status.code(), Some(2), "wrong exit code in {ctx}");
    assert!(
        err.starts_with("error:"),
        "stderr does not start with error: in {ctx}"
    );
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?} in {ctx}");
    }
    // `cargo test --test bad_input -- --nocapture | grep ^CASE` lists them all
    println!(
        "CASE\t{case}\t{}\t{}",
        o.status.code().unwrap_or(-1),
        err.lines().next().unwrap_or("")
    );
}

#[track_caller]
fn expect_ok(case: &str, o: &Output) {
    let (out, err) = text(o);
    assert!(
        o.status.success(),
        "case {case:?} should succeed: exit {:?}\nstdout:\n{out}\nstderr:\n{err}",
        o.status
    );
}

fn write(p: &Path, b: &[u8]) {
    std::fs::write(p, b).unwrap();
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

// ---------------------------------------------------------------- npz --

#[test]
fn npz_malformed() {
    let t = TempDir::new("bad-npz");
    let file = t.join("data.npz");
    let data = format!("npz:{}", file.display());
    let run = t.join("run");
    let good = rgb_members(8);
    write_npz(&file, &good, false);
    expect_ok("valid npz", &train_on(&data, &run));
    write_npz(&file, &good, true);
    expect_ok("valid npz (deflated)", &train_on(&data, &run));
    let f = file.to_str().unwrap().to_string();
    // `members`: the valid set with `key` replaced (None: left out)
    let with = |key: &str, m: Option<Vec<u8>>| -> Vec<(&'static str, Vec<u8>)> {
        good.iter()
            .filter_map(|(k, v)| {
                if *k == key {
                    m.clone().map(|m| (*k, m))
                } else {
                    Some((*k, v.clone()))
                }
            })
            .collect()
    };
    let case = |name: &str, members: Vec<(&str, Vec<u8>)>, needles: &[&str]| {
        write_npz(&file, &members, false);
        let mut n = vec![f.as_str()];
        n.extend(needles);
        expect_bad(name, &train_on(&data, &run), &n);
    };
    case(
        "npz missing key",
        with("y_test", None),
        &["no array \"y_test\"", "it has x_test, x_train, y_train"],
    );
    case(
        "npz images of the wrong dtype",
        with(
            "x_train",
            Some(npy("<i8", &[8, 6, 6, 3], &[0; 8 * 108 * 8])),
        ),
        &["x_train has dtype int64; expected uint8, float32 or float64"],
    );
    case(
        "npz float labels",
        with("y_train", Some(npy("<f4", &[8], &[0; 32]))),
        &["y_train has dtype float32; expected integer class indices"],
    );
    let mut big = vec![0u8; 16];
    big[2..4].copy_from_slice(&300u16.to_le_bytes());
    case(
        "npz label out of range",
        with("y_train", Some(npy("<u2", &[8], &big))),
        &["y_train[1] = 300 is not a class index in 0..=255"],
    );
    case(
        "npz negative label",
        with("y_test", Some(npy("|i1", &[4], &[0, 1, 255, 0]))),
        &["y_test[2] = -1 is not a class index"],
    );
    case(
        "npz labels and images disagree",
        with("y_train", Some(npy("|u1", &[7], &[0; 7]))),
        &["y_train has shape [7]; expected (8,) or (8, 1)"],
    );
    case(
        "npz test images of another size",
        with("x_test", Some(npy("|u1", &[4, 5, 5, 3], &[0; 4 * 75]))),
        &["x_train images are 3x6x6 (CxHxW), x_test 3x5x5"],
    );
    case(
        "npz images of no image shape",
        with("x_train", Some(npy("|u1", &[8, 108], &[0; 8 * 108]))),
        &["x_train has shape [8, 108]; expected N,H,W, N,H,W,C or N,C,H,W"],
    );
    case(
        "npz array shorter than its header",
        with("x_train", Some(npy("|u1", &[8, 6, 6, 3], &[0; 100]))),
        &["x_train: shape [8, 6, 6, 3] of uint8 needs 864 bytes, the array has 100"],
    );
    let mut nan = vec![0f32; 8 * 108];
    nan[5] = f32::NAN;
    let nan: Vec<u8> = nan.iter().flat_map(|x| x.to_le_bytes()).collect();
    case(
        "npz NaN pixel",
        with("x_train", Some(npy("<f4", &[8, 6, 6, 3], &nan))),
        &["x_train has a non-finite value at flat index 5"],
    );
    let mut fortran = npy("|u1", &[8, 6, 6, 3], &[0; 864]);
    let at = fortran.windows(5).position(|w| w == b"False").unwrap();
    fortran[at..at + 5].copy_from_slice(b"True ");
    case(
        "npz Fortran order",
        with("x_train", Some(fortran)),
        &["x_train is in Fortran order"],
    );
    case(
        "npz member not a .npy",
        with("x_test", Some(b"hello".to_vec())),
        &["x_test: not a .npy array"],
    );
    // the archive itself
    write_npz(&file, &good, true);
    let bytes = std::fs::read(&file).unwrap();
    write(&file, &bytes[..bytes.len() / 2]);
    expect_bad(
        "npz truncated archive",
        &train_on(&data, &run),
        &[&f, "not a readable .npz (zip) archive"],
    );
    write_npz(&file, &good, true);
    let mut bytes = std::fs::read(&file).unwrap();
    for b in &mut bytes[200..260] {
        *b ^= 0x5a;
    }
    write(&file, &bytes);
    expect_bad(
        "npz damaged member",
        &train_on(&data, &run),
        &[&f, "npz: y_train: "],
    );
    write(&file, b"x_train,y_train\n1,2\n");
    expect_bad(
        "npz not a zip archive",
        &train_on(&data, &run),
        &[&f, "not a readable .npz (zip) archive"],
    );
    std::fs::remove_file(&file).unwrap();
    expect_bad("npz missing file", &train_on(&data, &run), &[&f]);
}

// -------------------------------------------------------------- CIFAR --

/// `n` CIFAR records with `label_bytes` label bytes each.
fn cifar_bytes(n: usize, label_bytes: usize) -> Vec<u8> {
    let mut v = Vec::new();
    for i in 0..n {
        if label_bytes == 2 {
            v.push((i % 20) as u8);
        }
        v.push((i % 10) as u8);
        v.extend((0..3072).map(|j| ((i * 3 + j) % 256) as u8));
    }
    v
}

const CIFAR10_TRAIN: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];

fn cifar10_dir(d: &Path) {
    for f in CIFAR10_TRAIN {
        write(&d.join(f), &cifar_bytes(2, 1));
    }
    write(&d.join("test_batch.bin"), &cifar_bytes(2, 1));
}

fn cifar100_dir(d: &Path) {
    write(&d.join("train.bin"), &cifar_bytes(8, 2));
    write(&d.join("test.bin"), &cifar_bytes(2, 2));
}

#[test]
fn cifar10_malformed() {
    let t = TempDir::new("bad-c10");
    let data_dir = t.join("data");
    std::fs::create_dir(&data_dir).unwrap();
    let data = format!("cifar10:{}", data_dir.display());
    let run = t.join("run");
    cifar10_dir(&data_dir);
    expect_ok("valid cifar10 directory", &train_on(&data, &run));

    let b2 = data_dir.join("data_batch_2.bin");
    // truncated: one byte short
    let mut b = cifar_bytes(2, 1);
    b.pop();
    write(&b2, &b);
    expect_bad(
        "cifar10 truncated batch",
        &train_on(&data, &run),
        &[
            "data_batch_2.bin",
            "not a whole number of 3073-byte records",
            "truncated",
        ],
    );
    // oversized: stray bytes after the last record
    let mut b = cifar_bytes(2, 1);
    b.extend([0u8; 100]);
    write(&b2, &b);
    expect_bad(
        "cifar10 oversized batch",
        &train_on(&data, &run),
        &["data_batch_2.bin", "2 full records and 100 stray bytes"],
    );
    // label out of range
    let mut b = cifar_bytes(2, 1);
    b[3073] = 10;
    write(&b2, &b);
    expect_bad(
        "cifar10 label 10",
        &train_on(&data, &run),
        &["data_batch_2.bin", "record 1: label 10 out of range 0..10"],
    );
    // empty file
    write(&b2, &[]);
    expect_bad(
        "cifar10 empty batch",
        &train_on(&data, &run),
        &["data_batch_2.bin", "empty file"],
    );
    // a batch missing
    std::fs::remove_file(&b2).unwrap();
    expect_bad(
        "cifar10 missing batch",
        &train_on(&data, &run),
        &["data_batch_2.bin", "No such file"],
    );
    cifar10_dir(&data_dir);
    std::fs::remove_file(data_dir.join("test_batch.bin")).unwrap();
    expect_bad(
        "cifar10 missing test batch",
        &train_on(&data, &run),
        &["test_batch.bin", "No such file"],
    );
    // an empty directory names the first batch it looked for
    let empty = t.join("empty");
    std::fs::create_dir(&empty).unwrap();
    expect_bad(
        "cifar10 empty directory",
        &train_on(&format!("cifar10:{}", empty.display()), &run),
        &["data_batch_1.bin"],
    );
    // no such directory
    expect_bad(
        "cifar10 no such directory",
        &train_on(&format!("cifar10:{}", t.join("nope").display()), &run),
        &["nope", "no such file or directory"],
    );
    // a corrupt archive
    let junk = t.join("cifar-10-binary.tar.gz");
    write(&junk, b"\x1f\x8bthis is not a gzip stream");
    expect_bad(
        "cifar10 corrupt tar.gz",
        &train_on(&format!("cifar10:{}", junk.display()), &run),
        &["cifar-10-binary.tar.gz", "invalid tar.gz archive"],
    );
    // a regular file where the directory should be
    cifar10_dir(&data_dir);
    expect_bad(
        "cifar10 path is a file",
        &train_on(
            &format!("cifar10:{}", t.join("data/test_batch.bin").display()),
            &run,
        ),
        &["test_batch.bin", "not a directory, nor a .tar.gz"],
    );
}

#[test]
fn cifar100_malformed() {
    let t = TempDir::new("bad-c100");
    let d = t.join("data");
    std::fs::create_dir(&d).unwrap();
    let data = format!("cifar100:{}", d.display());
    let run = t.join("run");
    cifar100_dir(&d);
    expect_ok("valid cifar100 directory", &train_on(&data, &run));
    let mut b = cifar_bytes(8, 2);
    b[0] = 20;
    write(&d.join("train.bin"), &b);
    expect_bad(
        "cifar100 coarse label 20",
        &train_on(&data, &run),
        &["train.bin", "record 0: coarse label 20 out of range 0..20"],
    );
    let mut b = cifar_bytes(8, 2);
    b[3074 + 1] = 100;
    write(&d.join("train.bin"), &b);
    expect_bad(
        "cifar100 fine label 100",
        &train_on(&data, &run),
        &["train.bin", "record 1: label 100 out of range 0..100"],
    );
    // a CIFAR-10 file (3073-byte records) where CIFAR-100 is expected
    write(&d.join("train.bin"), &cifar_bytes(8, 1));
    expect_bad(
        "cifar100 given cifar10 records",
        &train_on(&data, &run),
        &["train.bin", "3074-byte records", "not a cifar100 batch"],
    );
}

// -------------------------------------------------------------- MNIST --

fn idx_images(n: u32, r: u32, c: u32) -> Vec<u8> {
    let mut v = Vec::new();
    for x in [2051u32, n, r, c] {
        v.extend_from_slice(&x.to_be_bytes());
    }
    v.extend((0..n * r * c).map(|i| (i % 256) as u8));
    v
}

fn idx_labels(n: u32) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&2049u32.to_be_bytes());
    v.extend_from_slice(&n.to_be_bytes());
    v.extend((0..n).map(|i| (i % 10) as u8));
    v
}

fn mnist_dir(d: &Path) {
    write(&d.join("train-images-idx3-ubyte"), &idx_images(8, 28, 28));
    write(&d.join("train-labels-idx1-ubyte"), &idx_labels(8));
    write(
        &d.join("t10k-images-idx3-ubyte.gz"),
        &gz(&idx_images(4, 28, 28)),
    );
    write(&d.join("t10k-labels-idx1-ubyte.gz"), &gz(&idx_labels(4)));
}

#[test]
fn mnist_malformed() {
    let t = TempDir::new("bad-mnist");
    let d = t.join("data");
    std::fs::create_dir(&d).unwrap();
    let data = format!("mnist:{}", d.display());
    let run = t.join("run");
    mnist_dir(&d);
    expect_ok("valid mnist directory", &train_on(&data, &run));

    let img = d.join("train-images-idx3-ubyte");
    let lab = d.join("train-labels-idx1-ubyte");
    let case = |name: &str, path: &Path, bytes: Vec<u8>, needles: &[&str]| {
        write(path, &bytes);
        expect_bad(name, &train_on(&data, &run), needles);
        mnist_dir(&d);
    };
    let mut b = idx_images(8, 28, 28);
    b[3] = 0x01; // 2049: a label file's magic
    case(
        "mnist images wrong magic",
        &img,
        b,
        &[
            "train-images-idx3-ubyte",
            "wrong magic number 2049 (IDX image files have 2051)",
        ],
    );
    let mut b = idx_labels(8);
    b[3] = 0x03;
    case(
        "mnist labels wrong magic",
        &lab,
        b,
        &[
            "train-labels-idx1-ubyte",
            "wrong magic number 2051 (IDX label files have 2049)",
        ],
    );
    let mut b = idx_images(8, 28, 28);
    b[11] = 29;
    case(
        "mnist images header dims disagree with size",
        &img,
        b,
        &["train-images-idx3-ubyte", "header says 8 images of 29x28"],
    );
    let mut b = idx_images(8, 28, 28);
    b.truncate(b.len() - 5);
    case(
        "mnist images truncated",
        &img,
        b,
        &["train-images-idx3-ubyte", "but the file has"],
    );
    let mut b = idx_images(8, 28, 28);
    b.extend([0u8; 9]);
    case(
        "mnist images oversized",
        &img,
        b,
        &["train-images-idx3-ubyte", "but the file has"],
    );
    let mut b = idx_images(8, 28, 28);
    b[4..16].fill(0xff);
    case(
        "mnist images absurd dims",
        &img,
        b,
        &["train-images-idx3-ubyte", "4294967295 images", "too many"],
    );
    case(
        "mnist images empty file",
        &img,
        vec![],
        &[
            "train-images-idx3-ubyte",
            "0 bytes: too short for an IDX image header",
        ],
    );
    case(
        "mnist labels empty file",
        &lab,
        vec![],
        &[
            "train-labels-idx1-ubyte",
            "too short for an IDX label header",
        ],
    );
    let mut b = idx_labels(8);
    b[8 + 5] = 10;
    case(
        "mnist label out of range",
        &lab,
        b,
        &[
            "train-labels-idx1-ubyte",
            "label 5 is 10, out of range 0..10",
        ],
    );
    let mut b = idx_labels(8);
    b.push(3);
    case(
        "mnist labels oversized",
        &lab,
        b,
        &[
            "train-labels-idx1-ubyte",
            "header says 8 labels but the file has 9",
        ],
    );
    case(
        "mnist label count differs from image count",
        &lab,
        idx_labels(7),
        &["train-labels-idx1-ubyte", "7 labels but", "has 8 images"],
    );
    // images of another size than the spec's in_features (20x20, not 28x28)
    write(&img, &idx_images(8, 20, 20));
    expect_bad(
        "mnist 20x20 images for a 784-feature spec",
        &train_on(&data, &run),
        &["has 400 features per image (1x20x20)", "in_features 784"],
    );
    mnist_dir(&d);
    // gzip: corrupt stream, truncated stream
    let tl = d.join("t10k-labels-idx1-ubyte.gz");
    case(
        "mnist corrupt gzip",
        &tl,
        vec![0x1f, 0x8b, 8, 0, 1, 2, 3, 4],
        &["t10k-labels-idx1-ubyte.gz", "invalid gzip data"],
    );
    let mut z = gz(&idx_labels(4));
    z.truncate(z.len() - 6);
    case(
        "mnist truncated gzip",
        &tl,
        z,
        &["t10k-labels-idx1-ubyte.gz", "invalid gzip data"],
    );
    // a file missing
    std::fs::remove_file(&lab).unwrap();
    expect_bad(
        "mnist missing labels",
        &train_on(&data, &run),
        &[
            "train-labels-idx1-ubyte",
            "neither train-labels-idx1-ubyte nor train-labels-idx1-ubyte.gz",
        ],
    );
}

// ---------------------------------------------------------------- CSV --
// The MNIST-style CSV reader serves only the built-in data set (no CLI
// flag reads a CSV file), so it is driven through the library here.

#[test]
fn csv_malformed() {
    use resgrad::data::read_mnist_csv;
    use resgrad::Error;
    let t = TempDir::new("bad-csv");
    let row = |label: &str| {
        let px: Vec<String> = (0..784).map(|j| (j % 256).to_string()).collect();
        format!("{},{label}\n", px.join(","))
    };
    let ok = format!("{}{}", row("3"), row("9"));
    let p = t.join("digits.csv");
    write(&p, ok.as_bytes());
    assert_eq!(read_mnist_csv(&p).unwrap().n, 2);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "no images (empty CSV)"),
        ("blank lines only", b"\n\n \n".to_vec(), "no images"),
        (
            "truncated row",
            ok.as_bytes()[..ok.len() - 300].to_vec(),
            "line 2:",
        ),
        (
            "oversized row",
            format!("{}{}", row("3").trim_end(), ",4\n").into_bytes(),
            "line 1: 786 fields, expected 785",
        ),
        (
            "label out of range",
            row("10").into_bytes(),
            "line 1: label 10 out of range 0..10",
        ),
        (
            "pixel above 255",
            format!("256,{}", &row("1")[2..]).into_bytes(),
            "line 1: pixel 1 is 256, above 255",
        ),
        (
            "negative",
            format!("-1,{}", &row("1")[2..]).into_bytes(),
            "not a whole number",
        ),
        ("not UTF-8", vec![0xff, 0xfe, b'1', b'\n'], "not UTF-8"),
        (
            "truncated gzip",
            {
                let z = gz(ok.as_bytes());
                z[..z.len() / 2].to_vec()
            },
            "invalid gzip data",
        ),
    ];
    for (case, bytes, needle) in cases {
        write(&p, &bytes);
        let e = read_mnist_csv(&p).expect_err(case);
        assert!(matches!(e, Error::Format { .. }), "{case}: {e:?}");
        assert_eq!(e.exit_code(), 2);
        let e = e.to_string();
        assert!(
            e.contains("digits.csv") && e.contains(needle),
            "{case}: {e}"
        );
    }
    let e = read_mnist_csv(&t.join("missing.csv")).unwrap_err();
    assert!(e.to_string().contains("missing.csv"), "{e}");
}

// -------------------------------------------------------------- specs --

fn grads_with_spec(spec_text: &str, t: &TempDir) -> Output {
    let s = t.join("spec.json");
    write(&s, spec_text.as_bytes());
    let w = t.join("absent.safetensors");
    let o = t.join("out.safetensors");
    resgrad(&[
        OsArg::from("grads"),
        "--spec".into(),
        s.into(),
        "--weights".into(),
        w.clone().into(),
        "--input".into(),
        w.into(),
        "--out".into(),
        o.into(),
    ])
}

type OsArg = std::ffi::OsString;

#[test]
fn specs_malformed() {
    let t = TempDir::new("bad-spec");
    let id = r#""unit":"full_preact","shortcut":{"kind":"identity"}"#;
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        ("empty file", String::new(), vec!["spec.json", "EOF while parsing"]),
        ("not JSON", "depth: 20".into(), vec!["spec.json", "expected value"]),
        ("JSON array", "[1,2]".into(), vec!["spec.json", "must be a JSON object, not an array"]),
        ("JSON string", "\"mlp\"".into(), vec!["spec.json", "must be a JSON object, not a string"]),
        (
            "unknown field",
            format!(r#"{{"depth":20,{id},"colour":"red"}}"#),
            vec!["spec.json", "unknown field `colour`"],
        ),
        (
            "unknown unit kind",
            r#"{"depth":20,"unit":"sideways","shortcut":{"kind":"identity"}}"#.into(),
            vec!["spec.json", "unknown variant `sideways`"],
        ),
        (
            "unknown shortcut kind",
            r#"{"depth":20,"unit":"original","shortcut":{"kind":"teleport"}}"#.into(),
            vec!["spec.json", "unknown variant `teleport`"],
        ),
        (
            "unknown shortcut field",
            r#"{"depth":20,"unit":"original","shortcut":{"kind":"scale","lambda":0.5}}"#.into(),
            vec!["spec.json", "unknown field `lambda`"],
        ),
        (
            "unknown arch",
            format!(r#"{{"arch":"transformer",{id}}}"#),
            vec!["spec.json", "unknown variant `transformer`"],
        ),
        (
            "depth not 6n+2",
            format!(r#"{{"depth":21,{id}}}"#),
            vec!["depth 21 is not 6n+2"],
        ),
        (
            "depth not 9n+2",
            format!(r#"{{"depth":26,"block":"bottleneck",{id}}}"#),
            vec!["depth 26 is not 9n+2"],
        ),
        ("depth 2", format!(r#"{{"depth":2,{id}}}"#), vec!["6n+2 (n >= 1)"]),
        (
            "depth negative",
            format!(r#"{{"depth":-20,{id}}}"#),
            vec!["spec.json", "invalid value: integer `-20`"],
        ),
        ("depth missing", format!("{{{id}}}"), vec!["needs \"depth\""]),
        (
            "scale factor 1e400",
            r#"{"depth":20,"unit":"original","shortcut":{"kind":"scale","shortcut":1e400}}"#.into(),
            vec!["spec.json", "number out of range"],
        ),
        (
            "scale factor negative",
            r#"{"depth":20,"unit":"original","shortcut":{"kind":"scale","branch":-0.5}}"#.into(),
            vec!["scale factor \"branch\" must be finite and >= 0, got -0.5"],
        ),
        (
            "gate bias 1e400",
            r#"{"depth":20,"unit":"original","shortcut":{"kind":"exclusive_gate","bias_init":-1e400}}"#.into(),
            vec!["spec.json", "number out of range"],
        ),
        (
            "dropout p 1",
            r#"{"depth":20,"unit":"original","shortcut":{"kind":"dropout","p":1.0}}"#.into(),
            vec!["dropout p must be in [0, 1), got 1"],
        ),
        (
            "dropout p negative",
            r#"{"depth":20,"unit":"original","shortcut":{"kind":"dropout","p":-0.1}}"#.into(),
            vec!["dropout p must be in [0, 1), got -0.1"],
        ),
        (
            "width 0",
            format!(r#"{{"depth":20,{id},"width":0}}"#),
            vec!["width must be at least 1"],
        ),
        (
            "classes 0",
            format!(r#"{{"depth":20,{id},"classes":0}}"#),
            vec!["classes must be at least 1"],
        ),
        (
            "mlp hidden 0",
            format!(r#"{{"arch":"mlp","in_features":4,"hidden":0,"units":1,{id}}}"#),
            vec!["\"hidden\" must be at least 1"],
        ),
        (
            "mlp without in_features",
            format!(r#"{{"arch":"mlp","hidden":4,"units":1,{id}}}"#),
            vec!["mlp spec needs \"in_features\""],
        ),
        (
            "mlp with depth",
            format!(r#"{{"arch":"mlp","in_features":4,"hidden":4,"units":1,"depth":20,{id}}}"#),
            vec!["\"depth\" is a cifar field"],
        ),
        (
            "cifar with hidden",
            format!(r#"{{"depth":20,"hidden":4,{id}}}"#),
            vec!["\"hidden\" is an mlp field"],
        ),
        (
            "mlp absurdly wide",
            format!(r#"{{"arch":"mlp","in_features":784,"hidden":100000000,"units":4,{id}}}"#),
            vec!["parameters, more than the"],
        ),
        (
            "cifar absurdly deep",
            format!(r#"{{"depth":6000000002,{id}}}"#),
            vec!["parameters, more than the"],
        ),
        (
            "width overflowing usize",
            format!(r#"{{"depth":20,{id},"width":18446744073709551615}}"#),
            vec!["parameters, more than the"],
        ),
    ];
    for (case, spec, needles) in cases {
        let o = grads_with_spec(&spec, &t);
        let mut n = needles.clone();
        n.push("invalid spec");
        expect_bad(case, &o, &n);
    }
    // a missing spec file, a directory as the spec
    let o = resgrad(&[
        "grads",
        "--spec",
        "/nonexistent/spec.json",
        "--weights",
        "w",
        "--input",
        "w",
        "--out",
        "o",
    ]);
    expect_bad(
        "spec file missing",
        &o,
        &["/nonexistent/spec.json", "No such file"],
    );
    let o = resgrad(&[
        OsArg::from("grads"),
        "--spec".into(),
        t.path().into(),
        "--weights".into(),
        "w".into(),
        "--input".into(),
        "w".into(),
        "--out".into(),
        "o".into(),
    ]);
    expect_bad("spec is a directory", &o, &[t.path().to_str().unwrap()]);
    // the same validation behind `train --spec`
    let s = t.join("bad.json");
    write(
        &s,
        br#"{"depth":21,"unit":"original","shortcut":{"kind":"identity"}}"#,
    );
    let o = resgrad(&[
        OsArg::from("train"),
        "--spec".into(),
        s.into(),
        "--iters".into(),
        "1".into(),
        "--out".into(),
        t.join("run").into(),
    ]);
    expect_bad(
        "train --spec depth 21",
        &o,
        &["bad.json", "depth 21 is not 6n+2"],
    );
}

// --------------------------------------------------------- safetensors --

const SPEC: &str = r#"{"arch":"mlp","in_features":4,"hidden":3,"units":1,"classes":3,"unit":"full_preact","shortcut":{"kind":"identity"}}"#;

fn valid_weights() -> SafeTensors {
    let spec = Spec::from_json(SPEC).unwrap();
    let mut net: Net<f32> = Net::new(&spec, 1, 3).unwrap();
    let mut st = SafeTensors::new();
    net.save_state(&mut st).unwrap();
    st
}

fn valid_input() -> SafeTensors {
    let mut st = SafeTensors::new();
    let x: Vec<f32> = (0..8).map(|i| i as f32 * 0.25 - 1.0).collect();
    st.insert("input", &Tensor::from_vec(&[2, 4], x).unwrap());
    st.insert_i64("labels", &[2], &[0, 2]).unwrap();
    st
}

/// A safetensors image from a raw header and data section.
fn raw_safetensors(header: &str, data: &[u8]) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(data);
    b
}

struct GradsFiles {
    t: TempDir,
}

impl GradsFiles {
    fn new(tag: &str) -> GradsFiles {
        let t = TempDir::new(tag);
        write(&t.join("spec.json"), SPEC.as_bytes());
        valid_weights()
            .write_atomic(&t.join("w.safetensors"))
            .unwrap();
        valid_input()
            .write_atomic(&t.join("x.safetensors"))
            .unwrap();
        GradsFiles { t }
    }
    fn run_with(&self, weights: &Path, input: &Path, out: &Path) -> Output {
        resgrad(&[
            OsArg::from("grads"),
            "--spec".into(),
            self.t.join("spec.json").into(),
            "--weights".into(),
            weights.into(),
            "--input".into(),
            input.into(),
            "--out".into(),
            out.into(),
        ])
    }
    /// grads with these weights (bytes) and the valid input
    fn weights(&self, bytes: &[u8]) -> Output {
        let w = self.t.join("bad-w.safetensors");
        write(&w, bytes);
        self.run_with(
            &w,
            &self.t.join("x.safetensors"),
            &self.t.join("out.safetensors"),
        )
    }
    /// grads with the valid weights and this input (bytes)
    fn input(&self, bytes: &[u8]) -> Output {
        let x = self.t.join("bad-x.safetensors");
        write(&x, bytes);
        self.run_with(
            &self.t.join("w.safetensors"),
            &x,
            &self.t.join("out.safetensors"),
        )
    }
    fn out(&self, out: &Path) -> Output {
        self.run_with(
            &self.t.join("w.safetensors"),
            &self.t.join("x.safetensors"),
            out,
        )
    }
}

#[test]
fn safetensors_malformed() {
    let g = GradsFiles::new("st");
    expect_ok(
        "valid weights and input",
        &g.out(&g.t.join("ok.safetensors")),
    );
    let good = valid_weights();
    let w = "bad-w.safetensors";

    // missing tensor
    let mut st = good.clone();
    st.tensors.remove("stem.weight");
    expect_bad(
        "weights missing a tensor",
        &g.weights(&st.to_bytes().unwrap()),
        &[w, "missing tensor \"stem.weight\" (expected shape [3, 4])"],
    );
    // wrong shape
    let mut st = good.clone();
    st.insert(
        "fc.weight",
        &Tensor::<f32>::from_vec(&[3, 4], vec![0.0; 12]).unwrap(),
    );
    expect_bad(
        "weights with a wrong shape",
        &g.weights(&st.to_bytes().unwrap()),
        &[
            w,
            "tensor \"fc.weight\" has shape [3, 4], the model needs [3, 3]",
        ],
    );
    // wrong dtype: I64 where a float is needed
    let mut st = good.clone();
    st.insert_i64("fc.bias", &[3], &[1, 2, 3]).unwrap();
    expect_bad(
        "weights with an I64 tensor",
        &g.weights(&st.to_bytes().unwrap()),
        &[w, "tensor \"fc.bias\" has dtype I64, expected F32 or F64"],
    );
    // a dtype resgrad does not read (F16)
    expect_bad(
        "weights with dtype F16",
        &g.weights(&raw_safetensors(
            r#"{"fc.bias":{"dtype":"F16","shape":[3],"data_offsets":[0,6]}}"#,
            &[0; 6],
        )),
        &[w, "unsupported dtype \"F16\""],
    );
    // F64 weights are fine (converted)
    let mut st = SafeTensors::new();
    for name in good.tensors.keys() {
        if name.ends_with("num_batches_tracked") {
            continue;
        }
        st.insert(name.clone(), &good.get::<f64>(name).unwrap());
    }
    expect_ok("F64 weights", &g.weights(&st.to_bytes().unwrap()));
    // NaN and infinite weights
    for (case, v) in [("NaN weight", f32::NAN), ("infinite weight", f32::INFINITY)] {
        let mut st = good.clone();
        let mut t = good.get::<f32>("stem.weight").unwrap().into_data();
        t[5] = v;
        st.insert("stem.weight", &Tensor::from_vec(&[3, 4], t).unwrap());
        expect_bad(
            case,
            &g.weights(&st.to_bytes().unwrap()),
            &[
                w,
                "tensor \"stem.weight\" holds a non-finite value at flat index 5",
            ],
        );
    }
    let bytes = good.to_bytes().unwrap();
    // truncated header: the length promises more than the file has
    expect_bad(
        "truncated header",
        &g.weights(&bytes[..40]),
        &[
            w,
            "safetensors: header length",
            "is beyond the end of the file",
        ],
    );
    // truncated data section
    expect_bad(
        "truncated data",
        &g.weights(&bytes[..bytes.len() - 4]),
        &[w, "data_offsets do not cover the data section"],
    );
    // shorter than the length field, empty
    expect_bad(
        "5-byte file",
        &g.weights(&bytes[..5]),
        &[w, "too short for the 8-byte header length"],
    );
    expect_bad("empty file", &g.weights(&[]), &[w, "file is 0 bytes"]);
    // header length u64::MAX
    let mut b = bytes.clone();
    b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    expect_bad(
        "header length u64::MAX",
        &g.weights(&b),
        &[w, "is beyond the end of the file"],
    );
    // header not JSON / not an object
    expect_bad(
        "header not JSON",
        &g.weights(&raw_safetensors("{not json}", &[])),
        &[w, "header is not a JSON object"],
    );
    expect_bad(
        "header is an array",
        &g.weights(&raw_safetensors("[1,2,3]", &[])),
        &[w, "header is not a JSON object"],
    );
    // byte count disagrees with shape
    expect_bad(
        "byte count disagrees with shape",
        &g.weights(&raw_safetensors(
            r#"{"fc.bias":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
            &[0; 8],
        )),
        &[w, "shape and dtype disagree with its data_offsets"],
    );
    // overlapping tensors, duplicate keys, negative shape
    expect_bad(
        "overlapping tensors",
        &g.weights(&raw_safetensors(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
            &[0; 12],
        )),
        &[w, "overlap"],
    );
    expect_bad(
        "duplicate keys",
        &g.weights(&raw_safetensors(
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
            &[0; 8],
        )),
        &[w, "duplicate"],
    );
    expect_bad(
        "negative dimension",
        &g.weights(&raw_safetensors(
            r#"{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#,
            &[0; 4],
        )),
        &[w, "header is not a JSON object of tensor entries"],
    );
    expect_bad(
        "metadata not strings",
        &g.weights(&raw_safetensors(r#"{"__metadata__":{"k":1}}"#, &[])),
        &[w, "header is not a JSON object of tensor entries"],
    );
    // weights file missing
    let o = g.run_with(
        &g.t.join("none.safetensors"),
        &g.t.join("x.safetensors"),
        &g.t.join("out.safetensors"),
    );
    expect_bad(
        "weights file missing",
        &o,
        &["none.safetensors", "No such file"],
    );

    // the input file
    let x = "bad-x.safetensors";
    let mut st = valid_input();
    st.tensors.remove("labels");
    expect_bad(
        "input without labels",
        &g.input(&st.to_bytes().unwrap()),
        &[x, "no tensor named \"labels\""],
    );
    let mut st = valid_input();
    st.tensors.remove("input");
    expect_bad(
        "input without input",
        &g.input(&st.to_bytes().unwrap()),
        &[x, "no tensor named \"input\""],
    );
    let mut st = valid_input();
    st.insert_i64("labels", &[2], &[0, -1]).unwrap();
    expect_bad(
        "negative label",
        &g.input(&st.to_bytes().unwrap()),
        &[x, "negative label -1 at index 1"],
    );
    let mut st = valid_input();
    st.insert_i64("labels", &[2], &[0, 3]).unwrap();
    expect_bad(
        "label out of range",
        &g.input(&st.to_bytes().unwrap()),
        &[x, "label 3 at index 1 is out of range 0..3"],
    );
    let mut st = valid_input();
    st.insert_i64("labels", &[3], &[0, 1, 2]).unwrap();
    expect_bad(
        "labels of the wrong length",
        &g.input(&st.to_bytes().unwrap()),
        &[x, "tensor \"labels\" has shape [3], expected [2]"],
    );
    let mut st = valid_input();
    st.insert(
        "labels",
        &Tensor::<f32>::from_vec(&[2], vec![0.0, 1.0]).unwrap(),
    );
    expect_bad(
        "float labels",
        &g.input(&st.to_bytes().unwrap()),
        &[x, "has dtype F32, expected I64"],
    );
    let mut st = valid_input();
    st.insert(
        "input",
        &Tensor::<f32>::from_vec(&[2, 5], vec![0.0; 10]).unwrap(),
    );
    expect_bad(
        "input of the wrong width",
        &g.input(&st.to_bytes().unwrap()),
        &["tensor \"input\" has shape [2, 5]; the spec wants (N, 4)"],
    );
    let mut st = valid_input();
    let mut v = vec![0.5f32; 8];
    v[3] = f32::NAN;
    st.insert("input", &Tensor::from_vec(&[2, 4], v).unwrap());
    expect_bad(
        "NaN in the input",
        &g.input(&st.to_bytes().unwrap()),
        &[x, "input", "non-finite"],
    );
}

// ---------------------------------------------------------- outputs --

#[test]
fn unwritable_outputs() {
    let g = GradsFiles::new("out");
    expect_bad(
        "grads --out under /proc",
        &g.out(Path::new("/proc/forbidden/o.safetensors")),
        &["/proc/forbidden/o.safetensors"],
    );
    let file = g.t.join("regular");
    write(&file, b"x");
    expect_bad(
        "grads --out under a regular file",
        &g.out(&file.join("o.safetensors")),
        &["regular/o.safetensors", "Not a directory"],
    );
    expect_bad(
        "grads --out is a directory",
        &g.out(g.t.path()),
        &["the target is a directory"],
    );
    // a symlink to /dev/full: refused, and the link is left alone
    let link = g.t.join("full.safetensors");
    symlink("/dev/full", &link).unwrap();
    expect_bad(
        "grads --out symlink to /dev/full",
        &g.out(&link),
        &["/dev/full", "not a regular file"],
    );
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    // a symlink to a regular file is followed: the file is replaced, the link kept
    let real = g.t.join("real.safetensors");
    write(&real, b"old");
    let link2 = g.t.join("link.safetensors");
    symlink(&real, &link2).unwrap();
    expect_ok("grads --out symlink to a file", &g.out(&link2));
    assert!(std::fs::symlink_metadata(&link2)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(SafeTensors::read(&real).unwrap().contains("logits"));

    // train: run directory not creatable
    let t = TempDir::new("bad-train-out");
    for (case, out, needle) in [
        (
            "train --out under /proc",
            PathBuf::from("/proc/forbidden"),
            "/proc/forbidden",
        ),
        (
            "train --out under a regular file",
            file.join("run"),
            "Not a directory",
        ),
    ] {
        let o = resgrad(&[
            OsArg::from("train"),
            "--arch".into(),
            "mlp".into(),
            "--iters".into(),
            "1".into(),
            "--out".into(),
            out.into(),
            "--quiet".into(),
        ]);
        expect_bad(case, &o, &[needle]);
    }
    // derive --json and flow --out go through the same writer
    let o = resgrad(&["derive", "--json", "/proc/forbidden/d.json"]);
    expect_bad("derive --json under /proc", &o, &["/proc/forbidden/d.json"]);
    let spec = g.t.join("spec.json");
    let o = resgrad(&[
        OsArg::from("flow"),
        "--spec".into(),
        spec.into(),
        "--data".into(),
        "synthetic".into(),
        "--batch".into(),
        "4".into(),
        "--out".into(),
        link.into(),
    ]);
    expect_bad(
        "flow --out symlink to /dev/full",
        &o,
        &["/dev/full", "not a regular file"],
    );
    drop(t);
}

/// A full disk: a 96 KiB tmpfs in a private mount namespace (needs root and
/// `unshare`; skipped otherwise). The checkpoint does not fit: exit 2, the
/// error names it, and no temporary file is left behind.
#[test]
fn full_disk() {
    let t = TempDir::new("bad-full");
    let mnt = t.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let script = format!(
        "mount -t tmpfs -o size=96k tmpfs {m} || exit 77; \
         {bin} train --arch mlp --units 1 --hidden 64 --iters 2 --batch 64 --flow-every 1 \
         --quiet --out {m}/run; rc=$?; echo LISTING; ls -A {m}/run; exit $rc",
        m = mnt.display(),
        bin = env!("CARGO_BIN_EXE_resgrad")
    );
    let o = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output();
    let o = match o {
        Ok(o) if o.status.code() == Some(2) => o,
        Ok(o) if o.status.code() == Some(77) || text(&o).1.contains("unshare:") => {
            println!("SKIP full_disk: cannot mount a tmpfs in a private namespace here");
            return;
        }
        Err(e) => {
            println!("SKIP full_disk: cannot run unshare: {e}");
            return;
        }
        Ok(o) => panic!(
            "full disk: unexpected outcome {:?}\n{:?}",
            o.status,
            text(&o)
        ),
    };
    expect_bad(
        "train into a full disk",
        &o,
        &["checkpoint.safetensors", "No space left on device"],
    );
    let (out, _) = text(&o);
    let listing = out.split("LISTING").nth(1).unwrap_or("");
    assert!(
        !listing.contains(".tmp"),
        "temporary file left behind:\n{listing}"
    );
    assert!(
        !listing.contains("checkpoint"),
        "partial checkpoint left behind:\n{listing}"
    );
}

// ------------------------------------------------------ run directories --

#[test]
fn resume_and_config_malformed() {
    let t = TempDir::new("bad-resume");
    let run = t.join("run");
    let o = resgrad(&[
        OsArg::from("train"),
        "--resume".into(),
        run.clone().into(),
        "--quiet".into(),
    ]);
    expect_bad(
        "resume without a run",
        &o,
        &["run/config.json", "No such file"],
    );
    // a real run, then damage it
    let o = resgrad(&[
        OsArg::from("train"),
        "--arch".into(),
        "mlp".into(),
        "--units".into(),
        "1".into(),
        "--hidden".into(),
        "8".into(),
        "--iters".into(),
        "4".into(),
        "--eval-every".into(),
        "2".into(),
        "--batch".into(),
        "32".into(),
        "--quiet".into(),
        "--out".into(),
        run.clone().into(),
    ]);
    expect_ok("a small run", &o);
    let cfg_text = std::fs::read_to_string(run.join("config.json")).unwrap();
    let ck = std::fs::read(run.join("checkpoint.safetensors")).unwrap();
    let resume = || {
        resgrad(&[
            OsArg::from("train"),
            "--resume".into(),
            run.clone().into(),
            "--quiet".into(),
        ])
    };
    write(
        &run.join("config.json"),
        &cfg_text.as_bytes()[..cfg_text.len() / 2],
    );
    expect_bad(
        "resume with a truncated config.json",
        &resume(),
        &["config.json", "EOF while parsing"],
    );
    write(
        &run.join("config.json"),
        cfg_text.replace("\"iters\"", "\"iterations\"").as_bytes(),
    );
    expect_bad(
        "resume with an unknown config field",
        &resume(),
        &["config.json", "unknown field `iterations`"],
    );
    write(
        &run.join("config.json"),
        cfg_text.replace("\"batch\": 32", "\"batch\": 1").as_bytes(),
    );
    expect_bad(
        "resume with batch 1",
        &resume(),
        &["batch must be at least 2"],
    );
    write(&run.join("config.json"), cfg_text.as_bytes());
    write(&run.join("checkpoint.safetensors"), &ck[..ck.len() / 2]);
    expect_bad(
        "resume with a truncated checkpoint",
        &resume(),
        &["checkpoint.safetensors", "do not cover the data section"],
    );
    write(&run.join("checkpoint.safetensors"), b"");
    expect_bad(
        "resume with an empty checkpoint",
        &resume(),
        &["checkpoint.safetensors", "file is 0 bytes"],
    );
    // --config with a bad file
    let c = t.join("c.json");
    write(&c, b"{}");
    let o = resgrad(&[
        OsArg::from("train"),
        "--config".into(),
        c.into(),
        "--out".into(),
        t.join("r2").into(),
    ]);
    expect_bad("train --config {}", &o, &["c.json", "missing field"]);
}

#[test]
fn cli_values_malformed() {
    let t = TempDir::new("bad-cli");
    let out = t.join("run");
    let train = |extra: &[&str]| {
        let mut a: Vec<OsArg> = [
            "train", "--arch", "mlp", "--units", "1", "--hidden", "8", "--quiet",
        ]
        .iter()
        .map(OsArg::from)
        .collect();
        a.extend(extra.iter().map(OsArg::from));
        a.push("--out".into());
        a.push(out.clone().into());
        resgrad(&a)
    };
    let cases: Vec<(&str, Vec<&str>, Vec<&str>)> = vec![
        (
            "unknown data set",
            vec!["--data", "imagenet:/x", "--iters", "1"],
            vec!["unknown data set \"imagenet\""],
        ),
        (
            "data set without directory",
            vec!["--data", "cifar10:", "--iters", "1"],
            vec!["names no directory"],
        ),
        (
            "unknown shortcut",
            vec!["--shortcut", "teleport", "--iters", "1"],
            vec!["unknown shortcut \"teleport\""],
        ),
        (
            "batch 1",
            vec!["--batch", "1", "--iters", "1"],
            vec!["batch must be at least 2"],
        ),
        (
            "batch larger than the data",
            vec!["--batch", "5000", "--iters", "1"],
            vec!["batch size 5000"],
        ),
        (
            "lr NaN",
            vec!["--lr", "NaN", "--iters", "1"],
            vec!["learning rate must be finite and > 0, got NaN"],
        ),
        (
            "lr negative",
            vec!["--lr=-0.1", "--iters", "1"],
            vec!["learning rate must be finite and > 0"],
        ),
        (
            "momentum 1",
            vec!["--momentum", "1", "--iters", "1"],
            vec!["momentum must be in [0, 1)"],
        ),
        (
            "val too large",
            vec!["--val", "100000", "--iters", "1"],
            vec!["validation size 100000"],
        ),
        (
            "val too large with epochs",
            vec!["--val", "100000", "--epochs", "1"],
            vec!["--epochs", "no full batch"],
        ),
        (
            "not a number",
            vec!["--iters", "many"],
            vec!["invalid value 'many'"],
        ),
        (
            "unknown flag",
            vec!["--colour", "red"],
            vec!["unexpected argument '--colour'"],
        ),
    ];
    for (case, extra, needles) in cases {
        expect_bad(case, &train(&extra), &needles);
    }
    let o = resgrad(&["train", "--arch", "vit", "--iters", "1", "--quiet"]);
    expect_bad("unknown arch", &o, &["unknown arch \"vit\""]);
    let o = resgrad(&[
        "train",
        "--arch",
        "mlp",
        "--hidden",
        "100000000",
        "--iters",
        "1",
        "--quiet",
    ]);
    expect_bad("hidden absurd", &o, &["parameters, more than the"]);
}
