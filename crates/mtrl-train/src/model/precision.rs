//! Which float dtype a model computes in.

use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};

use crate::Error;

/// The compute precision of a model, as a config names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// bf16 on CUDA, f32 on the CPU (where candle's bf16 matmuls are slower than f32).
    #[default]
    Auto,
    /// f32 everywhere.
    F32,
    /// bf16 weights and activations (norms, softmax and logprobs in f32).
    Bf16,
    /// f16 weights and activations (norms, softmax and logprobs in f32).
    F16,
}

impl Precision {
    /// The dtype on `device`.
    pub fn dtype(self, device: &Device) -> DType {
        match self {
            Precision::Auto if device.is_cuda() => DType::BF16,
            Precision::Auto | Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
            Precision::F16 => DType::F16,
        }
    }
}

/// Accepts the dtypes a model can compute in.
pub(crate) fn check_float(dtype: DType) -> Result<(), Error> {
    match dtype {
        DType::F32 | DType::BF16 | DType::F16 => Ok(()),
        other => Err(Error::Config(format!(
            "a model computes in f32, bf16 or f16, not {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_f32_on_the_cpu_and_names_parse() {
        assert_eq!(Precision::Auto.dtype(&Device::Cpu), DType::F32);
        assert_eq!(Precision::Bf16.dtype(&Device::Cpu), DType::BF16);
        assert_eq!(Precision::F16.dtype(&Device::Cpu), DType::F16);
        let p: Precision = serde_json::from_str("\"bf16\"").unwrap();
        assert_eq!(p, Precision::Bf16);
        assert!(serde_json::from_str::<Precision>("\"f8\"").is_err());
        assert!(check_float(DType::F64).is_err());
        assert!(check_float(DType::BF16).is_ok());
    }
}
