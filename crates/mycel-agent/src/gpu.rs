//! The node's NVIDIA GPUs: found through NVML (the driver's management library, loaded
//! at run time, so a machine without the driver simply has none), handed to replicas
//! whole, each replica told its own through `CUDA_VISIBLE_DEVICES`, and sampled for
//! every heartbeat.

use std::collections::BTreeMap;
use std::sync::Mutex;

use mycel_core::fleet::{Gpu, GpuUse};
use nvml_wrapper::Nvml;

/// Why the GPUs an operator named cannot be offered.
#[derive(Debug, thiserror::Error)]
#[error("--gpus: {0}")]
pub struct GpuError(String);

/// The GPUs this node offers, and which replica holds each.
pub struct Gpus {
    nvml: Option<Nvml>,
    offered: Vec<Gpu>,
    held: Mutex<BTreeMap<u32, String>>,
}

/// The driver's library, by the name the driver installs (`.so.1`) and then by the
/// development symlink.
fn nvml() -> Option<Nvml> {
    let installed = Nvml::builder()
        .lib_path(std::ffi::OsStr::new("libnvidia-ml.so.1"))
        .init();
    match installed.or_else(|_| Nvml::init()) {
        Ok(nvml) => Some(nvml),
        Err(e) => {
            tracing::debug!(error = %e, "no NVIDIA driver; this node offers no GPUs");
            None
        }
    }
}

fn devices(nvml: &Nvml) -> Vec<Gpu> {
    let count = nvml.device_count().unwrap_or(0);
    (0..count)
        .filter_map(|index| {
            let device = nvml.device_by_index(index).ok()?;
            Some(Gpu {
                index,
                name: device.name().unwrap_or_default(),
                memory_bytes: device.memory_info().map_or(0, |m| m.total),
            })
        })
        .collect()
}

impl Gpus {
    /// Every GPU the driver reports, or only those in `only` (indices as `nvidia-smi`
    /// numbers them). Where the driver cannot be asked (a container without NVML),
    /// `only` is taken at its word.
    pub fn detect(only: Option<&[u32]>) -> Result<Self, GpuError> {
        let nvml = nvml();
        let found = nvml.as_ref().map(devices);
        let offered = offer(found, only)?;
        if !offered.is_empty() {
            let names: Vec<String> = offered
                .iter()
                .map(|g| format!("{} {}", g.index, g.name))
                .collect();
            tracing::info!(gpus = %names.join(", "), "offering GPUs");
        }
        Ok(Self {
            nvml,
            offered,
            held: Mutex::new(BTreeMap::new()),
        })
    }

    /// The GPUs offered.
    pub fn devices(&self) -> &[Gpu] {
        &self.offered
    }

    /// Gives `replica` `count` GPUs of its own until [`Gpus::release`]; returns what
    /// its `CUDA_VISIBLE_DEVICES` should be: their indices, or empty (no GPU) for a
    /// replica that asked for none on a node that has some. `None` on a node without
    /// GPUs, where nothing needs hiding.
    pub fn take(&self, replica: &str, count: u32) -> Result<Option<String>, String> {
        if self.offered.is_empty() && count == 0 {
            return Ok(None);
        }
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let indices: Vec<u32> = self.offered.iter().map(|g| g.index).collect();
        let taken = pick(&indices, &held, count).ok_or_else(|| {
            format!(
                "needs {count} GPUs, and {} of this node's {} are free",
                indices.len() - held.len(),
                indices.len()
            )
        })?;
        for &index in &taken {
            held.insert(index, replica.to_owned());
        }
        let visible: Vec<String> = taken.iter().map(u32::to_string).collect();
        Ok(Some(visible.join(",")))
    }

    /// Gives back what `replica` held.
    pub fn release(&self, replica: &str) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.retain(|_, holder| holder != replica);
    }

    /// How each GPU offered is used now; empty without the driver.
    pub fn sample(&self) -> Vec<GpuUse> {
        let Some(nvml) = &self.nvml else {
            return Vec::new();
        };
        self.offered
            .iter()
            .filter_map(|gpu| {
                let device = nvml.device_by_index(gpu.index).ok()?;
                Some(GpuUse {
                    index: gpu.index,
                    memory_used_bytes: device.memory_info().map_or(0, |m| m.used),
                    utilization_percent: device.utilization_rates().map_or(0, |u| u.gpu),
                })
            })
            .collect()
    }
}

/// The GPUs to offer: what the driver `found` (`None`: no driver), narrowed to `only`.
fn offer(found: Option<Vec<Gpu>>, only: Option<&[u32]>) -> Result<Vec<Gpu>, GpuError> {
    let Some(only) = only else {
        return Ok(found.unwrap_or_default());
    };
    let mut offered: Vec<Gpu> = Vec::with_capacity(only.len());
    for &index in only {
        if offered.iter().any(|g| g.index == index) {
            return Err(GpuError(format!("GPU {index} is named twice")));
        }
        let gpu = match &found {
            None => Gpu {
                index,
                name: String::new(),
                memory_bytes: 0,
            },
            Some(found) => found
                .iter()
                .find(|g| g.index == index)
                .cloned()
                .ok_or_else(|| {
                    let have: Vec<String> = found.iter().map(|g| g.index.to_string()).collect();
                    GpuError(format!(
                        "there is no GPU {index}; the driver reports {}",
                        if have.is_empty() {
                            "none".into()
                        } else {
                            have.join(", ")
                        }
                    ))
                })?,
        };
        offered.push(gpu);
    }
    Ok(offered)
}

/// The first `count` of `indices` nobody holds, or `None` if there are not so many.
fn pick(indices: &[u32], held: &BTreeMap<u32, String>, count: u32) -> Option<Vec<u32>> {
    let free: Vec<u32> = indices
        .iter()
        .copied()
        .filter(|i| !held.contains_key(i))
        .take(count as usize)
        .collect();
    (free.len() == count as usize).then_some(free)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn offered(indices: &[u32]) -> Gpus {
        Gpus {
            nvml: None,
            offered: offer(None, Some(indices)).unwrap(),
            held: Mutex::new(BTreeMap::new()),
        }
    }

    #[test]
    fn each_replica_gets_gpus_of_its_own_and_gives_them_back() {
        let gpus = offered(&[0, 1, 2]);
        assert_eq!(gpus.take("a", 2).unwrap().as_deref(), Some("0,1"));
        assert_eq!(gpus.take("b", 1).unwrap().as_deref(), Some("2"));
        let e = gpus.take("c", 1).unwrap_err();
        assert_eq!(e, "needs 1 GPUs, and 0 of this node's 3 are free");
        // A replica that wants none sees none.
        assert_eq!(gpus.take("d", 0).unwrap().as_deref(), Some(""));
        gpus.release("a");
        assert_eq!(gpus.take("c", 2).unwrap().as_deref(), Some("0,1"));
    }

    #[test]
    fn a_node_without_gpus_hides_nothing_and_refuses_a_gpu_replica() {
        let gpus = offered(&[]);
        assert_eq!(gpus.take("a", 0).unwrap(), None);
        assert!(gpus.take("b", 1).is_err());
    }

    #[test]
    fn named_gpus_must_exist_where_the_driver_answers() {
        let found = vec![Gpu {
            index: 0,
            name: "NVIDIA H200".into(),
            memory_bytes: 1 << 30,
        }];
        let e = offer(Some(found.clone()), Some(&[1])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--gpus: there is no GPU 1; the driver reports 0"
        );
        assert_eq!(offer(Some(found.clone()), Some(&[0])).unwrap(), found);
        assert_eq!(offer(Some(found.clone()), None).unwrap(), found);
        assert!(offer(None, Some(&[3, 3])).is_err());
        assert_eq!(offer(None, None).unwrap(), Vec::new());
    }
}
