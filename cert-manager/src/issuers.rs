//! The bootstrap chain, typed: a self-signed ClusterIssuer signs one CA certificate (10
//! years, ECDSA P-256, its key kept at renewal), and a CA ClusterIssuer signs every service's
//! certificate with it.

use kit::certs::{API_VERSION, CertificateSpec, PrivateKey, RotationPolicy, certificate};
use kit::names::{CA_ISSUER, CA_SECRET, CERT_MANAGER_NAMESPACE};
use kube::api::{DynamicObject, ObjectMeta};
use serde::Serialize;

/// Signs exactly one certificate: the CA's own (a CA has to start somewhere).
pub const SELF_SIGNED_ISSUER: &str = "talos-ha-selfsigned";
/// The CA Certificate, named as the Secret its key pair lives in (in cert-manager's
/// namespace, where a ClusterIssuer reads its Secrets).
pub const CA_CERTIFICATE: &str = CA_SECRET;
/// Ten years: the CA outlives any service certificate it signs (those renew by themselves).
const CA_DURATION: &str = "87600h0m0s";

/// cert-manager.io/v1 ClusterIssuer: the fields talos-ha sets.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterIssuer {
    api_version: &'static str,
    kind: &'static str,
    pub metadata: ObjectMeta,
    pub spec: IssuerSpec,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum IssuerSpec {
    SelfSigned {},
    Ca { secret_name: String },
}

fn cluster_issuer(name: &str, spec: IssuerSpec) -> ClusterIssuer {
    ClusterIssuer {
        api_version: API_VERSION,
        kind: "ClusterIssuer",
        metadata: ObjectMeta { name: Some(name.to_owned()), ..ObjectMeta::default() },
        spec,
    }
}

pub fn self_signed_issuer() -> ClusterIssuer {
    cluster_issuer(SELF_SIGNED_ISSUER, IssuerSpec::SelfSigned {})
}

pub fn ca_certificate(cluster_name: &str) -> kit::certs::Certificate {
    certificate(
        CERT_MANAGER_NAMESPACE,
        CA_CERTIFICATE,
        SELF_SIGNED_ISSUER,
        CertificateSpec {
            secret_name: CA_SECRET.to_owned(),
            is_ca: true,
            common_name: Some(format!("{cluster_name} CA")),
            duration: Some(CA_DURATION.to_owned()),
            private_key: PrivateKey {
                algorithm: Some("ECDSA"),
                size: Some(256),
                rotation_policy: RotationPolicy::Never,
            },
            ..CertificateSpec::default()
        },
    )
}

pub fn ca_issuer() -> ClusterIssuer {
    cluster_issuer(CA_ISSUER, IssuerSpec::Ca { secret_name: CA_SECRET.to_owned() })
}

/// The chain in the order it must exist.
pub fn all(cluster_name: &str) -> anyhow::Result<Vec<DynamicObject>> {
    use kit::manifest::to_dynamic;
    Ok(vec![to_dynamic(&self_signed_issuer())?, to_dynamic(&ca_certificate(cluster_name))?, to_dynamic(&ca_issuer())?])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_is_written_as_cert_manager_reads_it() {
        let objects = all("talos-ha").expect("serialises");
        assert_eq!(objects[0].data["spec"], serde_json::json!({ "selfSigned": {} }));
        assert_eq!(
            objects[1].data["spec"],
            serde_json::json!({
                "secretName": "talos-ha-ca",
                "isCA": true,
                "commonName": "talos-ha CA",
                "duration": "87600h0m0s",
                "privateKey": { "algorithm": "ECDSA", "size": 256, "rotationPolicy": "Never" },
                "issuerRef": { "name": "talos-ha-selfsigned", "kind": "ClusterIssuer", "group": "cert-manager.io" },
            })
        );
        assert_eq!(objects[2].data["spec"], serde_json::json!({ "ca": { "secretName": "talos-ha-ca" } }));
    }
}
