//! talosctl's client config and its certificate's expiry. `talosctl gen config` signs the
//! client certificate for one year (pkg/machinery/constants/constants.go,
//! TalosAPIDefaultCertificateValidityDuration; used in
//! pkg/machinery/config/generate/secrets/bundle.go). After that every talosctl call fails
//! with a TLS error, so stage 01 renews it from `state/secrets.yaml` a month before.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::report::Check;
use anyhow::Context as _;
use base64::Engine as _;
use serde::Deserialize;

/// Renewed when fewer than this many days are left.
pub const RENEW_WITHIN_DAYS: u64 = 30;

#[derive(Deserialize)]
struct TalosConfig {
    context: String,
    contexts: std::collections::BTreeMap<String, TalosContext>,
}

#[derive(Deserialize)]
struct TalosContext {
    /// The client certificate, PEM, base64-encoded.
    crt: String,
    #[serde(default)]
    endpoints: Vec<String>,
    #[serde(default)]
    nodes: Vec<String>,
}

/// The current context of the talosconfig at `path`.
fn current_context(path: &Path) -> anyhow::Result<TalosContext> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut config: TalosConfig =
        serde_saphyr::from_str(&text).with_context(|| format!("{} is not a talosconfig", path.display()))?;
    config
        .contexts
        .remove(&config.context)
        .with_context(|| format!("{} has no context {:?}", path.display(), config.context))
}

/// The current context's endpoints and default nodes.
pub fn endpoints_and_nodes(path: &Path) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let context = current_context(path)?;
    Ok((context.endpoints, context.nodes))
}

/// When the current context's client certificate stops working.
pub fn expires(path: &Path) -> anyhow::Result<SystemTime> {
    let context = current_context(path)?;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(context.crt.trim())
        .with_context(|| format!("{}: the client certificate is not base64", path.display()))?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem)
        .map_err(|error| anyhow::anyhow!("{}: the client certificate is not PEM: {error}", path.display()))?;
    let certificate = pem
        .parse_x509()
        .map_err(|error| anyhow::anyhow!("{}: the client certificate does not parse: {error}", path.display()))?;
    let seconds = u64::try_from(certificate.validity().not_after.timestamp()).unwrap_or_default();
    Ok(UNIX_EPOCH + Duration::from_secs(seconds))
}

/// Whole days from now until `when` (0 once it has passed).
pub fn days_left(when: SystemTime) -> u64 {
    when.duration_since(SystemTime::now()).map_or(0, |left| left.as_secs() / 86_400)
}

/// True when the client certificate must be made anew.
pub fn needs_renewal(path: &Path) -> bool {
    expires(path).map_or(true, |when| days_left(when) < RENEW_WITHIN_DAYS)
}

/// What `check`, `verify` and `status` say of the talosconfig.
pub fn expiry_check(path: &Path) -> Check {
    match expires(path) {
        Ok(when) if days_left(when) >= RENEW_WITHIN_DAYS => Check::pass(
            "talosconfig",
            format!("{}: client certificate valid for {} more days", path.display(), days_left(when)),
        ),
        Ok(when) => Check::fail(
            "talosconfig",
            format!("{}: client certificate expires in {} days", path.display(), days_left(when)),
            "run `talos-bootstrap apply`: it renews the client certificate from state/secrets.yaml",
        ),
        Err(error) => Check::fail("talosconfig", format!("{error:#}"), "run `talos-bootstrap apply` to make it"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A talosconfig whose client certificate ends `days` from now.
    fn talosconfig(dir: &Path, days: i64) -> anyhow::Result<std::path::PathBuf> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(300);
        params.not_after = now + time::Duration::days(days);
        let certificate = params.self_signed(&rcgen::KeyPair::generate()?)?;
        let crt = base64::engine::general_purpose::STANDARD.encode(certificate.pem());
        let path = dir.join("talosconfig");
        std::fs::write(
            &path,
            format!(
                "context: talos-ha\ncontexts:\n  talos-ha:\n    endpoints: [172.16.16.147]\n    ca: x\n    crt: {crt}\n    key: y\n"
            ),
        )?;
        Ok(path)
    }

    #[test]
    fn a_client_certificate_near_its_end_is_renewed_and_reported() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let fresh = talosconfig(dir.path(), 200)?;
        assert!(!needs_renewal(&fresh));
        let (endpoints, nodes) = endpoints_and_nodes(&fresh)?;
        assert_eq!((endpoints, nodes), (vec!["172.16.16.147".to_owned()], Vec::new()), "no default node yet");
        let check = expiry_check(&fresh);
        assert_eq!(check.status, crate::report::Status::Pass, "{check}");
        assert!(
            check.reason.contains("valid for 199 more days") || check.reason.contains("valid for 200 more days"),
            "{check}"
        );

        let expiring = talosconfig(dir.path(), 10)?;
        assert!(needs_renewal(&expiring), "10 days left: renewed");
        let check = expiry_check(&expiring);
        assert_eq!(check.status, crate::report::Status::Fail, "{check}");
        assert!(check.fix.as_deref().is_some_and(|fix| fix.contains("talos-bootstrap apply")), "{check}");

        std::fs::write(&expiring, "context: nope\ncontexts: {}\n")?;
        assert!(needs_renewal(&expiring), "an unreadable talosconfig is made anew");
        Ok(())
    }
}
