//! Stage 04: Traefik, the Ingress controller of the seed's "legacy" path, on `traefik.ip`
//! (.101). Traefik's pinned CRDs and RBAC come from upstream; the Deployment, the Service on
//! the fixed address and the default IngressClass are typed objects in `objects.rs`. The
//! lesson is in README.md.

pub mod objects;

use std::net::Ipv4Addr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kit::artifacts::Component;
use kit::bundle::{Bundle, BundleStage, Part, Ready};
use kit::check::{addresses, common};
use kit::context::{Context, Target};
use kit::report::Check;
use kube::api::Api;

pub use objects::{INGRESS_CLASS, NAME, NAMESPACE};

const CRDS: &str = "kubernetes-crd-definition-v1.yml";
const RBAC: &str = "kubernetes-crd-rbac.yml";
/// The upstream ClusterRoleBinding, whose subject we move into our namespace.
const RBAC_BINDING: &str = "traefik-ingress-controller";
/// How long MetalLB may take to give the Service its address.
const ADDRESS_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Traefik;

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

/// Traefik publishes its Service's address on every Ingress it serves (its class, or none: it
/// is the default class), as `--providers.kubernetesingress.ingressendpoint.publishedservice`
/// asks: what `kubectl get ingress` shows and external DNS would read. Waits up to
/// `ADDRESS_TIMEOUT` for Traefik to catch up with a new Ingress.
async fn published_check(client: &kube::Client, ip: Ipv4Addr) -> anyhow::Result<Check> {
    let ingresses: Api<Ingress> = Api::all(client.clone());
    let deadline = tokio::time::Instant::now() + ADDRESS_TIMEOUT;
    let ip = ip.to_string();
    loop {
        let served: Vec<Ingress> = ingresses
            .list(&Default::default())
            .await?
            .items
            .into_iter()
            .filter(|ingress| {
                let class = ingress.spec.as_ref().and_then(|spec| spec.ingress_class_name.as_deref());
                class.unwrap_or(INGRESS_CLASS) == INGRESS_CLASS
            })
            .collect();
        let unpublished: Vec<String> = served
            .iter()
            .filter(|ingress| {
                let status = ingress.status.as_ref().and_then(|status| status.load_balancer.as_ref());
                let shown = status.and_then(|lb| lb.ingress.as_ref()).into_iter().flatten();
                !shown.into_iter().any(|entry| entry.ip.as_deref() == Some(ip.as_str()))
            })
            .map(|ingress| {
                format!(
                    "{}/{}",
                    ingress.metadata.namespace.as_deref().unwrap_or_default(),
                    ingress.metadata.name.as_deref().unwrap_or_default()
                )
            })
            .collect();
        if unpublished.is_empty() {
            let what =
                format!("{} Ingress(es) of class {INGRESS_CLASS} show {ip}, as Traefik publishes it", served.len());
            return Ok(Check::pass("published", what));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(Check::fail(
                "published",
                format!("Ingress(es) {} do not show {ip}", unpublished.join(", ")),
                "look at `kubectl -n traefik logs deploy/traefik` (the kubernetesingress provider)",
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

impl BundleStage for Traefik {
    const NAME: &'static str = "traefik";
    const FOLDER: &'static str = "04-traefik-ingress";
    const TITLE: &'static str = "Stage 04: Traefik v3, the Ingress controller, on its fixed MetalLB address";
    const LESSON: &'static str = include_str!("../README.md");

    /// Upstream's CRDs and RBAC (its binding pointed at our ServiceAccount), then our objects,
    /// in one apply; then Traefik must run.
    fn bundle(&self, ctx: &Context) -> anyhow::Result<Bundle> {
        const UPSTREAM: &str = "crds-and-rbac.yaml";
        let crds = Part::upstream(ctx, Component::Traefik, CRDS)?.rendered_as(UPSTREAM);
        // Upstream binds the ServiceAccount in `default`; ours lives in the traefik namespace.
        let rbac = Part::upstream(ctx, Component::Traefik, RBAC)?.rendered_as(UPSTREAM).patch::<ClusterRoleBinding>(
            RBAC_BINDING,
            |binding| {
                for subject in binding.subjects.iter_mut().flatten() {
                    subject.namespace = Some(NAMESPACE.to_owned());
                }
            },
        )?;
        Ok(Bundle::new()
            .apply([crds, rbac, Part::ours("traefik.yaml", objects::all(&ctx.config)?)])
            .wait(Ready::deployment(NAMESPACE, NAME)))
    }

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

    async fn verify(&self, ctx: &Context, client: &kube::Client) -> anyhow::Result<Vec<Check>> {
        let ip = ctx.config.traefik_ip;
        // In the lab too: MetalLB's controller runs there on the box's workstation.
        let mut checks = vec![match service_address(client, ADDRESS_TIMEOUT).await? {
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
        }];
        checks.push(kit::check::exposure::ingress_class(client).await);
        checks.push(match common::controller_runs(ctx, client, Component::Traefik).await {
            Ok(()) => published_check(client, ip).await?,
            Err(why) => Check::not_checkable_in_lab("published", why),
        });
        checks.push(match ctx.target {
            Target::Talos => tokio::task::spawn_blocking(move || redirect_check(ip)).await?,
            Target::Lab => Check::not_checkable_in_lab(
                "redirect",
                format!("nothing in the box answers on {ip}: no data path runs there"),
            ),
        });
        Ok(checks)
    }
}
