//! The legacy entry point's own certificate. Traefik answers `https://<traefik.ip>/` (a
//! request that names no host, or a host no Ingress claims) with the default certificate of
//! its TLSStore `default`, self-signed out of the box. Here it comes from the cluster CA, for
//! the address itself, so whoever trusts `state/ca.crt` trusts the bare entry point too, and
//! `verify` can follow the whole path: CA, cert-manager, Traefik, an HTTPS handshake.

use kit::certs::{CertificateSpec, certificate};
use kit::config::ClusterConfig;
use kit::manifest::to_dynamic;
use kit::names::{CA_ISSUER, TRAEFIK_NAMESPACE};
use kube::api::{DynamicObject, ObjectMeta};
use serde::Serialize;

/// The Certificate, and (with `-tls`) the Secret Traefik serves.
pub const CERTIFICATE: &str = "traefik-default";
/// Traefik reads only the TLSStore of this name.
const STORE: &str = "default";

/// traefik.io/v1alpha1 TLSStore: the fields talos-ha sets.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct TlsStore {
    api_version: &'static str,
    kind: &'static str,
    metadata: ObjectMeta,
    spec: TlsStoreSpec,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct TlsStoreSpec {
    default_certificate: SecretName,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct SecretName {
    secret_name: String,
}

/// The Certificate for `traefik.ip` and the TLSStore that makes it Traefik's default.
pub fn all(config: &ClusterConfig) -> anyhow::Result<Vec<DynamicObject>> {
    let secret_name = format!("{CERTIFICATE}-tls");
    let spec = CertificateSpec {
        secret_name: secret_name.clone(),
        ip_addresses: vec![config.traefik_ip.to_string()],
        ..CertificateSpec::default()
    };
    let store = TlsStore {
        api_version: "traefik.io/v1alpha1",
        kind: "TLSStore",
        metadata: ObjectMeta {
            name: Some(STORE.to_owned()),
            namespace: Some(TRAEFIK_NAMESPACE.to_owned()),
            ..ObjectMeta::default()
        },
        spec: TlsStoreSpec { default_certificate: SecretName { secret_name } },
    };
    Ok(vec![to_dynamic(&certificate(TRAEFIK_NAMESPACE, CERTIFICATE, CA_ISSUER, spec))?, to_dynamic(&store)?])
}
