//! `cargo xtask status`: the seed's Quick Access table, computed from `cluster.yaml` and
//! checked live (reachable from here, certificate expiry), then the nodes, the etcd members
//! and who holds the VIP. It exits 1 when a line shows a problem: a node not Ready, an etcd
//! member not healthy, not exactly one VIP holder, an expiring talosconfig, an entry point
//! whose proxy answers 5xx.

use std::process::ExitCode;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Node;
use kit::config::ClusterConfig;
use kit::context::Target;
use kit::report::write_json_lines;
use kit::stage::{GlobalArgs, Output, exit};
use kube::api::{Api, DynamicObject};
use serde::Serialize;
use xtask::docs::{Endpoint, Path};

/// One line of the report.
#[derive(Debug, Serialize)]
struct Row {
    section: &'static str,
    name: String,
    value: String,
    state: String,
    /// False when the line shows a problem: `status` then exits 1.
    ok: bool,
}

pub fn run(global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let mut stdout = std::io::stdout();
    let Some(config) = global.load_config(&mut stdout)? else {
        return Ok(ExitCode::from(exit::INVALID));
    };
    let target = global.target();
    let kubeconfig = global.kubeconfig(&config);
    let api_wait = std::time::Duration::from_secs(global.api_wait);
    let rows = tokio::runtime::Runtime::new()?.block_on(async {
        // The nodes are read first, riding out an API that is moving to another control plane
        // (`--api-wait`), so that the table shows the cluster after the move, not the move.
        let nodes = kit::client::ride_out(&kubeconfig, api_wait, || async {
            let client = kit::client::client_from_kubeconfig(&kubeconfig).await?;
            let rows = node_rows(&client, &config).await?;
            anyhow::Ok((client, rows))
        })
        .await;
        let (client, node_rows) = match nodes {
            Ok((client, rows)) => (Some(client), rows),
            Err(error) => (
                None,
                vec![Row {
                    section: "nodes",
                    name: "api".into(),
                    value: config.api_endpoint(),
                    state: format!("unreachable: {error:#}"),
                    ok: false,
                }],
            ),
        };
        let mut rows = Vec::new();
        for endpoint in xtask::docs::endpoints(&config) {
            rows.push(endpoint_row(&endpoint, &config, target, client.as_ref()).await);
        }
        rows.extend(node_rows);
        rows.extend(control_plane_rows(&config, target).await);
        rows.push(backup_row(&config));
        anyhow::Ok(rows)
    })?;
    match global.output {
        Output::Json => write_json_lines(&rows, &mut stdout)?,
        Output::Text => print_table(&rows, &config, &mut stdout)?,
    }
    let problems: Vec<&str> = rows.iter().filter(|row| !row.ok).map(|row| row.name.as_str()).collect();
    if problems.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    tracing::warn!("{} line(s) show a problem: {}", problems.len(), problems.join(", "));
    Ok(ExitCode::from(exit::FAILED))
}

async fn endpoint_row(
    endpoint: &Endpoint,
    config: &ClusterConfig,
    target: Target,
    client: Option<&kube::Client>,
) -> Row {
    // An unreachable URL may belong to a stage not installed yet; a 5xx is an installed proxy
    // with no backend behind it.
    let (reach, ok) = match (endpoint.path, target) {
        (Path::Cli, _) => ("-".to_owned(), true),
        (_, Target::Lab) => ("not checkable in the lab".to_owned(), true),
        (_, Target::Talos) => {
            let url = format!("{}/", endpoint.url);
            let ca = std::fs::read(config.state_dir().join("ca.crt")).ok();
            let answer = tokio::task::spawn_blocking(move || kit::http::get(&url, ca.as_deref(), &[])).await;
            match answer {
                Ok(Ok(answer)) if answer.status >= 500 => {
                    (format!("proxy up, backend down ({})", answer.status), false)
                }
                Ok(Ok(answer)) => (format!("reachable ({})", answer.status), true),
                Ok(Err(error)) => (format!("unreachable ({error:#})"), true),
                Err(error) => (format!("unreachable ({error})"), true),
            }
        }
    };
    let expiry = match (endpoint.certificate, client) {
        (Some((namespace, name)), Some(client)) => certificate_expiry(client, namespace, name, target).await,
        (Some(_), None) => "unknown".to_owned(),
        (None, _) => "-".to_owned(),
    };
    Row {
        section: "quick access",
        name: endpoint.name.to_owned(),
        value: format!("{}  [{}]", endpoint.url, endpoint.path.describe(config)),
        state: format!("{reach}; certificate: {expiry}"),
        ok,
    }
}

/// When the service's certificate expires, as cert-manager reports it.
async fn certificate_expiry(client: &kube::Client, namespace: &str, name: &str, target: Target) -> String {
    let certificates: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &kit::certs::certificate_resource());
    match certificates.get_opt(name).await {
        Ok(Some(certificate)) => match (certificate.data["status"]["notAfter"].as_str(), target) {
            (Some(after), _) => format!("valid until {after}"),
            // Only a lab whose cert-manager controller is kwok's stand-in never issues.
            (None, Target::Lab) => format!("{namespace}/{name} exists; issuance not checkable in the lab"),
            (None, Target::Talos) => "not issued yet".to_owned(),
        },
        Ok(None) => "no Certificate (stage not installed)".to_owned(),
        Err(error) => format!("unknown ({error})"),
    }
}

async fn node_rows(client: &kube::Client, config: &ClusterConfig) -> anyhow::Result<Vec<Row>> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut rows = Vec::new();
    for node in &config.nodes {
        let found = nodes.get_opt(&node.name).await.with_context(|| format!("reading node {}", node.name))?;
        let state = match &found {
            Some(live) if kit::client::is_ready(live) => "Ready",
            Some(_) => "NotReady",
            None => "not registered",
        };
        rows.push(Row {
            section: "nodes",
            name: node.name.clone(),
            value: format!("{} ({})", node.ip, node.role.as_str()),
            state: state.to_owned(),
            ok: state == "Ready",
        });
    }
    Ok(rows)
}

/// etcd's health (each control plane asked about its own member), the VIP holder and the
/// talosconfig's expiry: Talos knows them. On the lab the machines are inside the box, so the
/// questions are asked from a thread that joined the box's workstation, as a `--lab` stage does.
async fn control_plane_rows(config: &ClusterConfig, target: Target) -> Vec<Row> {
    if target == Target::Talos {
        return talos_rows(config).await;
    }
    let in_the_box = config.clone();
    let asked = tokio::task::spawn_blocking(move || {
        kit::lab::enter_box(&in_the_box)?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        anyhow::Ok(runtime.block_on(talos_rows(&in_the_box)))
    })
    .await;
    match asked {
        Ok(Ok(rows)) => rows,
        Ok(Err(error)) => {
            vec![Row {
                section: "control plane",
                name: "box".into(),
                value: "-".into(),
                state: format!("{error:#}"),
                ok: false,
            }]
        }
        Err(error) => vec![Row {
            section: "control plane",
            name: "box".into(),
            value: "-".into(),
            state: format!("asking from the box failed: {error}"),
            ok: false,
        }],
    }
}

async fn talos_rows(config: &ClusterConfig) -> Vec<Row> {
    let vip = config.network.vip.to_string();
    let talosctl = match kit::talos::Talosctl::find(config).await {
        Ok(talosctl) => talosctl,
        Err(error) => {
            return vec![Row {
                section: "control plane",
                name: "talosctl".into(),
                value: "-".into(),
                state: format!("{error:#}"),
                ok: false,
            }];
        }
    };
    let health = kit::talos::etcd_health(&talosctl, config).await;
    let healthy = kit::talos::healthy_members(&health);
    let etcd = format!("{} of {} healthy: {}", healthy.len(), health.len(), kit::talos::describe_health(&health));
    let holders = kit::talos::vip_holders(&talosctl, config).await;
    let (etcd_ok, vip_ok) = (healthy.len() == health.len(), holders.len() == 1);
    let state = match holders.len() {
        1 => holders.join(""),
        0 => "nobody (etcd unhealthy, or no control plane reachable)".to_owned(),
        _ => format!("several: {} (split brain?)", holders.join(", ")),
    };
    let expiry = kit::talos::talosconfig::expiry_check(&talosctl.talosconfig);
    vec![
        Row { section: "control plane", name: "etcd".into(), value: "-".into(), state: etcd, ok: etcd_ok },
        Row { section: "control plane", name: "VIP holder".into(), value: vip, state, ok: vip_ok },
        Row {
            section: "control plane",
            name: "talosconfig".into(),
            value: talosctl.talosconfig.display().to_string(),
            ok: expiry.status != kit::report::Status::Fail,
            state: expiry.reason,
        },
    ]
}

/// The newest backup in the default folder, and its age: past a day a warning (a disaster
/// would lose everything since). It never fails `status`: a cluster can be healthy unbacked.
fn backup_row(config: &ClusterConfig) -> Row {
    let dir = kit::talos::snapshot::default_dir(config);
    let newest = kit::talos::snapshot::backups(&dir, &config.name).map(|mut backups| backups.pop());
    let (value, state) = match newest {
        Ok(None) => ("-".to_owned(), format!("none in {}: `cargo xtask backup` takes one", dir.display())),
        Ok(Some((path, backup))) => {
            let taken = match kit::talos::snapshot::age(&backup.taken_at) {
                Ok(age) if age > std::time::Duration::from_secs(24 * 3600) => {
                    let warning = format!(
                        "taken {} h ago: older than a day, so a disaster now loses everything since; `cargo xtask backup`",
                        age.as_secs() / 3600
                    );
                    tracing::warn!("backup: {warning}");
                    warning
                }
                Ok(age) if age.as_secs() < 3600 => format!("taken {} min ago", age.as_secs() / 60),
                Ok(age) => format!("taken {} h ago", age.as_secs() / 3600),
                Err(error) => format!("{error:#}"),
            };
            (
                path.display().to_string(),
                format!("{taken} (etcd revision {}, from {})", backup.snapshot.revision, backup.member),
            )
        }
        Err(error) => ("-".to_owned(), format!("{error:#}")),
    };
    Row { section: "backup", name: "last backup".into(), value, state, ok: true }
}

fn print_table(rows: &[Row], config: &ClusterConfig, out: &mut impl std::io::Write) -> anyhow::Result<()> {
    writeln!(out, "{} — {} ({})", config.name, config.api_endpoint(), config.source.display())?;
    let mut section = "";
    for row in rows {
        if row.section != section {
            section = row.section;
            writeln!(out, "\n{}", section.to_uppercase())?;
        }
        writeln!(out, "  {:<20} {:<66} {}", row.name, row.value, row.state)?;
    }
    Ok(())
}
