//! Where the tensors live: burn's CPU backend (flex) in every build; a GPU through wgpu
//! (Vulkan, Metal, DirectX) or CUDA when revflow is built with the `wgpu` or `cuda` feature.

use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;

use crate::error::{FlowError, Result};

/// A compute backend, chosen at run time (`--device` on the command line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// burn's flex backend on every core, with revflow's fused coupling network.
    #[default]
    Cpu,
    /// The default GPU adapter through wgpu (Vulkan/Metal/DirectX); feature `wgpu`.
    Wgpu,
    /// The first NVIDIA GPU through CUDA; feature `cuda`.
    Cuda,
}

impl Backend {
    pub const ALL: [Backend; 3] = [Backend::Cpu, Backend::Wgpu, Backend::Cuda];

    fn name(self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Wgpu => "wgpu",
            Backend::Cuda => "cuda",
        }
    }

    /// The device for inference on this backend (`.autodiff()` of it for training), or an
    /// error saying how to build revflow with it.
    pub fn device(self) -> Result<Device> {
        let missing = |feature: &str| {
            FlowError::Config(format!(
                "this revflow was built without the {feature} backend; rebuild with \
                 `cargo build --release -p revflow-cli --features {feature}`"
            ))
        };
        match self {
            Backend::Cpu => Ok(Device::flex()),
            #[cfg(feature = "wgpu")]
            Backend::Wgpu => Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice)),
            #[cfg(not(feature = "wgpu"))]
            Backend::Wgpu => Err(missing("wgpu")),
            #[cfg(feature = "cuda")]
            Backend::Cuda => Ok(Device::cuda(0)),
            #[cfg(not(feature = "cuda"))]
            Backend::Cuda => Err(missing("cuda")),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Backend {
    type Err = FlowError;

    fn from_str(s: &str) -> Result<Self> {
        Backend::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| {
                FlowError::Config(format!("unknown device {s:?}; expected cpu, wgpu or cuda"))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_missing_backends_say_how_to_build_them() {
        for b in Backend::ALL {
            assert_eq!(b.to_string().parse::<Backend>().unwrap(), b);
        }
        assert!("tpu".parse::<Backend>().is_err());
        assert!(Backend::Cpu.device().is_ok());
        #[cfg(not(feature = "wgpu"))]
        {
            let e = Backend::Wgpu.device().unwrap_err().to_string();
            assert!(e.contains("--features wgpu"), "{e}");
        }
    }
}
