//! One HTTP(S) request from this machine to a service on the LAN, as a person's browser would
//! make it: what `verify` and `status` use to see that an entry point answers. HTTPS trusts
//! only the cluster CA (`state/ca.crt`) when one is given, so a passing request also proves
//! the certificate chains to it.

use std::time::Duration;

use anyhow::Context as _;

/// What came back.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    /// Where a redirect points, if it is one.
    pub location: Option<String>,
    pub body: String,
}

/// The client every request uses: no redirects followed, statuses returned (not errors), a
/// 10 s budget; HTTPS trusts only `ca_pem` when one is given.
fn agent(ca_pem: Option<&[u8]>) -> anyhow::Result<ureq::Agent> {
    let mut config = ureq::Agent::config_builder()
        .max_redirects(0)
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)));
    if let Some(pem) = ca_pem {
        let certificate = ureq::tls::Certificate::from_pem(pem).context("reading the CA certificate")?;
        let roots = ureq::tls::RootCerts::new_with_certs(&[certificate]);
        config = config.tls_config(ureq::tls::TlsConfig::builder().root_certs(roots).build());
    }
    Ok(config.build().into())
}

fn answer(mut response: ureq::http::Response<ureq::Body>) -> Answer {
    let location = response.headers().get("location").and_then(|value| value.to_str().ok()).map(str::to_owned);
    let body = response.body_mut().read_to_string().unwrap_or_default();
    Answer { status: response.status().as_u16(), location, body }
}

/// GET `url` (no redirects followed), with extra `headers`; HTTPS trusts only `ca_pem`.
pub fn get(url: &str, ca_pem: Option<&[u8]>, headers: &[(&str, &str)]) -> anyhow::Result<Answer> {
    let mut request = agent(ca_pem)?.get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    Ok(answer(request.call().with_context(|| format!("GET {url}"))?))
}

/// POST `body` to `url` (a public service such as the Image Factory; system roots).
pub fn post(url: &str, content_type: &str, body: &str) -> anyhow::Result<Answer> {
    let request = agent(None)?.post(url).header("content-type", content_type);
    Ok(answer(request.send(body).with_context(|| format!("POST {url}"))?))
}
