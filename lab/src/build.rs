//! The lab's binaries, built from Go modules on first use and cached outside the repository,
//! keyed by version, so a second `lab up` (or CI with a warm cache) builds nothing.
//!
//! - etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kubectl come from the
//!   wrapper module `lab/go/kubernetes` (k8s.io/kubernetes cannot be `go install`ed: its
//!   go.mod replaces staging modules with local paths; the wrapper points them at releases).
//!   The control-plane components of every other Kubernetes release the box runs
//!   (`KUBERNETES_RELEASES`) come from a scratch module made the same way for that release.
//! - kwok and MetalLB's controller are plain modules: `go install <package>@<version>`.
//! - cert-manager's controller is talos-ha's own main over cert-manager's packages
//!   (`lab/go/cert-manager`: upstream's main is a module the proxy does not serve).
//! - Envoy Gateway's controller installs as it is; Traefik comes from the wrapper module
//!   `lab/go/traefik` (its go.mod replaces forks and a local module, which `go install` refuses).
//! - talosctl (stage 01 generates and validates the machine configs with it) comes from the
//!   wrapper module `lab/go/talos`, built with the Go checksum database off (some of Talos's
//!   forked dependencies have no entry there; the committed go.sum pins every module), with
//!   the node twin (`lab/go/talos/twin`) built from the same module on the same packages.
//! - A twin of every other Talos release the box can run (`TWIN_RELEASES`), the same twin
//!   source built in a scratch copy of that module with Talos pinned at the release: the
//!   machines' "images", which an upgrade in the box installs and boots.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use kit::artifacts::Component;
use kit::config::{Version, Versions};
use xshell::{Shell, cmd};

/// The kwok release the lab runs (fake nodes and pods; no containers).
pub const KWOK_VERSION: &str = "v0.8.0";
/// kwok's stage definitions, in its module: how fake nodes initialise and heartbeat (with a
/// Lease, as kubelets do) and how pods become Ready, complete and are deleted. kwokctl embeds
/// these; the bare kwok binary must be given them in its config.
const KWOK_STAGES: &[&str] = &[
    "kustomize/stage/node/fast/node-initialize.yaml",
    "kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "kustomize/stage/pod/fast/pod-ready.yaml",
    "kustomize/stage/pod/fast/pod-complete.yaml",
    "kustomize/stage/pod/fast/pod-delete.yaml",
];
/// The Kubernetes release the committed wrapper module builds: the box's etcd and kubectl, and
/// that release's control-plane components.
const WRAPPER_KUBERNETES: &str = "v1.35.0";
/// Every Kubernetes release whose control plane the box can run: the wrapper's, then the others,
/// each built on first use from that release's own module (its go.mod's staging modules pinned
/// at the matching v0.x release) and cached by release. A control plane runs the build its
/// component's image names; an image of a release with no build cannot be pulled. Talos v1.12
/// upgrades from 1.34 to 1.35 (`../shared/design/talos-day2.md` §1): the path rehearsed.
pub const KUBERNETES_RELEASES: [&str; 2] = [WRAPPER_KUBERNETES, "v1.34.4"];
/// The control-plane components a Kubernetes release's build holds: the static pods Talos runs
/// on a control plane.
pub const CONTROL_PLANE_COMPONENTS: [&str; 3] = ["kube-apiserver", "kube-controller-manager", "kube-scheduler"];
/// The node twin's binary (`lab/go/talos/twin`), beside talosctl.
pub const TWIN: &str = "talos-twin";
/// Talos's discovery service (`discovery.rs`), in a folder of its release.
pub const DISCOVERY_SERVICE: &str = "discovery-service";
/// The workstation services' binary (the API forward and the box's stand-ins), beside the twin.
pub const WORKSTATION: &str = "talos-workstation";
/// The Talos release whose talosctl (and twin) the committed wrapper module `lab/go/talos` builds.
const WRAPPER_TALOS: &str = "v1.12.1";
/// Every Talos release the box has a twin of: what its machines can boot, be installed with and
/// be upgraded to. Each is the twin's source built against that release's own packages (its
/// version, config schema and validation, API and upgrade tables), never one binary relabelled:
/// the committed wrapper's release, then the others (built on first use, cached by release).
/// The Go module proxy serves Talos's main module at v1.12.0 and v1.12.1 only
/// (`../shared/design/talos-day2.md` §1), so these are the releases an upgrade is rehearsed on.
pub const TWIN_RELEASES: [&str; 2] = [WRAPPER_TALOS, "v1.12.0"];
/// The cert-manager release `lab/go/cert-manager`'s committed go.mod and go.sum build; other
/// releases are resolved afresh in a scratch copy.
const WRAPPER_CERT_MANAGER: &str = "v1.20.3";
/// The Traefik release the wrapper module `lab/go/traefik` builds.
const WRAPPER_TRAEFIK: &str = "v3.7.9";

/// The add-on controllers the box runs for real, as host processes the workstation services
/// start (lab/go/talos/workstation/controllers.go), with what each does there.
pub const HOST_CONTROLLERS: [(Component, &str); 4] = [
    (Component::Metallb, "assigns LoadBalancer addresses from stage 02's pools"),
    (Component::Traefik, "watches Ingresses and IngressRoutes, and publishes traefik.ip on each Ingress"),
    (Component::CertManager, "issues the Certificates of stage 05's issuers"),
    (Component::EnvoyGateway, "makes each Gateway's Envoy Deployment and Service, and reports the Gateway's status"),
];

/// A host controller's process name, its pid and log file's (the workstation names them alike).
pub fn host_controller_name(component: Component) -> String {
    format!("{}-controller", component.dir())
}

/// What the host controller of process `name` does, if `name` is one.
pub fn host_controller_role(name: &str) -> Option<&'static str> {
    HOST_CONTROLLERS.iter().find(|(component, _)| host_controller_name(*component) == name).map(|(_, role)| *role)
}

/// Where every lab binary lives once built.
pub struct Binaries {
    /// The wrapper's Kubernetes build: etcd and kubectl, and that release's components.
    pub kubernetes_dir: PathBuf,
    pub kwok_dir: PathBuf,
    /// talosctl, the wrapper release's twin and the workstation services, in the folder where
    /// `kit::tool` looks for talosctl of that release (a newer talosctl manages older nodes).
    pub talos_dir: PathBuf,
    /// The Talos release the machines boot from the ISO: versions.talos.
    iso: Version,
}

impl Binaries {
    /// kwok's stage files, copied from its module at build time.
    pub fn kwok_stages(&self) -> Vec<PathBuf> {
        KWOK_STAGES.iter().map(|stage| self.kwok_dir.join("stages").join(file_name(stage))).collect()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        match name {
            "kwok" => self.kwok_dir.join(name),
            DISCOVERY_SERVICE => discovery_service_dir().join(name),
            "talosctl" => self.talos_dir.join(name),
            // The twin and the workstation services are our own code: their files carry a hash
            // of their source, so a change rebuilds them although versions.talos did not change.
            TWIN | WORKSTATION => self.talos_dir.join(format!("{name}-{}", box_source_hash())),
            _ => self.kubernetes_dir.join(name),
        }
    }

    /// The twin of Talos `release`: the wrapper's own build, or the one built for that release.
    pub fn twin(&self, release: Version) -> PathBuf {
        if release.to_string() == WRAPPER_TALOS {
            self.path(TWIN)
        } else {
            twin_release_dir(release).join(format!("{TWIN}-{}", twin_source_hash()))
        }
    }

    /// The twin the machines boot from the ISO (versions.talos).
    pub fn iso_twin(&self) -> PathBuf {
        self.twin(self.iso)
    }

    /// The folder of Kubernetes `release`'s control-plane components.
    pub fn kubernetes_release(&self, release: Version) -> PathBuf {
        if release.to_string() == WRAPPER_KUBERNETES {
            self.kubernetes_dir.clone()
        } else {
            kubernetes_release_dir(release)
        }
    }

    /// The Kubernetes releases whose control planes are built: the component images the box can
    /// pull.
    pub fn built_kubernetes_releases(&self) -> Vec<Version> {
        KUBERNETES_RELEASES
            .iter()
            .filter_map(|release| release.parse().ok())
            .filter(|release| {
                CONTROL_PLANE_COMPONENTS
                    .iter()
                    .all(|component| self.kubernetes_release(*release).join(component).exists())
            })
            .collect()
    }

    /// The releases whose twins are built: the images the box can install.
    pub fn built_releases(&self) -> Vec<Version> {
        TWIN_RELEASES
            .iter()
            .filter_map(|release| release.parse().ok())
            .filter(|release| self.twin(*release).exists())
            .collect()
    }
}

/// Where the control plane of a Kubernetes release other than the wrapper's is kept.
fn kubernetes_release_dir(release: Version) -> PathBuf {
    kit::lab::binaries_dir().join(format!("kubernetes-{release}"))
}

/// Where the twin of a release other than the wrapper's is kept.
fn twin_release_dir(release: Version) -> PathBuf {
    kit::lab::binaries_dir().join(format!("{TWIN}-{release}"))
}

pub fn binaries(versions: &Versions) -> Binaries {
    let lab = kit::lab::binaries_dir();
    Binaries {
        kubernetes_dir: lab.join(format!("kubernetes-{WRAPPER_KUBERNETES}")),
        kwok_dir: lab.join(format!("kwok-{KWOK_VERSION}")),
        talos_dir: kit::tool::talosctl_cache_dir(WRAPPER_TALOS.parse().expect("WRAPPER_TALOS is a version")),
        iso: versions.talos,
    }
}

/// Where the discovery service's build is kept.
fn discovery_service_dir() -> PathBuf {
    kit::lab::binaries_dir().join(format!("{DISCOVERY_SERVICE}-{}", crate::discovery::SERVICE_VERSION))
}

/// One of the lab's wrapper modules, in this crate's `go/` folder.
fn go_module(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("go").join(name)
}

const KUBERNETES_COMMANDS: &[&str] =
    &["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl"];

/// Builds whatever is missing from the cache, the host controllers at `versions` among it;
/// returns where the binaries are.
pub fn ensure_binaries(versions: &Versions) -> anyhow::Result<Binaries> {
    let kubernetes = versions.kubernetes;
    anyhow::ensure!(
        KUBERNETES_RELEASES.contains(&kubernetes.to_string().as_str()),
        "versions.kubernetes is {kubernetes}, but the box runs the control planes of Kubernetes {} only \
         (lab/src/build.rs, KUBERNETES_RELEASES): set one of them, or add the release as that list says",
        KUBERNETES_RELEASES.join(" and ")
    );
    let binaries = binaries(versions);
    let missing_kubernetes = KUBERNETES_COMMANDS.iter().any(|name| !binaries.path(name).exists());
    let missing_release = !binaries.built_kubernetes_releases().contains(&kubernetes);
    let missing_kwok = !binaries.path("kwok").exists() || binaries.kwok_stages().iter().any(|stage| !stage.exists());
    let missing_discovery = !binaries.path(DISCOVERY_SERVICE).exists();
    let missing_controllers: Vec<(Component, Version)> = HOST_CONTROLLERS
        .iter()
        .map(|(component, _)| (*component, component.version(versions)))
        .filter(|(component, version)| !host_controller_built(*component, *version))
        .collect();
    let iso = binaries.iso;
    anyhow::ensure!(
        TWIN_RELEASES.contains(&iso.to_string().as_str()),
        "versions.talos is {iso}, but the box has twins of Talos {} only (lab/src/build.rs, TWIN_RELEASES): set one \
         of them, or add the release as that list says",
        TWIN_RELEASES.join(" and ")
    );
    let missing_talos = ["talosctl", TWIN, WORKSTATION].iter().any(|name| !binaries.path(name).exists());
    let missing_iso = !binaries.iso_twin().exists();
    if !missing_kubernetes
        && !missing_release
        && !missing_kwok
        && !missing_discovery
        && missing_controllers.is_empty()
        && !missing_talos
        && !missing_iso
    {
        return Ok(binaries);
    }
    let go = which::which("go").context(
        "`go` not found on PATH: the lab builds Kubernetes, etcd and kwok from their Go modules; \
         install Go 1.25 or newer (apt-get install golang-go, or https://go.dev/dl)",
    )?;
    let sh = Shell::new()?;
    if missing_kubernetes {
        let wrapper = WRAPPER_KUBERNETES.parse().map_err(|()| anyhow::anyhow!("WRAPPER_KUBERNETES is a version"))?;
        let packages = KUBERNETES_COMMANDS.iter().map(|command| kubernetes_package(command)).collect();
        build_kubernetes(&sh, &go, wrapper, &go_module("kubernetes"), packages, &binaries.kubernetes_dir)?;
    }
    if !binaries.built_kubernetes_releases().contains(&kubernetes) {
        build_kubernetes_release(&sh, &go, kubernetes)?;
    }
    if missing_kwok {
        build_kwok(&sh, &go, &binaries.kwok_dir)?;
    }
    if missing_discovery {
        build_discovery_service(&sh, &go)?;
    }
    for (component, version) in missing_controllers {
        build_host_controller(&sh, &go, component, version)?;
    }
    if missing_talos {
        build_talosctl(&sh, &go, &go_module("talos"), &binaries.talos_dir)?;
    }
    if !binaries.iso_twin().exists() {
        build_twin_release(&sh, &go, iso)?;
    }
    Ok(binaries)
}

/// The twin's source built against Talos `release`: a scratch copy of the wrapper module whose
/// go.mod pins Talos's main module and pkg/machinery at the release (their version, config
/// schema, validation and upgrade tables are that release's). The modules the two releases
/// share stay at the wrapper's versions (the newer of the two: Talos v1.12.0 and v1.12.1 differ
/// in three patch levels, `../shared/design/talos-day2.md` §1).
fn build_twin_release(sh: &Shell, go: &Path, release: Version) -> anyhow::Result<()> {
    let out = twin_release_dir(release);
    let staging = staging_dir(&out)?;
    let mut files = vec!["go.mod".to_owned(), "go.sum".to_owned()];
    files.extend(
        go_sources("twin")
            .iter()
            .filter_map(|path| path.strip_prefix(go_module("talos")).ok())
            .map(|path| path.display().to_string()),
    );
    let files: Vec<&str> = files.iter().map(String::as_str).collect();
    let module = scratch_module("talos", &files, &staging)?;
    let _dir = sh.push_dir(&module);
    let (talos, machinery) = ("github.com/siderolabs/talos", "github.com/siderolabs/talos/pkg/machinery");
    let pins = [
        format!("-require={talos}@{release}"),
        format!("-require={machinery}@{release}"),
        format!("-replace={machinery}={machinery}@{release}"),
    ];
    cmd!(sh, "{go} mod edit {pins...}")
        .quiet()
        .run()
        .with_context(|| format!("pinning Talos {release} in the scratch module"))?;
    let binary = staging.join(format!("{TWIN}-{}", twin_source_hash()));
    let command =
        cmd!(sh, "{go} build -mod=mod -trimpath -buildvcs=false -ldflags=-s -o {binary} ./twin").env("GOSUMDB", "off");
    with_heartbeat(&format!("building the twin of Talos {release} (cold: about 4 minutes, once)"), || {
        command
            .quiet()
            .run()
            .with_context(|| format!("go build of the twin against Talos {release} failed (output above)"))
    })?;
    drop(_dir);
    std::fs::remove_dir_all(&module).context("removing the scratch module")?;
    publish(&staging, &out)
}

/// Builds `component`'s controller at `version` into the cache. A release that does not build
/// from the modules this machine is served leaves the box with kwok's stand-in for it (said so
/// here, and by the stage's `verify` in the lab); the default pins must build.
fn build_host_controller(sh: &Shell, go: &Path, component: Component, version: Version) -> anyhow::Result<()> {
    let Some(out) = kit::lab::controller_binary(component, version).parent().map(Path::to_path_buf) else {
        anyhow::bail!("no folder for {component:?}'s controller");
    };
    let staging = staging_dir(&out)?;
    let built = match component {
        Component::CertManager => build_cert_manager(sh, go, version, &staging),
        Component::EnvoyGateway => build_envoy_gateway(sh, go, version, &staging),
        Component::Traefik => build_traefik(sh, go, version, &staging),
        Component::Metallb => {
            let package = format!("go.universe.tf/metallb/controller@{version}");
            go_install(sh, go, &package, &staging, GoInstall { cold: "about 2 minutes", ..GoInstall::default() })
        }
        other => Err(anyhow::anyhow!("the box runs no controller of {other:?} as a host process")),
    };
    let stamped = built.and_then(|()| match own_module(component) {
        Some((name, files)) => std::fs::write(staging.join(SOURCE_STAMP), module_hash(name, files))
            .with_context(|| format!("stamping the build of lab/go/{name}")),
        None => Ok(()),
    });
    match stamped {
        Ok(()) => publish(&staging, &out),
        Err(error) if version.to_string() != kit::config::default_pin(component.key()) => {
            let _ = std::fs::remove_dir_all(&staging);
            tracing::warn!(
                "the box has no build of {} {version}'s controller ({error:#}): while the cluster runs that release, \
                 its controller in the box is kwok's stand-in",
                component.dir()
            );
            Ok(())
        }
        Err(error) => Err(error),
    }
}

/// A scratch copy of `files` of the lab's Go module `name`, in `staging`: a build there may
/// change go.mod and go.sum without touching the committed ones.
fn scratch_module(name: &str, files: &[&str], staging: &Path) -> anyhow::Result<PathBuf> {
    let module = staging.join("module");
    for file in files {
        let to = module.join(file);
        std::fs::create_dir_all(to.parent().unwrap_or(&module))?;
        std::fs::copy(go_module(name).join(file), &to).with_context(|| format!("copying lab/go/{name}/{file}"))?;
    }
    Ok(module)
}

/// cert-manager's controller from talos-ha's own main (`lab/go/cert-manager`), built in a
/// scratch copy of that module. At the committed release its go.mod and go.sum are used as
/// they are; another release gets a go.mod that requires only it, and `go mod tidy` resolves
/// that release's own dependencies (checked against the Go checksum database), so the build
/// links what that release was released with.
fn build_cert_manager(sh: &Shell, go: &Path, version: Version, staging: &Path) -> anyhow::Result<()> {
    let committed = version.to_string() == WRAPPER_CERT_MANAGER;
    let files: &[&str] = if committed { CERT_MANAGER_FILES } else { &["main.go"] };
    let module = scratch_module("cert-manager", files, staging)?;
    let _dir = sh.push_dir(&module);
    if !committed {
        let go_mod = format!(
            "module talos-ha/lab/cert-manager\n\ngo 1.23\n\nrequire github.com/cert-manager/cert-manager {version}\n"
        );
        std::fs::write(module.join("go.mod"), go_mod)?;
        cmd!(sh, "{go} mod tidy").quiet().run().with_context(|| format!("resolving cert-manager {version}"))?;
    }
    // Without the stamp the controller calls itself "canary" in its user agent.
    let ldflags = format!("-s -w -X github.com/cert-manager/cert-manager/pkg/util.AppVersion={version}");
    let out = staging.join("controller");
    let command = cmd!(sh, "{go} build -trimpath -buildvcs=false -ldflags {ldflags} -o {out} .");
    with_heartbeat(&format!("building cert-manager {version}'s controller (cold: about 2–5 minutes, once)"), || {
        command.quiet().run().context("go build of lab/go/cert-manager failed (output above)")
    })?;
    drop(_dir);
    std::fs::remove_dir_all(&module).context("removing the scratch module")
}

/// Talos's discovery service, built in a scratch module that requires its release: `go install
/// …@version` first asks the proxy for the module's version list, which it does not serve for
/// this module. go-debug is raised to v0.6.2 as for Talos's suite.
fn build_discovery_service(sh: &Shell, go: &Path) -> anyhow::Result<()> {
    let version = crate::discovery::SERVICE_VERSION;
    let out = discovery_service_dir();
    let staging = staging_dir(&out)?;
    let module = staging.join("module");
    std::fs::create_dir_all(&module)?;
    let go_mod = format!(
        "module talos-ha/lab/discovery-service\n\ngo 1.25\n\nrequire (\n\tgithub.com/siderolabs/discovery-service {version}\n\t{}\n)\n",
        GO_DEBUG.replace('@', " ")
    );
    std::fs::write(module.join("go.mod"), go_mod)?;
    let _dir = sh.push_dir(&module);
    let binary = staging.join(DISCOVERY_SERVICE);
    let package = format!("github.com/siderolabs/discovery-service/cmd/{DISCOVERY_SERVICE}");
    let command = cmd!(sh, "{go} build -mod=mod -trimpath -buildvcs=false -ldflags=-s -o {binary} {package}");
    with_heartbeat(&format!("building Talos's discovery service {version} (cold: about 2 minutes, once)"), || {
        command.quiet().run().context("go build of the discovery service failed (output above)")
    })?;
    drop(_dir);
    std::fs::remove_dir_all(&module).context("removing the scratch module")?;
    publish(&staging, &out)
}

/// Envoy Gateway's controller: `go install` of its release (its go.mod has no replace lines),
/// stamped with the version it reports, and static: the workstation runs it confined to a root
/// that holds only what its pod would mount (lab/go/talos/workstation/envoy_gateway.go).
fn build_envoy_gateway(sh: &Shell, go: &Path, version: Version, staging: &Path) -> anyhow::Result<()> {
    let package = format!("github.com/envoyproxy/gateway/cmd/envoy-gateway@{version}");
    let stamp = format!("-X github.com/envoyproxy/gateway/internal/cmd/version.envoyGatewayVersion={version}");
    go_install(
        sh,
        go,
        &package,
        staging,
        GoInstall { cold: "about 5–9 minutes", ldflags: &stamp, static_binary: true },
    )?;
    // `go install` names the binary after its package's folder.
    std::fs::rename(staging.join("envoy-gateway"), staging.join("controller")).context("naming the build")
}

/// Traefik from the wrapper module `lab/go/traefik`, built in a scratch copy (`-mod=mod` may
/// add to go.sum; the committed one is left alone), stamped with its version.
fn build_traefik(sh: &Shell, go: &Path, version: Version, staging: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(
        version.to_string() == WRAPPER_TRAEFIK,
        "the wrapper module lab/go/traefik builds Traefik {WRAPPER_TRAEFIK} (update it as its header says)"
    );
    let module = scratch_module("traefik", TRAEFIK_FILES, staging)?;
    let _dir = sh.push_dir(&module);
    let ldflags = format!("-s -w -X github.com/traefik/traefik/v3/pkg/version.Version={version}");
    let out = staging.join("controller");
    let package = "github.com/traefik/traefik/v3/cmd/traefik";
    let command = cmd!(sh, "{go} build -mod=mod -trimpath -buildvcs=false -ldflags {ldflags} -o {out} {package}");
    with_heartbeat(&format!("building Traefik {version} (cold: about 7 minutes and 3 GiB, once)"), || {
        command.quiet().run().context("go build of lab/go/traefik failed (output above)")
    })?;
    drop(_dir);
    std::fs::remove_dir_all(&module).context("removing the scratch module")
}

/// The Go package each Kubernetes command is built from.
fn kubernetes_package(command: &str) -> String {
    match command {
        "etcd" => "go.etcd.io/etcd/server/v3".to_owned(),
        command => format!("k8s.io/kubernetes/cmd/{command}"),
    }
}

/// `packages` of `module` built as Kubernetes `version` into `out`.
fn build_kubernetes(
    sh: &Shell,
    go: &Path,
    version: Version,
    module: &Path,
    packages: Vec<String>,
    out: &Path,
) -> anyhow::Result<()> {
    // Unstamped builds say v0.0.0-master, and kubectl refuses to talk to such a server.
    let mut ldflags = vec!["-s".to_owned(), "-w".to_owned()];
    for package in ["k8s.io/component-base/version", "k8s.io/client-go/pkg/version"] {
        for (key, value) in [
            ("gitVersion", version.to_string()),
            ("gitMajor", version.major.to_string()),
            ("gitMinor", version.minor.to_string()),
            ("gitTreeState", "clean".to_owned()),
        ] {
            ldflags.push(format!("-X {package}.{key}={value}"));
        }
    }
    let ldflags = ldflags.join(" ");
    let staging = staging_dir(out)?;
    let _dir = sh.push_dir(module);
    let staging_arg = format!("{}/", staging.display());
    // No VCS stamping: the wrapper sits inside this git checkout, which says nothing about Kubernetes.
    let what = format!(
        "building Kubernetes {version} from Go modules: {} (cold: about 7–10 minutes, once)",
        packages.join(" ")
    );
    let command = cmd!(sh, "{go} build -trimpath -buildvcs=false -ldflags {ldflags} -o {staging_arg} {packages...}");
    with_heartbeat(&what, || {
        command.quiet().run().with_context(|| format!("go build of Kubernetes {version} failed (output above)"))
    })?;
    // `go build` names go.etcd.io/etcd/server/v3 after its parent folder.
    if staging.join("server").exists() {
        std::fs::rename(staging.join("server"), staging.join("etcd"))?;
    }
    publish(&staging, out)
}

/// The control-plane components of Kubernetes `release`, from a scratch module that requires
/// k8s.io/kubernetes at the release and replaces each staging module its go.mod names
/// (`./staging/src/k8s.io/<name>`) with the published `v0.<minor>.<patch>` of the same release,
/// as the committed wrapper does; `go mod tidy` resolves that release's own dependencies.
fn build_kubernetes_release(sh: &Shell, go: &Path, release: Version) -> anyhow::Result<()> {
    let out = kubernetes_release_dir(release);
    // Not staging_dir's: that folder's name comes from `out`'s, and the build below uses it.
    let scratch = kit::lab::binaries_dir().join(format!("kubernetes-{release}-module"));
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch)?;
    }
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;
    let _dir = sh.push_dir(&scratch);
    let kubernetes = format!("k8s.io/kubernetes@{release}");
    let download = cmd!(sh, "{go} mod download -json {kubernetes}")
        .quiet()
        .read()
        .with_context(|| format!("downloading {kubernetes} from the Go module proxy"))?;
    let go_mod: serde_json::Value = serde_json::from_str(&download).context("reading `go mod download -json`")?;
    let go_mod = go_mod["GoMod"].as_str().with_context(|| format!("no go.mod for {kubernetes}: {download}"))?;
    let staging_modules = staging_modules(&std::fs::read_to_string(go_mod)?);
    anyhow::ensure!(!staging_modules.is_empty(), "{kubernetes}'s go.mod replaces no staging module ({go_mod})");
    let staging_version = format!("v0.{}.{}", release.minor, release.patch);
    let replaces: String =
        staging_modules.iter().map(|module| format!("\t{module} => {module} {staging_version}\n")).collect();
    std::fs::write(
        scratch.join("go.mod"),
        format!(
            "module talos-ha/lab/kubernetes\n\ngo 1.25.0\n\nrequire k8s.io/kubernetes {release}\n\nreplace (\n{replaces})\n"
        ),
    )?;
    let packages: Vec<String> =
        CONTROL_PLANE_COMPONENTS.iter().map(|component| kubernetes_package(component)).collect();
    let imports: String = packages.iter().map(|package| format!("\t_ \"{package}\"\n")).collect();
    std::fs::write(scratch.join("tools.go"), format!("//go:build tools\n\npackage tools\n\nimport (\n{imports})\n"))?;
    with_heartbeat(&format!("resolving Kubernetes {release}'s modules"), || {
        cmd!(sh, "{go} mod tidy").quiet().run().with_context(|| format!("resolving Kubernetes {release}"))
    })?;
    build_kubernetes(sh, go, release, &scratch, packages, &out)?;
    drop(_dir);
    std::fs::remove_dir_all(&scratch).context("removing the scratch module")
}

/// The staging modules a Kubernetes go.mod replaces with local paths.
fn staging_modules(go_mod: &str) -> Vec<String> {
    go_mod
        .lines()
        .filter_map(|line| line.trim().split_once(" => ./staging/"))
        .map(|(module, _)| module.trim().to_owned())
        .collect()
}

/// talosctl, the node twin (`lab/go/talos/twin`) and the workstation services
/// (`lab/go/talos/workstation`) from the one wrapper module: the twin is built on the same
/// Talos packages, at the same version, as the talosctl that talks to it.
fn build_talosctl(sh: &Shell, go: &Path, module: &Path, out: &Path) -> anyhow::Result<()> {
    let staging = staging_dir(out)?;
    let _dir = sh.push_dir(module);
    let staging_arg = format!("{}/", staging.display());
    // talosctl stamps its version from pkg/machinery's own variables (set by the release), so
    // no -X flags are needed: `talosctl version --client` reports the tag.
    let ldflags = "-s -w";
    let packages = ["github.com/siderolabs/talos/cmd/talosctl", "./twin", "./workstation"];
    let command = cmd!(sh, "{go} build -trimpath -buildvcs=false -ldflags {ldflags} -o {staging_arg} {packages...}")
        .env("GOSUMDB", "off");
    with_heartbeat(
        &format!("building talosctl {WRAPPER_TALOS} and the node twin from Go modules (cold: about 5 minutes, once)"),
        || command.quiet().run().context("go build of the talosctl wrapper module failed (output above)"),
    )?;
    // `go build` names a package's binary after its folder.
    for (folder, name) in [("twin", TWIN), ("workstation", WORKSTATION)] {
        std::fs::rename(staging.join(folder), staging.join(format!("{name}-{}", box_source_hash())))?;
    }
    publish(&staging, out)
}

/// Talos's API integration suite (`internal/integration`, see `talos_suite`), a Go test binary
/// built from the wrapper module at versions.talos.
pub const TALOS_SUITE: &str = "talos-integration.test";
/// The go-debug release the suite's build needs: Talos v1.12.1 pins v0.6.1, which does not
/// compile with Go 1.25's runtime; v0.6.2 does (and changes nothing else the suite uses).
const GO_DEBUG: &str = "github.com/siderolabs/go-debug@v0.6.2";

/// Builds Talos's integration suite for `versions.talos` into the cache on first use (it is only
/// needed to judge the twins, so `lab up` does not build it); returns the binary. It has a folder
/// of its own: the twin's folder is replaced whenever the twin is rebuilt.
pub fn ensure_talos_suite(versions: &Versions) -> anyhow::Result<PathBuf> {
    let talos = versions.talos;
    let dir = kit::lab::binaries_dir().join(format!("talos-suite-{talos}"));
    let binary = dir.join(TALOS_SUITE);
    if binary.exists() {
        return Ok(binary);
    }
    anyhow::ensure!(
        talos.to_string() == WRAPPER_TALOS,
        "versions.talos is {talos}, but the wrapper module lab/go/talos builds Talos {WRAPPER_TALOS}'s suite (update it as its header says)"
    );
    let go = which::which("go").context("`go` not found on PATH: Talos's suite is built from its Go module")?;
    let sh = Shell::new()?;
    let staging = staging_dir(&dir)?;
    let module = scratch_module("talos", &["go.mod", "go.sum"], &staging)?;
    let _dir = sh.push_dir(&module);
    cmd!(sh, "{go} mod edit -require={GO_DEBUG}").quiet().run().context("raising go-debug in the scratch module")?;
    let out = staging.join(TALOS_SUITE);
    let tags = "integration,integration_api,integration_k8s";
    let package = "github.com/siderolabs/talos/internal/integration";
    // -mod=mod: the suite's own dependencies (and go-debug's) join the scratch go.sum.
    let command = cmd!(sh, "{go} test -c -mod=mod -trimpath -tags {tags} -o {out} {package}").env("GOSUMDB", "off");
    with_heartbeat(&format!("building Talos {talos}'s API integration suite (cold: about 6 minutes, once)"), || {
        command.quiet().run().context("go test -c of Talos's integration suite failed (output above)")
    })?;
    drop(_dir);
    std::fs::remove_dir_all(&module).context("removing the scratch module")?;
    publish(&staging, &dir)?;
    Ok(binary)
}

/// The first 12 hex digits of the sha256 of the twin's and the workstation's source and the
/// wrapper's go.mod/go.sum.
fn box_source_hash() -> String {
    let module = go_module("talos");
    let mut files = go_sources("twin");
    files.extend(go_sources("workstation"));
    files.extend([module.join("go.mod"), module.join("go.sum")]);
    source_hash(&files)
}

/// The same for the twin alone: what a build of another release is made from.
fn twin_source_hash() -> String {
    let module = go_module("talos");
    source_hash(&[go_sources("twin"), vec![module.join("go.mod"), module.join("go.sum")]].concat())
}

/// The Go files of a folder of the wrapper module `lab/go/talos`, in order.
fn go_sources(folder: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(go_module("talos").join(folder))
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "go"))
        .collect();
    files.sort();
    files
}

/// The first 12 hex digits of the sha256 of `files`' contents, in order.
fn source_hash(files: &[PathBuf]) -> String {
    let mut bytes = Vec::new();
    for file in files {
        bytes.extend(std::fs::read(file).unwrap_or_default());
    }
    kit::artifacts::sha256_hex(&bytes)[..12].to_owned()
}

/// `lab/go/cert-manager`'s files: our own main and its committed go.mod and go.sum.
const CERT_MANAGER_FILES: &[&str] = &["main.go", "go.mod", "go.sum"];
/// `lab/go/traefik`'s files: the wrapper's go.mod, go.sum and pin, and the local ext module.
const TRAEFIK_FILES: &[&str] = &["go.mod", "go.sum", "tools.go", "ext/go.mod", "ext/ext.go"];

/// The lab's own Go module (its folder under `lab/go` and its files) that `component`'s
/// controller is built from, if it is built from one rather than installed as released.
fn own_module(component: Component) -> Option<(&'static str, &'static [&'static str])> {
    match component {
        Component::CertManager => Some(("cert-manager", CERT_MANAGER_FILES)),
        Component::Traefik => Some(("traefik", TRAEFIK_FILES)),
        _ => None,
    }
}

/// The hash of one of the lab's own Go modules' files.
fn module_hash(name: &str, files: &[&str]) -> String {
    let module = go_module(name);
    source_hash(&files.iter().map(|file| module.join(file)).collect::<Vec<_>>())
}

/// Whether the cache holds a current build of `component`'s controller at `version`: one built
/// from the lab's own module is current only while it was built from that module's files as
/// they are (their hash is kept beside the binary), so a change to them rebuilds it.
fn host_controller_built(component: Component, version: Version) -> bool {
    let binary = kit::lab::controller_binary(component, version);
    let stamp = || std::fs::read_to_string(binary.with_file_name(SOURCE_STAMP)).unwrap_or_default();
    binary.exists() && own_module(component).is_none_or(|(name, files)| stamp() == module_hash(name, files))
}

/// The file beside a build from the lab's own module that names the source it was built from.
const SOURCE_STAMP: &str = "source";

/// How one `go install` is done.
#[derive(Default)]
struct GoInstall<'a> {
    /// How long a build with a cold Go cache takes, for the progress line.
    cold: &'a str,
    /// `-ldflags` beyond stripping the symbols (a version stamp).
    ldflags: &'a str,
    /// No cgo: a binary that needs no shared library, to run in a root of its own.
    static_binary: bool,
}

/// `go install PACKAGE@VERSION` into `staging`: for modules that install as they are.
fn go_install(sh: &Shell, go: &Path, package: &str, staging: &Path, how: GoInstall<'_>) -> anyhow::Result<()> {
    let ldflags = format!("-s -w {}", how.ldflags);
    let mut command =
        cmd!(sh, "{go} install -trimpath -buildvcs=false -ldflags {ldflags} {package}").env("GOBIN", staging);
    if how.static_binary {
        command = command.env("CGO_ENABLED", "0");
    }
    with_heartbeat(&format!("building {package} (cold: {}, once)", how.cold), || {
        command.quiet().run().with_context(|| format!("go install {package} failed (output above)"))
    })
}

fn build_kwok(sh: &Shell, go: &Path, out: &Path) -> anyhow::Result<()> {
    let staging = staging_dir(out)?;
    let module = format!("sigs.k8s.io/kwok@{KWOK_VERSION}");
    let package = format!("sigs.k8s.io/kwok/cmd/kwok@{KWOK_VERSION}");
    go_install(sh, go, &package, &staging, GoInstall { cold: "about 3 minutes", ..GoInstall::default() })?;
    // The module `go install` just fetched holds the stage files; `go mod download` names its folder.
    let download = cmd!(sh, "{go} mod download -json {module}").read().context("locating the kwok module")?;
    let module_dir: ModuleDownload = serde_json::from_str(&download).context("reading `go mod download -json`")?;
    std::fs::create_dir_all(staging.join("stages"))?;
    for stage in KWOK_STAGES {
        let from = module_dir.dir.join(stage);
        std::fs::copy(&from, staging.join("stages").join(file_name(stage)))
            .with_context(|| format!("copying kwok's stage {}", from.display()))?;
    }
    publish(&staging, out)
}

#[derive(serde::Deserialize)]
struct ModuleDownload {
    #[serde(rename = "Dir")]
    dir: PathBuf,
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// A fresh folder beside `out` to build into: a half-finished build never looks cached.
fn staging_dir(out: &Path) -> anyhow::Result<PathBuf> {
    let staging = out.with_extension("partial");
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    std::fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
    Ok(staging)
}

fn publish(staging: &Path, out: &Path) -> anyhow::Result<()> {
    if out.exists() {
        std::fs::remove_dir_all(out)?;
    }
    std::fs::rename(staging, out).with_context(|| format!("moving the build into {}", out.display()))
}

/// Runs a long step, logging how long it has been running every 30 s so it never looks hung.
fn with_heartbeat<T>(what: &str, step: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    tracing::info!("{what}");
    let started = Instant::now();
    let (done, finished) = mpsc::channel::<()>();
    let ticker = std::thread::spawn(move || {
        while let Err(mpsc::RecvTimeoutError::Timeout) = finished.recv_timeout(Duration::from_secs(30)) {
            tracing::info!("  … still building ({}s)", started.elapsed().as_secs());
        }
    });
    let result = step();
    drop(done);
    let _ = ticker.join();
    tracing::info!("  done in {}s", started.elapsed().as_secs());
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_release_go_mod_names_its_staging_modules() {
        let go_mod = "module k8s.io/kubernetes\n\nrequire (\n\tk8s.io/api v0.0.0\n)\n\nreplace (\n\
                      \tk8s.io/api => ./staging/src/k8s.io/api\n\tk8s.io/kubectl => ./staging/src/k8s.io/kubectl\n\
                      \tgithub.com/other/fork => github.com/other/fork v1.0.0\n)\n";
        assert_eq!(staging_modules(go_mod), ["k8s.io/api", "k8s.io/kubectl"]);
    }
}
