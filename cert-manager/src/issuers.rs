//! The bootstrap chain, typed: a self-signed ClusterIssuer signs one CA certificate (10
//! years, ECDSA P-256), and a CA ClusterIssuer signs every service's certificate with it.

use kit::names::{CA_ISSUER, CERT_MANAGER_NAMESPACE};
use kube::api::{DynamicObject, ObjectMeta};
use kube::discovery::ApiResource;
use serde::Serialize;

/// Signs exactly one certificate: the CA's own (a CA has to start somewhere).
pub const SELF_SIGNED_ISSUER: &str = "talos-ha-selfsigned";
/// The CA Certificate, and the Secret its key pair lives in (in cert-manager's namespace,
/// where a ClusterIssuer reads its Secrets).
pub const CA_CERTIFICATE: &str = "talos-ha-ca";
/// Ten years: the CA outlives any service certificate it signs (those renew by themselves).
const CA_DURATION: &str = "87600h0m0s";

const API_VERSION: &str = "cert-manager.io/v1";

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

/// cert-manager.io/v1 Certificate: the fields talos-ha sets.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Certificate {
    api_version: &'static str,
    kind: &'static str,
    pub metadata: ObjectMeta,
    pub spec: CertificateSpec,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateSpec {
    pub secret_name: String,
    #[serde(rename = "isCA", skip_serializing_if = "std::ops::Not::not")]
    pub is_ca: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub common_name: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dns_names: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_key: Option<PrivateKey>,
    pub issuer_ref: IssuerRef,
}

#[derive(Debug, Clone, Serialize)]
pub struct PrivateKey {
    pub algorithm: &'static str,
    pub size: u32,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct IssuerRef {
    pub name: String,
    pub kind: String,
    pub group: String,
}

fn cluster_issuer(name: &str, spec: IssuerSpec) -> ClusterIssuer {
    ClusterIssuer {
        api_version: API_VERSION,
        kind: "ClusterIssuer",
        metadata: ObjectMeta { name: Some(name.to_owned()), ..ObjectMeta::default() },
        spec,
    }
}

/// A Certificate in `namespace` issued by the ClusterIssuer `issuer`.
pub fn certificate(namespace: &str, name: &str, issuer: &str, spec: CertificateSpec) -> Certificate {
    Certificate {
        api_version: API_VERSION,
        kind: "Certificate",
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..ObjectMeta::default()
        },
        spec: CertificateSpec {
            issuer_ref: IssuerRef {
                name: issuer.to_owned(),
                kind: "ClusterIssuer".to_owned(),
                group: "cert-manager.io".to_owned(),
            },
            ..spec
        },
    }
}

pub fn self_signed_issuer() -> ClusterIssuer {
    cluster_issuer(SELF_SIGNED_ISSUER, IssuerSpec::SelfSigned {})
}

pub fn ca_certificate(cluster_name: &str) -> Certificate {
    certificate(
        CERT_MANAGER_NAMESPACE,
        CA_CERTIFICATE,
        SELF_SIGNED_ISSUER,
        CertificateSpec {
            secret_name: CA_CERTIFICATE.to_owned(),
            is_ca: true,
            common_name: Some(format!("{cluster_name} CA")),
            duration: Some(CA_DURATION.to_owned()),
            private_key: Some(PrivateKey { algorithm: "ECDSA", size: 256 }),
            ..CertificateSpec::default()
        },
    )
}

pub fn ca_issuer() -> ClusterIssuer {
    cluster_issuer(CA_ISSUER, IssuerSpec::Ca { secret_name: CA_CERTIFICATE.to_owned() })
}

/// The chain in the order it must exist.
pub fn all(cluster_name: &str) -> anyhow::Result<Vec<DynamicObject>> {
    use kit::apply::to_dynamic;
    Ok(vec![to_dynamic(&self_signed_issuer())?, to_dynamic(&ca_certificate(cluster_name))?, to_dynamic(&ca_issuer())?])
}

pub fn certificate_resource() -> ApiResource {
    resource("Certificate", "certificates")
}

pub fn cluster_issuer_resource() -> ApiResource {
    resource("ClusterIssuer", "clusterissuers")
}

fn resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: "cert-manager.io".into(),
        version: "v1".into(),
        api_version: API_VERSION.into(),
        kind: kind.into(),
        plural: plural.into(),
    }
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
                "privateKey": { "algorithm": "ECDSA", "size": 256 },
                "issuerRef": { "name": "talos-ha-selfsigned", "kind": "ClusterIssuer", "group": "cert-manager.io" },
            })
        );
        assert_eq!(objects[2].data["spec"], serde_json::json!({ "ca": { "secretName": "talos-ha-ca" } }));
    }
}
