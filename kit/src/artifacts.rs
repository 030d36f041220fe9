//! Upstream release manifests, pinned: downloaded from their official URLs into a cache,
//! sha256-recorded in `talos-ha.lock` beside the config on first use (like Cargo.lock), and
//! refused if they ever change. With `--mirror DIR` (air-gapped sites) they are read from a
//! folder laid out `<component>/<version>/<file>` with a `SHA256SUMS`, checked against both.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use sha2::{Digest, Sha256};

use crate::config::{ClusterConfig, Version, Versions};

/// The components talos-ha installs from upstream manifests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    Metallb,
    MetricsServer,
    KubeletServingCertApprover,
    Traefik,
    CertManager,
    Longhorn,
    Headlamp,
    EnvoyGateway,
}

impl Component {
    /// Every component, in the order the stages install them.
    pub const ALL: [Component; 8] = [
        Component::Metallb,
        Component::MetricsServer,
        Component::KubeletServingCertApprover,
        Component::Traefik,
        Component::CertManager,
        Component::Longhorn,
        Component::Headlamp,
        Component::EnvoyGateway,
    ];

    /// Its key under `versions:` in cluster.yaml.
    pub fn key(self) -> &'static str {
        match self {
            Component::Metallb => "metallb",
            Component::MetricsServer => "metricsServer",
            Component::KubeletServingCertApprover => "kubeletServingCertApprover",
            Component::Traefik => "traefik",
            Component::CertManager => "certManager",
            Component::Longhorn => "longhorn",
            Component::Headlamp => "headlamp",
            Component::EnvoyGateway => "envoyGateway",
        }
    }

    /// The folder name in caches and mirrors.
    pub fn dir(self) -> &'static str {
        match self {
            Component::Metallb => "metallb",
            Component::MetricsServer => "metrics-server",
            Component::KubeletServingCertApprover => "kubelet-serving-cert-approver",
            Component::Traefik => "traefik",
            Component::CertManager => "cert-manager",
            Component::Longhorn => "longhorn",
            Component::Headlamp => "headlamp",
            Component::EnvoyGateway => "envoy-gateway",
        }
    }

    /// The version `cluster.yaml` pins for this component.
    pub fn version(self, versions: &Versions) -> Version {
        match self {
            Component::Metallb => versions.metallb,
            Component::MetricsServer => versions.metrics_server,
            Component::KubeletServingCertApprover => versions.kubelet_serving_cert_approver,
            Component::Traefik => versions.traefik,
            Component::CertManager => versions.cert_manager,
            Component::Longhorn => versions.longhorn,
            Component::Headlamp => versions.headlamp,
            Component::EnvoyGateway => versions.envoy_gateway,
        }
    }
}

/// One upstream file. `url` has `{version}` where the release tag goes.
#[derive(Debug, Clone, Copy)]
pub struct Artifact {
    pub component: Component,
    pub file: &'static str,
    url: &'static str,
}

/// Every file the stages install, with its official URL.
pub const ARTIFACTS: &[Artifact] = &[
    Artifact {
        component: Component::Metallb,
        file: "metallb-native.yaml",
        url: "https://raw.githubusercontent.com/metallb/metallb/{version}/config/manifests/metallb-native.yaml",
    },
    Artifact {
        component: Component::MetricsServer,
        file: "components.yaml",
        url: "https://github.com/kubernetes-sigs/metrics-server/releases/download/{version}/components.yaml",
    },
    Artifact {
        component: Component::KubeletServingCertApprover,
        file: "ha-install.yaml",
        url: "https://raw.githubusercontent.com/alex1989hu/kubelet-serving-cert-approver/{version}/deploy/ha-install.yaml",
    },
    Artifact {
        component: Component::Traefik,
        file: "kubernetes-crd-definition-v1.yml",
        url: "https://raw.githubusercontent.com/traefik/traefik/{version}/docs/content/reference/dynamic-configuration/kubernetes-crd-definition-v1.yml",
    },
    Artifact {
        component: Component::Traefik,
        file: "kubernetes-crd-rbac.yml",
        url: "https://raw.githubusercontent.com/traefik/traefik/{version}/docs/content/reference/dynamic-configuration/kubernetes-crd-rbac.yml",
    },
    Artifact {
        component: Component::CertManager,
        file: "cert-manager.yaml",
        url: "https://github.com/cert-manager/cert-manager/releases/download/{version}/cert-manager.yaml",
    },
    Artifact {
        component: Component::Longhorn,
        file: "longhorn.yaml",
        url: "https://raw.githubusercontent.com/longhorn/longhorn/{version}/deploy/longhorn.yaml",
    },
    Artifact {
        component: Component::Headlamp,
        file: "kubernetes-headlamp.yaml",
        url: "https://raw.githubusercontent.com/kubernetes-sigs/headlamp/{version}/kubernetes-headlamp.yaml",
    },
    Artifact {
        component: Component::EnvoyGateway,
        file: "install.yaml",
        url: "https://github.com/envoyproxy/gateway/releases/download/{version}/install.yaml",
    },
];

impl Artifact {
    /// The pinned artifact for a component's file.
    pub fn find(component: Component, file: &str) -> anyhow::Result<Artifact> {
        ARTIFACTS
            .iter()
            .copied()
            .find(|artifact| artifact.component == component && artifact.file == file)
            .with_context(|| format!("no pinned artifact {}/{file}", component.dir()))
    }

    /// `<component>/<version>/<file>`: the path in caches, mirrors and the lock.
    pub fn relative_path(&self, version: Version) -> String {
        format!("{}/{version}/{}", self.component.dir(), self.file)
    }

    pub fn official_url(&self, version: Version) -> String {
        self.url.replace("{version}", &version.to_string())
    }
}

/// Where artifacts come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// The official URLs, or `base_url/<component>/<version>/<file>` when a base is set
    /// (`TALOS_HA_ARTIFACT_BASE_URL`: an internal mirror served over HTTP, or the tests' server).
    Download { base_url: Option<String> },
    /// A local folder in mirror layout with a SHA256SUMS.
    Mirror(PathBuf),
}

/// Fetches pinned artifacts, caching downloads and holding every file to its locked sum.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    pub source: Source,
    pub cache_dir: PathBuf,
    pub lock_file: PathBuf,
    versions: Versions,
}

/// The lock file's name, beside `cluster.yaml`.
pub const LOCK_FILE: &str = "talos-ha.lock";

impl ArtifactStore {
    /// The store a command uses: the mirror if one is given, else downloads into the user cache.
    pub fn new(config: &ClusterConfig, mirror: Option<&Path>, cache_root: &Path) -> ArtifactStore {
        let source = match mirror {
            Some(dir) => Source::Mirror(dir.to_owned()),
            None => Source::Download { base_url: std::env::var("TALOS_HA_ARTIFACT_BASE_URL").ok() },
        };
        let config_dir = config.source.parent().map(Path::to_owned).unwrap_or_default();
        ArtifactStore {
            source,
            cache_dir: cache_root.join("artifacts"),
            lock_file: config_dir.join(LOCK_FILE),
            versions: config.versions.clone(),
        }
    }

    /// The artifact's bytes, checked against the lock (and the mirror's SHA256SUMS).
    pub fn fetch(&self, artifact: &Artifact) -> anyhow::Result<Vec<u8>> {
        let version = artifact.component.version(&self.versions);
        let relative = artifact.relative_path(version);
        let (bytes, origin) = match &self.source {
            Source::Mirror(dir) => (read_from_mirror(dir, &relative)?, format!("mirror {}", dir.display())),
            Source::Download { base_url } => {
                let cached = self.cache_dir.join(&relative);
                if cached.exists() {
                    let bytes = std::fs::read(&cached).with_context(|| format!("reading {}", cached.display()))?;
                    (bytes, format!("cache {}", cached.display()))
                } else {
                    let url = match base_url {
                        Some(base) => format!("{}/{relative}", base.trim_end_matches('/')),
                        None => artifact.official_url(version),
                    };
                    let bytes = download(&url)?;
                    crate::fsutil::write_atomic(&cached, &bytes)?;
                    (bytes, url)
                }
            }
        };
        self.check_lock(&relative, &bytes, &origin)?;
        Ok(bytes)
    }

    /// Holds `bytes` to the lock's sum for `relative`, or records the sum on first use.
    fn check_lock(&self, relative: &str, bytes: &[u8], origin: &str) -> anyhow::Result<()> {
        let actual = sha256_hex(bytes);
        let mut lock = read_sums(&self.lock_file)?;
        match lock.get(relative) {
            Some(locked) if *locked == actual => Ok(()),
            Some(locked) => anyhow::bail!(
                "{relative} from {origin} has sha256 {actual}, but {} pins {locked}; the file changed since it \
                 was locked. If that is expected (a re-published release), delete its line from the lock and \
                 the cached copy, then run again",
                self.lock_file.display()
            ),
            None => {
                tracing::info!("locked {relative} at sha256 {actual} in {}", self.lock_file.display());
                lock.insert(relative.to_owned(), actual);
                write_sums(&self.lock_file, &lock)
            }
        }
    }
}

fn read_from_mirror(dir: &Path, relative: &str) -> anyhow::Result<Vec<u8>> {
    let path = dir.join(relative);
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "{relative} is not in the mirror (looked for {}); fill the mirror with `cargo xtask mirror --out {}`",
            path.display(),
            dir.display()
        )
    })?;
    let sums_path = dir.join("SHA256SUMS");
    let sums = read_sums(&sums_path)?;
    let expected = sums
        .get(relative)
        .with_context(|| format!("{} has no line for {relative}; the mirror is incomplete", sums_path.display()))?;
    let actual = sha256_hex(&bytes);
    anyhow::ensure!(
        *expected == actual,
        "{} has sha256 {actual}, but the mirror's SHA256SUMS says {expected}: the file was altered",
        path.display()
    );
    Ok(bytes)
}

fn download(url: &str) -> anyhow::Result<Vec<u8>> {
    tracing::info!("downloading {url}");
    let agent: ureq::Agent =
        ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(120))).build().into();
    let mut response = agent.get(url).call().with_context(|| {
        format!("downloading {url} failed; without internet access, use --mirror DIR (filled by `cargo xtask mirror`)")
    })?;
    response
        .body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_vec()
        .with_context(|| format!("reading the body of {url}"))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().fold(String::with_capacity(64), |mut hex, byte| {
        let _ = write!(hex, "{byte:02x}");
        hex
    })
}

/// Reads a `sha256sum`-format file (`<hex>  <path>` per line, `#` comments) into path → sum.
/// A missing file is an empty map.
pub fn read_sums(path: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
    };
    let mut sums = BTreeMap::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (sum, file) = line
            .split_once(char::is_whitespace)
            .with_context(|| format!("{}:{}: expected `<sha256>  <path>`", path.display(), number + 1))?;
        sums.insert(file.trim().trim_start_matches('*').to_owned(), sum.to_owned());
    }
    Ok(sums)
}

/// Writes a `sha256sum`-format file, sorted by path, with a header saying what it is.
pub fn write_sums(path: &Path, sums: &BTreeMap<String, String>) -> anyhow::Result<()> {
    let mut text = String::from(
        "# talos-ha artifact lock: the sha256 of every upstream file on first use. Commit it.\n\
         # A file that no longer matches is refused. Same format as sha256sum / SHA256SUMS.\n",
    );
    for (file, sum) in sums {
        let _ = writeln!(text, "{sum}  {file}");
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
