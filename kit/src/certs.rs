//! cert-manager's Certificate, typed, and how a stage puts its UI on the LAN: a Traefik
//! Ingress at `<service>.<traefik.ip>.<domain>` with a certificate from the cluster CA
//! (`talos-ha-ca`, stage 05). Stages 06, 07 and 100 expose their services this way.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule, IngressServiceBackend, IngressSpec,
    IngressTLS, ServiceBackendPort,
};
use kube::api::ObjectMeta;
use kube::discovery::ApiResource;
use serde::Serialize;

use crate::config::ClusterConfig;
use crate::names::CA_ISSUER;

pub const API_VERSION: &str = "cert-manager.io/v1";
/// The IngressClass of stage 04's Traefik.
pub const INGRESS_CLASS: &str = "traefik";
/// What Traefik calls itself in an IngressClass's `spec.controller`.
pub const INGRESS_CONTROLLER: &str = "traefik.io/ingress-controller";
/// The annotation that makes an IngressClass the one an Ingress without a class gets.
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";

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
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ip_addresses: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    pub private_key: PrivateKey,
    pub issuer_ref: IssuerRef,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PrivateKey {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u32>,
    /// Always stated: cert-manager v1.18 turned its default from `Never` to `Always` and
    /// v1.20 made that unchangeable (cert-manager/website docs/releases/upgrading/
    /// upgrading-1.17-1.18.md), so an unstated policy changes under an upgrade.
    pub rotation_policy: RotationPolicy,
}

/// What cert-manager does with a Certificate's private key when it renews it.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub enum RotationPolicy {
    /// A new key at every renewal: what a service certificate wants (a leaked key ages out).
    #[default]
    Always,
    /// The key is kept: what the CA wants, since every certificate it signed chains to that
    /// key, and so does every client that imported the CA certificate.
    Never,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct IssuerRef {
    pub name: String,
    pub kind: String,
    pub group: String,
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

/// A cert-manager.io/v1 resource type (`Certificate`, `ClusterIssuer`).
pub fn resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: "cert-manager.io".into(),
        version: "v1".into(),
        api_version: API_VERSION.into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

pub fn certificate_resource() -> ApiResource {
    resource("Certificate", "certificates")
}

pub fn cluster_issuer_resource() -> ApiResource {
    resource("ClusterIssuer", "clusterissuers")
}

/// The name a service is reached by on the legacy path: `<service>.<traefik.ip>.<domain>`.
pub fn legacy_host(config: &ClusterConfig, service: &str) -> String {
    config.service_host(service, config.traefik_ip)
}

/// A Certificate for `hosts` from the cluster CA, kept in Secret `<name>-tls`.
pub fn service_certificate(namespace: &str, name: &str, hosts: Vec<String>) -> Certificate {
    let spec = CertificateSpec { secret_name: format!("{name}-tls"), dns_names: hosts, ..CertificateSpec::default() };
    certificate(namespace, name, CA_ISSUER, spec)
}

/// Which Traefik entry points serve an Ingress: HTTPS only.
const ENTRYPOINTS_ANNOTATION: &str = "traefik.ingress.kubernetes.io/router.entrypoints";
/// Which Traefik middlewares (CRD objects, `<namespace>-<name>@kubernetescrd`) a request
/// passes through before it reaches the Service.
pub const MIDDLEWARES_ANNOTATION: &str = "traefik.ingress.kubernetes.io/router.middlewares";

/// An Ingress of class `traefik` sending every path of `host` to `service:port`, over HTTPS
/// with the Secret of [`service_certificate`] (Traefik redirects plain HTTP to it).
pub fn traefik_ingress(namespace: &str, name: &str, host: &str, service: &str, port: i32) -> Ingress {
    Ingress {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            annotations: Some(BTreeMap::from([(ENTRYPOINTS_ANNOTATION.to_owned(), "websecure".to_owned())])),
            ..ObjectMeta::default()
        },
        spec: Some(IngressSpec {
            ingress_class_name: Some(INGRESS_CLASS.to_owned()),
            tls: Some(vec![IngressTLS {
                hosts: Some(vec![host.to_owned()]),
                secret_name: Some(format!("{name}-tls")),
            }]),
            rules: Some(vec![IngressRule {
                host: Some(host.to_owned()),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some("/".to_owned()),
                        path_type: "Prefix".to_owned(),
                        backend: IngressBackend {
                            service: Some(IngressServiceBackend {
                                name: service.to_owned(),
                                port: Some(ServiceBackendPort { number: Some(port), ..ServiceBackendPort::default() }),
                            }),
                            ..IngressBackend::default()
                        },
                    }],
                }),
            }]),
            ..IngressSpec::default()
        }),
        ..Ingress::default()
    }
}
