//! The Talos API as talos-ha reads it: every question asked of a Talos node, each one
//! `talosctl` call to that node, and what its answer means. Stage 01, `status` and `verify-ha`
//! all ask through here, so a node is judged the same way everywhere.
//!
//! [`TalosApi`] is the one seam: [`Talosctl`] runs the real binary; tests hand in a test double
//! that answers as Talos does. Everything that reads an answer (JSON resources, tables, gRPC
//! error codes) is here, so the double exercises the very parsing real nodes get.
//!
//! Each rule names the Talos v1.12.1 source it follows.

pub mod kubernetes;
pub mod membership;
pub mod recovery;
pub mod snapshot;
pub mod talosconfig;
pub mod upgrade;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::config::{ClusterConfig, DEFAULT_LINK_SELECTOR, Node};
use crate::report::Check;
use crate::tool::{Output, Tool, talos_node_args};

/// How long one question to one node may take before the node counts as not answering.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(15);

/// One `talosctl` call aimed at one node (which is also the endpoint dialled).
#[allow(async_fn_in_trait)]
pub trait TalosApi {
    /// Runs `talosctl ARGS` against `node`; stderr lines go to `progress` as they arrive.
    async fn talosctl(
        &self,
        node: &Node,
        args: &[&str],
        timeout: Duration,
        progress: &mut (dyn FnMut(&str) + Send),
    ) -> anyhow::Result<Output>;

    /// Runs `talosctl ARGS` against `node` and returns stdout, or an error naming the call.
    async fn ask(&self, node: &Node, args: &[&str], timeout: Duration) -> anyhow::Result<String> {
        let what = format!("talosctl {} on {} ({})", call_name(args), node.name, node.ip);
        self.talosctl(node, args, timeout, &mut |_| {}).await?.ok(what)
    }
}

/// `get machinestatus`, `etcd status`, `apply-config`: the words that name the call.
fn call_name(args: &[&str]) -> String {
    args.iter().take_while(|arg| !arg.starts_with('-')).copied().collect::<Vec<_>>().join(" ")
}

/// The real edge: `talosctl` with the cluster's talosconfig.
#[derive(Debug, Clone)]
pub struct Talosctl {
    pub tool: Tool,
    pub talosconfig: PathBuf,
}

impl Talosctl {
    /// talosctl no older than `versions.talos`, with the talosconfig stage 01 writes.
    pub async fn find(config: &ClusterConfig) -> anyhow::Result<Talosctl> {
        let tool = Tool::talosctl(config.versions.talos).await?;
        Ok(Talosctl { tool, talosconfig: crate::tool::talosconfig_path(config) })
    }
}

impl TalosApi for Talosctl {
    async fn talosctl(
        &self,
        node: &Node,
        args: &[&str],
        timeout: Duration,
        progress: &mut (dyn FnMut(&str) + Send),
    ) -> anyhow::Result<Output> {
        // A call with a client certificate and no talosconfig yet would make talosctl write an
        // empty one (context "", no contexts) in its place; stage 01 would then read that file
        // as its own. Without the file there is no certificate to answer to anyway.
        anyhow::ensure!(
            args.contains(&"--insecure") || self.talosconfig.exists(),
            "no talosconfig at {} yet (`talos-bootstrap apply` makes it from state/secrets.yaml)",
            self.talosconfig.display()
        );
        self.tool.run_with_progress(talos_node_args(&self.talosconfig, node, args), timeout, progress).await
    }
}

/// What a node's Talos API (port 50000) says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeState {
    /// Booted from the Talos ISO/PXE without a config: waits for `apply-config --insecure`.
    Maintenance,
    /// Running with a config, answering our talosconfig's client certificate.
    Configured,
    /// No usable answer on the Talos API port: what each probe got.
    Unreachable(String),
}

/// Asks a node what it is. Our client certificate first: only a node configured from this
/// cluster's secrets accepts it, so a configured node is never mistaken for a fresh one.
/// Then a COSI read without a certificate. Not `version --insecure`: a maintenance node
/// refuses Version to every client off SideroLink with `Unimplemented`
/// (internal/app/maintenance/server.go, assertAdminRole; pkg/grpc/middleware/authz/injector.go
/// gives LAN clients only the reader role), while non-sensitive resources such as
/// MachineStatus are readable (internal/app/resources/access.go).
pub async fn probe(api: &impl TalosApi, node: &Node) -> NodeState {
    let secure = match api.ask(node, &["version", "--short"], PROBE_TIMEOUT).await {
        Ok(_) => return NodeState::Configured,
        Err(error) => error,
    };
    // No answer at all within the timeout: the port is silent (a machine off, a cable out),
    // and the reads without a certificate would wait out the same silence twice more.
    if secure.chain().any(|cause| cause.is::<crate::tool::TimedOut>()) {
        return NodeState::Unreachable(format!("{secure:#}"));
    }
    let machine = match resources::<MachineStatus>(api, node, "machinestatus", Access::Insecure).await {
        Ok(statuses) => match statuses.first() {
            // pkg/machinery/resources/runtime/machinestage.go: the stage's text form.
            Some(status) if status.spec.stage == "maintenance" => return NodeState::Maintenance,
            Some(status) => anyhow::anyhow!(
                "its Talos API answers without a client certificate, in stage {:?}: is it still installing or \
                 rebooting?",
                status.spec.stage
            ),
            None => anyhow::anyhow!("get machinestatus --insecure returned nothing"),
        },
        Err(error) => error,
    };
    // The read the Talos guides use in maintenance mode, should MachineStatus be refused.
    match resources::<serde_json::Value>(api, node, "disks", Access::Insecure).await {
        Ok(_) => NodeState::Maintenance,
        Err(_) => NodeState::Unreachable(format!("with our client certificate: {secure:#}; without: {machine:#}")),
    }
}

/// Whether a read carries our client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// With the talosconfig's client certificate (a configured node).
    Secure,
    /// `--insecure`: no certificate, reader role only (a node in maintenance mode).
    Insecure,
}

/// One COSI resource as `talosctl get -o json` prints it (cmd/talosctl/cmd/talos/output/json.go:
/// one indented JSON object per resource, the spec in its YAML field names).
#[derive(Debug, Clone, Deserialize)]
pub struct Resource<T> {
    pub metadata: Metadata,
    pub spec: T,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Metadata {
    #[serde(deserialize_with = "id_text")]
    pub id: String,
    /// Moves on every change of the resource (a controller leaves an unchanged one alone).
    #[serde(default)]
    pub version: u64,
}

/// A resource's ID as text. talosctl's JSON goes through YAML into untyped values
/// (cmd/talosctl/cmd/talos/output/json.go, lines 50-62), so an ID that looks like a number, as
/// ExtensionStatus's `0`, `1`, … do, is printed as a number.
fn id_text<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    match serde_json::Value::deserialize(deserializer)? {
        serde_json::Value::String(text) => Ok(text),
        serde_json::Value::Number(number) => Ok(number.to_string()),
        other => Err(serde::de::Error::custom(format!("a resource ID is text or a number, not {other}"))),
    }
}

/// `talosctl get <kind> -o json`, every resource of that kind on `node`.
pub async fn resources<T: DeserializeOwned>(
    api: &impl TalosApi,
    node: &Node,
    kind: &str,
    access: Access,
) -> anyhow::Result<Vec<Resource<T>>> {
    let mut args = vec!["get", kind, "-o", "json"];
    if access == Access::Insecure {
        args.push("--insecure");
    }
    let printed = api.ask(node, &args, PROBE_TIMEOUT).await?;
    parse_resources(&printed).with_context(|| format!("reading `talosctl get {kind} -o json` from {}", node.name))
}

/// A stream of JSON objects, one per resource.
pub fn parse_resources<T: DeserializeOwned>(printed: &str) -> anyhow::Result<Vec<Resource<T>>> {
    serde_json::Deserializer::from_str(printed)
        .into_iter::<Resource<T>>()
        .collect::<Result<Vec<_>, _>>()
        .context("unexpected JSON")
}

/// pkg/machinery/resources/runtime/machine_status.go
#[derive(Debug, Clone, Deserialize)]
pub struct MachineStatus {
    pub stage: String,
}

/// pkg/machinery/resources/network/link_status.go (only what the pre-flight reads).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LinkStatus {
    /// `ether` for Ethernet (nethelpers.LinkType's text form; the CEL selector sees its
    /// number, 1).
    #[serde(rename = "type")]
    pub link_type: String,
    /// Empty for a physical port; `bridge`, `vlan`, `bond` … for virtual links.
    pub kind: String,
    pub bus_path: String,
    pub hardware_addr: String,
    pub permanent_addr: String,
    pub driver: String,
    /// Carrier: a cable is plugged in and the other end is up.
    pub link_state: bool,
}

/// pkg/machinery/resources/block/disk.go (only what the pre-flight reads).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Disk {
    pub dev_path: String,
    pub size: u64,
    pub pretty_size: String,
    pub model: String,
    pub transport: String,
    pub readonly: bool,
    pub cdrom: bool,
}

/// pkg/machinery/resources/network/address_status.go
#[derive(Debug, Clone, Deserialize)]
pub struct AddressStatus {
    /// The address with its prefix length, e.g. `172.16.16.100/32`.
    pub address: String,
}

/// A link as a person reads it when choosing a selector.
pub fn describe_link(link: &Resource<LinkStatus>) -> String {
    let spec = &link.spec;
    let mac = if spec.permanent_addr.is_empty() { &spec.hardware_addr } else { &spec.permanent_addr };
    let cable = if spec.link_state { "cable in" } else { "no carrier" };
    let driver = if spec.driver.is_empty() { String::new() } else { format!(", driver {}", spec.driver) };
    format!("{} (MAC {mac}, {cable}{driver})", link.metadata.id)
}

/// Which links a `linkSelector` matches, as Talos's LinkAliasConfig controller evaluates it
/// (internal/app/machined/pkg/controllers/network/link_alias_config.go: the alias is given only
/// when exactly one link matches). `None` when the expression is beyond the forms read here:
/// `&&` of `link.<field> ==|!= <literal>` terms, with `mac(link.<field>)`.
pub fn selector_matches<'a>(
    selector: &str,
    links: &'a [Resource<LinkStatus>],
) -> Option<Vec<&'a Resource<LinkStatus>>> {
    let terms: Vec<Term> = selector.split("&&").map(Term::parse).collect::<Option<_>>()?;
    let mut matched = Vec::new();
    for link in links {
        let mut all = true;
        for term in &terms {
            all &= term.holds(&link.spec)?;
        }
        if all {
            matched.push(link);
        }
    }
    Some(matched)
}

/// One comparison of a link selector.
struct Term {
    field: String,
    mac: bool,
    equal: bool,
    literal: String,
}

impl Term {
    fn parse(text: &str) -> Option<Term> {
        let (left, right, equal) = match text.split_once("!=") {
            Some((left, right)) => (left, right, false),
            None => text.split_once("==").map(|(left, right)| (left, right, true))?,
        };
        let left = left.trim();
        let (field, mac) = match left.strip_prefix("mac(").and_then(|inner| inner.strip_suffix(')')) {
            Some(inner) => (inner.trim(), true),
            None => (left, false),
        };
        let field = field.strip_prefix("link.")?.to_owned();
        let right = right.trim();
        let literal = match right.strip_prefix('"').and_then(|inner| inner.strip_suffix('"')) {
            Some(quoted) => quoted.to_owned(),
            None if right.chars().all(|c| c.is_ascii_digit()) && !right.is_empty() => right.to_owned(),
            None => return None,
        };
        Some(Term { field, mac, equal, literal })
    }

    /// The CEL environment sees the link's protobuf fields by their snake_case names.
    fn holds(&self, link: &LinkStatus) -> Option<bool> {
        let value = match (self.field.as_str(), self.mac) {
            ("type", false) => link_type_number(&link.link_type)?.to_string(),
            ("kind", false) => link.kind.clone(),
            ("bus_path", false) => link.bus_path.clone(),
            ("driver", false) => link.driver.clone(),
            ("permanent_addr", true) => link.permanent_addr.to_lowercase(),
            ("hardware_addr", true) => link.hardware_addr.to_lowercase(),
            _ => return None,
        };
        let literal = if self.mac { self.literal.to_lowercase() } else { self.literal.clone() };
        Some((value == literal) == self.equal)
    }
}

/// nethelpers.LinkType's number for the text `talosctl get links` prints.
fn link_type_number(text: &str) -> Option<u16> {
    match text {
        "ether" => Some(1),
        "loopback" => Some(772),
        "none" => Some(65534),
        _ => text.parse().ok(),
    }
}

/// The pre-flight of one node in maintenance mode, before any config is sent: its link
/// selector matches exactly one link, and its install disk exists and is not removable boot
/// media. Returns what was found, or an error listing what is there and what to write.
pub async fn preflight(api: &impl TalosApi, config: &ClusterConfig, node: &Node) -> anyhow::Result<String> {
    let index = config.nodes.iter().position(|other| other.name == node.name).unwrap_or_default();
    let links = resources::<LinkStatus>(api, node, "links", Access::Insecure).await?;
    let link = check_links(node, index, &links)?;
    let disks = resources::<Disk>(api, node, "disks", Access::Insecure).await?;
    let disk = check_install_disk(node, index, &disks)?;
    Ok(format!("link {link}; install disk {disk}"))
}

fn check_links(node: &Node, index: usize, links: &[Resource<LinkStatus>]) -> anyhow::Result<String> {
    let physical: Vec<&Resource<LinkStatus>> =
        links.iter().filter(|link| link.spec.kind.is_empty() && !link.spec.bus_path.is_empty()).collect();
    let listing = || physical.iter().map(|link| format!("    {}", describe_link(link))).collect::<Vec<_>>().join("\n");
    let example = physical.iter().find(|link| link.spec.link_state).or(physical.first()).map_or_else(
        || "aa:bb:cc:dd:ee:ff".to_owned(),
        |link| {
            if link.spec.permanent_addr.is_empty() {
                link.spec.hardware_addr.clone()
            } else {
                link.spec.permanent_addr.clone()
            }
        },
    );
    let fix = format!(
        "set nodes[{index}].linkSelector to the port with the LAN cable, e.g. \
         `linkSelector: 'mac(link.permanent_addr) == \"{example}\"'`"
    );
    match selector_matches(&node.link_selector, links) {
        Some(matched) if matched.len() == 1 => Ok(describe_link(matched[0])),
        Some(matched) => {
            let default = if node.link_selector == DEFAULT_LINK_SELECTOR {
                " (the default: any physical Ethernet port)"
            } else {
                ""
            };
            anyhow::bail!(
                "nothing was sent to {} ({}): its linkSelector `{}`{default} matches {} links, and Talos gives its \
                 address only to a selector that matches exactly one (with no match, or several, the node would drop \
                 off the network after apply-config). Its physical links:\n{}\nfix: {fix}",
                node.name,
                node.ip,
                node.link_selector,
                matched.len(),
                listing()
            )
        }
        None => Ok(format!(
            "selector `{}` not evaluated here (only `&&` of field comparisons are); links: {}",
            node.link_selector,
            physical.iter().map(|link| describe_link(link)).collect::<Vec<_>>().join(", ")
        )),
    }
}

fn describe_disk(disk: &Resource<Disk>) -> String {
    let spec = &disk.spec;
    let model = if spec.model.is_empty() { "no model".to_owned() } else { spec.model.clone() };
    let transport = if spec.transport.is_empty() { "unknown transport".to_owned() } else { spec.transport.clone() };
    let size = if spec.pretty_size.is_empty() { format!("{} bytes", spec.size) } else { spec.pretty_size.clone() };
    format!("{} ({size}, {model}, {transport})", spec.dev_path)
}

/// The install disk exists and is one Talos can own: not read-only, not a CD-ROM, not on USB
/// (on NVMe-only machines the USB stick Talos booted from is often `/dev/sda`; installing there
/// overwrites the boot medium). `RuntimeValidate` checks only that the disk exists
/// (pkg/machinery/config/types/v1alpha1/v1alpha1_validation.go).
fn check_install_disk(node: &Node, index: usize, disks: &[Resource<Disk>]) -> anyhow::Result<String> {
    let listing = || {
        disks
            .iter()
            .filter(|disk| disk.spec.size > 0)
            .map(|disk| format!("    {}", describe_disk(disk)))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let Some(disk) = disks.iter().find(|disk| disk.spec.dev_path == node.install_disk) else {
        anyhow::bail!(
            "nothing was sent to {} ({}): nodes[{index}].installDisk {} does not exist there. Its disks:\n{}\nfix: set \
             nodes[{index}].installDisk to the internal disk Talos should own",
            node.name,
            node.ip,
            node.install_disk,
            listing()
        );
    };
    let why = if disk.spec.transport == "usb" {
        Some("is on USB, most likely the stick this node booted from")
    } else if disk.spec.cdrom {
        Some("is a CD-ROM (the ISO)")
    } else if disk.spec.readonly {
        Some("is read-only")
    } else {
        None
    };
    if let Some(why) = why {
        anyhow::bail!(
            "nothing was sent to {} ({}): nodes[{index}].installDisk {} {why}. Its disks:\n{}\nfix: set \
             nodes[{index}].installDisk to the internal disk (e.g. /dev/nvme0n1)",
            node.name,
            node.ip,
            describe_disk(disk),
            listing()
        );
    }
    Ok(describe_disk(disk))
}

/// What a node's etcd member says of itself (`talosctl etcd status`, cmd/talosctl/cmd/talos/etcd.go).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdMemberStatus {
    pub member: String,
    pub learner: bool,
    /// The member's own errors (an alarm, no leader); empty when healthy.
    pub errors: String,
    /// The last Raft entry it applied: how up to date its data is.
    pub applied_index: u64,
}

impl EtcdMemberStatus {
    /// Healthy: it answers, is a voting member, and reports no error.
    pub fn healthy(&self) -> bool {
        !self.learner && self.errors.is_empty()
    }
}

/// How many of `members` etcd needs healthy to elect a leader and accept writes: a majority.
pub fn quorum(members: usize) -> usize {
    members / 2 + 1
}

/// `talosctl etcd status` of one control plane: its own member, asked of itself.
pub async fn etcd_status(api: &impl TalosApi, node: &Node) -> anyhow::Result<EtcdMemberStatus> {
    let table = api.ask(node, &["etcd", "status"], PROBE_TIMEOUT).await?;
    parse_etcd_status(&table)
        .with_context(|| format!("unexpected `talosctl etcd status` output from {}: {table:?}", node.name))
}

/// The row after the header: NODE MEMBER DB-SIZE IN-USE LEADER RAFT-INDEX RAFT-TERM
/// RAFT-APPLIED-INDEX LEARNER PROTOCOL STORAGE ERRORS. The sizes print with spaces ("12 MB",
/// "3.4 MB (28.33%)"), so the row is read from the in-use percentage on.
pub fn parse_etcd_status(table: &str) -> Option<EtcdMemberStatus> {
    let row = table.lines().nth(1)?;
    let words: Vec<&str> = row.split_whitespace().collect();
    let percent = words.iter().position(|word| word.ends_with("%)"))?;
    let member = (*words.get(1)?).to_owned();
    // leader, raft index, raft term, raft applied index, then LEARNER.
    let applied_index = words.get(percent + 4)?.parse().ok()?;
    let learner = match *words.get(percent + 5)? {
        "true" => true,
        "false" => false,
        _ => return None,
    };
    // PROTOCOL and STORAGE are versions (3.6.0) or empty; what follows them is ERRORS.
    let rest = &words[percent + 6..];
    let versions = rest.iter().take(2).take_while(|word| word.chars().all(|c| c.is_ascii_digit() || c == '.')).count();
    Some(EtcdMemberStatus { member, learner, errors: rest[versions..].join(" "), applied_index })
}

/// Every control plane's own etcd status, asked of each: membership alone is never health
/// (a rebooting member stays listed by `etcd members`).
pub async fn etcd_health<'c>(
    api: &impl TalosApi,
    config: &'c ClusterConfig,
) -> Vec<(&'c Node, anyhow::Result<EtcdMemberStatus>)> {
    // Asked all at once: a machine that is off costs its question the whole timeout.
    let nodes: Vec<&Node> = config.control_planes().collect();
    let answers = futures::future::join_all(nodes.iter().map(|node| etcd_status(api, node))).await;
    nodes.into_iter().zip(answers).collect()
}

/// The `etcd` check every command makes (stage 01's verify, verify-ha): each control plane
/// asked about its own member, all of them healthy. Also returns how many are healthy, which
/// a drill's quorum rule counts.
pub async fn etcd_check(api: &impl TalosApi, config: &ClusterConfig) -> (Check, usize) {
    let health = etcd_health(api, config).await;
    let healthy = healthy_members(&health).len();
    let reason = format!("{healthy} of {} members healthy: {}", health.len(), describe_health(&health));
    let check = if healthy == health.len() {
        Check::pass("etcd", reason)
    } else {
        let talosconfig = crate::tool::talosconfig_path(config);
        let down: Vec<String> = health
            .iter()
            .filter(|(_, status)| !status.as_ref().is_ok_and(EtcdMemberStatus::healthy))
            .map(|(node, _)| node.ip.to_string())
            .collect();
        let nodes = down.join(",");
        Check::fail(
            "etcd",
            reason,
            format!(
                "`talosctl --talosconfig {} -n {nodes} service etcd` and `… logs etcd` show why a member is down \
                 (a node that does not answer: `… version`); a member rejoins when its node is back",
                talosconfig.display()
            ),
        )
    };
    (check, healthy)
}

/// The names of the control planes whose etcd member is healthy.
pub fn healthy_members(health: &[(&Node, anyhow::Result<EtcdMemberStatus>)]) -> Vec<String> {
    members_where(health, EtcdMemberStatus::healthy)
}

/// The names of the control planes whose etcd member answers as a voter, errors or not: what
/// quorum counts. A member between leaders reports "no leader" (etcd's Status,
/// etcdserver/api/v3rpc/maintenance.go) and is not healthy for that moment, yet it still
/// votes: a leader's hand-over when it reboots costs no quorum.
pub fn voting_members(health: &[(&Node, anyhow::Result<EtcdMemberStatus>)]) -> Vec<String> {
    members_where(health, |status| !status.learner)
}

fn members_where(
    health: &[(&Node, anyhow::Result<EtcdMemberStatus>)],
    keep: impl Fn(&EtcdMemberStatus) -> bool,
) -> Vec<String> {
    health.iter().filter(|(_, status)| status.as_ref().is_ok_and(&keep)).map(|(node, _)| node.name.clone()).collect()
}

/// One line per control plane: healthy, or why not.
pub fn describe_health(health: &[(&Node, anyhow::Result<EtcdMemberStatus>)]) -> String {
    health
        .iter()
        .map(|(node, status)| match status {
            Ok(status) if status.healthy() => format!("{} healthy", node.name),
            Ok(status) if status.learner => format!("{} a learner (still joining)", node.name),
            Ok(status) => format!("{} reports {}", node.name, status.errors),
            Err(error) => {
                format!("{} does not answer at {} ({})", node.name, node.ip, first_line(&format!("{error:#}")))
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The first line of a message (talosctl's errors run on with their causes).
pub fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

/// The hostnames of etcd's members as `node` lists them.
pub async fn etcd_members(api: &impl TalosApi, node: &Node) -> anyhow::Result<Vec<String>> {
    Ok(membership::members(api, node).await?.into_iter().map(|member| member.hostname).collect())
}

/// The control planes that have the VIP among their addresses: exactly one when healthy.
pub async fn vip_holders(api: &impl TalosApi, config: &ClusterConfig) -> Vec<String> {
    let mut holders = Vec::new();
    for node in config.control_planes() {
        if let Ok(addresses) = resources::<AddressStatus>(api, node, "addresses", Access::Secure).await
            && holds(&addresses, config.network.vip)
        {
            holders.push(node.name.clone());
        }
    }
    holders
}

fn holds(addresses: &[Resource<AddressStatus>], vip: Ipv4Addr) -> bool {
    let wanted = format!("{vip}/32");
    addresses.iter().any(|address| address.spec.address == wanted)
}

/// What `talosctl bootstrap` got back, by the gRPC code in its error
/// (internal/app/machined/internal/server/v1alpha1/v1alpha1_server.go, Bootstrap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootstrapAnswer {
    Bootstrapped,
    /// `AlreadyExists: etcd data directory is not empty`: it was bootstrapped before.
    AlreadyBootstrapped,
    /// Worth asking again: FailedPrecondition (CRI not up, time not in sync), DeadlineExceeded,
    /// a refused connection or EOF (the node still booting). pkg/cluster/bootstrap.go retries
    /// exactly these.
    NotYet(String),
    Refused(String),
}

pub async fn bootstrap(api: &impl TalosApi, node: &Node) -> BootstrapAnswer {
    bootstrap_with(api, node, &["bootstrap"], PROBE_TIMEOUT * 4).await
}

/// A `talosctl bootstrap` call (plain, or from a snapshot) and what its answer means.
async fn bootstrap_with(api: &impl TalosApi, node: &Node, args: &[&str], timeout: Duration) -> BootstrapAnswer {
    match api.talosctl(node, args, timeout, &mut |_| {}).await {
        Ok(output) if output.success => BootstrapAnswer::Bootstrapped,
        Ok(output) => classify_bootstrap(&format!("{}{}", output.stderr, output.stdout)),
        Err(error) => BootstrapAnswer::NotYet(format!("{error:#}")),
    }
}

pub fn classify_bootstrap(said: &str) -> BootstrapAnswer {
    let said = said.trim().to_owned();
    if said.contains("AlreadyExists") || said.contains("etcd data directory is not empty") {
        BootstrapAnswer::AlreadyBootstrapped
    } else if said.contains("only be performed on a control plane") {
        // A FailedPrecondition that waiting never fixes: the node is a worker.
        BootstrapAnswer::Refused(said)
    } else if ["FailedPrecondition", "DeadlineExceeded", "connection refused", "EOF", "Unavailable"]
        .iter()
        .any(|transient| said.contains(transient))
    {
        BootstrapAnswer::NotYet(said)
    } else {
        BootstrapAnswer::Refused(said)
    }
}

/// Applies `file` to a configured node without a reboot: Talos applies it at once when every
/// change can be made live (`machine.install` among them: CanApplyImmediate,
/// v1alpha1_runtime.go) and refuses it otherwise, changing nothing.
pub async fn apply_config_live(api: &impl TalosApi, node: &Node, file: &str) -> anyhow::Result<()> {
    let output = api
        .talosctl(node, &["apply-config", "--mode", "no-reboot", "--file", file], PROBE_TIMEOUT * 8, &mut |_| {})
        .await?;
    output.ok(format!("talosctl apply-config --mode no-reboot on {} ({})", node.name, node.ip)).map(drop)
}

/// What `apply-config --dry-run` would change on a configured node: the diff Talos prints,
/// which talosctl writes to stderr (cmd/talosctl/pkg/talos/helpers/mode.go, PrintApplyResults),
/// and `None` for "No changes.".
pub async fn config_diff(api: &impl TalosApi, node: &Node, file: &str) -> anyhow::Result<Option<String>> {
    let output =
        api.talosctl(node, &["apply-config", "--dry-run", "--file", file], PROBE_TIMEOUT * 8, &mut |_| {}).await?;
    let what = format!("talosctl apply-config --dry-run on {} ({})", node.name, node.ip);
    let stderr = output.stderr.clone();
    output.ok(what)?;
    Ok(parse_dry_run(&stderr))
}

pub fn parse_dry_run(stderr: &str) -> Option<String> {
    let text = stderr.trim();
    if text.is_empty() || text.contains("No changes.") { None } else { Some(text.to_owned()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_status_rows_are_read_from_the_percentage_on() {
        let header = "NODE            MEMBER             DB SIZE   IN USE            LEADER             RAFT INDEX   RAFT TERM   RAFT APPLIED INDEX   LEARNER   PROTOCOL   STORAGE   ERRORS\n";
        let healthy = format!(
            "{header}172.16.16.147   8a6c7e1e0b2d4f11   21 MB     7.1 MB (33.81%)   8a6c7e1e0b2d4f11   1203         2           1203                 false     3.6.0      3.6.0     \n"
        );
        let status = parse_etcd_status(&healthy).expect("a row");
        assert_eq!(
            status,
            EtcdMemberStatus {
                member: "8a6c7e1e0b2d4f11".into(),
                learner: false,
                errors: String::new(),
                applied_index: 1203
            }
        );
        assert!(status.healthy());
        let alarm = format!(
            "{header}172.16.16.148   11aa   21 MB     21 MB (100.00%)   8a6c   1203   2   1203   false   3.6.0   3.6.0   etcdserver: mvcc: database space exceeded\n"
        );
        let status = parse_etcd_status(&alarm).expect("a row");
        assert_eq!(status.errors, "etcdserver: mvcc: database space exceeded");
        assert!(!status.healthy());
        let learner = format!(
            "{header}172.16.16.149   22bb   1 MB   1 MB (100.00%)   8a6c   10   2   10   true   3.6.0   3.6.0\n"
        );
        assert!(!parse_etcd_status(&learner).expect("a row").healthy(), "a learner is not yet a voting member");
        assert_eq!(parse_etcd_status(header), None, "no row");
    }

    #[test]
    fn quorum_counts_voters_and_health_asks_for_no_error() -> anyhow::Result<()> {
        let config = ClusterConfig::parse(include_str!("../../../cluster.yaml"), std::path::Path::new("cluster.yaml"))?;
        let nodes: Vec<&Node> = config.control_planes().collect();
        let member = |learner: bool, errors: &str| {
            Ok(EtcdMemberStatus { member: "11aa".into(), learner, errors: errors.into(), applied_index: 10 })
        };
        let health = vec![
            (nodes[0], member(false, "")),
            (nodes[1], member(false, "etcdserver: no leader")),
            (nodes[2], member(true, "")),
        ];
        assert_eq!(healthy_members(&health), [nodes[0].name.clone()]);
        assert_eq!(
            voting_members(&health),
            [nodes[0].name.clone(), nodes[1].name.clone()],
            "between leaders, it votes"
        );
        let off = vec![(nodes[0], member(false, "")), (nodes[1], Err(anyhow::anyhow!("connection refused")))];
        assert_eq!(voting_members(&off), [nodes[0].name.clone()], "a member that does not answer does not vote");
        Ok(())
    }

    #[test]
    fn bootstrap_errors_are_told_apart_by_their_code() {
        let not_yet =
            "error executing bootstrap: rpc error: code = FailedPrecondition desc = bootstrap is not available yet";
        assert!(matches!(classify_bootstrap(not_yet), BootstrapAnswer::NotYet(_)));
        let done = "error executing bootstrap: rpc error: code = AlreadyExists desc = etcd data directory is not empty";
        assert_eq!(classify_bootstrap(done), BootstrapAnswer::AlreadyBootstrapped);
        let worker = "error executing bootstrap: rpc error: code = FailedPrecondition desc = bootstrap can only be performed on a control plane node";
        assert!(matches!(classify_bootstrap(worker), BootstrapAnswer::Refused(_)), "waiting never fixes a worker");
        let denied = "error executing bootstrap: rpc error: code = PermissionDenied desc = not authorized";
        assert!(matches!(classify_bootstrap(denied), BootstrapAnswer::Refused(_)));
    }

    fn link(id: &str, mac: &str, kind: &str, bus: &str, carrier: bool) -> Resource<LinkStatus> {
        Resource {
            metadata: Metadata { id: id.into(), version: 1 },
            spec: LinkStatus {
                link_type: "ether".into(),
                kind: kind.into(),
                bus_path: bus.into(),
                hardware_addr: mac.into(),
                permanent_addr: mac.into(),
                driver: "igc".into(),
                link_state: carrier,
            },
        }
    }

    #[test]
    fn link_selectors_are_evaluated_as_talos_does() {
        let links = vec![
            link("enp1s0", "00:1a:2b:3c:4d:5e", "", "0000:01:00.0", true),
            link("enp2s0", "00:1a:2b:3c:4d:5f", "", "0000:02:00.0", false),
            link("flannel.1", "aa:aa:aa:aa:aa:aa", "vxlan", "", true),
        ];
        let default = selector_matches(DEFAULT_LINK_SELECTOR, &links).expect("the default is evaluated");
        assert_eq!(default.len(), 2, "two physical ports: the default matches both");
        let by_mac = selector_matches(r#"mac(link.permanent_addr) == "00:1A:2B:3C:4D:5F""#, &links).expect("evaluated");
        assert_eq!(by_mac.iter().map(|link| link.metadata.id.as_str()).collect::<Vec<_>>(), ["enp2s0"]);
        assert!(selector_matches(r#"glob(link.driver, "ig*")"#, &links).is_none(), "beyond the forms read here");
    }

    #[test]
    fn json_resources_are_read_as_talosctl_prints_them() -> anyhow::Result<()> {
        let printed = "{\n    \"metadata\": {\n        \"id\": \"eth0/172.16.16.100/32\"\n    },\n    \"node\": \"172.16.16.147\",\n    \"spec\": {\n        \"address\": \"172.16.16.100/32\"\n    }\n}\n{\n    \"metadata\": {\n        \"id\": \"eth0/172.16.16.147/24\"\n    },\n    \"spec\": {\n        \"address\": \"172.16.16.147/24\"\n    }\n}\n";
        let addresses: Vec<Resource<AddressStatus>> = parse_resources(printed)?;
        assert!(holds(&addresses, Ipv4Addr::new(172, 16, 16, 100)));
        assert!(!holds(&addresses[1..], Ipv4Addr::new(172, 16, 16, 100)), "a /24 with another address is not the VIP");
        Ok(())
    }

    #[test]
    fn the_dry_run_diff_is_read_from_stderr() {
        assert_eq!(
            parse_dry_run(
                "Dry run summary:\nApplied configuration without a reboot (skipped in dry-run).\nNo changes.\n"
            ),
            None
        );
        let diff = "Dry run summary:\nConfig diff:\n\n--- a\n+++ b\n-    disk: /dev/sda\n+    disk: /dev/nvme0n1\n";
        assert!(parse_dry_run(diff).is_some_and(|shown| shown.contains("+    disk: /dev/nvme0n1")));
    }
}
