//! Stage 07 against the lab, through the same entry point as the `headlamp` binary.

use std::os::unix::fs::PermissionsExt as _;
use std::process::ExitCode;

use headlamp::{Headlamp, LOGIN, NAME, NAMESPACE};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, DynamicObject};
use tests::{lab_client, run_stage_async};

/// May the login identity do `verb` on `resource` (in kube-system)?
async fn login_may(client: &kube::Client, verb: &str, resource: &str) -> anyhow::Result<bool> {
    tests::service_account_may(client, (NAMESPACE, LOGIN), verb, ("", resource), Some(NAMESPACE)).await
}

/// One test, in order: the missing-issuer failure needs the issuer gone, the rest needs it.
#[tokio::test(flavor = "multi_thread")]
async fn headlamp_needs_the_ca_issuer_then_serves_a_read_only_login() -> anyhow::Result<()> {
    let client = lab_client().await?;
    for (code, out) in [
        run_stage_async(traefik::Traefik, &["apply"], tests::config_path()).await,
        run_stage_async(cert_manager::CertManager, &["apply"], tests::config_path()).await,
    ] {
        assert_eq!(code, ExitCode::SUCCESS, "{out}");
    }
    let issuers: Api<DynamicObject> = Api::all_with(client.clone(), &kit::certs::cluster_issuer_resource());
    issuers.delete(kit::names::CA_ISSUER, &DeleteParams::default()).await?;
    let (code, check) = run_stage_async(Headlamp, &["check"], tests::config_path()).await;
    assert_eq!(code, ExitCode::from(1), "{check}");
    assert!(check.contains("FAIL  ca issuer: ClusterIssuer talos-ha-ca does not exist"), "{check}");
    assert!(check.contains("fix: run stage 05 first: `cert-manager apply`"), "{check}");
    let (code, out) = run_stage_async(cert_manager::CertManager, &["apply"], tests::config_path()).await;
    assert_eq!(code, ExitCode::SUCCESS, "{out}");

    let (code, out) = run_stage_async(Headlamp, &["apply"], tests::config_path()).await;
    assert_eq!(code, ExitCode::SUCCESS, "{out}");
    let deployment = Api::<Deployment>::namespaced(client.clone(), NAMESPACE).get(NAME).await?;
    let pod = deployment.spec.and_then(|spec| spec.template.spec).unwrap_or_default();
    assert_eq!(pod.containers[0].image.as_deref(), Some("ghcr.io/headlamp-k8s/headlamp:v0.45.0"), "pinned, not latest");

    let token_file = headlamp::token_file(&tests::config());
    assert_eq!(std::fs::metadata(&token_file)?.permissions().mode() & 0o777, 0o600);
    let secret = Api::<Secret>::namespaced(client.clone(), NAMESPACE).get(LOGIN).await?;
    let ByteString(token) = secret.data.unwrap_or_default().remove("token").expect("the token controller filled it");
    assert_eq!(std::fs::read(&token_file)?, token);
    assert!(!out.contains(std::str::from_utf8(&token)?), "the token itself is never printed");

    assert!(login_may(&client, "list", "pods").await?, "the dashboard can look");
    assert!(login_may(&client, "list", "nodes").await?, "including cluster-scoped objects");
    assert!(!login_may(&client, "get", "secrets").await?, "but never read Secrets");
    assert!(!login_may(&client, "delete", "pods").await?, "nor change anything");

    let (code, again) = run_stage_async(Headlamp, &["apply"], tests::config_path()).await;
    assert_eq!(code, ExitCode::SUCCESS);
    let changed: Vec<&str> = again.lines().filter(|l| !l.starts_with("unchanged")).collect();
    assert!(changed.is_empty(), "a re-run changes nothing: {changed:?}");

    let (code, verify) = run_stage_async(Headlamp, &["verify"], tests::config_path()).await;
    assert_eq!(code, ExitCode::SUCCESS, "{verify}");
    assert!(
        verify.contains("ok    routed headlamp: Ingress headlamp → headlamp.172.16.16.101.sslip.io → Service headlamp:80 → 1 Ready pod(s)"),
        "{verify}"
    );
    assert!(verify.contains("ok    stored: Headlamp's objects ("), "{verify}");
    assert!(
        verify.contains(
            "(600) authenticates as system:serviceaccount:kube-system:headlamp-admin, who may list pods and nodes"
        ),
        "{verify}"
    );
    assert!(verify.contains("ok    certificate: Certificate kube-system/headlamp is Ready"), "{verify}");

    a_loose_or_stale_token_fails_verify_and_apply_rewrites_it(&token_file).await
}

/// verify reads the token file as a person would use it: a file others can read fails, a
/// token that is not the Secret's fails, and apply writes the current one back (0600).
async fn a_loose_or_stale_token_fails_verify_and_apply_rewrites_it(token_file: &std::path::Path) -> anyhow::Result<()> {
    std::fs::set_permissions(token_file, std::fs::Permissions::from_mode(0o644))?;
    let (code, verify) = run_stage_async(Headlamp, &["verify"], tests::config_path()).await;
    assert_eq!(code, ExitCode::from(1), "{verify}");
    assert!(verify.contains("is 644: others may read the token (it must be 600)"), "{verify}");

    kit::fsutil::write_private(token_file, b"a-token-from-an-old-install")?;
    let (code, verify) = run_stage_async(Headlamp, &["verify"], tests::config_path()).await;
    assert_eq!(code, ExitCode::from(1), "{verify}");
    assert!(verify.contains("is not the current token of Secret kube-system/headlamp-admin"), "{verify}");

    // The binary as a user runs it, logging at debug: the token is in neither stream (U12b).
    let bin_dir = xtask::stages::build(&xtask::workspace_root(), &["headlamp"])?;
    let output = std::process::Command::new(bin_dir.join("headlamp"))
        .args(["apply", "-v", "--lab", "--config"])
        .arg(tests::config_path())
        .arg("--mirror")
        .arg(tests::upstream_mirror())
        .output()?;
    let (applied, log) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{log}");
    assert!(applied.contains(&format!("configured  File {}", token_file.display())), "{applied}");
    let token = std::fs::read_to_string(token_file)?;
    assert!(!applied.contains(token.trim()) && !log.contains(token.trim()), "the token is never printed");
    let (code, verify) = run_stage_async(Headlamp, &["verify"], tests::config_path()).await;
    assert_eq!(code, ExitCode::SUCCESS, "{verify}");
    Ok(())
}
