//! The model spec: the JSON object documented at the top of the PyTorch
//! reference (`shared/reference/torch_resnet.py`), read with serde. Unknown
//! fields and kinds are errors, and so are depths that are not 6n+2 (basic)
//! or 9n+2 (bottleneck), negative or non-finite factors and dropout rates
//! outside [0, 1).

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The most parameters (an upper bound, [`Spec::param_bound`]) a spec may
/// describe: 2^30, about 4 GiB of f32 weights before gradients and
/// momentum. Anything larger is refused as a spec error instead of failing
/// an allocation (an abort, not an error) when the network is built.
pub const MAX_PARAMS: f64 = (1u64 << 30) as f64;

/// CIFAR-style convolutional ResNet or residual MLP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    #[default]
    Cifar,
    Mlp,
}

/// Two 3x3 convs (basic) or 1x1-3x3-1x1 with 4x expansion (bottleneck).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Block {
    #[default]
    Basic,
    Bottleneck,
}

/// Where BN and ReLU sit relative to the addition (Fig. 4 of He et al.).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnitKind {
    /// `y = relu(x + bn(conv(relu(bn(conv(x))))))`
    Original,
    /// `y = relu(bn(x + conv(relu(bn(conv(x))))))`
    BnAfterAdd,
    /// `y = x + relu(bn(conv(relu(bn(conv(x))))))`
    ReluBeforeAdd,
    /// `y = x + bn(conv(relu(bn(conv(relu(x))))))`
    ReluOnlyPreact,
    /// `y = x + conv(relu(bn(conv(relu(bn(x))))))`
    FullPreact,
}

impl UnitKind {
    /// Pre-activation units (BN/ReLU inside the branch, before the convs).
    pub fn is_preact(self) -> bool {
        matches!(self, UnitKind::ReluOnlyPreact | UnitKind::FullPreact)
    }
    pub fn name(self) -> &'static str {
        match self {
            UnitKind::Original => "original",
            UnitKind::BnAfterAdd => "bn_after_add",
            UnitKind::ReluBeforeAdd => "relu_before_add",
            UnitKind::ReluOnlyPreact => "relu_only_preact",
            UnitKind::FullPreact => "full_preact",
        }
    }
}

fn one() -> f64 {
    1.0
}

/// The shortcut variant, applied to every unit (Table 1 of He et al.).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Shortcut {
    /// `y = h + F`
    Identity,
    /// `y = s h + b F`
    Scale {
        #[serde(default = "one")]
        shortcut: f64,
        #[serde(default = "one")]
        branch: f64,
    },
    /// `y = (1 - g) h + g F`, `g = sigmoid(conv1x1(x) + b)`
    ExclusiveGate {
        #[serde(default)]
        bias_init: f64,
    },
    /// `y = (1 - g) h + F`
    ShortcutGate {
        #[serde(default)]
        bias_init: f64,
    },
    /// `y = conv1x1(x) + F` on every unit
    Conv1x1,
    /// `y = dropout_p(h) + F`
    Dropout {
        #[serde(default)]
        p: f64,
    },
    /// `y = F`: a plain network
    None,
}

impl Shortcut {
    pub fn kind_name(&self) -> &'static str {
        match self {
            Shortcut::Identity => "identity",
            Shortcut::Scale { .. } => "scale",
            Shortcut::ExclusiveGate { .. } => "exclusive_gate",
            Shortcut::ShortcutGate { .. } => "shortcut_gate",
            Shortcut::Conv1x1 => "conv1x1",
            Shortcut::Dropout { .. } => "dropout",
            Shortcut::None => "none",
        }
    }
}

/// How a unit that changes shape builds its shortcut.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Downsample {
    /// strided identity with zero-padded channels
    A,
    /// 1x1 conv, stride 2 (the reference's default)
    #[default]
    B,
}

fn d_width() -> usize {
    16
}
fn d_classes() -> usize {
    10
}
fn d_in_channels() -> usize {
    3
}
fn d_true() -> bool {
    true
}

/// The model spec, field for field the reference's JSON object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    #[serde(default)]
    pub arch: Arch,
    /// cifar: 6n+2 (basic) or 9n+2 (bottleneck)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<usize>,
    #[serde(default)]
    pub block: Block,
    pub unit: UnitKind,
    pub shortcut: Shortcut,
    #[serde(default)]
    pub downsample: Downsample,
    /// channels of the first stage (cifar)
    #[serde(default = "d_width")]
    pub width: usize,
    #[serde(default = "d_classes")]
    pub classes: usize,
    #[serde(default = "d_in_channels")]
    pub in_channels: usize,
    /// mlp: input features
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_features: Option<usize>,
    /// mlp: width of every unit
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hidden: Option<usize>,
    /// mlp: number of residual units
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub units: Option<usize>,
    /// mlp: BatchNorm1d after each Linear
    #[serde(default = "d_true")]
    pub batchnorm: bool,
}

impl Spec {
    /// Parse and validate a JSON spec.
    pub fn from_json(text: &str) -> Result<Self> {
        let spec: Spec = serde_json::from_str(text).map_err(|e| {
            // valid JSON of the wrong kind: say so (serde's message for
            // `[1, 2]` is a bare "expected value")
            let kind = match serde_json::from_str::<serde_json::Value>(text) {
                Ok(serde_json::Value::Array(_)) => Some("an array"),
                Ok(serde_json::Value::String(_)) => Some("a string"),
                Ok(serde_json::Value::Number(_)) => Some("a number"),
                Ok(serde_json::Value::Bool(_)) => Some("a boolean"),
                Ok(serde_json::Value::Null) => Some("null"),
                _ => None,
            };
            match kind {
                Some(k) => Error::Spec(format!("the spec must be a JSON object, not {k}")),
                None => Error::Spec(e.to_string()),
            }
        })?;
        spec.validate()?;
        Ok(spec)
    }

    /// Read a spec file: JSON, or TOML when the name ends in `.toml`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = crate::io::read::read_text(path)?;
        Self::from_json(&text).map_err(|e| match e {
            Error::Spec(m) => Error::Spec(format!("{}: {m}", path.display())),
            e => e,
        })
    }

    /// Residual units per stage (cifar) from the depth.
    pub fn units_per_stage(&self) -> Result<usize> {
        let depth = self
            .depth
            .ok_or_else(|| Error::Spec("cifar spec needs \"depth\"".into()))?;
        let per = match self.block {
            Block::Basic => 6,
            Block::Bottleneck => 9,
        };
        if depth < 2 + per || (depth - 2) % per != 0 {
            let b = if per == 6 { "basic" } else { "bottleneck" };
            return Err(Error::Spec(format!(
                "depth {depth} is not {per}n+2 (n >= 1) for {b} units"
            )));
        }
        Ok((depth - 2) / per)
    }

    /// Number of residual units in the network.
    pub fn num_units(&self) -> Result<usize> {
        match self.arch {
            Arch::Cifar => Ok(3 * self.units_per_stage()?),
            Arch::Mlp => self
                .units
                .ok_or_else(|| Error::Spec("mlp spec needs \"units\"".into())),
        }
    }

    /// Check every constraint the reference enforces, and the ones it
    /// silently assumes.
    // one `if` per arm reads as the list of checks it is
    #[allow(clippy::collapsible_match)]
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Spec(m));
        if self.classes == 0 {
            return bad("classes must be at least 1".into());
        }
        match self.arch {
            Arch::Cifar => {
                self.units_per_stage()?;
                if self.width == 0 {
                    return bad("width must be at least 1".into());
                }
                if self.in_channels == 0 {
                    return bad("in_channels must be at least 1".into());
                }
                // never ignored: the conv nets (here and in the PyTorch
                // reference) have BatchNorm in every unit
                if !self.batchnorm {
                    return bad("\"batchnorm\": false is not supported for cifar (convolutional) nets: they are built with BatchNorm in every unit, as the PyTorch reference builds them; remove the field (or --no-batchnorm), or use \"arch\": \"mlp\" for a net without BN".into());
                }
                for f in ["in_features", "hidden", "units"] {
                    let set = match f {
                        "in_features" => self.in_features.is_some(),
                        "hidden" => self.hidden.is_some(),
                        _ => self.units.is_some(),
                    };
                    if set {
                        return bad(format!("\"{f}\" is an mlp field; this spec is cifar"));
                    }
                }
            }
            Arch::Mlp => {
                for (f, v) in [
                    ("in_features", self.in_features),
                    ("hidden", self.hidden),
                    ("units", self.units),
                ] {
                    match v {
                        None => return bad(format!("mlp spec needs \"{f}\"")),
                        Some(0) => return bad(format!("\"{f}\" must be at least 1")),
                        _ => {}
                    }
                }
                if self.depth.is_some() {
                    return bad("\"depth\" is a cifar field; mlp specs give \"units\"".into());
                }
                if self.block == Block::Bottleneck {
                    return bad("mlp units have no bottleneck block".into());
                }
            }
        }
        let params = self.param_bound();
        if params > MAX_PARAMS {
            return bad(format!(
                "the network would have about {params:.3e} parameters, more than the 2^30 (about 1.07e9) resgrad builds (check depth, units, width, hidden, in_features, classes)"
            ));
        }
        match self.shortcut {
            Shortcut::Scale { shortcut, branch } => {
                for (n, v) in [("shortcut", shortcut), ("branch", branch)] {
                    if !v.is_finite() || v < 0.0 {
                        return bad(format!(
                            "scale factor \"{n}\" must be finite and >= 0, got {v}"
                        ));
                    }
                }
            }
            Shortcut::ExclusiveGate { bias_init } | Shortcut::ShortcutGate { bias_init }
                if !bias_init.is_finite() =>
            {
                return bad(format!("gate bias_init must be finite, got {bias_init}"));
            }
            Shortcut::Dropout { p } if !(0.0..1.0).contains(&p) => {
                return bad(format!("dropout p must be in [0, 1), got {p}"));
            }
            _ => {}
        }
        Ok(())
    }

    /// An upper bound on the number of parameters (weights, biases, BN
    /// affine parameters) of the network, as a float so that absurd sizes
    /// cannot overflow. Used to refuse specs that could never be built.
    pub fn param_bound(&self) -> f64 {
        let f = |v: usize| v as f64;
        match self.arch {
            Arch::Mlp => {
                let (fin, hid, nu) = (
                    f(self.in_features.unwrap_or(0)),
                    f(self.hidden.unwrap_or(0)),
                    f(self.units.unwrap_or(0)),
                );
                // stem, per unit up to three hidden x hidden layers (two
                // branch layers and a gate / 1x1 shortcut) with biases and
                // BN, the head
                fin * hid
                    + 4.0 * hid
                    + nu * 3.0 * (hid * hid + 3.0 * hid)
                    + hid * f(self.classes)
                    + f(self.classes)
            }
            Arch::Cifar => {
                let per = match self.block {
                    Block::Basic => 6.0,
                    Block::Bottleneck => 9.0,
                };
                let n = (f(self.depth.unwrap_or(0)) - 2.0).max(0.0) / per;
                let w = f(self.width);
                let expand = if self.block == Block::Bottleneck {
                    4.0
                } else {
                    1.0
                };
                // every unit bounded by three 3x3 convs at its widest
                // (output) width, plus a 1x1 shortcut / gate and BN
                let stages: f64 = [w, 2.0 * w, 4.0 * w]
                    .iter()
                    .map(|&c| {
                        let c = c * expand;
                        n * (3.0 * 9.0 * c * c + c * c + 8.0 * c)
                    })
                    .sum();
                9.0 * f(self.in_channels) * w
                    + 2.0 * w
                    + stages
                    + 4.0 * w * expand * f(self.classes)
                    + f(self.classes)
            }
        }
    }

    /// A short human-readable name, e.g. `cifar-20 full_preact identity B`.
    #[allow(clippy::redundant_guards)] // `branch == 1.0`: a float comparison, not a pattern
    pub fn label(&self) -> String {
        let sc = match self.shortcut {
            Shortcut::Scale {
                shortcut,
                branch: 1.0,
            } => format!("scale {shortcut}"),
            Shortcut::Scale { shortcut, branch } => format!("scale {shortcut}/{branch}"),
            Shortcut::Dropout { p } => format!("dropout {p}"),
            s => s.kind_name().to_string(),
        };
        match self.arch {
            Arch::Cifar => format!(
                "resnet-{} {} {} {}",
                self.depth.unwrap_or(0),
                self.unit.name(),
                sc,
                match self.downsample {
                    Downsample::A => "A",
                    Downsample::B => "B",
                }
            ),
            Arch::Mlp => format!(
                "mlp-{} {} {}",
                self.units.unwrap_or(0),
                self.unit.name(),
                sc
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_reference_examples() {
        let s = Spec::from_json(
            r#"{"arch":"cifar","depth":20,"unit":"full_preact","shortcut":{"kind":"identity"},"downsample":"A"}"#,
        )
        .unwrap();
        assert_eq!(s.num_units().unwrap(), 9);
        assert_eq!(s.width, 16);
        let s = Spec::from_json(
            r#"{"depth":164,"block":"bottleneck","unit":"original","shortcut":{"kind":"scale","shortcut":0.5}}"#,
        )
        .unwrap();
        assert_eq!(s.num_units().unwrap(), 54);
        assert_eq!(
            s.shortcut,
            Shortcut::Scale {
                shortcut: 0.5,
                branch: 1.0
            }
        );
        assert_eq!(s.downsample, Downsample::B);
        let s = Spec::from_json(
            r#"{"arch":"mlp","in_features":784,"hidden":64,"units":4,"unit":"original","shortcut":{"kind":"exclusive_gate","bias_init":-6},"batchnorm":false}"#,
        )
        .unwrap();
        assert_eq!(s.num_units().unwrap(), 4);
        // round trip
        let back = Spec::from_json(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn rejects_bad_specs_with_clear_messages() {
        let cases = [
            (
                r#"{"depth":20,"unit":"original","shortcut":{"kind":"identity"},"colour":1}"#,
                "colour",
            ),
            (
                r#"{"depth":20,"unit":"sideways","shortcut":{"kind":"identity"}}"#,
                "sideways",
            ),
            (
                r#"{"depth":20,"unit":"original","shortcut":{"kind":"teleport"}}"#,
                "teleport",
            ),
            (
                r#"{"depth":21,"unit":"original","shortcut":{"kind":"identity"}}"#,
                "6n+2",
            ),
            (
                r#"{"depth":26,"block":"bottleneck","unit":"original","shortcut":{"kind":"identity"}}"#,
                "9n+2",
            ),
            (
                r#"{"depth":2,"unit":"original","shortcut":{"kind":"identity"}}"#,
                "6n+2",
            ),
            (
                r#"{"depth":20,"unit":"original","shortcut":{"kind":"scale","shortcut":-0.5}}"#,
                "finite",
            ),
            (
                r#"{"depth":20,"unit":"original","shortcut":{"kind":"dropout","p":1.0}}"#,
                "[0, 1)",
            ),
            (
                r#"{"depth":20,"unit":"original","shortcut":{"kind":"dropout","p":0.5,"q":1}}"#,
                "q",
            ),
            (
                r#"{"depth":20,"unit":"original","shortcut":{"kind":"identity"},"width":0}"#,
                "width",
            ),
            (
                r#"{"arch":"mlp","hidden":4,"units":2,"unit":"original","shortcut":{"kind":"identity"}}"#,
                "in_features",
            ),
            (
                r#"{"unit":"original","shortcut":{"kind":"identity"}}"#,
                "depth",
            ),
            (r#"not json"#, "expected"),
        ];
        for (text, needle) in cases {
            let e = Spec::from_json(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }
}
