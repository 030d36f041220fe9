//! Stage 05: cert-manager, and the cluster's own private CA: a self-signed ClusterIssuer
//! signs a CA certificate, and the `talos-ha-ca` ClusterIssuer signs every later service's
//! certificate with it. The CA certificate (never its key) is exported to `state/ca.crt`
//! for browsers and tools to trust. The lesson is in README.md.

pub mod chain;
pub mod entrypoint;
pub mod issuers;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kit::artifacts::Component;
use kit::bundle::{Bundle, BundleStage, Part, Ready};
use kit::certs::{CertificateSpec, certificate_resource};
use kit::check::common;
use kit::config::ClusterConfig;
use kit::context::{Context, Target};
use kit::manifest::to_dynamic;
use kit::names::{CA_ISSUER, CERT_MANAGER_NAMESPACE};
use kit::report::{Action, Change, Check};
use kube::api::{Api, DeleteParams, DynamicObject};

use crate::issuers::CA_CERTIFICATE;

const MANIFEST: &str = "cert-manager.yaml";
/// The controller, the admission webhook and the CA injector: all three must run.
pub const DEPLOYMENTS: [&str; 3] = ["cert-manager", "cert-manager-webhook", "cert-manager-cainjector"];
/// How long a certificate may take to be issued.
const ISSUE_TIMEOUT: Duration = Duration::from_secs(120);
/// The throw-away certificate `verify` has issued.
const PROBE_CERTIFICATE: &str = "talos-ha-verify";

pub struct CertManager;

/// Where the CA certificate is exported: `state/ca.crt` beside the config.
pub fn ca_file(config: &ClusterConfig) -> PathBuf {
    config.state_dir().join("ca.crt")
}

/// Our objects after the release: the CA chain, then the entry point's default certificate.
fn ours(config: &ClusterConfig) -> anyhow::Result<[Part; 2]> {
    Ok([
        Part::ours("cluster-ca.yaml", issuers::all(&config.name)?),
        Part::ours("entrypoint-certificate.yaml", entrypoint::all(config)?),
    ])
}

/// `https://<traefik.ip>/` trusting only the exported CA: the handshake succeeds with the
/// entry point's default certificate (signed by the CA, for the address), and Traefik answers
/// what it answers a request no router claims, its 404.
fn https_entrypoint_check(config: &ClusterConfig) -> Check {
    let name = "https entry point";
    let url = format!("https://{}/", config.traefik_ip);
    let ca_file = ca_file(config);
    let fix = "`kubectl -n traefik describe certificate traefik-default` and `kubectl -n traefik get tlsstore default`";
    let ca = match std::fs::read(&ca_file) {
        Ok(ca) => ca,
        Err(error) => {
            return Check::fail(name, format!("reading {}: {error}", ca_file.display()), "cert-manager apply");
        }
    };
    match kit::http::get(&url, Some(&ca), &[]) {
        Ok(answer) if answer.status == 404 && answer.body.contains("404 page not found") => Check::pass(
            name,
            format!(
                "{url} completes the TLS handshake trusting only {}, and Traefik answers 404 (no router claims a bare address)",
                ca_file.display()
            ),
        ),
        Ok(answer) => Check::fail(name, format!("{url} answers {}: {}", answer.status, answer.body.trim()), fix),
        Err(error) => Check::fail(name, format!("{error:#}"), fix),
    }
}

/// The CA certificate as the controller stored it in its Secret.
async fn ca_certificate_pem(client: &kube::Client) -> anyhow::Result<Vec<u8>> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), CERT_MANAGER_NAMESPACE);
    let secret = secrets.get(CA_CERTIFICATE).await.with_context(|| format!("reading Secret {CA_CERTIFICATE}"))?;
    let data = secret.data.unwrap_or_default();
    // A self-signed CA's own certificate is both tls.crt and ca.crt; tls.key is never read.
    let ByteString(pem) = data
        .get("ca.crt")
        .or_else(|| data.get("tls.crt"))
        .cloned()
        .with_context(|| format!("Secret {CERT_MANAGER_NAMESPACE}/{CA_CERTIFICATE} holds no certificate yet"))?;
    Ok(pem)
}

/// Waits for the CA, then writes its certificate to `state/ca.crt` and says how to trust it.
pub async fn export_ca(client: &kube::Client, config: &ClusterConfig) -> anyhow::Result<Change> {
    tracing::info!("waiting for the CA certificate {CA_CERTIFICATE} to be Ready");
    let resource = certificate_resource();
    kit::wait::condition_true(client, &resource, Some(CERT_MANAGER_NAMESPACE), CA_CERTIFICATE, "Ready", ISSUE_TIMEOUT)
        .await?;
    let pem = ca_certificate_pem(client).await?;
    let path = ca_file(config);
    let before = std::fs::read(&path).ok();
    if before.as_deref() != Some(pem.as_slice()) {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, &pem).with_context(|| format!("writing {}", path.display()))?;
    }
    let shown = path.display();
    tracing::info!(
        "the cluster CA's certificate is in {shown} (public; its key stays in the cluster). To trust it: \
         Debian/Ubuntu `sudo cp {shown} /usr/local/share/ca-certificates/talos-ha-ca.crt && sudo update-ca-certificates`; \
         macOS `sudo security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain {shown}`; \
         Firefox: Settings, Certificates, Import; curl `--cacert {shown}`"
    );
    let action = match before {
        None => Action::Created,
        Some(old) if old == pem => Action::Unchanged,
        Some(_) => Action::Configured,
    };
    Ok(Change { object: format!("File {shown}"), action, diff: None })
}

/// Has `talos-ha-ca` issue a throw-away certificate and checks it chains to `state/ca.crt`
/// and names the host it was asked for.
pub async fn issuance_check(client: &kube::Client, config: &ClusterConfig) -> Check {
    let issued = async {
        let ca = std::fs::read(ca_file(config))
            .with_context(|| format!("reading {} (written by `cert-manager apply`)", ca_file(config).display()))?;
        let resource = certificate_resource();
        let certificates: Api<DynamicObject> = Api::namespaced_with(client.clone(), CERT_MANAGER_NAMESPACE, &resource);
        let secrets: Api<Secret> = Api::namespaced(client.clone(), CERT_MANAGER_NAMESPACE);
        let host = config.service_host("verify", config.traefik_ip);
        let probe = kit::certs::certificate(
            CERT_MANAGER_NAMESPACE,
            PROBE_CERTIFICATE,
            CA_ISSUER,
            CertificateSpec {
                secret_name: PROBE_CERTIFICATE.to_owned(),
                dns_names: vec![host.clone()],
                ..Default::default()
            },
        );
        let _ = certificates.delete(PROBE_CERTIFICATE, &DeleteParams::default()).await;
        let _ = secrets.delete(PROBE_CERTIFICATE, &DeleteParams::default()).await;
        certificates
            .create(&Default::default(), &to_dynamic(&probe)?)
            .await
            .context("creating the probe Certificate")?;
        let outcome = async {
            let namespace = Some(CERT_MANAGER_NAMESPACE);
            kit::wait::condition_true(client, &resource, namespace, PROBE_CERTIFICATE, "Ready", ISSUE_TIMEOUT).await?;
            let data = secrets.get(PROBE_CERTIFICATE).await.context("reading the probe's Secret")?.data;
            let ByteString(leaf) =
                data.unwrap_or_default().remove("tls.crt").context("the probe's Secret holds no tls.crt")?;
            chain::verify(&leaf, &ca, &host)
        }
        .await;
        // The probe is removed whatever happened, so it never lingers in the cluster.
        let _ = certificates.delete(PROBE_CERTIFICATE, &DeleteParams::default()).await;
        let _ = secrets.delete(PROBE_CERTIFICATE, &DeleteParams::default()).await;
        outcome
    };
    match issued.await {
        Ok(()) => Check::pass(
            "issuance",
            format!("{CA_ISSUER} issued a certificate for the host it was asked, chaining to the exported CA"),
        ),
        Err(error) => Check::fail(
            "issuance",
            format!("{error:#}"),
            "`kubectl -n cert-manager describe certificate,certificaterequest` and the controller's log say why",
        ),
    }
}

impl BundleStage for CertManager {
    const NAME: &'static str = "cert-manager";
    const FOLDER: &'static str = "05-cert-manager";
    const TITLE: &'static str = "Stage 05: cert-manager and the cluster's private CA (ClusterIssuer talos-ha-ca)";
    const LESSON: &'static str = include_str!("../README.md");

    /// The release; once its three Deployments run, the CA chain and the entry point's default
    /// certificate, through cert-manager's validating webhook (failurePolicy: Fail).
    fn bundle(&self, ctx: &Context) -> anyhow::Result<Bundle> {
        let release = Bundle::new().apply([Part::upstream(ctx, Component::CertManager, MANIFEST)?]);
        let running = DEPLOYMENTS.into_iter().map(|name| Ready::deployment(CERT_MANAGER_NAMESPACE, name));
        Ok(running.fold(release, Bundle::wait).apply_through_webhook("cert-manager", ours(&ctx.config)?))
    }

    async fn check(&self, ctx: &Context) -> anyhow::Result<Vec<Check>> {
        let (mut checks, client) = common::cluster(ctx).await;
        // The entry point's TLSStore is Traefik's kind (stage 04).
        if let Some(client) = client {
            checks.push(kit::check::exposure::ingress_class(&client).await);
        }
        Ok(checks)
    }

    /// The CA certificate is exported for browsers and tools to trust, wherever a controller
    /// issues it (in a lab whose controller is a stand-in, nothing does).
    async fn after_apply(&self, ctx: &Context, client: &kube::Client, dry_run: bool) -> anyhow::Result<Vec<Change>> {
        if dry_run {
            return Ok(Vec::new());
        }
        match common::controller_runs(ctx, client, Component::CertManager).await {
            Ok(()) => Ok(vec![export_ca(client, &ctx.config).await?]),
            Err(why) => {
                tracing::info!(
                    "the CA is never issued here ({why}): {} is not written",
                    ca_file(&ctx.config).display()
                );
                Ok(Vec::new())
            }
        }
    }

    async fn verify(&self, ctx: &Context, client: &kube::Client) -> anyhow::Result<Vec<Check>> {
        let wait = Duration::from_secs(60);
        let mut checks = vec![kit::check::exposure::ca_issuer(ctx, client).await];
        let ours: Vec<DynamicObject> = ours(&ctx.config)?.iter().flat_map(|part| part.objects().to_vec()).collect();
        let what = "the CA chain and the entry point's certificate";
        checks.push(common::stored_as_configured(client, Self::NAME, &ours, what).await);
        checks
            .push(common::certificate_ready(ctx, client, kit::names::TRAEFIK_NAMESPACE, entrypoint::CERTIFICATE).await);
        if let Err(why) = common::controller_runs(ctx, client, Component::CertManager).await {
            checks.push(Check::not_checkable_in_lab("ca certificate", &why));
            checks.push(Check::not_checkable_in_lab("issuance", why));
            return Ok(checks);
        }
        let resource = certificate_resource();
        let ready =
            kit::wait::condition_true(client, &resource, Some(CERT_MANAGER_NAMESPACE), CA_CERTIFICATE, "Ready", wait)
                .await;
        checks.push(match ready {
            Ok(()) => Check::pass("ca certificate", format!("Certificate {CA_CERTIFICATE} is Ready")),
            Err(error) => Check::fail("ca certificate", format!("{error:#}"), "look at the controller's log"),
        });
        checks.push(issuance_check(client, &ctx.config).await);
        checks.push(match ctx.target {
            Target::Talos => {
                let config = ctx.config.clone();
                tokio::task::spawn_blocking(move || https_entrypoint_check(&config)).await?
            }
            Target::Lab => Check::not_checkable_in_lab(
                "https entry point",
                format!(
                    "nothing in the box answers on {}:443: Traefik's pods are kwok's, with no data path behind them",
                    ctx.config.traefik_ip
                ),
            ),
        });
        Ok(checks)
    }
}
