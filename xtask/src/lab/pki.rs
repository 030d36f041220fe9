//! The lab's certificates and kubeconfigs: the "hard way" in a few functions.
//!
//! A control plane is held together by TLS. One cluster CA signs the API server's serving
//! certificate and every client certificate (the client's *name* is its certificate's CN, its
//! *groups* are the O fields, and RBAC authorises those). A separate front-proxy CA lets the
//! API server prove itself to aggregated APIs (metrics-server's `metrics.k8s.io`). A key pair
//! signs ServiceAccount tokens. Talos generates the same set on real nodes.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use kube::config::{AuthInfo, Cluster, Context, Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use kit::fsutil::write_private;

/// An identity a lab component presents to the API server.
pub struct ClientIdentity {
    /// The file stem under `pki/` and the kubeconfig's name.
    pub name: &'static str,
    /// The user name RBAC sees.
    pub common_name: &'static str,
    /// The groups RBAC sees (`system:masters` is the unrestricted group).
    pub groups: &'static [&'static str],
}

/// The clients the lab starts, each with the identity its real counterpart has.
pub const CLIENTS: &[ClientIdentity] = &[
    ClientIdentity { name: "admin", common_name: "talos-ha-admin", groups: &["system:masters"] },
    ClientIdentity { name: "controller-manager", common_name: "system:kube-controller-manager", groups: &[] },
    ClientIdentity { name: "scheduler", common_name: "system:kube-scheduler", groups: &[] },
    // kwok plays every node's kubelet; it needs to update any node and pod status.
    ClientIdentity { name: "kwok", common_name: "kwok", groups: &["system:masters"] },
    ClientIdentity {
        name: "apiserver-kubelet-client",
        common_name: "kube-apiserver-kubelet-client",
        groups: &["system:masters"],
    },
];

/// File paths under `<lab>/pki`.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    pub fn front_proxy_ca_cert(&self) -> PathBuf {
        self.dir.join("front-proxy-ca.crt")
    }
    pub fn cert(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.crt"))
    }
    pub fn key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.key"))
    }
    pub fn service_account_key(&self) -> PathBuf {
        self.dir.join("sa.key")
    }
    pub fn service_account_pub(&self) -> PathBuf {
        self.dir.join("sa.pub")
    }

    /// Generates every certificate and key, once: a lab that already has its PKI keeps it, so
    /// the kubeconfigs users copied stay valid across `down` and `up`.
    pub fn ensure(&self, api_service_ip: Ipv4Addr) -> anyhow::Result<bool> {
        if self.ca_cert().exists() && self.service_account_key().exists() {
            return Ok(false);
        }
        let ca = new_ca("talos-ha-lab-ca")?;
        self.write_pair("ca", &ca.cert_pem, &ca.key)?;

        let mut serving = leaf("kube-apiserver", &[], ExtendedKeyUsagePurpose::ServerAuth)?;
        serving.subject_alt_names = vec![
            SanType::DnsName("localhost".try_into()?),
            SanType::DnsName("kubernetes".try_into()?),
            SanType::DnsName("kubernetes.default".try_into()?),
            SanType::DnsName("kubernetes.default.svc".try_into()?),
            SanType::DnsName("kubernetes.default.svc.cluster.local".try_into()?),
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            SanType::IpAddress(IpAddr::V4(api_service_ip)),
        ];
        self.issue("apiserver", serving, &ca.issuer)?;
        for client in CLIENTS {
            let params = leaf(client.common_name, client.groups, ExtendedKeyUsagePurpose::ClientAuth)?;
            self.issue(client.name, params, &ca.issuer)?;
        }

        // The aggregation layer: the API server forwards requests to aggregated APIs as
        // `front-proxy-client`, with a certificate from a CA of its own.
        let front_proxy = new_ca("talos-ha-lab-front-proxy-ca")?;
        self.write_pair("front-proxy-ca", &front_proxy.cert_pem, &front_proxy.key)?;
        let client = leaf("front-proxy-client", &[], ExtendedKeyUsagePurpose::ClientAuth)?;
        self.issue("front-proxy-client", client, &front_proxy.issuer)?;

        let service_accounts = KeyPair::generate().context("generating the service-account signing key")?;
        write_private(&self.service_account_key(), service_accounts.serialize_pem().as_bytes())?;
        write_private(&self.service_account_pub(), service_accounts.public_key_pem().as_bytes())?;
        Ok(true)
    }

    fn issue(&self, name: &str, params: CertificateParams, issuer: &Issuer<'_, KeyPair>) -> anyhow::Result<()> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, issuer).with_context(|| format!("signing the {name} certificate"))?;
        self.write_pair(name, &cert.pem(), &key)
    }

    fn write_pair(&self, name: &str, cert_pem: &str, key: &KeyPair) -> anyhow::Result<()> {
        write_private(&self.cert(name), cert_pem.as_bytes())?;
        write_private(&self.key(name), key.serialize_pem().as_bytes())
    }

    /// A kubeconfig for one client identity, pointing at the lab's API server.
    pub fn kubeconfig(&self, client: &str, server: &str) -> anyhow::Result<String> {
        let path = |p: PathBuf| Some(p.to_string_lossy().into_owned());
        let kubeconfig = Kubeconfig {
            api_version: Some("v1".into()),
            kind: Some("Config".into()),
            clusters: vec![NamedCluster {
                name: "talos-ha-lab".into(),
                cluster: Some(Cluster {
                    server: Some(server.into()),
                    certificate_authority: path(self.ca_cert()),
                    ..Cluster::default()
                }),
                other: Default::default(),
            }],
            auth_infos: vec![NamedAuthInfo {
                name: client.into(),
                auth_info: Some(AuthInfo {
                    client_certificate: path(self.cert(client)),
                    client_key: path(self.key(client)),
                    ..AuthInfo::default()
                }),
                other: Default::default(),
            }],
            contexts: vec![NamedContext {
                name: "talos-ha-lab".into(),
                context: Some(Context {
                    cluster: "talos-ha-lab".into(),
                    user: Some(client.into()),
                    ..Context::default()
                }),
                other: Default::default(),
            }],
            current_context: Some("talos-ha-lab".into()),
            ..Kubeconfig::default()
        };
        serde_saphyr::to_string(&kubeconfig).context("serialising a kubeconfig")
    }
}

struct NewCa {
    cert_pem: String,
    key: KeyPair,
    issuer: Issuer<'static, KeyPair>,
}

fn new_ca(common_name: &str) -> anyhow::Result<NewCa> {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(common_name, &[]);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let key = KeyPair::generate()?;
    let cert_pem = params.self_signed(&key).with_context(|| format!("self-signing {common_name}"))?.pem();
    // The issuer holds its own copy of the key (KeyPair is not Clone; its PEM round-trips).
    let issuer_key = KeyPair::from_pem(&key.serialize_pem())?;
    Ok(NewCa { cert_pem, key, issuer: Issuer::new(params, issuer_key) })
}

fn leaf(common_name: &str, groups: &[&str], usage: ExtendedKeyUsagePurpose) -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(common_name, groups);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![usage];
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn name(common_name: &str, groups: &[&str]) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    for group in groups {
        name.push(DnType::OrganizationName, *group);
    }
    name
}

/// Writes a kubeconfig for each lab client into `dir`, and the admin one also at `admin_path`.
pub fn write_kubeconfigs(pki: &Pki, server: &str, dir: &Path, admin_path: &Path) -> anyhow::Result<()> {
    for client in CLIENTS {
        let text = pki.kubeconfig(client.name, server)?;
        write_private(&dir.join(format!("{}.kubeconfig", client.name)), text.as_bytes())?;
        if client.name == "admin" {
            write_private(admin_path, text.as_bytes())?;
        }
    }
    Ok(())
}
