//! Named checks: what `check` and `verify` report, one line (or one JSON object) each.

pub mod graph;

/// The checks every stage on Kubernetes starts with, and the ones its `verify` shares.
pub mod common {
    use std::time::Duration;

    use crate::artifacts::Component;
    use crate::context::{Context, Target};
    use crate::report::Check;

    /// The API server answers with the context's kubeconfig; returns the client when it does
    /// (nothing else can be checked without one).
    /// An API that stopped answering is waited for (`--api-wait`), as every step waits for it.
    pub async fn api(ctx: &Context) -> (Check, Option<kube::Client>) {
        let answer = crate::client::ride_out(&ctx.kubeconfig, ctx.api_wait, || async {
            let client = ctx.client().await?;
            let version = client.apiserver_version().await?;
            anyhow::Ok((client, version.git_version))
        });
        match answer.await {
            Ok((client, version)) => (
                Check::pass("api", format!("Kubernetes {version} answers ({})", ctx.kubeconfig.display())),
                Some(client),
            ),
            Err(error) => {
                let fix = match ctx.target {
                    Target::Lab => "start the lab: cargo xtask lab up",
                    Target::Talos => "run stage 01 (talos-bootstrap apply) and check the VIP answers",
                };
                let api = crate::client::describe_api(&ctx.kubeconfig);
                (Check::fail("api", format!("the API does not answer: {error:#} (API server {api})"), fix), None)
            }
        }
    }

    /// What every stage on a running cluster checks first: the API answers, and every node is
    /// Ready. The client comes back only when the API answered.
    pub async fn cluster(ctx: &Context) -> (Vec<Check>, Option<kube::Client>) {
        let (api, client) = api(ctx).await;
        let mut checks = vec![api];
        if let Some(client) = &client {
            checks.push(nodes_ready(client, ctx).await);
        }
        (checks, client)
    }

    /// Every node of the config is registered and Ready. A node that is not is waited for, up
    /// to `--api-wait` (a machine rebooting, or back from a power cut, registers Ready within
    /// seconds of its kubelet starting), with a line every 10 s naming the nodes; one that stays
    /// down fails the check, and the stage does not install beside a missing machine.
    pub async fn nodes_ready(client: &kube::Client, ctx: &Context) -> Check {
        let started = tokio::time::Instant::now();
        let mut said: Option<tokio::time::Instant> = None;
        let waiting = loop {
            match crate::client::nodes_not_ready(client, &ctx.config).await {
                Ok(waiting) if waiting.is_empty() => {
                    return Check::pass("nodes", format!("all {} nodes are Ready", ctx.config.nodes.len()));
                }
                Ok(waiting) if started.elapsed() < ctx.api_wait => {
                    if said.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                        tracing::warn!(
                            "not Ready: {}; waiting up to {}s in all for them ({:.0}s)",
                            waiting.join(", "),
                            ctx.api_wait.as_secs(),
                            started.elapsed().as_secs_f64()
                        );
                        said = Some(tokio::time::Instant::now());
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Ok(waiting) => break waiting,
                Err(error) => {
                    return Check::fail("nodes", format!("{error:#}"), "make the Kubernetes API reachable first");
                }
            }
        };
        Check::fail(
            "nodes",
            format!("not Ready after {}s: {}", ctx.api_wait.as_secs(), waiting.join(", ")),
            "bring the machines back (or replace them), or look at their kubelet (talosctl -n <ip> logs kubelet)",
        )
    }

    /// A Deployment is Available within `wait`; on failure the fix names the stage to re-run.
    pub async fn deployment(client: &kube::Client, namespace: &str, name: &str, wait: Duration, stage: &str) -> Check {
        let check = format!("deployment {name}");
        match crate::wait::deployment_available(client, namespace, name, wait).await {
            Ok(()) => Check::pass(check, format!("Deployment {namespace}/{name} is Available")),
            Err(error) => Check::fail(
                check,
                format!("{error:#}"),
                format!("{stage} apply, then `kubectl -n {namespace} get pods` and their events"),
            ),
        }
    }

    /// The stage's objects as the API stores them are what its apply would send now: a dry
    /// run of the apply (the same server-side apply, as `plan` does) finds nothing to create
    /// or change. Every field the stage sets is compared, so a hand edit, a lost object or a
    /// cluster.yaml edited since the last apply shows here, with the fields that differ.
    pub async fn stored_as_configured(
        client: &kube::Client,
        stage: &str,
        objects: &[kube::api::DynamicObject],
        what: &str,
    ) -> Check {
        let planned = async { crate::apply::Engine::new(client.clone(), stage).await?.plan(objects).await };
        let fix = format!("{stage} apply (`{stage} plan` shows the same changes)");
        match planned.await {
            Ok(changes) => {
                let differ: Vec<String> = changes
                    .iter()
                    .filter(|change| change.action != crate::report::Action::Unchanged)
                    .map(|change| change.to_string().split_whitespace().collect::<Vec<_>>().join(" "))
                    .collect();
                if differ.is_empty() {
                    Check::pass(
                        "stored",
                        format!("{what} ({} objects) are stored as the config gives them", changes.len()),
                    )
                } else {
                    Check::fail("stored", format!("{what} differ from the config: {}", differ.join("; ")), fix)
                }
            }
            Err(error) => Check::fail("stored", format!("{error:#}"), fix),
        }
    }

    /// Whether `component`'s controller really runs where `ctx` points, so what it writes can
    /// be checked: always on a real cluster; in the lab, while the box has a build of the
    /// release the cluster runs (the workstation services run it; without one, kwok's pods are
    /// all there is). `Err` says why not, for a "not checkable in the lab" line.
    pub async fn controller_runs(ctx: &Context, client: &kube::Client, component: Component) -> Result<(), String> {
        if ctx.target == Target::Talos {
            return Ok(());
        }
        let name = component.dir();
        match crate::upgrade::running(client, component).await {
            Ok(Some((version, _))) if crate::lab::controller_binary(component, version).exists() => Ok(()),
            Ok(Some((version, _))) => Err(format!(
                "the box has no build of {name} {version}'s controller, so only kwok's stand-in pods run \
                 (`cargo xtask lab build` builds the pinned release's)"
            )),
            Ok(None) => Err(format!("{name} is not installed, so no controller of its runs")),
            Err(error) => Err(format!("{error:#}")),
        }
    }

    /// cert-manager issued Certificate `namespace/name` (Ready within a minute). In a lab whose
    /// cert-manager controller is a stand-in, nothing issues it, and the line says so.
    pub async fn certificate_ready(ctx: &Context, client: &kube::Client, namespace: &str, name: &str) -> Check {
        if let Err(why) = controller_runs(ctx, client, Component::CertManager).await {
            return Check::not_checkable_in_lab("certificate", format!("Certificate {namespace}/{name}: {why}"));
        }
        let resource = crate::certs::certificate_resource();
        let wait = Duration::from_secs(60);
        match crate::wait::condition_true(client, &resource, Some(namespace), name, "Ready", wait).await {
            Ok(()) => Check::pass("certificate", format!("Certificate {namespace}/{name} is Ready")),
            Err(error) => Check::fail(
                "certificate",
                format!("{error:#}"),
                format!("`kubectl -n {namespace} describe certificate {name}` and cert-manager's log"),
            ),
        }
    }
}

/// Preconditions of a stage that exposes a UI through Traefik with a CA certificate.
pub mod exposure {
    use k8s_openapi::api::networking::v1::IngressClass;
    use kube::api::{Api, DynamicObject};

    use crate::artifacts::Component;
    use crate::certs::{DEFAULT_CLASS_ANNOTATION, INGRESS_CLASS, INGRESS_CONTROLLER};
    use crate::context::Context;
    use crate::names::{CA_ISSUER, CA_SECRET, CERT_MANAGER_NAMESPACE};
    use crate::report::Check;

    /// What an HTTPS Ingress with a cluster-CA certificate needs (the legacy path): stage 04's
    /// IngressClass and stage 05's issuer.
    pub async fn https_ingress(ctx: &Context, client: &kube::Client) -> [Check; 2] {
        [ingress_class(client).await, ca_issuer(ctx, client).await]
    }

    /// Stage 04's IngressClass is Traefik's and the default (an Ingress of a class nobody
    /// serves goes nowhere, and stage 06-100's Ingresses name it).
    pub async fn ingress_class(client: &kube::Client) -> Check {
        match Api::<IngressClass>::all(client.clone()).get_opt(INGRESS_CLASS).await {
            Ok(class) => ingress_class_verdict(class.as_ref()),
            Err(error) => Check::fail("ingress class", format!("{error:#}"), "make the Kubernetes API reachable first"),
        }
    }

    /// What the stored IngressClass says: `spec.controller` is Traefik's and the default-class
    /// annotation is "true".
    pub fn ingress_class_verdict(class: Option<&IngressClass>) -> Check {
        let fix = "run stage 04: `traefik apply` (or `cargo xtask install-all --from traefik`)";
        let Some(class) = class else {
            return Check::fail("ingress class", format!("IngressClass {INGRESS_CLASS} does not exist"), fix);
        };
        let controller = class.spec.as_ref().and_then(|spec| spec.controller.as_deref()).unwrap_or_default();
        let default = class.metadata.annotations.as_ref().and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION));
        if controller != INGRESS_CONTROLLER {
            Check::fail(
                "ingress class",
                format!("IngressClass {INGRESS_CLASS} names controller {controller:?}, not {INGRESS_CONTROLLER}"),
                fix,
            )
        } else if default.map(String::as_str) != Some("true") {
            Check::fail(
                "ingress class",
                format!("IngressClass {INGRESS_CLASS} is not the default ({DEFAULT_CLASS_ANNOTATION} is {default:?})"),
                fix,
            )
        } else {
            Check::pass(
                "ingress class",
                format!("IngressClass {INGRESS_CLASS} is Traefik's ({controller}) and the default"),
            )
        }
    }

    /// Stage 05's ClusterIssuer signs with the CA's Secret and is Ready (a Certificate naming
    /// a missing or unready issuer never issues). Ready is cert-manager's controller's word:
    /// in a lab whose controller is a stand-in, an issuer it never looked at is not checkable.
    /// The controller marks the issuer Ready once it has read the CA's Secret, moments after
    /// the CA is issued (right after stage 05's apply it may not have yet): an issuer that
    /// exists is given this long.
    pub async fn ca_issuer(ctx: &Context, client: &kube::Client) -> Check {
        let resource = crate::certs::cluster_issuer_resource();
        let issuers: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        let mut found = issuers.get_opt(CA_ISSUER).await;
        let controller = super::common::controller_runs(ctx, client, Component::CertManager).await;
        if matches!(found, Ok(Some(_))) && controller.is_ok() {
            let ready = crate::wait::condition_true(client, &resource, None, CA_ISSUER, "Ready", ISSUER_WAIT).await;
            if ready.is_ok() {
                found = issuers.get_opt(CA_ISSUER).await;
            }
        }
        match found {
            Ok(issuer) => ca_issuer_verdict(issuer.as_ref().map(|issuer| &issuer.data), controller),
            // Without cert-manager's CRDs the kind itself is unknown.
            Err(kube::Error::Api(status)) if status.code == 404 => {
                Check::fail("ca issuer", "cert-manager is not installed (no ClusterIssuer kind)", ISSUER_FIX)
            }
            Err(error) => Check::fail("ca issuer", format!("{error:#}"), "make the Kubernetes API reachable first"),
        }
    }

    const ISSUER_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

    const ISSUER_FIX: &str =
        "run stage 05 first: `cert-manager apply` (or `cargo xtask install-all --from cert-manager`)";

    /// `controller`: whether cert-manager's controller runs (`Err`: why not), from
    /// [`super::common::controller_runs`].
    pub fn ca_issuer_verdict(issuer: Option<&serde_json::Value>, controller: Result<(), String>) -> Check {
        let name = "ca issuer";
        let Some(issuer) = issuer else {
            return Check::fail(name, format!("ClusterIssuer {CA_ISSUER} does not exist"), ISSUER_FIX);
        };
        let secret = issuer.pointer("/spec/ca/secretName").and_then(serde_json::Value::as_str);
        if secret != Some(CA_SECRET) {
            return Check::fail(
                name,
                format!(
                    "ClusterIssuer {CA_ISSUER} signs with Secret {secret:?}, not {CERT_MANAGER_NAMESPACE}/{CA_SECRET}"
                ),
                ISSUER_FIX,
            );
        }
        let ready = issuer
            .pointer("/status/conditions")
            .and_then(serde_json::Value::as_array)
            .and_then(|conditions| conditions.iter().find(|condition| condition["type"] == "Ready"));
        match (ready, controller) {
            (Some(ready), _) if ready["status"] == "True" => {
                Check::pass(name, format!("ClusterIssuer {CA_ISSUER} is Ready, signing with Secret {CA_SECRET}"))
            }
            (None, Err(why)) => Check::not_checkable_in_lab(
                name,
                format!(
                    "ClusterIssuer {CA_ISSUER} signs with Secret {CA_SECRET}; whether it is Ready is cert-manager's \
                     controller's word: {why}"
                ),
            ),
            (ready, _) => Check::fail(
                name,
                format!(
                    "ClusterIssuer {CA_ISSUER} is not Ready: {}",
                    ready
                        .and_then(|ready| ready["message"].as_str())
                        .unwrap_or("cert-manager has not looked at it yet")
                ),
                "`kubectl describe clusterissuer talos-ha-ca` and `cert-manager verify`: the CA certificate must be issued first",
            ),
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::report::Status;

        #[test]
        fn the_ingress_class_must_be_traefiks_and_the_default() {
            let class = |controller: &str, default: &str| -> IngressClass {
                serde_json::from_value(serde_json::json!({
                    "metadata": { "name": INGRESS_CLASS, "annotations": { DEFAULT_CLASS_ANNOTATION: default } },
                    "spec": { "controller": controller },
                }))
                .expect("an IngressClass")
            };
            assert_eq!(ingress_class_verdict(Some(&class(INGRESS_CONTROLLER, "true"))).status, Status::Pass);
            let other = ingress_class_verdict(Some(&class("k8s.io/ingress-nginx", "true")));
            assert!(other.reason.contains("names controller \"k8s.io/ingress-nginx\""), "{}", other.reason);
            let not_default = ingress_class_verdict(Some(&class(INGRESS_CONTROLLER, "false")));
            assert!(not_default.reason.contains("is not the default"), "{}", not_default.reason);
            assert_eq!(ingress_class_verdict(None).status, Status::Fail);
        }

        #[test]
        fn the_ca_issuer_must_sign_with_the_ca_secret_and_be_ready() {
            let issuer = |secret: &str, ready: Option<&str>| {
                let conditions: Vec<_> = ready
                    .map(|status| serde_json::json!({ "type": "Ready", "status": status, "message": "why" }))
                    .into_iter()
                    .collect();
                serde_json::json!({ "spec": { "ca": { "secretName": secret } }, "status": { "conditions": conditions } })
            };
            let ready = issuer(CA_SECRET, Some("True"));
            let runs = || Ok(());
            let stand_in = || Err("the box has no build".to_owned());
            assert_eq!(ca_issuer_verdict(Some(&ready), runs()).status, Status::Pass);
            assert_eq!(ca_issuer_verdict(Some(&ready), stand_in()).status, Status::Pass);
            let unseen = issuer(CA_SECRET, None);
            let not_checkable = ca_issuer_verdict(Some(&unseen), stand_in());
            assert_eq!(not_checkable.status, Status::NotCheckableInLab);
            assert!(
                not_checkable.reason.ends_with("controller's word: the box has no build"),
                "{}",
                not_checkable.reason
            );
            assert_eq!(ca_issuer_verdict(Some(&unseen), runs()).status, Status::Fail);
            let refused = ca_issuer_verdict(Some(&issuer(CA_SECRET, Some("False"))), stand_in());
            assert!(refused.status == Status::Fail && refused.reason.ends_with("not Ready: why"), "{}", refused.reason);
            let elsewhere = ca_issuer_verdict(Some(&issuer("other", Some("True"))), runs());
            assert!(elsewhere.reason.contains("signs with Secret Some(\"other\")"), "{}", elsewhere.reason);
            assert_eq!(ca_issuer_verdict(None, stand_in()).status, Status::Fail);
        }
    }
}

/// The fixed entry-point addresses (stages 04 and 08): stage 02's pool holds them, and no
/// other Service takes them.
pub mod addresses {
    use std::net::Ipv4Addr;

    use anyhow::Context as _;
    use k8s_openapi::api::core::v1::Service;
    use kube::api::{Api, DynamicObject};

    use crate::config::IpRange;
    use crate::names::{ENTRYPOINT_POOL, METALLB_IP_ANNOTATION, METALLB_NAMESPACE};
    use crate::report::Check;

    /// True when a MetalLB pool entry (`a.b.c.d/32`, a CIDR, or `first-last`) holds `ip`.
    pub fn pool_entry_contains(entry: &str, ip: Ipv4Addr) -> bool {
        if let Ok(range) = entry.parse::<IpRange>() {
            return range.contains(ip);
        }
        entry.parse::<ipnet::Ipv4Net>().is_ok_and(|net| net.contains(&ip))
    }

    /// Stage 02's entry-point pool exists and holds `ip` (the config's `field`).
    pub async fn entrypoint_pool(client: &kube::Client, ip: Ipv4Addr, field: &str) -> anyhow::Result<Check> {
        let pools: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), METALLB_NAMESPACE, &crate::names::ip_address_pool());
        let name = format!("pool {ENTRYPOINT_POOL}");
        let missing_fix = "run stage 02 first: `metallb apply` (or `cargo xtask install-all --from metallb`)";
        let pool = match pools.get_opt(ENTRYPOINT_POOL).await {
            Ok(pool) => pool,
            // No MetalLB CRDs at all: the kind is unknown to the API server.
            Err(kube::Error::Api(status)) if status.code == 404 => None,
            Err(error) => return Err(error).context("reading MetalLB's pools"),
        };
        let Some(pool) = pool else {
            return Ok(Check::fail(
                name,
                format!("MetalLB's IPAddressPool {METALLB_NAMESPACE}/{ENTRYPOINT_POOL} does not exist"),
                missing_fix,
            ));
        };
        let entries: Vec<String> = pool.data["spec"]["addresses"]
            .as_array()
            .map(|list| list.iter().filter_map(|entry| entry.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        Ok(if entries.iter().any(|entry| pool_entry_contains(entry, ip)) {
            Check::pass(name, format!("holds {field} {ip}"))
        } else {
            Check::fail(
                name,
                format!("holds {} but not {field} {ip}", entries.join(", ")),
                format!("re-run `metallb apply`: it builds the pool from cluster.yaml's {field}"),
            )
        })
    }

    /// No Service but the stage's own (`ours`) holds or asks for `ip`.
    pub async fn address_free(
        client: &kube::Client,
        ip: Ipv4Addr,
        ours: impl Fn(&Service) -> bool,
    ) -> anyhow::Result<Check> {
        let ip_text = ip.to_string();
        let services: Api<Service> = Api::all(client.clone());
        let mut holders = Vec::new();
        for service in services.list(&Default::default()).await.context("listing Services")? {
            if ours(&service) {
                continue;
            }
            let namespace = service.metadata.namespace.clone().unwrap_or_default();
            let name = service.metadata.name.clone().unwrap_or_default();
            let asked = service
                .metadata
                .annotations
                .as_ref()
                .and_then(|annotations| annotations.get(METALLB_IP_ANNOTATION))
                .is_some_and(|wanted| wanted.split(',').any(|address| address.trim() == ip_text));
            let holds = service
                .status
                .and_then(|status| status.load_balancer)
                .and_then(|lb| lb.ingress)
                .is_some_and(|ingress| ingress.iter().any(|entry| entry.ip.as_deref() == Some(&ip_text)));
            if asked || holds {
                holders.push(format!("{namespace}/{name}"));
            }
        }
        Ok(if holders.is_empty() {
            Check::pass("address free", format!("no other Service holds or asks for {ip}"))
        } else {
            Check::fail(
                "address free",
                format!("{ip} is held or requested by Service {}", holders.join(", ")),
                "give that Service another address, or pick another address in cluster.yaml",
            )
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn pool_entries_of_every_form_are_understood() {
            let ip = Ipv4Addr::new(172, 16, 16, 101);
            assert!(pool_entry_contains("172.16.16.101/32", ip));
            assert!(pool_entry_contains("172.16.16.96/28", ip));
            assert!(pool_entry_contains("172.16.16.100-172.16.16.120", ip));
            assert!(!pool_entry_contains("172.16.16.102/32", ip));
            assert!(!pool_entry_contains("172.16.16.103-172.16.16.120", ip));
            assert!(!pool_entry_contains("not an address", ip));
        }
    }
}
