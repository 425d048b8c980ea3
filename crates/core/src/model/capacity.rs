//! What a node of a given machine type offers pods: its allocatable CPU and
//! memory, from the provider's published machine shapes and the way EKS and
//! GKE reserve resources for the kubelet and the system. Used by `validate`
//! to refuse a stack whose rollout could never schedule; the local cloud's
//! simulated Nodes take their allocatable from the same file.
//!
//! The shapes and the reservations (a share of each core; on EKS a fixed
//! amount plus some per pod, on GKE a share of each memory tier; eviction)
//! are data in `support/machine-types.json`. DaemonSets' requests (the CNI,
//! kube-proxy) are not counted: what is left is an upper bound.

/// One machine type, as `support/machine-types.json` lists it.
#[derive(serde::Deserialize)]
struct Shape {
    cores: u32,
    memory_gib: f64,
    max_pods: u32,
}

#[derive(serde::Deserialize)]
struct EksMemory {
    fixed: f64,
    per_pod: f64,
}

/// What the providers keep from pods (see the file's `about`).
#[derive(serde::Deserialize)]
struct Reservations {
    cpu_per_core: Vec<f64>,
    eks_memory_mib: EksMemory,
    gke_memory: Vec<(Option<f64>, f64)>,
    eviction_mib: f64,
}

#[derive(serde::Deserialize)]
struct Table {
    reservations: Reservations,
    ec2: std::collections::BTreeMap<String, Shape>,
    gce: std::collections::BTreeMap<String, Shape>,
}

/// The machine shapes, shared with the local cloud's simulated nodes.
const TABLE: &str = include_str!("../../../../support/machine-types.json");

fn table() -> &'static Table {
    static PARSED: std::sync::LazyLock<Table> = std::sync::LazyLock::new(|| {
        serde_json::from_str(TABLE).expect("support/machine-types.json is checked by a unit test")
    });
    &PARSED
}

/// Which provider's reservations apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    Eks,
    Gke,
}

/// What pods may request on one node: CPU in cores, memory in bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Allocatable {
    pub cpu: f64,
    pub memory: f64,
}

const MIB: f64 = 1024.0 * 1024.0;
const GIB: f64 = 1024.0 * MIB;

fn cpu_reserved(cores: u32) -> f64 {
    let shares = &table().reservations.cpu_per_core;
    (0..cores as usize)
        .map(|c| shares[c.min(shares.len() - 1)])
        .sum()
}

fn gke_memory_reserved(total: f64) -> f64 {
    let mut left = total;
    let mut reserved = 0.0;
    for &(size, share) in &table().reservations.gke_memory {
        let part = size.map_or(left, |gib| left.min(gib * GIB));
        reserved += part * share;
        left -= part;
        if left <= 0.0 {
            break;
        }
    }
    reserved
}

/// A node's allocatable resources, for a machine type this table knows.
pub fn allocatable(provider: Provider, machine_type: &str) -> Option<Allocatable> {
    let shapes = match provider {
        Provider::Eks => &table().ec2,
        Provider::Gke => &table().gce,
    };
    let shape = shapes.get(machine_type)?;
    let memory = shape.memory_gib * GIB;
    let reserved = match provider {
        Provider::Eks => {
            let eks = &table().reservations.eks_memory_mib;
            (eks.fixed + eks.per_pod * f64::from(shape.max_pods)) * MIB
        }
        Provider::Gke => gke_memory_reserved(memory),
    } + table().reservations.eviction_mib * MIB;
    Some(Allocatable {
        cpu: f64::from(shape.cores) - cpu_reserved(shape.cores),
        memory: memory - reserved,
    })
}

/// Memory as people read it (`14.2 GiB`).
pub fn show_memory(bytes: f64) -> String {
    format!("{:.1} GiB", bytes / GIB)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_two_core_node_offers_a_little_under_two_cores() {
        let a = allocatable(Provider::Eks, "t3.large").unwrap();
        assert!((a.cpu - 1.93).abs() < 1e-9, "{a:?}");
        let m = allocatable(Provider::Eks, "m5.xlarge").unwrap();
        assert!((m.cpu - 3.92).abs() < 1e-9, "{m:?}");
        // 16 GiB less 255 + 11 * 58 + 100 MiB.
        assert!((m.memory / GIB - (16.0 - 993.0 / 1024.0)).abs() < 1e-9);
        let g = allocatable(Provider::Gke, "e2-standard-2").unwrap();
        // 8 GiB less 1 + 0.8 GiB and 100 MiB.
        assert!((g.memory / GIB - (8.0 - 1.8 - 100.0 / 1024.0)).abs() < 1e-9);
        assert!(allocatable(Provider::Gke, "x9-mega-1").is_none());
    }
}
