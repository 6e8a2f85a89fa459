//! Where the tensors live: burn's CPU backend (flex) in every build; a GPU through wgpu
//! (Vulkan, Metal, DirectX) or CUDA when revflow is built with the `wgpu` or `cuda` feature.
//!
//! Opening a GPU never panics: no adapter, an index past the adapters the machine reports, or
//! a build without the backend is an error naming what to do.

use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;

use burn::tensor::Device;

use crate::error::{FlowError, Result};

/// A compute device, chosen at run time (`--device` on the command line): `cpu`, `wgpu`,
/// `wgpu:N`, `vulkan`, `cuda`, `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Backend {
    /// burn's flex backend on every core, with revflow's fused coupling network.
    #[default]
    Cpu,
    /// A GPU through wgpu (feature `wgpu`): the default adapter (the best GPU wgpu finds, on
    /// the platform's preferred API), or adapter N of those [`adapters`] lists.
    Wgpu(Option<usize>),
    /// The default adapter through wgpu pinned to Vulkan (never OpenGL): what the software
    /// Vulkan check (`bench/vulkan-check.sh`) runs on.
    Vulkan,
    /// NVIDIA GPU N (0 by default) through CUDA; feature `cuda`.
    Cuda(Option<usize>),
}

const NAMES: &str = "cpu, wgpu, wgpu:N, vulkan, cuda or cuda:N";

impl Backend {
    /// The device for inference on this backend (`.autodiff()` of it for training), or an
    /// error saying what is missing. A device is opened once per process and then reused.
    pub fn device(self) -> Result<Device> {
        static OPENED: Mutex<Vec<(Backend, Device)>> = Mutex::new(Vec::new());
        let mut opened = OPENED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, device)) = opened.iter().find(|(b, _)| *b == self) {
            return Ok(device.clone());
        }
        let device = self.open()?;
        opened.push((self, device.clone()));
        Ok(device)
    }

    /// The default adapters through burn's fallible initialisation; `wgpu:N`, `cuda:N` from the
    /// adapters the machine reports.
    fn open(self) -> Result<Device> {
        match self {
            Backend::Cpu => Ok(Device::flex()),
            #[cfg(feature = "wgpu")]
            Backend::Wgpu(None) => Device::wgpu_options()
                .init()
                .map_err(|e| no_adapter(self, e)),
            #[cfg(feature = "wgpu")]
            Backend::Vulkan => Device::wgpu_options()
                .graphics_api(burn::tensor::wgpu::WgpuBackend::Vulkan)
                .init()
                .map_err(|e| no_adapter(self, e)),
            #[cfg(not(feature = "wgpu"))]
            Backend::Wgpu(None) | Backend::Vulkan => Err(missing("wgpu")),
            #[cfg(feature = "cuda")]
            Backend::Cuda(None) => match adapters(self)?.into_iter().next() {
                Some(a) => Ok(a.device),
                None => Err(FlowError::Config(format!(
                    "--device {self}: CUDA reports no GPU; check the NVIDIA driver, or use \
                     --device cpu"
                ))),
            },
            #[cfg(not(feature = "cuda"))]
            Backend::Cuda(None) => Err(missing("cuda")),
            Backend::Wgpu(Some(n)) | Backend::Cuda(Some(n)) => {
                let found = adapters(self)?;
                found.get(n).map(|a| a.device.clone()).ok_or_else(|| {
                    let listed = found.iter().map(|a| format!("{} ({})", a.spec, a.name));
                    FlowError::Config(format!(
                        "--device {self}: this machine reports {} {} adapter(s){}{}",
                        found.len(),
                        self.family(),
                        if found.is_empty() { "" } else { ": " },
                        listed.collect::<Vec<_>>().join(", ")
                    ))
                })
            }
        }
    }

    fn family(self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Wgpu(_) => "wgpu",
            Backend::Vulkan => "vulkan",
            Backend::Cuda(_) => "cuda",
        }
    }
}

fn missing(feature: &str) -> FlowError {
    FlowError::Config(format!(
        "this revflow was built without the {feature} backend; rebuild with \
         `cargo build --release -p revflow-cli --features {feature}`"
    ))
}

#[cfg(feature = "wgpu")]
fn no_adapter(backend: Backend, e: impl fmt::Display) -> FlowError {
    FlowError::Config(format!(
        "--device {backend}: no GPU adapter could be opened ({e}); install the GPU's Vulkan \
         driver (or mesa-vulkan-drivers for a software one), or use --device cpu"
    ))
}

/// One adapter a backend reports, in the order `wgpu:N` / `cuda:N` index them.
#[derive(Debug, Clone)]
pub struct Adapter {
    /// How to ask for it: `wgpu:0`, `cuda:1`.
    pub spec: Backend,
    /// The name the device gives itself (`NVIDIA H200`, `llvmpipe (LLVM 15.0.6, 256 bits)`).
    pub name: String,
    pub device: Device,
}

/// The adapters of `backend`'s family on this machine (empty when there are none), or an
/// error when this build lacks the backend. The CPU is one adapter.
pub fn adapters(backend: Backend) -> Result<Vec<Adapter>> {
    let listed: Vec<Device> = match backend {
        Backend::Cpu => vec![Device::flex()],
        #[cfg(feature = "wgpu")]
        Backend::Wgpu(_) | Backend::Vulkan => {
            Device::enumerate(burn::tensor::DeviceType::Wgpu).into_vec()
        }
        #[cfg(not(feature = "wgpu"))]
        Backend::Wgpu(_) | Backend::Vulkan => return Err(missing("wgpu")),
        #[cfg(feature = "cuda")]
        Backend::Cuda(_) => Device::enumerate(burn::tensor::DeviceType::Cuda).into_vec(),
        #[cfg(not(feature = "cuda"))]
        Backend::Cuda(_) => return Err(missing("cuda")),
    };
    Ok(listed
        .into_iter()
        .enumerate()
        .map(|(i, device)| Adapter {
            spec: match backend {
                Backend::Cuda(_) => Backend::Cuda(Some(i)),
                Backend::Cpu => Backend::Cpu,
                _ => Backend::Wgpu(Some(i)),
            },
            name: describe(&device),
            device,
        })
        .collect())
}

/// A device as a person reads it: the name a GPU gives itself, or the CPU backend and its
/// threads. Recorded in a run's metrics where training starts.
pub fn describe(device: &Device) -> String {
    #[cfg(any(feature = "wgpu", feature = "cuda"))]
    if let Some(identity) = device.identity() {
        return identity.name;
    }
    match is_flex(device) {
        true => format!("cpu (flex, {} threads)", rayon::current_num_threads()),
        false => format!("{device:?}"),
    }
}

/// Whether `device` is burn's CPU backend (flex), autodiff or not.
pub fn is_flex(device: &Device) -> bool {
    matches!(
        device.as_dispatch().clone().inner(),
        burn::backend::DispatchDevice::Flex(_)
    )
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, so that widths in format strings apply.
        match self {
            Backend::Wgpu(Some(n)) | Backend::Cuda(Some(n)) => {
                f.pad(&format!("{}:{n}", self.family()))
            }
            _ => f.pad(self.family()),
        }
    }
}

impl FromStr for Backend {
    type Err = FlowError;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || FlowError::Config(format!("unknown device {s:?}; expected {NAMES}"));
        let (family, index) = match s.split_once(':') {
            Some((family, n)) => {
                let n = n.parse::<usize>().map_err(|_| {
                    FlowError::Config(format!(
                        "device {s:?}: the adapter index must be a whole number ≥ 0, as in \
                         {family}:0 (`revflow devices` lists them)"
                    ))
                })?;
                (family, Some(n))
            }
            None => (s, None),
        };
        match (family, index) {
            ("cpu", None) => Ok(Backend::Cpu),
            ("vulkan", None) => Ok(Backend::Vulkan),
            ("wgpu", index) => Ok(Backend::Wgpu(index)),
            ("cuda", index) => Ok(Backend::Cuda(index)),
            ("cpu" | "vulkan", Some(_)) => Err(FlowError::Config(format!(
                "device {s:?}: {family} takes no index; use wgpu:N to pick an adapter"
            ))),
            _ => Err(bad()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print_back() {
        for s in [
            "cpu", "wgpu", "wgpu:0", "wgpu:3", "vulkan", "cuda", "cuda:1",
        ] {
            assert_eq!(s.parse::<Backend>().unwrap().to_string(), s);
        }
        assert_eq!("wgpu:2".parse::<Backend>().unwrap(), Backend::Wgpu(Some(2)));
        for bad in [
            "tpu", "wgpu:", "wgpu:-1", "wgpu:x", "cpu:0", "vulkan:1", "", "gpu:0",
        ] {
            let e = bad.parse::<Backend>().unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
    }

    #[test]
    fn the_cpu_opens_and_missing_backends_say_how_to_build_them() {
        assert!(Backend::Cpu.device().is_ok());
        assert!(describe(&Backend::Cpu.device().unwrap()).starts_with("cpu"));
        assert_eq!(adapters(Backend::Cpu).unwrap().len(), 1);
        #[cfg(not(feature = "wgpu"))]
        for b in [Backend::Wgpu(None), Backend::Wgpu(Some(1)), Backend::Vulkan] {
            let e = b.device().unwrap_err().to_string();
            assert!(e.contains("--features wgpu"), "{e}");
        }
        #[cfg(not(feature = "cuda"))]
        {
            let e = Backend::Cuda(Some(0)).device().unwrap_err().to_string();
            assert!(e.contains("--features cuda"), "{e}");
        }
    }

    /// An index past the adapters this machine reports is an error listing them (with the
    /// wgpu feature; one adapter at most is expected on a test machine).
    #[cfg(feature = "wgpu")]
    #[test]
    fn an_adapter_index_past_the_list_is_refused() {
        let e = Backend::Wgpu(Some(99)).device().unwrap_err().to_string();
        assert!(e.contains("wgpu:99") && e.contains("adapter"), "{e}");
    }
}
