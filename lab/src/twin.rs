//! The node twins: one `talos-twin` per node of the config, in that node's namespace of the
//! box, answering the Talos API on `<node address>:50000` as that machine would: booted from
//! the Talos ISO (maintenance mode) until it is sent a config, then installed and answering
//! only clients with a certificate from the config's OS CA (`lab/go/talos/twin/main.go` says
//! which Talos source each answer follows). The real talosctl talks to them from the
//! workstation namespace, exactly as it talks to real nodes. A twin keeps its config in
//! `state/lab/twins/<node>/config.yaml`, as a machine keeps it on disk.
//!
//! Each twin is given its hardware in `state/lab/twins/<node>/hardware.json`: by default one
//! cabled Ethernet port and an internal SSD at `/dev/sda`, plus the USB stick the ISO was
//! written to. A test (or a person) may edit the file, e.g. a second port or the stick at
//! `/dev/sda`, and restart the twin.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use super::lan::{Lease, Member};
use super::process::Process;

/// What the twin reads: the machine's ports, disks and memory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Hardware {
    pub links: Vec<Link>,
    pub disks: Vec<Disk>,
    /// Bytes of memory (`talosctl health` checks each machine has Talos's minimum).
    #[serde(default = "usual_memory")]
    pub memory: u64,
}

/// 16 GiB, a usual small server's.
fn usual_memory() -> u64 {
    16 << 30
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Link {
    pub name: String,
    pub mac: String,
    pub bus_path: String,
    pub driver: String,
    /// A cable is in and the other end is up.
    pub carrier: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Disk {
    pub dev_path: String,
    pub size: u64,
    pub model: String,
    pub transport: String,
}

impl Hardware {
    /// The usual small server: one cabled port, an internal SSD at `/dev/sda`, and the USB
    /// stick with the Talos ISO. The MAC is locally administered (02:…), one per node.
    pub fn usual(index: usize) -> Hardware {
        Hardware {
            links: vec![Link {
                name: "enp1s0".into(),
                mac: format!("02:74:61:6c:00:{index:02x}"),
                bus_path: "0000:01:00.0".into(),
                driver: "igc".into(),
                carrier: true,
            }],
            disks: vec![
                Disk {
                    dev_path: "/dev/sda".into(),
                    size: 512_110_190_592,
                    model: "Samsung SSD 870".into(),
                    transport: "sata".into(),
                },
                Disk {
                    dev_path: "/dev/sdb".into(),
                    size: 31_037_849_600,
                    model: "Ultra USB 3.0".into(),
                    transport: "usb".into(),
                },
            ],
            memory: usual_memory(),
        }
    }
}

/// The file of a twin's hardware, in its folder.
pub const HARDWARE_FILE: &str = "hardware.json";

/// Where a node's twin keeps its hardware and what it is sent.
pub fn twin_dir(lab_dir: &Path, node: &str) -> PathBuf {
    lab_dir.join("twins").join(node)
}

/// Writes the usual hardware for a node that has none yet; an edited file is kept, written
/// back with every field (one written before a field existed gets its usual value).
pub fn ensure_hardware(lab_dir: &Path, node: &str, index: usize) -> anyhow::Result<PathBuf> {
    let dir = twin_dir(lab_dir, node);
    std::fs::create_dir_all(&dir)?;
    let file = dir.join(HARDWARE_FILE);
    let hardware = match std::fs::read(&file) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
            format!("{} is not a hardware description; delete it for the usual one", file.display())
        })?,
        Err(_) => Hardware::usual(index),
    };
    std::fs::write(&file, serde_json::to_vec_pretty(&hardware)?)?;
    Ok(file)
}

/// What a twin runs besides itself: the etcd binary a control plane runs (Talos pins etcd apart
/// from Kubernetes; the box has one build), kwok and its stages (the stand-in for the kubelet's
/// containers), the images it can pull, and the control planes' addresses (a stand-in for
/// Talos's discovery of its peers).
pub struct Peers<'a> {
    pub etcd: &'a Path,
    pub kwok: &'a Path,
    pub kwok_config: &'a Path,
    /// Where the Image Factory stand-in keeps the schematics (what an installer image carries).
    pub image_factory_dir: &'a Path,
    /// The images the box can pull (`Lab::write_images`): one folder per Talos release with its
    /// twin, and `kubernetes/<release>/` with that release's control-plane components.
    pub images_dir: &'a Path,
    /// The Talos release of the ISO the machine boots while its disk holds no Talos.
    pub iso: &'a str,
    pub control_planes: &'a [Ipv4Addr],
    /// The box's CA, the one the machine trusts for the public services the box stands in for
    /// (the discovery service: `discovery.rs`).
    pub box_ca: &'a Path,
}

/// The twin of one node: started inside the node's network namespace with `ip netns exec`,
/// and in a UTS namespace of its own with `unshare --uts` (so the hostname it takes from its
/// config names that machine only), trusting the box's CA (`env SSL_CERT_FILE=`). Each execs
/// the next, so the PID the lab records is the twin's.
pub fn process(lab_dir: &Path, twin: &Path, member: &Member, lease: &Lease, peers: &Peers<'_>) -> Process {
    let dir = twin_dir(lab_dir, &member.name);
    let control_planes: Vec<String> = peers.control_planes.iter().map(Ipv4Addr::to_string).collect();
    Process {
        name: format!("twin-{}", member.name),
        binary: which::which("ip").unwrap_or_else(|_| PathBuf::from("/usr/sbin/ip")),
        args: vec![
            "netns".into(),
            "exec".into(),
            member.namespace.clone(),
            "unshare".into(),
            "--uts".into(),
            "env".into(),
            format!("SSL_CERT_FILE={}", peers.box_ca.display()),
            twin.display().to_string(),
            format!("--dhcp-lease={}/{}", lease.address, lease.prefix_len),
            format!("--router={}", lease.router),
            format!("--hardware={}", dir.join(HARDWARE_FILE).display()),
            format!("--state={}", dir.display()),
            format!("--etcd={}", peers.etcd.display()),
            format!("--kwok={}", peers.kwok.display()),
            format!("--kwok-config={}", peers.kwok_config.display()),
            format!("--image-factory-dir={}", peers.image_factory_dir.display()),
            format!("--images={}", peers.images_dir.display()),
            format!("--iso={}", peers.iso),
            format!("--control-planes={}", control_planes.join(",")),
        ],
        run_dir: lab_dir.join("run"),
        log_dir: lab_dir.join("logs"),
    }
}

/// The lab's named faults, each a file in a twin's folder beside its hardware (not on its disk:
/// a wipe keeps them), one entry per line; the twin reads them when it acts
/// (`lab/go/talos/twin/upgrade.go`).
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Talos releases this machine fails to boot, as a real image can fail for a driver it
    /// lacks. A boot of such a release fails before the machine is ready, and the twin does
    /// what Talos does then: back to the boot entry before the upgrade, if there is one.
    FailsToBoot,
    /// Mount points under /var that something keeps open: Talos's unmount before an upgrade
    /// (or a graceful reboot) fails on them, with its services already stopped.
    BusyMounts,
}

impl Fault {
    const ALL: [Fault; 2] = [Fault::FailsToBoot, Fault::BusyMounts];

    fn file(self) -> &'static str {
        match self {
            Fault::FailsToBoot => "fails-to-boot",
            Fault::BusyMounts => "busy-mounts",
        }
    }
}

/// A blank disk in `node`'s machine, as a new disk or a new machine has: everything the twin
/// wrote goes (its config, its node identity, etcd's and the kubelet's data, its boot entries,
/// META), while what is not on its disk stays: its hardware and its named faults. The machine
/// must be off; it then boots from the ISO into maintenance mode.
pub fn blank_disk(lab_dir: &Path, node: &str) -> anyhow::Result<()> {
    let dir = twin_dir(lab_dir, node);
    let kept: Vec<&str> = std::iter::once(HARDWARE_FILE).chain(Fault::ALL.map(Fault::file)).collect();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        if path.file_name().and_then(|name| name.to_str()).is_some_and(|name| kept.contains(&name)) {
            continue;
        }
        let removed =
            if entry.file_type()?.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        removed.with_context(|| format!("wiping {}", path.display()))?;
    }
    Ok(())
}

/// Gives `node` the `fault` for each of `entries` (none: the fault is cleared).
pub fn set_fault(lab_dir: &Path, node: &str, fault: Fault, entries: &[&str]) -> anyhow::Result<()> {
    let file = twin_dir(lab_dir, node).join(fault.file());
    if entries.is_empty() {
        return match std::fs::remove_file(&file) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error.into()),
            _ => Ok(()),
        };
    }
    std::fs::write(&file, entries.join("\n") + "\n").with_context(|| format!("writing {}", file.display()))
}
