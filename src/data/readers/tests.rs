use super::super::testutil::{shared_data, TempDir};
use super::*;
use std::io::Write;
use std::time::Instant;

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// `n` CIFAR records; label of record i = i % classes; pixel j = (i + j) % 256.
fn cifar_bytes(n: usize, label_bytes: usize, classes: usize) -> Vec<u8> {
    let mut v = Vec::new();
    for i in 0..n {
        if label_bytes == 2 {
            v.push((i % 20) as u8);
        }
        v.push((i % classes) as u8);
        v.extend((0..CIFAR_PIXELS).map(|j| ((i + j) % 256) as u8));
    }
    v
}

fn write(p: &Path, b: &[u8]) {
    std::fs::write(p, b).unwrap();
}

pub(crate) fn tar_gz(members: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(enc);
    for (name, data) in members {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

fn cifar10_dir(d: &Path) {
    for k in 1..=5 {
        write(
            &d.join(format!("data_batch_{k}.bin")),
            &cifar_bytes(3, 1, 10),
        );
    }
    write(&d.join("test_batch.bin"), &cifar_bytes(2, 1, 10));
}

fn check_cifar10_toy(s: &DataSplit) {
    assert_eq!((s.train.n, s.test.n), (15, 2));
    assert_eq!(
        (s.train.c, s.train.h, s.train.w, s.train.classes),
        (3, 32, 32, 10)
    );
    assert_eq!(s.train.images.len(), 15 * 3072);
    assert_eq!(s.train.labels[..4], [0, 1, 2, 0]);
    assert_eq!(s.train.image(1)[0], 1.0);
    assert_eq!(s.train.image(1)[3071], ((1 + 3071) % 256) as f32);
    assert_eq!(s.test.labels, vec![0, 1]);
}

#[test]
fn cifar10_dir_reads() {
    let t = TempDir::new("c10dir");
    cifar10_dir(t.path());
    check_cifar10_toy(&read_cifar10(t.path()).unwrap());
    // the official sub-folder layout
    let t2 = TempDir::new("c10sub");
    let sub = t2.path().join("cifar-10-batches-bin");
    std::fs::create_dir(&sub).unwrap();
    cifar10_dir(&sub);
    check_cifar10_toy(&read_cifar10(t2.path()).unwrap());
}

#[test]
fn cifar10_tar_gz_reads() {
    let t = TempDir::new("c10tar");
    let mut m: Vec<(String, Vec<u8>)> = vec![(
        "cifar-10-batches-bin/batches.meta.txt".into(),
        b"airplane\n".to_vec(),
    )];
    for k in 1..=5 {
        m.push((
            format!("cifar-10-batches-bin/data_batch_{k}.bin"),
            cifar_bytes(3, 1, 10),
        ));
    }
    m.push((
        "cifar-10-batches-bin/test_batch.bin".into(),
        cifar_bytes(2, 1, 10),
    ));
    let refs: Vec<(&str, Vec<u8>)> = m.iter().map(|(a, b)| (a.as_str(), b.clone())).collect();
    let p = t.path().join("cifar-10-binary.tar.gz");
    write(&p, &tar_gz(&refs));
    check_cifar10_toy(&read_cifar10(&p).unwrap());
    // the archive inside a directory
    check_cifar10_toy(&read_cifar10(t.path()).unwrap());

    // a member missing from the archive is named
    let p2 = t.path().join("short.tar.gz");
    write(&p2, &tar_gz(&refs[..3]));
    let e = read_cifar10(&p2).unwrap_err().to_string();
    assert!(
        e.contains("data_batch_3.bin") && e.contains("short.tar.gz"),
        "{e}"
    );
    // not a gzip stream
    let p3 = t.path().join("junk.tar.gz");
    write(&p3, b"this is not gzip");
    assert!(matches!(read_cifar10(&p3), Err(Error::Format { .. })));
}

#[test]
fn cifar100_reads_fine_label() {
    let t = TempDir::new("c100");
    write(&t.path().join("train.bin"), &cifar_bytes(120, 2, 100));
    write(&t.path().join("test.bin"), &cifar_bytes(5, 2, 100));
    let s = read_cifar100(t.path()).unwrap();
    assert_eq!((s.train.n, s.test.n, s.train.classes), (120, 5, 100));
    assert_eq!(s.train.labels[99], 99);
    assert_eq!(s.train.labels[101], 1);
    assert_eq!(s.train.image(2)[0], 2.0);
    // and as the official archive
    let p = t.path().join("cifar-100-binary.tar.gz");
    write(
        &p,
        &tar_gz(&[
            ("cifar-100-binary/train.bin", cifar_bytes(120, 2, 100)),
            ("cifar-100-binary/test.bin", cifar_bytes(5, 2, 100)),
        ]),
    );
    assert_eq!(read_cifar100(&p).unwrap(), s);
    // coarse label out of range
    let mut bad = cifar_bytes(2, 2, 100);
    bad[0] = 20;
    write(&t.path().join("test.bin"), &bad);
    let e = read_cifar100(t.path()).unwrap_err().to_string();
    assert!(
        e.contains("test.bin") && e.contains("coarse label 20"),
        "{e}"
    );
}

#[test]
fn cifar_malformed_inputs() {
    let t = TempDir::new("c10bad");
    cifar10_dir(t.path());
    // truncated record
    let mut b = cifar_bytes(3, 1, 10);
    b.pop();
    write(&t.path().join("data_batch_2.bin"), &b);
    let e = read_cifar10(t.path()).unwrap_err();
    assert!(matches!(e, Error::Format { .. }));
    let e = e.to_string();
    assert!(
        e.contains("data_batch_2.bin") && e.contains("3073-byte records"),
        "{e}"
    );
    // label out of range
    let mut b = cifar_bytes(3, 1, 10);
    b[3073] = 10;
    write(&t.path().join("data_batch_2.bin"), &b);
    let e = read_cifar10(t.path()).unwrap_err().to_string();
    assert!(
        e.contains("data_batch_2.bin") && e.contains("record 1: label 10"),
        "{e}"
    );
    // empty file
    write(&t.path().join("data_batch_2.bin"), &[]);
    let e = read_cifar10(t.path()).unwrap_err().to_string();
    assert!(e.contains("data_batch_2.bin") && e.contains("empty"), "{e}");
    // missing batch
    std::fs::remove_file(t.path().join("data_batch_2.bin")).unwrap();
    let e = read_cifar10(t.path()).unwrap_err();
    assert!(matches!(e, Error::Io { .. }));
    assert!(e.to_string().contains("data_batch_2.bin"), "{e}");
    // missing test batch
    cifar10_dir(t.path());
    std::fs::remove_file(t.path().join("test_batch.bin")).unwrap();
    assert!(read_cifar10(t.path())
        .unwrap_err()
        .to_string()
        .contains("test_batch.bin"));
    // empty directory: names the first batch
    let t2 = TempDir::new("c10empty");
    assert!(read_cifar10(t2.path())
        .unwrap_err()
        .to_string()
        .contains("data_batch_1.bin"));
    // nonexistent path
    assert!(matches!(
        read_cifar10(&t2.path().join("nope")),
        Err(Error::Io { .. })
    ));
}

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

fn mnist_dir(d: &Path, gzip: bool) {
    let files = [
        ("train-images-idx3-ubyte", idx_images(12, 28, 28)),
        ("train-labels-idx1-ubyte", idx_labels(12)),
        ("t10k-images-idx3-ubyte", idx_images(4, 28, 28)),
        ("t10k-labels-idx1-ubyte", idx_labels(4)),
    ];
    for (name, b) in files {
        if gzip {
            write(&d.join(format!("{name}.gz")), &gz(&b));
        } else {
            write(&d.join(name), &b);
        }
    }
}

#[test]
fn mnist_raw_and_gz_read_identically() {
    let a = TempDir::new("mnraw");
    let b = TempDir::new("mngz");
    mnist_dir(a.path(), false);
    mnist_dir(b.path(), true);
    let sa = read_mnist(a.path()).unwrap();
    let sb = read_mnist(b.path()).unwrap();
    assert_eq!(sa, sb);
    assert_eq!((sa.train.n, sa.test.n), (12, 4));
    assert_eq!((sa.train.c, sa.train.h, sa.train.w), (1, 28, 28));
    assert_eq!(sa.train.labels[11], 1);
    assert_eq!(sa.train.image(1)[0], (784 % 256) as f32);
}

#[test]
fn mnist_malformed_inputs() {
    let t = TempDir::new("mnbad");
    mnist_dir(t.path(), false);
    let img = t.path().join("train-images-idx3-ubyte");
    let lab = t.path().join("train-labels-idx1-ubyte");
    let err = |needle: &str| {
        let e = read_mnist(t.path()).unwrap_err();
        assert!(matches!(e, Error::Format { .. } | Error::Io { .. }));
        let e = e.to_string();
        assert!(e.contains(needle), "{e:?} lacks {needle:?}");
        e
    };
    // wrong magic (labels magic in an image file)
    let mut b = idx_images(12, 28, 28);
    b[3] = 0x01;
    write(&img, &b);
    let e = err("wrong magic number 2049");
    assert!(e.contains("train-images-idx3-ubyte"));
    // wrong dims (header claims 29 rows)
    write(&img, &{
        let mut b = idx_images(12, 28, 28);
        b[11] = 29;
        b
    });
    err("12 images of 29x28");
    // truncated
    let mut b = idx_images(12, 28, 28);
    b.truncate(b.len() - 5);
    write(&img, &b);
    err("train-images-idx3-ubyte");
    // empty file
    write(&img, &[]);
    err("too short");
    write(&img, &idx_images(12, 28, 28));
    // label out of range
    let mut b = idx_labels(12);
    b[8 + 3] = 10;
    write(&lab, &b);
    err("label 3 is 10");
    // count mismatch between images and labels
    write(&lab, &idx_labels(11));
    err("11 labels");
    // corrupt gzip
    std::fs::remove_file(&lab).unwrap();
    write(
        &t.path().join("train-labels-idx1-ubyte.gz"),
        &[0x1f, 0x8b, 1, 2, 3],
    );
    err("invalid gzip");
    // missing file
    std::fs::remove_file(t.path().join("train-labels-idx1-ubyte.gz")).unwrap();
    err("train-labels-idx1-ubyte");
}

fn csv_rows(n: usize) -> String {
    let mut s = String::new();
    for i in 0..n {
        let px: Vec<String> = (0..784).map(|j| ((i * 7 + j) % 256).to_string()).collect();
        s += &format!("{},{}\n", px.join(","), i % 10);
    }
    s
}

#[test]
fn csv_gz_reads_and_validates() {
    let t = TempDir::new("csv");
    let p = t.path().join("digits.csv.gz");
    write(&p, &gz(csv_rows(13).as_bytes()));
    let d = read_mnist_csv(&p).unwrap();
    assert_eq!((d.n, d.c, d.h, d.w, d.classes), (13, 1, 28, 28, 10));
    assert_eq!(d.labels[12], 2);
    assert_eq!(d.image(1)[0], 7.0);
    // plain CSV works too
    let p2 = t.path().join("digits.csv");
    write(&p2, csv_rows(13).as_bytes());
    assert_eq!(read_mnist_csv(&p2).unwrap().images, d.images);

    let bad = |text: String, needle: &str| {
        write(&p2, text.as_bytes());
        let e = read_mnist_csv(&p2).unwrap_err();
        assert!(matches!(e, Error::Format { .. }));
        let e = e.to_string();
        assert!(
            e.contains(needle) && e.contains("digits.csv"),
            "{e:?} lacks {needle:?}"
        );
    };
    bad(String::new(), "empty");
    bad(csv_rows(2).replacen("\n", ",5\n", 1), "line 1: 786 fields");
    bad(csv_rows(2).replace(",1\n", ",11\n"), "line 2: label 11");
    bad(
        format!("{}300,{}", csv_rows(1), csv_rows(1)),
        "line 2: pixel 1 is 300",
    );
    bad(csv_rows(2).replacen("0", "x", 1), "not a whole number");
    // truncated row
    let mut s = csv_rows(2);
    s.truncate(s.len() - 100);
    bad(s, "line 2");
}

#[test]
fn builtin_mnist5k_is_stratified_and_deterministic() {
    let s = builtin_mnist5k().unwrap();
    assert_eq!((s.train.n, s.test.n), (4000, 1000));
    assert_eq!(s.train.class_histogram(), vec![400; 10]);
    assert_eq!(s.test.class_histogram(), vec![100; 10]);
    assert_eq!((s.train.c, s.train.h, s.train.w), (1, 28, 28));
    assert!(s.train.images.iter().all(|&v| (0.0..=255.0).contains(&v)));
    let again = builtin_mnist5k().unwrap();
    assert_eq!(s, again);
    // the two splits partition the 5,000 digits
    let all = parse_mnist_csv(MNIST5K_CSV_GZ, Path::new("x"), "x").unwrap();
    let mut pixsum_all: f64 = all.images.iter().map(|&v| v as f64).sum();
    pixsum_all -= s.train.images.iter().map(|&v| v as f64).sum::<f64>();
    pixsum_all -= s.test.images.iter().map(|&v| v as f64).sum::<f64>();
    assert_eq!(pixsum_all, 0.0);
}

#[test]
fn real_cifar10_when_present() {
    let Some(root) = shared_data() else {
        println!("SKIP real_cifar10_when_present: ../shared/data not found");
        return;
    };
    let dir = root.join("cifar-10-batches-bin");
    if !dir.is_dir() {
        println!(
            "SKIP real_cifar10_when_present: {} not found",
            dir.display()
        );
        return;
    }
    let t0 = Instant::now();
    let s = read_cifar10(&dir).unwrap();
    println!("loaded CIFAR-10 (50k + 10k) in {:.2?}", t0.elapsed());
    assert_eq!((s.train.n, s.test.n), (50000, 10000));
    assert_eq!(s.train.images.len(), 50000 * 3072);
    assert_eq!(s.train.class_histogram(), vec![5000; 10]);
    assert_eq!(s.test.class_histogram(), vec![1000; 10]);
    // the first training image is a frog (label 6), the first test image a cat (3)
    assert_eq!(s.train.labels[0], 6);
    assert_eq!(s.test.labels[0], 3);
    // background loader throughput with the paper's augmentation
    let train = std::sync::Arc::new(s.train.clone());
    let loader =
        super::super::Loader::new(train, 128, 1, Some(super::super::Augment::cifar())).unwrap();
    let t0 = Instant::now();
    let mut it = loader.epoch(0);
    let mut k = 0;
    while let Some(b) = it.next() {
        assert_eq!(b.dims(), [128, 3, 32, 32]);
        k += 1;
        it.recycle(b);
    }
    assert_eq!(k, 390);
    println!(
        "one CIFAR-10 epoch of 390 augmented batches of 128 in {:.2?}",
        t0.elapsed()
    );
    let norm = Norm::of(&s.train);
    // the well-known CIFAR-10 channel means (0.4914, 0.4822, 0.4465) * 255
    for (m, want) in norm.mean.iter().zip([125.3, 123.0, 113.9]) {
        assert!((m - want).abs() < 0.5, "{:?}", norm);
    }
}

use super::super::Norm;

#[test]
fn real_mnist_when_present() {
    let Some(root) = shared_data() else {
        println!("SKIP real_mnist_when_present: ../shared/data not found");
        return;
    };
    let dir = root.join("mnist");
    if !dir.is_dir() {
        println!("SKIP real_mnist_when_present: {} not found", dir.display());
        return;
    }
    let t0 = Instant::now();
    let s = read_mnist(&dir).unwrap();
    println!("loaded MNIST (60k + 10k, gz) in {:.2?}", t0.elapsed());
    assert_eq!((s.train.n, s.test.n), (60000, 10000));
    assert_eq!((s.train.h, s.train.w), (28, 28));
    assert_eq!(
        s.train.class_histogram(),
        vec![5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    );
    assert_eq!(
        s.test.class_histogram(),
        vec![980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    );
}

#[test]
fn real_mnist5k_when_present() {
    let Some(root) = shared_data() else {
        println!("SKIP real_mnist5k_when_present: ../shared/data not found");
        return;
    };
    let p = root.join("mnist5k/mnist_5k.csv.gz");
    if !p.is_file() {
        println!("SKIP real_mnist5k_when_present: {} not found", p.display());
        return;
    }
    let d = read_mnist_csv(&p).unwrap();
    assert_eq!(d.n, 5000);
    assert_eq!(d.class_histogram(), vec![500; 10]);
    // the embedded copy is the same file
    assert_eq!(std::fs::read(&p).unwrap(), MNIST5K_CSV_GZ);
}
