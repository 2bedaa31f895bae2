//! `.npz` files written from the tests (no Python needed): `.npy` members
//! as `np.save` writes them (format 1.0, header padded to 64 bytes) in a
//! zip archive, stored as `np.savez` does or deflated as
//! `np.savez_compressed` does.

use std::io::Write;
use std::path::Path;

/// A `.npy` file: `descr` (`|u1`, `<f4`, `<i8`, ...), `shape`, raw data.
pub fn npy(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let tuple = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {tuple}, }}");
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut v = b"\x93NUMPY\x01\x00".to_vec();
    v.extend((h.len() as u16).to_le_bytes());
    v.extend(h.as_bytes());
    v.extend(data);
    v
}

/// An `.npz` of `members` (`name` without `.npy`, bytes), deflated or stored.
pub fn write_npz(path: &Path, members: &[(&str, Vec<u8>)], deflate: bool) {
    let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let method = if deflate {
        zip::CompressionMethod::Deflated
    } else {
        zip::CompressionMethod::Stored
    };
    let opts = zip::write::SimpleFileOptions::default().compression_method(method);
    for (name, bytes) in members {
        z.start_file(format!("{name}.npy"), opts).unwrap();
        z.write_all(bytes).unwrap();
    }
    z.finish().unwrap();
}

/// Little-endian bytes of `f32`s.
pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A small two-class data set: `n` train and `n / 2` test RGB 6x6 images
/// in N,H,W,C uint8 (class 1 brighter), labels uint8. Returns the members.
pub fn rgb_members(n: usize) -> Vec<(&'static str, Vec<u8>)> {
    let images = |n: usize, salt: usize| -> (Vec<u8>, Vec<u8>) {
        let mut x = Vec::new();
        let mut y = Vec::new();
        for i in 0..n {
            let class = i % 2;
            for j in 0..6 * 6 * 3 {
                x.push((40 + 150 * class + (j * 7 + i * 13 + salt) % 31) as u8);
            }
            y.push(class as u8);
        }
        (x, y)
    };
    let (x, y) = images(n, 0);
    let (xt, yt) = images(n / 2, 5);
    vec![
        ("x_train", npy("|u1", &[n, 6, 6, 3], &x)),
        ("y_train", npy("|u1", &[n], &y)),
        ("x_test", npy("|u1", &[n / 2, 6, 6, 3], &xt)),
        ("y_test", npy("|u1", &[n / 2], &yt)),
    ]
}
