//! Residual networks from a spec: the spec itself, the parameterised layers,
//! one residual unit (every placement and shortcut kind), and the network.

pub mod layers;
pub mod net;
pub mod spec;
mod state;
pub mod unit;

pub use layers::{BnLayer, Buffer, Geom, Param, ParamKind, WeightLayer};
pub use net::Net;
pub use spec::{Arch, Block, Downsample, Shortcut, Spec, UnitKind, MAX_PARAMS};
pub use unit::{Unit, UnitFlow, UnitGrads};
