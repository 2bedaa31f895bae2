//! The arithmetic precision of a run's convolutions and linear layers.
//!
//! [`Precision::F32`] (the default) is resgrad's f32 path, unchanged.
//! [`Precision::Bf16`] is mixed precision as PyTorch's CPU autocast does it:
//! every convolution and linear GEMM (forward, input gradient, weight
//! gradient) reads its two operands rounded to bfloat16 (round to nearest
//! even, as they are packed) and accumulates in f32 with AVX512-BF16's
//! `vdpbf16ps` ([`crate::gemm_bf16`]). Everything else stays f32: the stored
//! activations and gradients, BatchNorm statistics, the loss, the optimizer,
//! the master weights, the probe's norms. AMX-BF16 is not used (no machine
//! resgrad is tested on has it).

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Precision of the convolution and linear GEMMs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 operands, f32 accumulation
    #[default]
    F32,
    /// bf16 operands (rounded from the f32 values), f32 accumulation
    Bf16,
}

impl Precision {
    /// The name used on the command line, in config.json and in bench output.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }

    /// Checks that this CPU can run the precision: bf16 needs AVX512-BF16
    /// (`vdpbf16ps`); the error names the missing instruction set.
    pub fn check_supported(self) -> Result<()> {
        if self == Precision::Bf16 && !crate::gemm_bf16::supported() {
            return Err(Error::Config(
                "--precision bf16 needs a CPU with AVX512-BF16 (vdpbf16ps); this CPU lacks it \
                 (AMX-BF16 is not used by resgrad): run with --precision f32"
                    .into(),
            ));
        }
        Ok(())
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_json() {
        for p in [Precision::F32, Precision::Bf16] {
            let j = serde_json::to_string(&p).unwrap();
            assert_eq!(j, format!("\"{}\"", p.name()));
            assert_eq!(serde_json::from_str::<Precision>(&j).unwrap(), p);
        }
        assert_eq!(Precision::default(), Precision::F32);
        assert!(Precision::F32.check_supported().is_ok());
    }
}
