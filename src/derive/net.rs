//! The tiny network of the derivation, forward and backward written out by
//! hand (llm.c style): the forward stores every activation the backward
//! reads, the backward says what each forward line was and what that makes
//! the gradient. Two residual units, each with two `d x d` linear layers,
//! then a classifier head and softmax cross-entropy (mean over the batch).
//!
//! Two forms of the unit (He et al. 2016, arXiv 1603.05027):
//!
//! ```text
//! post-activation (original ResNet):  out = ReLU(a),     a = Wb ReLU(Wa x + ba) + bb + x
//! pre-activation, lambda-scaled:      out = lambda x + F(x),  F(x) = Wb ReLU(Wa ReLU(x) + ba) + bb
//! ```
//!
//! The pre-activation `F` is the "full pre-activation" order of the paper
//! (Fig. 4e) without batch norm: ReLU -> Linear -> ReLU -> Linear. Nothing
//! follows the addition, so `lambda = 1` is the identity shortcut. As in the
//! paper's pre-activation nets, one extra ReLU sits after the last unit,
//! before the classifier.

use crate::error::Result;
use crate::gradcheck::Rand;
use crate::ops::activation::{relu_backward, relu_forward};
use crate::ops::linear::LinearShape;
use crate::ops::softmax_ce::{softmax_ce_backward, softmax_ce_forward};
use serde::{Deserialize, Serialize};

/// Which residual unit the network is built of.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Form {
    /// `x_{l+2} = ReLU(F(x_l) + x_l)`: a ReLU after the addition.
    PostAct,
    /// `x_{l+2} = lambda x_l + F(x_l)`: nothing after the addition.
    PreAct { lambda: f64 },
}

/// One linear layer `out = W in + b`, `W` row-major (rows = out, cols = in).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Layer {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    pub weight: Vec<f64>,
    pub bias: Vec<f64>,
}

/// All parameters: `layers[0..4]` are F1..F4 (d x d), `layers[4]` the head
/// W_out (K x d).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Params {
    pub width: usize,
    pub classes: usize,
    pub layers: Vec<Layer>,
}

impl Params {
    /// Seeded small weights: `W ~ N(0, 1/fan_in)` (LeCun normal),
    /// `b ~ N(0, 0.1^2)`.
    pub fn random(width: usize, classes: usize, rng: &mut Rand) -> Params {
        let std = 1.0 / (width as f64).sqrt();
        let mut layer = |name: &str, rows: usize| Layer {
            name: name.to_string(),
            rows,
            cols: width,
            weight: rng
                .normal_vec(rows * width)
                .iter()
                .map(|v| v * std)
                .collect(),
            bias: rng.normal_vec(rows).iter().map(|v| v * 0.1).collect(),
        };
        let layers = vec![
            layer("F1", width),
            layer("F2", width),
            layer("F3", width),
            layer("F4", width),
            layer("W_out", classes),
        ];
        Params {
            width,
            classes,
            layers,
        }
    }
}

/// Which part of a residual unit a backward pass goes through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Shortcut,
    Branch,
    Both,
}

/// What one unit's forward stores for its backward, all (N, d).
#[derive(Clone, Debug)]
pub struct UnitActs {
    /// the unit's input x_l
    pub x: Vec<f64>,
    /// the branch input: x_l (post-act) or ReLU(x_l) (pre-act)
    pub r: Vec<f64>,
    /// hidden pre-activation z = Wa r + ba
    pub z: Vec<f64>,
    /// hidden h = ReLU(z)
    pub h: Vec<f64>,
    /// the sum: a = F(x) + x (post-act) or lambda x + F(x) (pre-act)
    pub a: Vec<f64>,
    /// the unit's output x_{l+2}: ReLU(a) (post-act) or a (pre-act)
    pub out: Vec<f64>,
    /// diagonal of d out / d(shortcut input) seen by the shortcut:
    /// [a > 0] (post-act, the mask D) or lambda (pre-act)
    pub gain: Vec<f64>,
}

/// One residual unit: layers `la` (F_{2u-1}) and `lb` (F_{2u}).
pub struct Unit<'a> {
    pub la: &'a Layer,
    pub lb: &'a Layer,
    pub form: Form,
    pub n: usize,
}

impl Unit<'_> {
    fn shape(&self) -> LinearShape {
        LinearShape {
            n: self.n,
            fin: self.la.cols,
            fout: self.la.rows,
        }
    }

    pub fn forward(&self, x: &[f64]) -> Result<UnitActs> {
        let len = x.len();
        let s = self.shape();
        let mut r = x.to_vec();
        if let Form::PreAct { .. } = self.form {
            relu_forward(&mut r, x)?; // r = ReLU(x): pre-activation
        }
        let mut z = vec![0.0; len];
        s.op()
            .forward(&mut z, &r, &self.la.weight, Some(&self.la.bias))?; // z = Wa r + ba
        let mut h = vec![0.0; len];
        relu_forward(&mut h, &z)?; // h = ReLU(z)
        let mut a = vec![0.0; len];
        s.op()
            .forward(&mut a, &h, &self.lb.weight, Some(&self.lb.bias))?; // a = F(x) = Wb h + bb
        let (out, gain) = match self.form {
            Form::PostAct => {
                a.iter_mut().zip(x).for_each(|(a, &x)| *a += x); // a = F(x) + x
                let mut out = vec![0.0; len];
                relu_forward(&mut out, &a)?; // out = ReLU(a)
                let gain = a.iter().map(|&v| if v > 0.0 { 1.0 } else { 0.0 }).collect();
                (out, gain)
            }
            Form::PreAct { lambda } => {
                a.iter_mut().zip(x).for_each(|(a, &x)| *a += lambda * x); // a = lambda x + F(x)
                (a.clone(), vec![lambda; len]) // out = a: nothing after the add
            }
        };
        Ok(UnitActs {
            x: x.to_vec(),
            r,
            z,
            h,
            a,
            out,
            gain,
        })
    }

    /// Backward through `part` of the unit: `dx += (d out / d x via part)^T dout`.
    pub fn backward(
        &self,
        dx: &mut [f64],
        dout: &[f64],
        acts: &UnitActs,
        part: Part,
    ) -> Result<()> {
        let s = self.shape();
        // the gradient at the sum a (shared by shortcut and branch)
        let da: Vec<f64> = match self.form {
            // in the forward pass this was out = ReLU(a), so now
            // da = D dout with D = diag([a > 0]): the mask hits BOTH paths
            Form::PostAct => {
                let mut da = vec![0.0; dout.len()];
                relu_backward(&mut da, dout, &acts.out)?;
                da
            }
            // in the forward pass this was out = a: da = dout, untouched
            Form::PreAct { .. } => dout.to_vec(),
        };
        if part != Part::Branch {
            // SHORTCUT. In the forward pass this was a = (...) + lambda x
            // (lambda = 1 post-act), so now dx += lambda da
            let lambda = match self.form {
                Form::PostAct => 1.0,
                Form::PreAct { lambda } => lambda,
            };
            dx.iter_mut().zip(&da).for_each(|(d, &g)| *d += lambda * g);
        }
        if part != Part::Shortcut {
            // BRANCH. In the forward pass this was a = Wb h + bb + ..., so now
            // dh = da Wb (row form of Wb^T da); dWb, dbb are scratch here
            let mut dh = vec![0.0; da.len()];
            let (mut dwb, mut dbb) = (vec![0.0; self.lb.weight.len()], vec![0.0; self.lb.rows]);
            s.op().backward(
                Some(&mut dh),
                &mut dwb,
                Some(&mut dbb),
                &da,
                &acts.h,
                &self.lb.weight,
            )?;
            // h = ReLU(z), so dz = dh [z > 0]
            let mut dz = vec![0.0; da.len()];
            relu_backward(&mut dz, &dh, &acts.h)?;
            // z = Wa r + ba, so dr = dz Wa
            let (mut dwa, mut dba) = (vec![0.0; self.la.weight.len()], vec![0.0; self.la.rows]);
            match self.form {
                // r = x: accumulate straight into dx
                Form::PostAct => s.op().backward(
                    Some(dx),
                    &mut dwa,
                    Some(&mut dba),
                    &dz,
                    &acts.r,
                    &self.la.weight,
                )?,
                // r = ReLU(x): dx += dr [x > 0]
                Form::PreAct { .. } => {
                    let mut dr = vec![0.0; da.len()];
                    s.op().backward(
                        Some(&mut dr),
                        &mut dwa,
                        Some(&mut dba),
                        &dz,
                        &acts.r,
                        &self.la.weight,
                    )?;
                    relu_backward(dx, &dr, &acts.r)?;
                }
            }
        }
        Ok(())
    }

    /// `backward` into a fresh zero buffer: one term of the chain rule.
    pub fn term(&self, dout: &[f64], acts: &UnitActs, part: Part) -> Result<Vec<f64>> {
        let mut dx = vec![0.0; dout.len()];
        self.backward(&mut dx, dout, acts, part)?;
        Ok(dx)
    }
}

/// The whole network: unit 1 (F1, F2), unit 2 (F3, F4), head.
pub struct Net<'a> {
    pub p: &'a Params,
    pub form: Form,
    pub n: usize,
    pub labels: &'a [usize],
}

/// What the head's forward makes: (r5, logits, probs, loss).
type HeadOut = (Vec<f64>, Vec<f64>, Vec<f64>, f64);

/// Everything the forward pass stores.
pub struct Acts {
    pub u1: UnitActs,
    pub u2: UnitActs,
    /// head input: x5 (post-act) or ReLU(x5) (pre-act)
    pub r5: Vec<f64>,
    pub logits: Vec<f64>,
    pub probs: Vec<f64>,
    pub loss: f64,
}

impl Net<'_> {
    pub fn unit(&self, u: usize) -> Unit<'_> {
        Unit {
            la: &self.p.layers[2 * u],
            lb: &self.p.layers[2 * u + 1],
            form: self.form,
            n: self.n,
        }
    }

    fn head_shape(&self) -> LinearShape {
        LinearShape {
            n: self.n,
            fin: self.p.width,
            fout: self.p.classes,
        }
    }

    /// Head: logits = W_out r5 + b_out, loss = mean CE. Returns (r5, logits, probs, loss).
    fn head(&self, x5: &[f64]) -> Result<HeadOut> {
        let mut r5 = x5.to_vec();
        if let Form::PreAct { .. } = self.form {
            relu_forward(&mut r5, x5)?; // the final activation of a pre-act net
        }
        let out = &self.p.layers[4];
        let mut logits = vec![0.0; self.n * self.p.classes];
        self.head_shape()
            .op()
            .forward(&mut logits, &r5, &out.weight, Some(&out.bias))?;
        let mut probs = vec![0.0; logits.len()];
        let loss = softmax_ce_forward(&mut probs, &logits, self.labels, self.n, self.p.classes)?;
        Ok((r5, logits, probs, loss))
    }

    pub fn forward(&self, x1: &[f64]) -> Result<Acts> {
        let u1 = self.unit(0).forward(x1)?; // x3 = unit1(x1)
        let u2 = self.unit(1).forward(&u1.out)?; // x5 = unit2(x3)
        let (r5, logits, probs, loss) = self.head(&u2.out)?;
        Ok(Acts {
            u1,
            u2,
            r5,
            logits,
            probs,
            loss,
        })
    }

    /// The loss as a function of x5, of x3 or of x1 (for finite differences).
    pub fn loss_from(&self, stage: usize, x: &[f64]) -> Result<f64> {
        let x = if stage == 1 {
            self.unit(0).forward(x)?.out
        } else {
            x.to_vec()
        };
        let x = if stage <= 3 {
            self.unit(1).forward(&x)?.out
        } else {
            x
        };
        Ok(self.head(&x)?.3)
    }

    /// dL/dx5: back through softmax-CE and the head.
    pub fn dl_dx5(&self, acts: &Acts) -> Result<Vec<f64>> {
        // in the forward pass this was L = mean CE(softmax(logits)), so now
        // dlogits = (probs - onehot(y)) / N
        let mut dlogits = vec![0.0; acts.logits.len()];
        softmax_ce_backward(
            &mut dlogits,
            &acts.probs,
            self.labels,
            self.n,
            self.p.classes,
            1.0,
        )?;
        // logits = W_out r5 + b_out, so dr5 = dlogits W_out
        let out = &self.p.layers[4];
        let mut dr5 = vec![0.0; acts.r5.len()];
        let (mut dw, mut db) = (vec![0.0; out.weight.len()], vec![0.0; out.rows]);
        self.head_shape().op().backward(
            Some(&mut dr5),
            &mut dw,
            Some(&mut db),
            &dlogits,
            &acts.r5,
            &out.weight,
        )?;
        match self.form {
            Form::PostAct => Ok(dr5), // r5 = x5
            Form::PreAct { .. } => {
                // r5 = ReLU(x5), so dx5 = dr5 [x5 > 0]
                let mut dx5 = vec![0.0; dr5.len()];
                relu_backward(&mut dx5, &dr5, &acts.r5)?;
                Ok(dx5)
            }
        }
    }

    /// The full backward pass, one buffer per activation, every consumer
    /// accumulating (`+=`) into it: returns (dL/dx5, dL/dx3, dL/dx1).
    pub fn backward(&self, acts: &Acts) -> Result<(Vec<f64>, Vec<f64>, Vec<f64>)> {
        let dx5 = self.dl_dx5(acts)?;
        // x5 = unit2(x3) reads x3 twice (shortcut and branch): both add into dx3
        let mut dx3 = vec![0.0; dx5.len()];
        self.unit(1)
            .backward(&mut dx3, &dx5, &acts.u2, Part::Both)?;
        // x3 = unit1(x1): the same for dx1
        let mut dx1 = vec![0.0; dx5.len()];
        self.unit(0)
            .backward(&mut dx1, &dx3, &acts.u1, Part::Both)?;
        Ok((dx5, dx3, dx1))
    }

    /// Distance of the nearest ReLU input to its kink (0), over the whole
    /// forward pass: finite differences are only meaningful when it is
    /// well above the step.
    pub fn kink_margin(&self, acts: &Acts) -> f64 {
        let mut m = f64::INFINITY;
        let mut see = |v: &[f64]| m = v.iter().fold(m, |m, x| m.min(x.abs()));
        for u in [&acts.u1, &acts.u2] {
            see(&u.z);
            match self.form {
                Form::PostAct => see(&u.a),
                Form::PreAct { .. } => see(&u.x),
            }
        }
        if let Form::PreAct { .. } = self.form {
            see(&acts.u2.out);
        }
        m
    }
}
