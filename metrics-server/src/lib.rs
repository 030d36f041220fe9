//! Stage 03: metrics-server, the source of `kubectl top` and of the Horizontal Pod
//! Autoscaler's numbers. It reads each kubelet over TLS; on Talos the kubelets serve
//! certificates signed by the cluster CA (stage 01 turned on `rotate-server-certificates`),
//! and kubelet-serving-cert-approver approves those requests (stage 01 ships it in the control
//! planes' configs, so Talos runs it from bootstrap on; this stage checks it runs), so
//! metrics-server verifies every kubelet instead of skipping the check. The lesson is in
//! README.md.

use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::jiff::Timestamp;
use kit::artifacts::Component;
use kit::bundle::{Bundle, BundleStage, Part, Ready};
use kit::check::common;
use kit::context::{Context, Target};
use kit::report::Check;
use kube::api::{Api, DynamicObject};
use kube::discovery::ApiResource;

pub const NAMESPACE: &str = "kube-system";
pub const DEPLOYMENT: &str = "metrics-server";
pub const APPROVER_NAMESPACE: &str = "kubelet-serving-cert-approver";
pub const APPROVER: &str = "kubelet-serving-cert-approver";
/// The aggregated API metrics-server serves through the API server.
pub const API_SERVICE: &str = "v1beta1.metrics.k8s.io";
const MANIFEST: &str = "components.yaml";
/// The flag that makes metrics-server accept any kubelet certificate: only on explicit opt-in.
pub const INSECURE_FLAG: &str = "--kubelet-insecure-tls";

pub struct MetricsServer;

/// kubelet-serving-cert-approver runs: Talos applied it from the control planes' inline
/// manifests (stage 01). Without it no kubelet serves a certificate metrics-server trusts.
async fn approver_check(client: &kube::Client, wait: Duration) -> Check {
    let check = common::deployment(client, APPROVER_NAMESPACE, APPROVER, wait, "talos-bootstrap").await;
    match check.status {
        kit::report::Status::Fail => Check::fail(
            "approver",
            check.reason,
            "stage 01 ships kubelet-serving-cert-approver as an inline manifest of the control planes: re-run \
             `talos-bootstrap apply`, and for control planes configured before that, apply their regenerated \
             configs (`talos-bootstrap plan` shows the diff)",
        ),
        _ => Check { name: "approver".into(), ..check },
    }
}

/// How long a kubelet's serving-certificate request may wait before it counts as stuck (the
/// approver answers within seconds).
const STUCK_AFTER: Duration = Duration::from_secs(60);

/// metrics-server verifies the kubelets' serving certificates, which only exist once their
/// requests are approved: no kubelet-serving request from a node may be left waiting. (Talos
/// raises the same as its `kubelet-csr` diagnostic.) Issued requests are garbage-collected after
/// an hour, so a long-running cluster has none at all, which is fine.
async fn serving_requests_check(client: &kube::Client) -> Check {
    let requests: Api<CertificateSigningRequest> = Api::all(client.clone());
    match requests.list(&Default::default()).await {
        Ok(list) => serving_requests_verdict(&list.items, Timestamp::now()),
        Err(error) => {
            Check::fail("kubelet tls", format!("listing CertificateSigningRequests: {error}"), "kubectl get csr")
        }
    }
}

/// The verdict on the cluster's requests at `now`: the nodes' kubelet-serving requests that
/// have waited longer than [`STUCK_AFTER`] with neither approval nor denial.
fn serving_requests_verdict(requests: &[CertificateSigningRequest], now: Timestamp) -> Check {
    let from_a_node = |request: &&CertificateSigningRequest| {
        request.spec.signer_name == "kubernetes.io/kubelet-serving"
            && request.spec.username.as_deref().is_some_and(|user| user.starts_with("system:node:"))
    };
    let decided = |request: &CertificateSigningRequest| {
        request.status.as_ref().and_then(|status| status.conditions.as_ref()).is_some_and(|conditions| {
            conditions.iter().any(|condition| matches!(condition.type_.as_str(), "Approved" | "Denied"))
        })
    };
    let waited = |request: &CertificateSigningRequest| {
        let created = request.metadata.creation_timestamp.as_ref().map(|time| time.0);
        created.map_or(Duration::ZERO, |created| Duration::try_from(now.duration_since(created)).unwrap_or_default())
    };
    let nodes: Vec<&CertificateSigningRequest> = requests.iter().filter(from_a_node).collect();
    let stuck: Vec<String> = nodes
        .iter()
        .filter(|request| !decided(request) && waited(request) > STUCK_AFTER)
        .map(|request| {
            format!(
                "{} ({}, waiting {}s)",
                request.metadata.name.as_deref().unwrap_or_default(),
                request.spec.username.as_deref().unwrap_or_default(),
                waited(request).as_secs()
            )
        })
        .collect();
    if stuck.is_empty() {
        Check::pass(
            "kubelet tls",
            format!(
                "kubelet certificates are verified, and no node's serving-certificate request waits ({} on record)",
                nodes.len()
            ),
        )
    } else {
        Check::fail(
            "kubelet tls",
            format!("serving-certificate requests wait for approval: {}", stuck.join(", ")),
            "kubelet-serving-cert-approver (stage 01's inline manifest) approves them: \
             `kubectl -n kubelet-serving-cert-approver logs deploy/kubelet-serving-cert-approver` says why not",
        )
    }
}

fn metrics_api(client: &kube::Client) -> Api<DynamicObject> {
    let resource = ApiResource {
        group: "metrics.k8s.io".into(),
        version: "v1beta1".into(),
        api_version: "metrics.k8s.io/v1beta1".into(),
        kind: "NodeMetrics".into(),
        plural: "nodes".into(),
    };
    Api::all_with(client.clone(), &resource)
}

fn api_service_resource() -> ApiResource {
    ApiResource {
        group: "apiregistration.k8s.io".into(),
        version: "v1".into(),
        api_version: "apiregistration.k8s.io/v1".into(),
        kind: "APIService".into(),
        plural: "apiservices".into(),
    }
}

/// What `kubectl top nodes` shows: a usage sample for every node of the config.
async fn node_metrics_check(client: &kube::Client, ctx: &Context) -> Check {
    let wanted: Vec<&str> = ctx.config.nodes.iter().map(|node| node.name.as_str()).collect();
    let listed = async {
        let list = metrics_api(client).list(&Default::default()).await.context("listing NodeMetrics")?;
        anyhow::Ok(list.items.into_iter().filter_map(|item| item.metadata.name).collect::<Vec<_>>())
    };
    match listed.await {
        Ok(names) => {
            let missing: Vec<&str> = wanted.iter().copied().filter(|name| !names.iter().any(|n| n == name)).collect();
            if missing.is_empty() {
                Check::pass(
                    "node metrics",
                    format!("usage is reported for all {} nodes (kubectl top nodes)", wanted.len()),
                )
            } else {
                Check::fail(
                    "node metrics",
                    format!("no usage for {}", missing.join(", ")),
                    "a kubelet whose serving certificate is not approved cannot be read: \
                     `kubectl get csr` shows Pending kubelet-serving requests",
                )
            }
        }
        Err(error) => Check::fail(
            "node metrics",
            format!("{error:#}"),
            "`kubectl -n kube-system logs deploy/metrics-server` says why it cannot scrape the kubelets",
        ),
    }
}

impl BundleStage for MetricsServer {
    const NAME: &'static str = "metrics-server";
    const FOLDER: &'static str = "03-metrics-server";
    const TITLE: &'static str =
        "Stage 03: metrics-server, reading kubelets over verified TLS (their serving certificates approved)";
    const LESSON: &'static str = include_str!("../README.md");

    /// The release, with `--kubelet-insecure-tls` only when the config opts out of verified
    /// kubelet certificates; then metrics-server must run.
    fn bundle(&self, ctx: &Context) -> anyhow::Result<Bundle> {
        let mut release = Part::upstream(ctx, Component::MetricsServer, MANIFEST)?.rendered_as("metrics-server.yaml");
        if !ctx.config.kubelet_serving_certificates() {
            release = release.patch::<Deployment>(DEPLOYMENT, |deployment| {
                let pod = deployment.spec.as_mut().and_then(|spec| spec.template.spec.as_mut());
                for container in pod.into_iter().flat_map(|pod| pod.containers.iter_mut()) {
                    container.args.get_or_insert_default().push(INSECURE_FLAG.to_owned());
                }
            })?;
        }
        Ok(Bundle::new().apply([release]).wait(Ready::deployment(NAMESPACE, DEPLOYMENT)))
    }

    async fn check(&self, ctx: &Context) -> anyhow::Result<Vec<Check>> {
        let (mut checks, client) = common::cluster(ctx).await;
        let Some(client) = client else {
            return Ok(checks);
        };
        if ctx.config.kubelet_serving_certificates() {
            checks.push(approver_check(&client, Duration::from_secs(60)).await);
            checks.push(serving_requests_check(&client).await);
        } else {
            checks.push(Check::pass(
                "kubelet tls",
                "metricsServer.kubeletInsecureTls is set: kubelet certificates are NOT verified",
            ));
        }
        Ok(checks)
    }

    async fn verify(&self, ctx: &Context, client: &kube::Client) -> anyhow::Result<Vec<Check>> {
        let wait = Duration::from_secs(60);
        let mut checks = Vec::new();
        if ctx.config.kubelet_serving_certificates() {
            checks.push(approver_check(client, wait).await);
        }
        match ctx.target {
            Target::Talos => {
                let resource = api_service_resource();
                let available =
                    kit::wait::condition_true(client, &resource, None, API_SERVICE, "Available", wait).await;
                checks.push(match available {
                    Ok(()) => Check::pass("apiservice", format!("{API_SERVICE} is Available")),
                    Err(error) => Check::fail(
                        "apiservice",
                        format!("{error:#}"),
                        "the API server cannot reach metrics-server: look at its pod and `kubectl get apiservice`",
                    ),
                });
                checks.push(node_metrics_check(client, ctx).await);
            }
            Target::Lab => {
                checks.push(Check::not_checkable_in_lab(
                    "apiservice",
                    format!("{API_SERVICE} needs a running metrics-server pod; kwok runs none"),
                ));
                checks.push(Check::not_checkable_in_lab("node metrics", "kwok's kubelets serve no metrics"));
            }
        }
        Ok(checks)
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::certificates::v1::{
        CertificateSigningRequestCondition, CertificateSigningRequestSpec, CertificateSigningRequestStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use kit::report::Status;

    use super::*;

    fn request(
        name: &str,
        user: &str,
        signer: &str,
        age_seconds: i64,
        decision: Option<&str>,
    ) -> CertificateSigningRequest {
        let now = Timestamp::now();
        CertificateSigningRequest {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                creation_timestamp: Some(Time(now - k8s_openapi::jiff::SignedDuration::from_secs(age_seconds))),
                ..ObjectMeta::default()
            },
            spec: CertificateSigningRequestSpec {
                signer_name: signer.to_owned(),
                username: Some(user.to_owned()),
                ..CertificateSigningRequestSpec::default()
            },
            status: decision.map(|decision| CertificateSigningRequestStatus {
                conditions: Some(vec![CertificateSigningRequestCondition {
                    type_: decision.to_owned(),
                    status: "True".to_owned(),
                    ..CertificateSigningRequestCondition::default()
                }]),
                ..CertificateSigningRequestStatus::default()
            }),
        }
    }

    #[test]
    fn a_nodes_serving_request_left_waiting_fails_the_check() {
        const SERVING: &str = "kubernetes.io/kubelet-serving";
        let approved = request("csr-1", "system:node:wk01", SERVING, 600, Some("Approved"));
        let fresh = request("csr-2", "system:node:wk02", SERVING, 5, None);
        let client_cert =
            request("csr-3", "system:node:wk03", "kubernetes.io/kube-apiserver-client-kubelet", 600, None);
        let not_a_node = request("csr-4", "admin", SERVING, 600, None);
        let passed = serving_requests_verdict(&[approved.clone(), fresh, client_cert, not_a_node], Timestamp::now());
        assert_eq!(passed.status, Status::Pass, "{}", passed.reason);
        assert!(passed.reason.contains("(2 on record)"), "{}", passed.reason);

        let stuck = request("csr-5", "system:node:cp02", SERVING, 300, None);
        let failed = serving_requests_verdict(&[approved, stuck], Timestamp::now());
        assert_eq!(failed.status, Status::Fail);
        assert!(failed.reason.contains("csr-5 (system:node:cp02, waiting 300s)"), "{}", failed.reason);
        assert!(!failed.reason.contains("csr-1"), "{}", failed.reason);
    }
}
