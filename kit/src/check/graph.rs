//! The path a request takes, read from the API: an Ingress, or an HTTPRoute and the Gateway
//! listener it attaches to; the Services they name, on the port they name; the Ready pods
//! those Services select. Each link is a reference the API server never checks, so each is
//! where a typo or a stale object breaks a URL. In the lab, where kwok's pods answer nothing,
//! the graph is what shows a route would reach a pod; on a real cluster it names the broken
//! link when a URL does not answer.

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::networking::v1::{Ingress, ServiceBackendPort};
use kube::api::{Api, DynamicObject, ListParams};
use serde_json::Value;

use crate::report::Check;

/// A Service port as a route names it: by number (HTTPRoute, Ingress) or by name (Ingress).
#[derive(Debug, Clone)]
pub enum PortRef {
    Number(i32),
    Name(String),
}

impl std::fmt::Display for PortRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PortRef::Number(number) => write!(f, "{number}"),
            PortRef::Name(name) => write!(f, "{name}"),
        }
    }
}

/// Service `namespace/name` has the port and selects at least one Ready pod: `Ok` says how
/// many, `Err` names the broken link.
async fn service_reaches_pods(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    port: &PortRef,
) -> anyhow::Result<Result<String, String>> {
    let Some(service) = Api::<Service>::namespaced(client.clone(), namespace).get_opt(name).await? else {
        return Ok(Err(format!("Service {namespace}/{name} does not exist")));
    };
    let spec = service.spec.unwrap_or_default();
    let ports = spec.ports.unwrap_or_default();
    let has_port = ports.iter().any(|p| match port {
        PortRef::Number(number) => p.port == *number,
        PortRef::Name(wanted) => p.name.as_deref() == Some(wanted.as_str()),
    });
    if !has_port {
        let open: Vec<String> = ports.iter().map(|p| p.port.to_string()).collect();
        return Ok(Err(format!("Service {namespace}/{name} has no port {port} (it has {})", open.join(", "))));
    }
    let selector = spec.selector.unwrap_or_default();
    if selector.is_empty() {
        return Ok(Err(format!("Service {namespace}/{name} selects no pods (no selector)")));
    }
    let labels: Vec<String> = selector.iter().map(|(key, value)| format!("{key}={value}")).collect();
    let pods = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(&labels.join(",")))
        .await?;
    // The pods themselves, not Endpoints: the lab's loopback pod addresses are never
    // published as endpoints.
    let ready = pods.items.iter().filter(|pod| crate::client::pod_is_ready(pod)).count();
    Ok(if ready == 0 {
        Err(format!("Service {namespace}/{name} ({}) selects no Ready pod", labels.join(",")))
    } else {
        Ok(format!("Service {name}:{port} → {ready} Ready pod(s)"))
    })
}

/// Every path of Ingress `namespace/name` reaches Ready pods through its Service.
pub async fn ingress(client: &kube::Client, namespace: &str, name: &str) -> anyhow::Result<Check> {
    let check = format!("routed {name}");
    let fix = format!("re-apply the stage that owns it, then `kubectl -n {namespace} describe ingress,service,pods`");
    let Some(ingress) = Api::<Ingress>::namespaced(client.clone(), namespace).get_opt(name).await? else {
        return Ok(Check::fail(check, format!("Ingress {namespace}/{name} does not exist"), fix));
    };
    let spec = ingress.spec.unwrap_or_default();
    let mut reached = Vec::new();
    let mut broken = Vec::new();
    let paths = spec.rules.iter().flatten().flat_map(|rule| {
        let host = rule.host.clone().unwrap_or_else(|| "*".to_owned());
        rule.http.iter().flat_map(|http| http.paths.clone()).map(move |path| (host.clone(), path))
    });
    for (host, path) in paths {
        let Some(service) = path.backend.service else {
            broken.push(format!("{host}{} names no Service", path.path.unwrap_or_default()));
            continue;
        };
        let port = match service.port.unwrap_or_default() {
            ServiceBackendPort { number: Some(number), .. } => PortRef::Number(number),
            ServiceBackendPort { name, .. } => PortRef::Name(name.unwrap_or_default()),
        };
        match service_reaches_pods(client, namespace, &service.name, &port).await? {
            Ok(link) => reached.push(format!("{host} → {link}")),
            Err(problem) => broken.push(format!("{host}: {problem}")),
        }
    }
    Ok(verdict(check, format!("Ingress {name}"), reached, broken, fix))
}

/// HTTPRoute `namespace/name` is attached to listeners that exist and admit it, and every
/// backendRef reaches Ready pods.
pub async fn http_route(client: &kube::Client, namespace: &str, name: &str) -> anyhow::Result<Check> {
    let check = format!("routed {name}");
    let fix = format!("re-apply the stage that owns it, then `kubectl -n {namespace} describe httproute,service,pods`");
    let routes: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &crate::names::gateway_api_resource("HTTPRoute", "httproutes"));
    let Some(route) = routes.get_opt(name).await? else {
        return Ok(Check::fail(check, format!("HTTPRoute {namespace}/{name} does not exist"), fix));
    };
    let spec = &route.data["spec"];
    let hostnames: Vec<&str> = spec["hostnames"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let mut reached = Vec::new();
    let mut broken = Vec::new();
    for parent in spec["parentRefs"].as_array().into_iter().flatten() {
        match listeners_admit(client, namespace, parent, &hostnames).await? {
            Ok(link) => reached.push(link),
            Err(problem) => broken.push(problem),
        }
    }
    if reached.is_empty() && broken.is_empty() {
        broken.push("it names no parent Gateway".to_owned());
    }
    // Each backend once, in the order the rules name them: a Service several rules share (the
    // demo's canary) is one link.
    let mut backends: Vec<(&str, &str, i32)> = Vec::new();
    for backend in
        spec["rules"].as_array().into_iter().flatten().flat_map(|rule| rule["backendRefs"].as_array()).flatten()
    {
        let service = backend["name"].as_str().unwrap_or_default();
        let backend_namespace = backend["namespace"].as_str().unwrap_or(namespace);
        let port = backend["port"].as_i64().and_then(|port| i32::try_from(port).ok()).unwrap_or(0);
        if !backends.contains(&(backend_namespace, service, port)) {
            backends.push((backend_namespace, service, port));
        }
    }
    for (backend_namespace, service, port) in backends {
        match service_reaches_pods(client, backend_namespace, service, &PortRef::Number(port)).await? {
            Ok(link) => reached.push(link),
            Err(problem) => broken.push(problem),
        }
    }
    Ok(verdict(check, format!("HTTPRoute {name} ({})", hostnames.join(", ")), reached, broken, fix))
}

/// The parent Gateway has the listener the route names (or any, when it names none), the
/// listener admits routes from the route's namespace, and its hostname covers the route's.
async fn listeners_admit(
    client: &kube::Client,
    route_namespace: &str,
    parent: &Value,
    hostnames: &[&str],
) -> anyhow::Result<Result<String, String>> {
    let gateway = parent["name"].as_str().unwrap_or_default();
    let namespace = parent["namespace"].as_str().unwrap_or(route_namespace);
    let section = parent["sectionName"].as_str();
    let gateways: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &crate::names::gateway_api_resource("Gateway", "gateways"));
    let Some(stored) = gateways.get_opt(gateway).await? else {
        return Ok(Err(format!("Gateway {namespace}/{gateway} does not exist")));
    };
    let listeners: Vec<&Value> = stored.data["spec"]["listeners"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|listener| section.is_none_or(|section| listener["name"] == section))
        .collect();
    let shown = section.unwrap_or("any");
    if listeners.is_empty() {
        return Ok(Err(format!("Gateway {namespace}/{gateway} has no listener {shown}")));
    }
    for listener in listeners {
        let from = listener["allowedRoutes"]["namespaces"]["from"].as_str().unwrap_or("Same");
        if from == "Same" && namespace != route_namespace {
            return Ok(Err(format!(
                "listener {} of Gateway {namespace}/{gateway} admits routes of its own namespace only",
                listener_name(listener)
            )));
        }
        if let Some(pattern) = listener["hostname"].as_str()
            && let Some(outside) = hostnames.iter().find(|host| !hostname_matches(pattern, host))
        {
            return Ok(Err(format!(
                "listener {} of Gateway {namespace}/{gateway} serves {pattern}, not {outside}",
                listener_name(listener)
            )));
        }
    }
    Ok(Ok(format!("Gateway {gateway} listener {shown}")))
}

fn listener_name(listener: &Value) -> &str {
    listener["name"].as_str().unwrap_or_default()
}

/// A listener hostname (`*.suffix` or exact) covers `host` (Gateway API: a wildcard matches
/// one or more leading labels).
fn hostname_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => host.strip_suffix(suffix).is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        None => pattern == host,
    }
}

fn verdict(check: String, what: String, reached: Vec<String>, broken: Vec<String>, fix: String) -> Check {
    if broken.is_empty() {
        Check::pass(check, format!("{what} → {}", reached.join("; ")))
    } else {
        Check::fail(check, format!("{what}: {}", broken.join("; ")), fix)
    }
}

#[cfg(test)]
mod tests {
    use super::hostname_matches;

    #[test]
    fn a_wildcard_listener_covers_subdomains_only() {
        assert!(hostname_matches("*.172.16.16.102.sslip.io", "demo.172.16.16.102.sslip.io"));
        assert!(hostname_matches("*.172.16.16.102.sslip.io", "a.b.172.16.16.102.sslip.io"));
        assert!(!hostname_matches("*.172.16.16.102.sslip.io", "172.16.16.102.sslip.io"));
        assert!(!hostname_matches("*.172.16.16.102.sslip.io", "demo.172.16.16.101.sslip.io"));
        assert!(hostname_matches("demo.example", "demo.example"));
    }
}
