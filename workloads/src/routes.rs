//! HTTPRoute (Gateway API v1), typed: the fields the samples use, attached to stage 08's
//! Gateway.

use kit::names::{GATEWAY, GATEWAY_NAMESPACE};
use kube::api::ObjectMeta;
use kube::discovery::ApiResource;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRoute {
    api_version: &'static str,
    kind: &'static str,
    pub metadata: ObjectMeta,
    pub spec: HttpRouteSpec,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteSpec {
    parent_refs: Vec<ParentRef>,
    hostnames: Vec<String>,
    rules: Vec<Rule>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct ParentRef {
    name: &'static str,
    namespace: &'static str,
    section_name: &'static str,
}

/// One rule: requests that match (all of them when `matches` is empty) go to the backends,
/// split by weight.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<Match>,
    pub backend_refs: Vec<Backend>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Match {
    pub headers: Vec<HeaderMatch>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HeaderMatch {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Backend {
    pub name: String,
    pub port: u16,
    pub weight: u32,
}

impl Backend {
    pub fn service(name: &str, weight: u32) -> Backend {
        Backend { name: name.to_owned(), port: 80, weight }
    }
}

/// The Gateway's listeners (stage 08): plain HTTP on 80, HTTPS on 443 with the wildcard
/// certificate of the cluster CA.
pub const LISTENERS: [&str; 2] = ["http", "https"];

/// An HTTPRoute for `host` on both of the Gateway's listeners, so the app answers at
/// `http://` and `https://` alike (KubeInvaders' page calls its API over https only).
pub fn http_route(namespace: &str, name: &str, host: String, rules: Vec<Rule>) -> HttpRoute {
    HttpRoute {
        api_version: "gateway.networking.k8s.io/v1",
        kind: "HTTPRoute",
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..ObjectMeta::default()
        },
        spec: HttpRouteSpec {
            parent_refs: LISTENERS
                .iter()
                .map(|listener| ParentRef { name: GATEWAY, namespace: GATEWAY_NAMESPACE, section_name: listener })
                .collect(),
            hostnames: vec![host],
            rules,
        },
    }
}

pub fn http_route_resource() -> ApiResource {
    kit::names::gateway_api_resource("HTTPRoute", "httproutes")
}
