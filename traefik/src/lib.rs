//! Stage 04: Traefik, the Ingress controller of the seed's "legacy" path, on `traefik.ip`
//! (.101). Traefik's pinned CRDs and RBAC come from upstream; the Deployment, the Service on
//! the fixed address and the default IngressClass are typed objects in `objects.rs`. The
//! lesson is in README.md.

pub mod objects;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kit::apply::{Engine, LabNotes, patch_typed};
use kit::artifacts::Component;
use kit::check::{Check, addresses, common};
use kit::stage::{Change, Context, Stage, Target, objects_yaml, write_folder};
use kube::api::{Api, DynamicObject};

pub use objects::{INGRESS_CLASS, NAME, NAMESPACE};

const CRDS: &str = "kubernetes-crd-definition-v1.yml";
const RBAC: &str = "kubernetes-crd-rbac.yml";
/// The upstream ClusterRoleBinding, whose subject we move into our namespace.
const RBAC_BINDING: &str = "traefik-ingress-controller";
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(300);
/// How long MetalLB may take to give the Service its address.
const ADDRESS_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Traefik;

/// Everything this stage applies: upstream CRDs and RBAC (its binding pointed at our
/// ServiceAccount), then our objects.
pub fn bundle(ctx: &Context) -> anyhow::Result<(Vec<DynamicObject>, LabNotes)> {
    let (mut objects, mut notes) = ctx.upstream(Component::Traefik, CRDS)?;
    let (mut rbac, rbac_notes) = ctx.upstream(Component::Traefik, RBAC)?;
    // Upstream binds the ServiceAccount in `default`; ours lives in the traefik namespace.
    patch_typed::<ClusterRoleBinding>(&mut rbac, RBAC_BINDING, |binding| {
        for subject in binding.subjects.iter_mut().flatten() {
            subject.namespace = Some(NAMESPACE.to_owned());
        }
    })?;
    objects.extend(rbac);
    notes.extend(rbac_notes);
    objects.extend(objects::all(&ctx.config)?);
    Ok((objects, notes))
}

/// The Service's LoadBalancer address, waiting up to `timeout` for MetalLB to assign it.
async fn service_address(client: &kube::Client, timeout: Duration) -> anyhow::Result<Option<String>> {
    let services: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let service = services.get_opt(NAME).await?;
        let ingress = service.and_then(|s| s.status).and_then(|s| s.load_balancer).and_then(|lb| lb.ingress);
        if let Some(ip) = ingress.and_then(|list| list.into_iter().find_map(|entry| entry.ip)) {
            return Ok(Some(ip));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `GET http://<traefik.ip>/` from here: on port 80 Traefik's redirect router answers every
/// path (traefik v3.3.7 pkg/provider/traefik/internal.go, the entry point's redirection), so
/// what proves Traefik holds the address is a permanent redirect to `https://<traefik.ip>`.
/// (`/ping` lives on the internal `traefik` entry point, which the Service does not expose.)
fn redirect_check(ip: Ipv4Addr) -> Check {
    let url = format!("http://{ip}/");
    let https = format!("https://{ip}");
    match kit::http::get(&url, None, &[]) {
        Ok(answer)
            if [301, 308].contains(&answer.status)
                && answer.location.as_deref().is_some_and(|to| to.starts_with(&https)) =>
        {
            Check::pass(
                "redirect",
                format!("{url} redirects ({}) to {}", answer.status, answer.location.unwrap_or_default()),
            )
        }
        Ok(answer) => Check::fail(
            "redirect",
            format!(
                "{url} answers {} {}, not a permanent redirect to {https}",
                answer.status,
                answer.location.unwrap_or_default()
            ),
            "look at `kubectl -n traefik logs deploy/traefik` and the web entry point's redirection flags",
        ),
        Err(error) => Check::fail(
            "redirect",
            format!("{error:#}"),
            "is this machine on the LAN, and is MetalLB's speaker announcing the address (metallb verify)?",
        ),
    }
}

impl Stage for Traefik {
    const NAME: &'static str = "traefik";
    const FOLDER: &'static str = "04-traefik-ingress";
    const TITLE: &'static str = "Stage 04: Traefik v3, the Ingress controller, on its fixed MetalLB address";
    const LESSON: &'static str = include_str!("../README.md");

    async fn check(&self, ctx: &Context) -> anyhow::Result<Vec<Check>> {
        let (mut checks, client) = common::cluster(ctx).await;
        let Some(client) = client else { return Ok(checks) };
        let ip = ctx.config.traefik_ip;
        checks.push(addresses::entrypoint_pool(&client, ip, "traefik.ip").await?);
        let ours = |service: &Service| {
            service.metadata.namespace.as_deref() == Some(NAMESPACE) && service.metadata.name.as_deref() == Some(NAME)
        };
        checks.push(addresses::address_free(&client, ip, ours).await?);
        Ok(checks)
    }

    async fn plan(&self, ctx: &Context) -> anyhow::Result<Vec<Change>> {
        let (objects, _) = bundle(ctx)?;
        Engine::new(ctx.client().await?, Self::NAME).await?.plan(&objects).await
    }

    async fn apply(&self, ctx: &Context) -> anyhow::Result<Vec<Change>> {
        let (objects, _) = bundle(ctx)?;
        let client = ctx.client().await?;
        let changes = Engine::new(client.clone(), Self::NAME).await?.apply(&objects).await?;
        tracing::info!("waiting for Traefik to be Available");
        kit::wait::deployment_available(&client, NAMESPACE, NAME, ROLLOUT_TIMEOUT).await?;
        Ok(changes)
    }

    async fn verify(&self, ctx: &Context) -> anyhow::Result<Vec<Check>> {
        let client = ctx.client().await?;
        let ip = ctx.config.traefik_ip;
        let mut checks = vec![common::deployment(&client, NAMESPACE, NAME, Duration::from_secs(60), Self::NAME).await];
        // In the lab too: MetalLB's controller runs there on the box's workstation.
        checks.push(match service_address(&client, ADDRESS_TIMEOUT).await? {
            Some(address) if address == ip.to_string() => {
                Check::pass("address", format!("Service {NAMESPACE}/{NAME} has {ip} (traefik.ip)"))
            }
            Some(address) => Check::fail(
                "address",
                format!("Service {NAMESPACE}/{NAME} has {address}, not traefik.ip {ip}"),
                "another Service may hold the address: run `traefik check`",
            ),
            None => Check::fail(
                "address",
                format!("Service {NAMESPACE}/{NAME} got no address within {}s", ADDRESS_TIMEOUT.as_secs()),
                match ctx.target {
                    Target::Lab => "MetalLB's controller must run: `cargo xtask lab up` starts it after stage 02",
                    Target::Talos => "look at `kubectl -n metallb-system logs deploy/controller`",
                },
            ),
        });
        checks.push(kit::check::exposure::ingress_class(&client).await);
        checks.push(match ctx.target {
            Target::Talos => tokio::task::spawn_blocking(move || redirect_check(ip)).await?,
            Target::Lab => {
                Check::not_checkable_in_lab("redirect", format!("nothing listens on {ip}: kwok runs no Traefik"))
            }
        });
        Ok(checks)
    }

    async fn render(&self, ctx: &Context, out: &Path) -> anyhow::Result<Vec<PathBuf>> {
        let (objects, _) = bundle(&ctx.as_talos_target())?;
        let (upstream, ours) = objects.split_at(objects.len() - objects::all(&ctx.config)?.len());
        let files = vec![
            ("crds-and-rbac.yaml".to_owned(), objects_yaml(upstream)?),
            ("traefik.yaml".to_owned(), objects_yaml(ours)?),
            ("README.md".to_owned(), Self::LESSON.as_bytes().to_vec()),
        ];
        write_folder(out, Self::FOLDER, files)
    }
}
