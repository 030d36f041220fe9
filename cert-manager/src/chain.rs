//! Does a certificate chain up to the cluster CA? The check a browser makes once `ca.crt` is
//! trusted, made here with x509-parser: the issuer names the CA's subject, the CA's key
//! signed it, and both are within their validity.

use anyhow::Context as _;
use x509_parser::pem::parse_x509_pem;

/// The first certificate in a PEM text, as DER.
fn first_der(pem: &[u8], what: &str) -> anyhow::Result<Vec<u8>> {
    let (_, block) = parse_x509_pem(pem).map_err(|error| anyhow::anyhow!("{what} is not PEM: {error}"))?;
    anyhow::ensure!(block.label == "CERTIFICATE", "{what} holds a {}, not a CERTIFICATE", block.label);
    Ok(block.contents)
}

/// Ok when `leaf_pem` (its first certificate) was issued and signed by the CA in `ca_pem`,
/// for `host` (a DNS name or an IP address among its subject alternative names: what a browser
/// matches).
pub fn verify(leaf_pem: &[u8], ca_pem: &[u8], host: &str) -> anyhow::Result<()> {
    let leaf_der = first_der(leaf_pem, "the certificate")?;
    let ca_der = first_der(ca_pem, "the CA certificate")?;
    let (_, leaf) = x509_parser::parse_x509_certificate(&leaf_der).context("parsing the certificate")?;
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).context("parsing the CA certificate")?;
    anyhow::ensure!(
        leaf.issuer() == ca.subject(),
        "the certificate was issued by `{}`, not by the CA `{}`",
        leaf.issuer(),
        ca.subject()
    );
    leaf.verify_signature(Some(ca.public_key()))
        .map_err(|error| anyhow::anyhow!("the CA's key did not sign the certificate ({error})"))?;
    anyhow::ensure!(ca.is_ca(), "`{}` is not a CA certificate", ca.subject());
    for (name, certificate) in [("certificate", &leaf), ("CA certificate", &ca)] {
        anyhow::ensure!(certificate.validity().is_valid(), "the {name} is outside its validity period");
    }
    let names: Vec<String> = leaf
        .subject_alternative_name()
        .context("reading the certificate's alternative names")?
        .map(|extension| {
            extension
                .value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    x509_parser::extensions::GeneralName::DNSName(dns) => Some((*dns).to_owned()),
                    x509_parser::extensions::GeneralName::IPAddress(octets) => {
                        <[u8; 4]>::try_from(*octets).ok().map(|ip| std::net::Ipv4Addr::from(ip).to_string())
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    anyhow::ensure!(names.iter().any(|name| name == host), "the certificate is for {names:?}, not {host}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

    use super::*;

    const HOST: &str = "whoami.172.16.16.101.sslip.io";

    fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().expect("key");
        let pem = params.self_signed(&key).expect("self-signed").pem();
        (pem, Issuer::new(params, key))
    }

    fn leaf(issuer: &Issuer<'_, KeyPair>) -> String {
        let params = CertificateParams::new(vec![HOST.to_owned()]).expect("params");
        params.signed_by(&KeyPair::generate().expect("key"), issuer).expect("signed").pem()
    }

    #[test]
    fn a_certificate_chains_only_to_the_ca_that_signed_it() {
        let (ca_pem, issuer) = ca("talos-ha CA");
        let leaf_pem = leaf(&issuer);
        verify(leaf_pem.as_bytes(), ca_pem.as_bytes(), HOST).expect("signed by this CA");
        let error = verify(leaf_pem.as_bytes(), ca_pem.as_bytes(), "demo.172.16.16.102.sslip.io").expect_err("host");
        assert!(error.to_string().contains("not demo.172.16.16.102.sslip.io"), "{error}");

        // Another CA with the very same name: the names match, the signature does not.
        let (impostor_pem, _) = ca("talos-ha CA");
        let error = verify(leaf_pem.as_bytes(), impostor_pem.as_bytes(), HOST).expect_err("other key");
        assert!(error.to_string().contains("did not sign"), "{error}");

        let for_ip = CertificateParams::new(vec!["172.16.16.101".to_owned()]).expect("params");
        let ip_pem = for_ip.signed_by(&KeyPair::generate().expect("key"), &issuer).expect("signed").pem();
        verify(ip_pem.as_bytes(), ca_pem.as_bytes(), "172.16.16.101").expect("an IP address name matches too");

        let (other_pem, _) = ca("another CA");
        let error = verify(leaf_pem.as_bytes(), other_pem.as_bytes(), HOST).expect_err("other name");
        assert!(error.to_string().contains("not by the CA"), "{error}");
        assert!(verify(b"not pem", ca_pem.as_bytes(), HOST).is_err());
    }
}
