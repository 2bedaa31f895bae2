//! Building a unit from the spec: its convs and BNs, the branch as a list
//! of steps in the unit's placement order (Fig. 4 of He et al.), what follows
//! the addition, the shortcut path and the mix.

use super::{Acts, Mix, Plan, ShortcutPath, Step, Unit, UnitGrads};
use crate::model::layers::{BnLayer, Geom, WeightLayer};
use crate::model::spec::{Block, Downsample, Shortcut, Spec, UnitKind};
use crate::ops::shortcut_a::ShortcutAShape;
use crate::scalar::Scalar;
use rand::Rng;

impl<T: Scalar> Unit<T> {
    /// Build unit `index` from the spec, mapping `cin` channels at
    /// `in_geom` to `cout` channels with the given stride (conv units) or
    /// `cin -> cout` features (MLP units, `conv == false`).
    pub fn new<R: Rng>(
        spec: &Spec,
        index: usize,
        cout: usize,
        stride: usize,
        in_geom: Geom,
        conv: bool,
        rng: &mut R,
    ) -> Self {
        let cin = in_geom.c;
        let kind = spec.unit;
        let bn_on = conv || spec.batchnorm;
        let p = format!("units.{index}");
        let mk = |name: String, i: usize, o: usize, k: usize, s: usize, rng: &mut R| {
            if conv {
                WeightLayer::conv(&name, i, o, k, s, None, rng)
            } else {
                WeightLayer::linear(&name, i, o, !bn_on, None, rng)
            }
        };
        let mut convs = Vec::new();
        if conv && spec.block == Block::Bottleneck {
            let mid = cout / 4;
            convs.push(mk(format!("{p}.convs.0"), cin, mid, 1, 1, rng));
            convs.push(mk(format!("{p}.convs.1"), mid, mid, 3, stride, rng));
            convs.push(mk(format!("{p}.convs.2"), mid, cout, 1, 1, rng));
        } else {
            convs.push(mk(format!("{p}.convs.0"), cin, cout, 3, stride, rng));
            convs.push(mk(format!("{p}.convs.1"), cout, cout, 3, 1, rng));
        }
        let nc = convs.len();
        // BN channels: pre-activation BNs see the tensor entering each conv
        let bns: Vec<BnLayer<T>> = if !bn_on {
            vec![]
        } else {
            let chans: Vec<usize> = if kind == UnitKind::FullPreact {
                std::iter::once(cin)
                    .chain(convs[..nc - 1].iter().map(|c| c.cout))
                    .collect()
            } else {
                convs.iter().map(|c| c.cout).collect()
            };
            chans
                .iter()
                .enumerate()
                .map(|(j, &c)| BnLayer::new(&format!("{p}.bns.{j}"), c))
                .collect()
        };

        // the branch as a list of steps, and what follows the addition
        let mut steps = Vec::new();
        let mut post = Vec::new();
        let mut pre_idx = None;
        for i in 0..nc {
            let last = i == nc - 1;
            match kind {
                UnitKind::FullPreact => {
                    if bn_on {
                        steps.push(Step::Bn(i));
                    }
                    steps.push(Step::Relu);
                    if i == 0 {
                        pre_idx = Some(steps.len() - 1);
                    }
                    steps.push(Step::Conv(i));
                }
                UnitKind::ReluOnlyPreact => {
                    steps.push(Step::Relu);
                    if i == 0 {
                        pre_idx = Some(0);
                    }
                    steps.push(Step::Conv(i));
                    if bn_on {
                        steps.push(Step::Bn(i));
                    }
                }
                _ => {
                    steps.push(Step::Conv(i));
                    if bn_on && !(last && kind == UnitKind::BnAfterAdd) {
                        steps.push(Step::Bn(i));
                    }
                    if !last || kind == UnitKind::ReluBeforeAdd {
                        steps.push(Step::Relu);
                    }
                }
            }
        }
        match kind {
            UnitKind::Original => post.push(Step::Relu),
            UnitKind::BnAfterAdd => {
                if bn_on {
                    post.push(Step::Bn(nc - 1));
                }
                post.push(Step::Relu);
            }
            _ => {}
        }
        // geometry of the unit's output
        let out_geom = steps.iter().fold(in_geom, |g, s| match s {
            Step::Conv(i) => convs[*i].out_geom(g),
            _ => g,
        });

        // the shortcut path
        let sc = spec.shortcut;
        let shape_change = stride != 1 || cin != cout;
        let projection = matches!(sc, Shortcut::Conv1x1)
            || (shape_change && spec.downsample == Downsample::B && !matches!(sc, Shortcut::None));
        let path = if projection {
            let name = format!("{p}.shortcut");
            let layer = if conv {
                WeightLayer::conv(&name, cin, cout, 1, stride, None, rng)
            } else {
                WeightLayer::linear(&name, cin, cout, false, None, rng)
            };
            let reads_pre = kind.is_preact() && !matches!(sc, Shortcut::Conv1x1);
            ShortcutPath::Projection {
                layer: Box::new(layer),
                reads_pre,
            }
        } else if matches!(sc, Shortcut::None) {
            ShortcutPath::None
        } else if shape_change {
            ShortcutPath::OptionA(ShortcutAShape {
                n: 0,
                cin,
                h: in_geom.h,
                w: in_geom.w,
                cout,
                stride,
            })
        } else {
            ShortcutPath::Identity
        };
        let (mix, gate_bias) = match sc {
            Shortcut::Identity | Shortcut::Conv1x1 => (Mix::Add, None),
            Shortcut::Scale { shortcut, branch } => (Mix::Scale { shortcut, branch }, None),
            Shortcut::ExclusiveGate { bias_init } => (Mix::ExclusiveGate, Some(bias_init)),
            Shortcut::ShortcutGate { bias_init } => (Mix::ShortcutGate, Some(bias_init)),
            Shortcut::Dropout { p } => (Mix::Dropout { p }, None),
            Shortcut::None => (Mix::None, None),
        };
        let gate = gate_bias.map(|b| {
            let name = format!("{p}.gate");
            if conv {
                WeightLayer::conv(&name, cin, cout, 1, stride, Some(b), rng)
            } else {
                WeightLayer::linear(&name, cin, cout, true, Some(b), rng)
            }
        });
        Unit {
            index,
            kind,
            in_geom,
            out_geom,
            convs,
            bns,
            path,
            mix,
            gate,
            steps,
            post,
            pre_idx,
            plan: Plan::default(),
            reference_plan: false,
            act: Acts::default(),
            dh: vec![],
            dz: vec![],
            grad: UnitGrads::default(),
        }
    }
}
