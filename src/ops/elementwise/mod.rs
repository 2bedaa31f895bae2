//! Scale by a constant, elementwise add and multiply, per-channel bias add.
//!
//! Forward / backward, elementwise over buffers of one length (bias add:
//! x (N, C, HW), bias (C)):
//!
//! ```text
//! scale:    out_i = a * x_i           d out_i / d x_i = a        =>  dx_i += a * dout_i
//! add:      out_i = a_i + b_i         d out_i / d a_i = 1        =>  da_i += dout_i
//!                                     d out_i / d b_i = 1        =>  db_i += dout_i
//! mul:      out_i = a_i * b_i         d out_i / d a_i = b_i      =>  da_i += dout_i * b_i
//!                                     d out_i / d b_i = a_i      =>  db_i += dout_i * a_i
//! bias add: x[n,c,p] += bias[c]       d x'[n,c,p] / d bias[c] = 1 (for every n, p)
//!                                                                =>  dbias[c] += sum_{n,p} dout[n,c,p]
//!                                     d x'[n,c,p] / d x[n,c,p] = 1  =>  dx = dout (passes through
//!                                                                    unchanged; nothing to do)
//! ```
//!
//! (Every partial not written is 0: element i of the output depends on
//! element i of the inputs only.)

use crate::error::{check_len, check_nonzero, Result};
use crate::scalar::Scalar;

/// `out = a * inp`.
pub fn scale_forward<T: Scalar>(
    out: &mut [T], // (len)
    inp: &[T],     // (len)
    a: T,
) -> Result<()> {
    check_len("scale", "output", out, &[inp.len()])?;
    for (o, &x) in out.iter_mut().zip(inp) {
        *o = a * x;
    }
    Ok(())
}

/// `x = a * x`, in place (a branch's output scaled at initialisation).
pub fn scale_in_place<T: Scalar>(x: &mut [T], a: T) {
    for v in x.iter_mut() {
        *v = a * *v;
    }
}

/// `dinp += a * dout`.
pub fn scale_backward<T: Scalar>(
    dinp: &mut [T], // (len)
    dout: &[T],     // (len)
    a: T,
) -> Result<()> {
    check_len("scale", "dinp", dinp, &[dout.len()])?;
    for (d, &g) in dinp.iter_mut().zip(dout) {
        *d += a * g;
    }
    Ok(())
}

/// `out = a + b`.
pub fn add_forward<T: Scalar>(
    out: &mut [T], // (len)
    a: &[T],       // (len)
    b: &[T],       // (len)
) -> Result<()> {
    check_len("add", "b", b, &[a.len()])?;
    check_len("add", "output", out, &[a.len()])?;
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = x + y;
    }
    Ok(())
}

/// `da += dout; db += dout`.
pub fn add_backward<T: Scalar>(
    da: &mut [T], // (len)
    db: &mut [T], // (len)
    dout: &[T],   // (len)
) -> Result<()> {
    check_len("add", "da", da, &[dout.len()])?;
    check_len("add", "db", db, &[dout.len()])?;
    for ((x, y), &g) in da.iter_mut().zip(db.iter_mut()).zip(dout) {
        *x += g;
        *y += g;
    }
    Ok(())
}

/// `out = a * b` (elementwise).
pub fn mul_forward<T: Scalar>(
    out: &mut [T], // (len)
    a: &[T],       // (len)
    b: &[T],       // (len)
) -> Result<()> {
    check_len("mul", "b", b, &[a.len()])?;
    check_len("mul", "output", out, &[a.len()])?;
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = x * y;
    }
    Ok(())
}

/// `da += dout * b; db += dout * a`.
pub fn mul_backward<T: Scalar>(
    da: &mut [T], // (len)
    db: &mut [T], // (len)
    dout: &[T],   // (len)
    a: &[T],      // (len)
    b: &[T],      // (len)
) -> Result<()> {
    let len = dout.len();
    check_len("mul", "da", da, &[len])?;
    check_len("mul", "db", db, &[len])?;
    check_len("mul", "a", a, &[len])?;
    check_len("mul", "b", b, &[len])?;
    for ((((dx, dy), &g), &x), &y) in da.iter_mut().zip(db.iter_mut()).zip(dout).zip(a).zip(b) {
        *dx += g * y;
        *dy += g * x;
    }
    Ok(())
}

fn check_bias<T>(
    what: &'static str,
    x: &[T],
    bias: &[T],
    n: usize,
    c: usize,
    hw: usize,
) -> Result<()> {
    check_nonzero("bias_add", "batch size", n)?;
    check_nonzero("bias_add", "channels", c)?;
    check_nonzero("bias_add", "positions (HW)", hw)?;
    check_len("bias_add", what, x, &[n, c, hw])?;
    check_len(
        "bias_add",
        if what == "x" { "bias" } else { "dbias" },
        bias,
        &[c],
    )
}

/// In place: `x[n, c, p] += bias[c]` for x (N, C, HW).
pub fn bias_add_forward<T: Scalar>(
    x: &mut [T], // (N, C, HW)
    bias: &[T],  // (C)
    n: usize,
    c: usize,
    hw: usize,
) -> Result<()> {
    check_bias("x", x, bias, n, c, hw)?;
    for (i, blk) in x.chunks_exact_mut(hw).enumerate() {
        let b = bias[i % c];
        blk.iter_mut().for_each(|v| *v += b);
    }
    Ok(())
}

/// `dbias[c] += sum_{n,p} dout[n, c, p]` (summed in f64). The gradient of
/// `x` itself is `dout` unchanged.
pub fn bias_add_backward<T: Scalar>(
    dbias: &mut [T], // (C)
    dout: &[T],      // (N, C, HW)
    n: usize,
    c: usize,
    hw: usize,
) -> Result<()> {
    check_bias("dout", dout, dbias, n, c, hw)?;
    let mut sums = vec![0.0f64; c];
    for (i, blk) in dout.chunks_exact(hw).enumerate() {
        sums[i % c] += blk.iter().map(|v| v.f64()).sum::<f64>();
    }
    for (d, s) in dbias.iter_mut().zip(sums) {
        *d += T::of(s);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check_layer, Rand};

    #[test]
    fn hand_computed_cases() {
        // scale by 3: [1, -2] -> [3, -6]; backward of dout [1, 1] adds 3 to each
        let mut o = [0.0f64; 2];
        scale_forward(&mut o, &[1.0, -2.0], 3.0).unwrap();
        assert_eq!(o, [3.0, -6.0]);
        // in place, the same bits as scale_forward
        let mut x = [1.0f64, -2.0];
        scale_in_place(&mut x, 3.0);
        assert_eq!(x, o);
        let mut d = [1.0; 2];
        scale_backward(&mut d, &[1.0, 2.0], 3.0).unwrap();
        assert_eq!(d, [4.0, 7.0]);
        // add: [1, 2] + [10, 20] = [11, 22]; dout [5, 6] flows into both, added to 1
        add_forward(&mut o, &[1.0, 2.0], &[10.0, 20.0]).unwrap();
        assert_eq!(o, [11.0, 22.0]);
        let (mut da, mut db) = ([1.0; 2], [1.0; 2]);
        add_backward(&mut da, &mut db, &[5.0, 6.0]).unwrap();
        assert!(da == [6.0, 7.0] && db == [6.0, 7.0]);
        // mul: [2, 3] * [4, -5] = [8, -15]; dout [1, 2]: da = dout*b = [4, -10], db = dout*a = [2, 6]
        mul_forward(&mut o, &[2.0, 3.0], &[4.0, -5.0]).unwrap();
        assert_eq!(o, [8.0, -15.0]);
        let (mut da, mut db) = ([0.0; 2], [0.0; 2]);
        mul_backward(&mut da, &mut db, &[1.0, 2.0], &[2.0, 3.0], &[4.0, -5.0]).unwrap();
        assert!(da == [4.0, -10.0] && db == [2.0, 6.0], "{da:?} {db:?}");
        // bias add, N=2, C=2, HW=2, bias [10, 20]:
        // x = [[0,1],[2,3]],[[4,5],[6,7]] -> [[10,11],[22,23]],[[14,15],[26,27]]
        let mut x: Vec<f64> = (0..8).map(f64::from).collect();
        bias_add_forward(&mut x, &[10.0, 20.0], 2, 2, 2).unwrap();
        assert_eq!(x, [10.0, 11.0, 22.0, 23.0, 14.0, 15.0, 26.0, 27.0]);
        // dbias[0] = dout 0+1+4+5 = 10, dbias[1] = 2+3+6+7 = 18, added to 1
        let dout: Vec<f64> = (0..8).map(f64::from).collect();
        let mut db = [1.0; 2];
        bias_add_backward(&mut db, &dout, 2, 2, 2).unwrap();
        assert_eq!(db, [11.0, 19.0]);
    }

    #[test]
    fn gradcheck() {
        let mut r = Rand::new(1);
        for &(n, c, hw) in &[(1usize, 1usize, 1usize), (2, 3, 5), (3, 4, 1)] {
            let len = n * c * hw;
            let mut xs = vec![r.normal_vec(len)];
            let e = check_layer(
                &mut xs,
                len,
                |p, out| scale_forward(out, &p[0], -1.7).unwrap(),
                |_, dout, g| scale_backward(&mut g[0], dout, -1.7).unwrap(),
                &mut r,
            );
            assert!(e < 1e-6, "scale len {len}: {e:e}");
            let mut xs = vec![r.normal_vec(len), r.normal_vec(len)];
            let e = check_layer(
                &mut xs,
                len,
                |p, out| add_forward(out, &p[0], &p[1]).unwrap(),
                |_, dout, g| {
                    let (ga, gb) = g.split_at_mut(1);
                    add_backward(&mut ga[0], &mut gb[0], dout).unwrap()
                },
                &mut r,
            );
            assert!(e < 1e-6, "add len {len}: {e:e}");
            let mut xs = vec![r.normal_vec(len), r.normal_vec(len)];
            let e = check_layer(
                &mut xs,
                len,
                |p, out| mul_forward(out, &p[0], &p[1]).unwrap(),
                |p, dout, g| {
                    let (ga, gb) = g.split_at_mut(1);
                    mul_backward(&mut ga[0], &mut gb[0], dout, &p[0], &p[1]).unwrap()
                },
                &mut r,
            );
            assert!(e < 1e-6, "mul len {len}: {e:e}");
            // bias add: inputs x and bias; x's gradient is dout passed through
            let mut xs = vec![r.normal_vec(len), r.normal_vec(c)];
            let e = check_layer(
                &mut xs,
                len,
                |p, out| {
                    out.copy_from_slice(&p[0]);
                    bias_add_forward(out, &p[1], n, c, hw).unwrap()
                },
                |_, dout, g| {
                    g[0].iter_mut().zip(dout).for_each(|(d, &v)| *d += v);
                    bias_add_backward(&mut g[1], dout, n, c, hw).unwrap()
                },
                &mut r,
            );
            assert!(e < 1e-6, "bias_add {n}x{c}x{hw}: {e:e}");
        }
    }

    #[test]
    fn errors_name_the_op() {
        let check = |r: Result<()>, op: &str, what: &str| {
            let msg = r.unwrap_err().to_string();
            assert!(msg.starts_with(op) && msg.contains(what), "{msg}");
        };
        let (mut o, mut p) = ([0.0f32; 3], [0.0f32; 3]);
        check(scale_forward(&mut o, &[0.0; 2], 2.0), "scale", "output");
        check(scale_backward(&mut o, &[0.0; 4], 2.0), "scale", "dinp");
        check(add_forward(&mut o, &[0.0; 3], &[0.0; 2]), "add", "b");
        check(
            add_forward(&mut o[..2], &[0.0; 3], &[0.0; 3]),
            "add",
            "output",
        );
        check(add_backward(&mut o[..2], &mut p, &[0.0; 3]), "add", "da");
        check(add_backward(&mut o, &mut p[..1], &[0.0; 3]), "add", "db");
        check(mul_forward(&mut o, &[0.0; 3], &[0.0; 4]), "mul", "b");
        check(
            mul_forward(&mut o[..1], &[0.0; 3], &[0.0; 3]),
            "mul",
            "output",
        );
        check(
            mul_backward(&mut o[..2], &mut p, &[0.0; 3], &[0.0; 3], &[0.0; 3]),
            "mul",
            "da",
        );
        check(
            mul_backward(&mut o, &mut p[..2], &[0.0; 3], &[0.0; 3], &[0.0; 3]),
            "mul",
            "db",
        );
        check(
            mul_backward(&mut o, &mut p, &[0.0; 3], &[0.0; 2], &[0.0; 3]),
            "mul",
            "a",
        );
        check(
            mul_backward(&mut o, &mut p, &[0.0; 3], &[0.0; 3], &[0.0; 2]),
            "mul",
            "b",
        );
        let mut x = [0.0f32; 12];
        check(
            bias_add_forward(&mut x[..11], &[0.0; 3], 2, 3, 2),
            "bias_add",
            "x",
        );
        check(
            bias_add_forward(&mut x, &[0.0; 2], 2, 3, 2),
            "bias_add",
            "bias",
        );
        check(
            bias_add_forward(&mut x, &[0.0; 3], 2, 0, 2),
            "bias_add",
            "channels",
        );
        check(
            bias_add_backward(&mut p, &[0.0; 13], 2, 3, 2),
            "bias_add",
            "dout",
        );
        check(
            bias_add_backward(&mut p[..2], &[0.0; 12], 2, 3, 2),
            "bias_add",
            "dbias",
        );
    }
}
