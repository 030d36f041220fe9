//! Talos's discovery service, in the box. The seed's machines register with the discovery
//! service at Talos's default endpoint (`https://discovery.talos.dev/`: the config's
//! `cluster.discovery.registries.service`), and learn their peers from it: that is where
//! `talosctl get members` and a `talosctl health` given no node lists find the cluster. The box
//! has no way out, so it runs the real service (`siderolabs/discovery-service`, built from its
//! Go module like the other binaries) on the workstation, under that name:
//!
//! - the name resolves to the workstation's address in each machine's namespace
//!   (`/etc/netns/<namespace>/hosts`, which `ip netns exec` puts over `/etc/hosts` for the
//!   twin it starts), and the machines' DNS server is the workstation, which has none, so other
//!   names fail at once (`resolv.conf` beside it);
//! - the service's certificate is issued by the box's own CA, the stand-in at this edge (the
//!   public service's is a public CA's), and the twins trust that CA, and only it
//!   (`SSL_CERT_FILE`).
//!
//! Everything it is sent stays encrypted with the cluster's secret, as it is on the public
//! service: the service sees only ciphertext.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use kit::config::ClusterConfig;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

use crate::lan::Lan;
use crate::process::Process;

/// Talos's default discovery endpoint's host (`constants.DefaultDiscoveryServiceEndpoint`).
pub const SERVICE_HOST: &str = "discovery.talos.dev";
/// The discovery-service release the box runs.
pub const SERVICE_VERSION: &str = "v1.0.13";

/// The box's discovery files: the CA the twins trust, the service's certificate and key.
fn dir(lab_dir: &Path) -> PathBuf {
    lab_dir.join("discovery")
}

/// The CA certificate the twins trust for public names served in the box.
pub fn ca_file(lab_dir: &Path) -> PathBuf {
    dir(lab_dir).join("box-ca.pem")
}

/// Writes the box's CA and the service's certificate (once: a running box keeps its CA), and
/// the hosts and resolv.conf files of each machine's namespace.
pub fn write_files(lab_dir: &Path, lan: &Lan, workstation: Ipv4Addr) -> anyhow::Result<()> {
    let dir = dir(lab_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    if !ca_file(lab_dir).exists() {
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.distinguished_name.push(DnType::CommonName, "talos-ha box CA (stands in for public CAs)");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate()?;
        let ca_pem = ca.self_signed(&ca_key)?.pem();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate()?;
        let certificate = CertificateParams::new(vec![SERVICE_HOST.to_owned()])?.signed_by(&key, &issuer)?;
        kit::fsutil::write_private(&dir.join("service-key.pem"), key.serialize_pem().as_bytes())?;
        std::fs::write(dir.join("service.pem"), certificate.pem())?;
        std::fs::write(ca_file(lab_dir), ca_pem)?;
    }
    for namespace in lan.namespaces().into_iter().filter(|namespace| *namespace != lan.admin().namespace) {
        let etc = hosts_dir(namespace);
        std::fs::create_dir_all(&etc).with_context(|| format!("creating {}", etc.display()))?;
        let hosts = format!("127.0.0.1 localhost\n::1 localhost\n{workstation} {SERVICE_HOST}\n");
        std::fs::write(etc.join("hosts"), hosts).with_context(|| format!("writing {}/hosts", etc.display()))?;
        // The box has no DNS server: a query to the workstation is refused at once (nothing
        // listens on port 53 there), where one to this machine's own resolver would wait out
        // its timeout unanswered (the box has no way out) and stall gRPC's resolver.
        let resolv = format!("nameserver {workstation}\noptions timeout:1 attempts:1\n");
        std::fs::write(etc.join("resolv.conf"), resolv)
            .with_context(|| format!("writing {}/resolv.conf", etc.display()))?;
    }
    Ok(())
}

/// Where `ip netns exec` finds a namespace's own files for /etc.
fn hosts_dir(namespace: &str) -> PathBuf {
    Path::new("/etc/netns").join(namespace)
}

/// Removes the namespaces' files for /etc (when the box comes down), those of `retired`
/// machines (removed from the config) too.
pub fn remove_files(lan: &Lan, retired: &[String]) -> anyhow::Result<()> {
    let retired = retired.iter().map(|name| crate::lan::machine_namespace(&lan.cluster, name));
    for namespace in lan.namespaces().into_iter().map(str::to_owned).chain(retired) {
        let etc = hosts_dir(&namespace);
        if etc.exists() {
            std::fs::remove_dir_all(&etc).with_context(|| format!("removing {}", etc.display()))?;
        }
    }
    Ok(())
}

/// The discovery service, on the workstation's address in the box, port 443.
pub fn process(lab_dir: &Path, binary: &Path, config: &ClusterConfig, workstation: Ipv4Addr) -> Process {
    let dir = dir(lab_dir);
    Process {
        name: "discovery-service".into(),
        binary: which::which("ip").unwrap_or_else(|_| PathBuf::from("/usr/sbin/ip")),
        args: vec![
            "netns".into(),
            "exec".into(),
            kit::lab::workstation_namespace(&config.name),
            binary.display().to_string(),
            format!("--addr={workstation}:443"),
            format!("--certificate-path={}", dir.join("service.pem").display()),
            format!("--key-path={}", dir.join("service-key.pem").display()),
            "--landing-addr=".into(),
            "--metrics-addr=".into(),
            "--snapshots-enabled=false".into(),
        ],
        run_dir: lab_dir.join("run"),
        log_dir: lab_dir.join("logs"),
    }
}
