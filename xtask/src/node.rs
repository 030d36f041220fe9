//! `cargo xtask node replace | remove`: machines into and out of the cluster, Talos's own
//! procedure (its "replacing nodes" guide; `talos-day2.md` §6) made one command that shows what
//! it will do, does it step by step, and checks each step.
//!
//! `replace NAME`: the machine cluster.yaml names is dead, or about to be swapped (`--yes`), and
//! a new one boots from the Talos ISO at the same address (maintenance mode). Refused before
//! anything changes: a name cluster.yaml does not have; for a control plane, another control
//! plane whose etcd member is not healthy (the removal would cost quorum), or a member that is
//! not where cluster.yaml puts the machine; a machine that still runs, without `--yes`. Then:
//! - a machine that still runs (`--yes`) is drained through the eviction API (its
//!   PodDisruptionBudgets hold; a pod that will not leave is named) and reset the way Talos does
//!   it (`talosctl reset --graceful`: a control plane leaves etcd itself, the disk is wiped, the
//!   machine powers off);
//! - a control plane's member left behind is removed by the ID the healthy members report for
//!   its name *and* address (never a guess: a wrong ID is a healthy member, and two of three
//!   members gone is lost quorum; k0sctl#714);
//! - its Node is deleted (Talos never deletes Nodes), and the pods bound to it, so that their
//!   controllers make them again elsewhere (`delete_node`);
//! - the new machine is waited for in maintenance mode, pre-flighted as stage 01 does (one link
//!   for its address, an install disk that is not the boot stick), sent the config stage 01
//!   rendered for it, and waited for: installed, its etcd member a healthy voter (Talos's join
//!   removes a member with its hostname, adds itself as a learner, and is promoted), its Node
//!   Ready, the VIP held once, and every installed stage's verify passing.
//!
//! A stop names the step and the command that resumes; the replacement is recorded in the state
//! folder until it is done (and, before the config goes, that it was sent), so a re-run takes a
//! machine it sent its config, installing or answering with it, for the new one and waits for it
//! to join; otherwise it starts again, and a member already removed is not looked for again.
//!
//! `remove NAME`, for a machine removed from cluster.yaml (`plan` lists it as no longer in the
//! config): drained, reset (a control plane leaves etcd), its member removed if it is dead, its
//! Node deleted. Refused below three control planes or one worker without `--yes`.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Subcommand;
use k8s_openapi::api::core::v1::{Node as KubeNode, Pod};
use kit::config::{ClusterConfig, Node, Role};
use kit::stage::{GlobalArgs, exit};
use kit::talos::membership::{self, EtcdMember};
use kit::talos::{EtcdMemberStatus, NodeState};
use kube::api::{Api, DeleteParams, ListParams};

#[derive(Subcommand, Debug)]
pub enum NodeAction {
    /// Put a new machine in the place of a dead one (or of one about to be swapped, with --yes):
    /// boot the new machine from the Talos ISO at the address cluster.yaml gives NAME (a DHCP
    /// reservation for its MAC, or `ip=` kernel arguments), with an install disk as cluster.yaml
    /// says, then run this. It shows its steps, then removes what the old machine left (its etcd
    /// member, found by name and address, and its Node), sends the new one its config, and waits
    /// until it is a healthy etcd voter (control planes) with a Ready Node and every installed
    /// stage verifies. Refused when it would cost etcd quorum. Re-run it after a stop: it continues.
    Replace {
        /// The machine, by its name in cluster.yaml.
        name: String,
        /// Replace a machine that still runs: it is drained, and reset as Talos does it (a
        /// control plane leaves etcd first), its disk wiped and powered off.
        #[arg(long)]
        yes: bool,
        /// How long to wait for the new machine to answer in maintenance mode (seconds).
        #[arg(long, value_name = "SECONDS", default_value_t = 900)]
        wait_for_machine: u64,
        /// How long draining a machine that still runs may wait for PodDisruptionBudgets
        /// (seconds) before it stops with the pods that will not leave.
        #[arg(long, value_name = "SECONDS", default_value_t = 300)]
        drain_timeout: u64,
    },
    /// Take a machine out of the cluster for good, after removing it from cluster.yaml (`cargo
    /// xtask plan` lists it as no longer in the config): drained, reset as Talos does it (a
    /// control plane leaves etcd first; the disk is wiped, the machine powers off), its Node
    /// deleted. A dead one's etcd member is removed by ID. Refused below three control planes or
    /// one worker without --yes.
    Remove {
        /// The machine, by its Node's name.
        name: String,
        /// Go below three control planes (no failure tolerated) or to no worker.
        #[arg(long)]
        yes: bool,
        /// How long draining may wait for PodDisruptionBudgets (seconds).
        #[arg(long, value_name = "SECONDS", default_value_t = 300)]
        drain_timeout: u64,
    },
}

pub fn run(global: &GlobalArgs, action: &NodeAction) -> anyhow::Result<ExitCode> {
    let mut stdout = std::io::stdout();
    let Some(config) = global.load_config(&mut stdout)? else {
        return Ok(ExitCode::from(exit::INVALID));
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let kubeconfig = global.kubeconfig(&config);
    let client = runtime.block_on(kit::client::client_from_kubeconfig(&kubeconfig))?;
    let cluster = Cluster { global, config: &config, client: &client, runtime: &runtime };
    let (name, resume, outcome) = match action {
        NodeAction::Replace { name, yes, wait_for_machine, drain_timeout } => {
            let how = Replace {
                yes: *yes,
                wait_for_machine: Duration::from_secs(*wait_for_machine),
                drain_timeout: Duration::from_secs(*drain_timeout),
            };
            (name, format!("node replace {name}"), cluster.replace(name, &how))
        }
        NodeAction::Remove { name, yes, drain_timeout } => {
            (name, format!("node remove {name}"), cluster.remove(name, *yes, Duration::from_secs(*drain_timeout)))
        }
    };
    match outcome {
        Ok(said) => {
            writeln!(stdout, "{said}")?;
            Ok(ExitCode::SUCCESS)
        }
        Err(Stop::Refused(error)) => {
            eprintln!("{error:#}");
            eprintln!("nothing was changed");
            Ok(ExitCode::from(exit::FAILED))
        }
        Err(Stop::Failed(error)) => {
            eprintln!("{error:#}");
            eprintln!("stopped while working on {name}; fix the above, then resume with (it continues):");
            eprintln!("  {}", global.xtask_command(&resume));
            Ok(ExitCode::from(exit::FAILED))
        }
    }
}

/// Why a command stopped: refused before any change, or failed at a step.
enum Stop {
    Refused(anyhow::Error),
    Failed(anyhow::Error),
}

/// How `replace` goes about it.
struct Replace {
    yes: bool,
    wait_for_machine: Duration,
    drain_timeout: Duration,
}

/// What the commands work on: the config, the cluster's API, and the machines (reached where
/// they are: `crate::machines`).
struct Cluster<'a> {
    global: &'a GlobalArgs,
    config: &'a ClusterConfig,
    client: &'a kube::Client,
    runtime: &'a tokio::runtime::Runtime,
}

/// One step of a replacement or removal, in the order they are taken.
#[derive(Debug, Clone)]
enum Step {
    /// Evict the machine's pods (it still answers).
    Drain,
    /// `talosctl reset --graceful`: leave etcd, wipe, power off.
    Reset,
    /// Remove the etcd member the machine left behind, asked of a healthy control plane.
    RemoveMember {
        seen: Option<EtcdMember>,
        via: Node,
    },
    DeleteNode,
    /// Wait for the new machine in maintenance mode at the address.
    AwaitMaintenance,
    Preflight,
    /// Send the config stage 01 rendered; it installs and reboots.
    SendConfig {
        file: PathBuf,
    },
    AwaitInstalled,
    /// Its etcd member a healthy voter.
    AwaitMember,
    AwaitReady,
    /// etcd, the VIP, and every installed stage's verify.
    Verify,
}

impl Step {
    fn describe(&self, node: &Node, config: &ClusterConfig) -> String {
        match self {
            Step::Drain => format!("drain {} (its pods evicted; PodDisruptionBudgets hold)", node.name),
            Step::Reset => format!(
                "reset {} as Talos does (talosctl reset --graceful){}: its disk wiped, powered off",
                node.name,
                if node.role == Role::ControlPlane { ", leaving etcd first" } else { "" }
            ),
            Step::RemoveMember { seen: Some(member), via } => format!(
                "remove etcd member {} ({} at {}, {}) through {}",
                member.id,
                if member.hostname.is_empty() { "unnamed" } else { &member.hostname },
                member.peers(),
                if member.learner { "a learner" } else { "a voter" },
                via.name
            ),
            Step::RemoveMember { seen: None, via } => {
                format!("remove {}'s etcd member if one is left (none is now), through {}", node.name, via.name)
            }
            Step::DeleteNode => format!("delete the Node {} and the pods bound to it", node.name),
            Step::AwaitMaintenance => format!(
                "wait for the new machine in maintenance mode at {} (booted from the Talos {} ISO)",
                node.ip, config.versions.talos
            ),
            Step::Preflight => "pre-flight it as stage 01 does (one link for its address, its install disk)".to_owned(),
            Step::SendConfig { file } => {
                format!("send it {}'s machine config ({}); it installs and reboots", node.name, file.display())
            }
            Step::AwaitInstalled => format!("wait until {} answers with its config", node.name),
            Step::AwaitMember => format!("wait until {}'s etcd member is a healthy voting member", node.name),
            Step::AwaitReady => format!("wait until the Node {} is Ready", node.name),
            Step::Verify => "check etcd, the VIP, and every installed stage's verify".to_owned(),
        }
    }
}

/// What the machines say before anything is done.
struct Survey {
    state: NodeState,
    /// Why the other control planes' members are not all healthy (`kit::talos::describe_health`
    /// of those that are not); `None` when they all are.
    unhealthy: Option<String>,
    /// The member IDs the other control planes answer for, each asked about its own.
    answering_ids: Vec<String>,
    /// etcd's members, as a healthy other control plane lists them, with it.
    members: Option<(Node, Vec<EtcdMember>)>,
    /// This replacement sent the machine its config and it is installing (rebooting, or about to
    /// leave maintenance mode).
    installing: bool,
}

impl Survey {
    /// Asks `node` what it is, every other control plane of the config about its own member
    /// (`kit::talos::etcd_health`), and a healthy one for the member list. When this replacement
    /// sent it its config (`sent`), a machine that does not answer is installing, and one in
    /// maintenance mode is given the minute Talos takes to leave it (stage 01's rule for a
    /// machine it sent a config).
    fn of(config: &ClusterConfig, node: &Node, sent: bool) -> anyhow::Result<Survey> {
        let asked = node.clone();
        crate::machines::with_talosctl(config, move |talosctl, config| async move {
            let state = kit::talos::probe(&talosctl, &asked).await;
            let installing = sent
                && match state {
                    NodeState::Configured => false,
                    NodeState::Unreachable(_) => true,
                    NodeState::Maintenance => {
                        let wait = talos_bootstrap::nodes::LEAVE_MAINTENANCE;
                        talos_bootstrap::nodes::left_maintenance(&talosctl, &asked, wait).await
                    }
                };
            let health = kit::talos::etcd_health(&talosctl, &config).await;
            let others: Vec<_> = health.into_iter().filter(|(other, _)| other.name != asked.name).collect();
            let answering_ids =
                others.iter().filter_map(|(_, status)| Some(status.as_ref().ok()?.member.clone())).collect();
            let (healthy, unhealthy): (Vec<_>, Vec<_>) =
                others.into_iter().partition(|(_, status)| status.as_ref().is_ok_and(EtcdMemberStatus::healthy));
            let unhealthy = (!unhealthy.is_empty()).then(|| kit::talos::describe_health(&unhealthy));
            let members = match healthy.first() {
                Some((via, _)) => Some(((*via).clone(), membership::members(&talosctl, via).await?)),
                None => None,
            };
            anyhow::Ok(Survey { state, unhealthy, answering_ids, members, installing })
        })
    }

    /// The step that removes the member `node` left behind, through the healthy control plane
    /// that listed the members.
    fn remove_member(&self, node: &Node) -> anyhow::Result<Step> {
        let via = self.members.as_ref().map(|(via, _)| via.clone()).context("no healthy control plane to ask etcd")?;
        Ok(Step::RemoveMember { seen: self.left_behind(node)?, via })
    }

    /// The member `node` left behind, checked against the members the other control planes
    /// answer for: a member that answers for another machine is never taken for it.
    fn left_behind(&self, node: &Node) -> anyhow::Result<Option<EtcdMember>> {
        let Some((_, members)) = &self.members else { return Ok(None) };
        let Some(member) = membership::left_behind(members, node)? else { return Ok(None) };
        anyhow::ensure!(
            !self.answering_ids.contains(&member.id),
            "etcd member {} looks like {}'s, yet another control plane answers as that member: not removing it",
            member.id,
            node.name
        );
        Ok(Some(member.clone()))
    }
}

/// What the record of a replacement says once the new machine was sent its config.
const CONFIG_SENT: &str = "config sent";

/// Where a replacement under way is recorded: from its first change until it is done, and
/// whether the new machine was sent its config (a re-run then waits for it to join).
fn record_path(config: &ClusterConfig, node: &str) -> PathBuf {
    config.state_dir().join("replacing").join(node)
}

impl Cluster<'_> {
    fn node_named(&self, name: &str) -> Result<Node, Stop> {
        self.config.nodes.iter().find(|node| node.name == name).cloned().ok_or_else(|| {
            let names: Vec<&str> = self.config.nodes.iter().map(|node| node.name.as_str()).collect();
            Stop::Refused(anyhow::anyhow!(
                "no node {name} in {} (its nodes: {}); a machine that is not in the config yet joins with `cargo \
                 xtask install-all` once it is added there",
                self.config.source.display(),
                names.join(", ")
            ))
        })
    }

    fn replace(&self, name: &str, how: &Replace) -> Result<String, Stop> {
        let node = self.node_named(name)?;
        let record = record_path(self.config, &node.name);
        // A machine that answers with its config is the new one only once this replacement sent it.
        let sent = std::fs::read_to_string(&record).is_ok_and(|text| text.contains(CONFIG_SENT));
        let survey = Survey::of(self.config, &node, sent).map_err(Stop::Refused)?;
        let joining = sent && (survey.state == NodeState::Configured || survey.installing);
        let steps = self.replace_steps(&node, &survey, joining, how.yes).map_err(Stop::Refused)?;
        let state = match &survey.state {
            NodeState::Configured if joining => "answers with its config: the new machine, joining".to_owned(),
            _ if joining => "was sent its config by this replacement: the new machine, installing".to_owned(),
            NodeState::Configured => "answers with its config: it still runs".to_owned(),
            NodeState::Maintenance => "answers in maintenance mode: the new machine is there".to_owned(),
            NodeState::Unreachable(why) => {
                format!("does not answer on its Talos API ({})", kit::talos::first_line(why))
            }
        };
        eprintln!("node replace {} ({}, {}): {state}", node.name, node.ip, node.role.as_str());
        self.show(&node, &steps);
        let started = Instant::now();
        if !joining {
            if let Some(parent) = record.parent() {
                std::fs::create_dir_all(parent).map_err(|error| Stop::Failed(error.into()))?;
            }
            std::fs::write(&record, format!("started at {}\n", k8s_openapi::jiff::Timestamp::now()))
                .map_err(|error| Stop::Failed(error.into()))?;
        }
        self.take(&node, &steps, how.drain_timeout, how.wait_for_machine)?;
        std::fs::remove_file(&record).map_err(|error| Stop::Failed(error.into()))?;
        Ok(format!("{} replaced in {:.1}s: every check passes", node.name, started.elapsed().as_secs_f64()))
    }

    /// The steps of a replacement (from the new machine's install on when it is `joining`), or
    /// why it is refused.
    fn replace_steps(&self, node: &Node, survey: &Survey, joining: bool, yes: bool) -> anyhow::Result<Vec<Step>> {
        let control_plane = node.role == Role::ControlPlane;
        if control_plane && let Some(unhealthy) = &survey.unhealthy {
            anyhow::bail!(
                "{} is not replaced while another control plane's etcd member is not healthy ({unhealthy}): removing \
                 its member too would leave etcd without quorum. Bring that one back first (`cargo xtask status`), \
                 or replace it first if it is the dead one",
                node.name
            );
        }
        let answers = survey.state == NodeState::Configured;
        if joining {
            let mut steps = vec![Step::AwaitInstalled];
            if control_plane {
                steps.push(Step::AwaitMember);
            }
            steps.extend([Step::AwaitReady, Step::Verify]);
            return Ok(steps);
        }
        anyhow::ensure!(
            !answers || yes,
            "{} ({}) answers with this cluster's certificate: it runs, so it is not replaced unless you say so. To \
             take it out and put a new machine in its place, add --yes: it is drained, then reset as Talos does it \
             (talosctl reset --graceful{}), its disk wiped and powered off",
            node.name,
            node.ip,
            if control_plane { ": it leaves etcd first" } else { "" }
        );
        let file = talos_bootstrap::StatePaths::new(self.config).node_config(node);
        anyhow::ensure!(
            file.exists(),
            "no machine config for {} at {}: stage 01 renders it (`cargo run -p talos-bootstrap -- apply`)",
            node.name,
            file.display()
        );
        let mut steps = Vec::new();
        if answers {
            steps.extend([Step::Drain, Step::Reset]);
        }
        if control_plane {
            steps.push(survey.remove_member(node)?);
        }
        steps.extend([Step::DeleteNode, Step::AwaitMaintenance, Step::Preflight, Step::SendConfig { file }]);
        steps.push(Step::AwaitInstalled);
        if control_plane {
            steps.push(Step::AwaitMember);
        }
        steps.extend([Step::AwaitReady, Step::Verify]);
        Ok(steps)
    }

    /// The steps, numbered, before any is taken.
    fn show(&self, node: &Node, steps: &[Step]) {
        for (index, step) in steps.iter().enumerate() {
            eprintln!("  {}. {}", index + 1, step.describe(node, self.config));
        }
    }

    /// Takes the steps in order, each shown with its time; the first failure names its step.
    fn take(
        &self,
        node: &Node,
        steps: &[Step],
        drain_timeout: Duration,
        wait_for_machine: Duration,
    ) -> Result<(), Stop> {
        for (index, step) in steps.iter().enumerate() {
            let started = Instant::now();
            let what = step.describe(node, self.config);
            eprintln!("{} step {}/{}: {what}", node.name, index + 1, steps.len());
            let said = self.step(node, step, drain_timeout, wait_for_machine).map_err(|error| {
                Stop::Failed(error.context(format!("{} step {}/{} ({what}) failed", node.name, index + 1, steps.len())))
            })?;
            eprintln!(
                "{} step {}/{}: {said} ({:.1}s)",
                node.name,
                index + 1,
                steps.len(),
                started.elapsed().as_secs_f64()
            );
        }
        Ok(())
    }

    fn step(
        &self,
        node: &Node,
        step: &Step,
        drain_timeout: Duration,
        wait_for_machine: Duration,
    ) -> anyhow::Result<String> {
        let (client, runtime) = (self.client, self.runtime);
        match step {
            Step::Drain => {
                runtime.block_on(crate::talos_upgrade::cordon(client, &node.name, true))?;
                runtime.block_on(async {
                    let evictions = kit::client::client_without_retries(&self.global.kubeconfig(self.config)).await?;
                    crate::talos_upgrade::drain(&evictions, &node.name, drain_timeout).await
                })?;
                Ok("drained".to_owned())
            }
            Step::Reset => {
                let asked = node.clone();
                crate::machines::with_talosctl(self.config, move |talosctl, _| async move {
                    let mut progress = |line: &str| eprintln!("  {line}");
                    membership::reset_and_power_off(&talosctl, &asked, &mut progress).await
                })?;
                Ok("reset and powered off".to_owned())
            }
            Step::RemoveMember { via, .. } => {
                // Asked again: a reset left etcd by itself, and a re-run finds it gone.
                let (asked, via) = (node.clone(), via.clone());
                crate::machines::with_talosctl(self.config, move |talosctl, _| async move {
                    let members = membership::members(&talosctl, &via).await?;
                    let Some(member) = membership::left_behind(&members, &asked)? else {
                        return anyhow::Ok(format!("{} has no member left", asked.name));
                    };
                    let removed = membership::remove_member(&talosctl, &via, &member.id).await?;
                    Ok(if removed {
                        format!("member {} removed; {} members left", member.id, members.len() - 1)
                    } else {
                        format!("member {} was gone already", member.id)
                    })
                })
            }
            Step::DeleteNode => runtime.block_on(delete_node(client, &node.name)),
            Step::AwaitMaintenance => {
                let (asked, talos) = (node.clone(), self.config.versions.talos);
                crate::machines::with_talosctl(self.config, move |talosctl, _| async move {
                    let started = Instant::now();
                    let mut told = false;
                    loop {
                        match kit::talos::probe(&talosctl, &asked).await {
                            NodeState::Maintenance => return anyhow::Ok("the new machine answers".to_owned()),
                            NodeState::Configured => anyhow::bail!(
                                "{} answers with this cluster's config: that is not a new machine (was the old one \
                                 powered on again?)",
                                asked.ip
                            ),
                            NodeState::Unreachable(_) if !told => {
                                eprintln!(
                                    "  boot the new machine from the Talos {talos} ISO at {} (a DHCP reservation \
                                     for its MAC, or `ip=` kernel arguments); waiting up to {}s",
                                    asked.ip,
                                    wait_for_machine.as_secs()
                                );
                                told = true;
                            }
                            NodeState::Unreachable(why) => anyhow::ensure!(
                                started.elapsed() < wait_for_machine,
                                "no machine answered in maintenance mode at {} within {}s ({why})",
                                asked.ip,
                                wait_for_machine.as_secs()
                            ),
                        }
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                })
            }
            Step::Preflight => {
                let asked = node.clone();
                crate::machines::with_talosctl(self.config, move |talosctl, config| async move {
                    kit::talos::preflight(&talosctl, &config, &asked).await
                })
            }
            Step::SendConfig { file } => {
                let (asked, file) = (node.clone(), file.clone());
                crate::machines::with_talosctl(self.config, move |talosctl, config| async move {
                    // Recorded before it is sent, as stage 01 records it: a run killed between
                    // Talos taking the config and talosctl's answer must not leave a machine
                    // installing that no record names (a re-run waits for it; one that stays in
                    // maintenance mode never took it and is sent it again). Stage 01's own record
                    // makes a stage 01 run meanwhile wait for the install too.
                    let record = record_path(&config, &asked.name);
                    let now = k8s_openapi::jiff::Timestamp::now();
                    std::fs::write(&record, format!("{CONFIG_SENT} at {now}\n"))
                        .with_context(|| format!("writing {}", record.display()))?;
                    let paths = talos_bootstrap::StatePaths::new(&config);
                    let evidence = talos_bootstrap::evidence::Evidence::for_secrets(&paths.secrets, paths.evidence)?;
                    evidence.config_sent(&asked.name)?;
                    talos_bootstrap::nodes::apply_config_insecure(&talosctl, &asked, &file).await?;
                    anyhow::Ok("sent; it installs and reboots".to_owned())
                })
            }
            Step::AwaitInstalled => {
                let asked = node.clone();
                crate::machines::with_talosctl(self.config, move |talosctl, config| async move {
                    talos_bootstrap::nodes::wait_configured(
                        &talosctl,
                        &asked,
                        talos_bootstrap::converge::INSTALL_TIMEOUT,
                    )
                    .await?;
                    let paths = talos_bootstrap::StatePaths::new(&config);
                    talos_bootstrap::evidence::Evidence::for_secrets(&paths.secrets, paths.evidence)?
                        .installed(&asked.name)?;
                    anyhow::Ok("it answers with its config".to_owned())
                })
            }
            Step::AwaitMember => {
                let asked = node.clone();
                crate::machines::with_talosctl(self.config, move |talosctl, _| async move {
                    let status = kit::wait::poll(MEMBER_TIMEOUT, || async {
                        anyhow::Ok(match kit::talos::etcd_status(&talosctl, &asked).await {
                            Ok(status) if status.healthy() => Ok(status),
                            Ok(status) if status.learner => Err("a learner, still catching up".to_owned()),
                            Ok(status) => Err(format!("it reports {}", status.errors)),
                            Err(error) => Err(format!("{error:#}")),
                        })
                    })
                    .await
                    .with_context(|| format!("{}'s etcd member is not a healthy voter", asked.name))?;
                    anyhow::Ok(format!("member {} is a healthy voter", status.member))
                })
            }
            Step::AwaitReady => {
                runtime.block_on(crate::talos_upgrade::node_ready(client, &node.name))?;
                Ok("Ready".to_owned())
            }
            Step::Verify => self.verify(),
        }
    }

    /// Every control plane's member healthy, one holder of the VIP, then every installed
    /// stage's verify.
    fn verify(&self) -> anyhow::Result<String> {
        let (etcd, holders) = crate::machines::with_talosctl(self.config, |talosctl, config| async move {
            let etcd = kit::talos::etcd_check(&talosctl, &config).await.0;
            anyhow::Ok((etcd, kit::talos::vip_holders(&talosctl, &config).await))
        })?;
        anyhow::ensure!(etcd.status == kit::report::Status::Pass, "etcd: {}", etcd.reason);
        anyhow::ensure!(
            holders.len() == 1,
            "the VIP {} is held by {} control planes ({})",
            self.config.network.vip,
            holders.len(),
            holders.join(", ")
        );
        let failed = crate::install_all::verify_installed(self.global, self.config, "  verify")?;
        anyhow::ensure!(failed.is_empty(), "failed: {}", failed.join(", "));
        Ok(format!("{}; the VIP on {}; every installed stage verified", etcd.reason, holders.join("")))
    }

    fn remove(&self, name: &str, yes: bool, drain_timeout: Duration) -> Result<String, Stop> {
        if self.config.nodes.iter().any(|node| node.name == name) {
            return Err(Stop::Refused(anyhow::anyhow!(
                "{name} is still in {}: remove it there first (or `install-all` would bring it back), then run this \
                 again; to put a new machine in its place instead, `cargo xtask node replace {name}`",
                self.config.source.display()
            )));
        }
        let found = self.runtime.block_on(self.machine_in_cluster(name)).map_err(Stop::Refused)?;
        let Some(node) = found else {
            return Ok(format!("{name} is neither a Node nor an etcd member: nothing to remove"));
        };
        self.leaves_enough(&node, yes).map_err(Stop::Refused)?;
        let survey = Survey::of(self.config, &node, false).map_err(Stop::Refused)?;
        let mut steps = Vec::new();
        if node.role == Role::ControlPlane
            && let Some(unhealthy) = &survey.unhealthy
        {
            return Err(Stop::Refused(anyhow::anyhow!(
                "{name} is not removed while another control plane's etcd member is not healthy ({unhealthy})"
            )));
        }
        if survey.state == NodeState::Configured {
            steps.extend([Step::Drain, Step::Reset]);
        }
        if node.role == Role::ControlPlane {
            steps.push(survey.remove_member(&node).map_err(Stop::Refused)?);
        }
        steps.push(Step::DeleteNode);
        eprintln!("node remove {name} ({}, {}):", node.ip, node.role.as_str());
        self.show(&node, &steps);
        let started = Instant::now();
        self.take(&node, &steps, drain_timeout, Duration::ZERO)?;
        Ok(format!("{name} removed in {:.1}s", started.elapsed().as_secs_f64()))
    }

    /// A machine the cluster has under `name`: its Node (address and role), else a control
    /// plane's etcd member of that name (its Node deleted already).
    async fn machine_in_cluster(&self, name: &str) -> anyhow::Result<Option<Node>> {
        let nodes: Api<KubeNode> = Api::all(self.client.clone());
        let machine = |ip: std::net::Ipv4Addr, role| Node {
            name: name.to_owned(),
            role,
            ip,
            install_disk: String::new(),
            link_selector: String::new(),
        };
        if let Some(live) = nodes.get_opt(name).await.with_context(|| format!("reading the Node {name}"))? {
            let ip = live
                .status
                .iter()
                .flat_map(|status| status.addresses.iter().flatten())
                .find(|address| address.type_ == "InternalIP")
                .and_then(|address| address.address.parse().ok())
                .with_context(|| format!("the Node {name} has no IPv4 InternalIP"))?;
            let labels = live.metadata.labels.unwrap_or_default();
            let role =
                if labels.contains_key(kit::client::CONTROL_PLANE_ROLE) { Role::ControlPlane } else { Role::Worker };
            return self.on_the_lan(machine(ip, role)).map(Some);
        }
        let config = self.config.clone();
        let members = crate::machines::with_talosctl(&config, |talosctl, config| async move {
            for control_plane in config.control_planes() {
                if let Ok(members) = membership::members(&talosctl, control_plane).await {
                    return anyhow::Ok(members);
                }
            }
            anyhow::bail!("no control plane lists etcd's members")
        })?;
        let member = members.into_iter().find(|member| member.hostname == name);
        let ip = member.and_then(|member| member.address());
        ip.map(|ip| self.on_the_lan(machine(ip, Role::ControlPlane))).transpose()
    }

    /// A machine to remove is on the cluster's LAN (talosctl reaches nothing else from here).
    fn on_the_lan(&self, node: Node) -> anyhow::Result<Node> {
        anyhow::ensure!(
            self.config.network.subnet.contains(&node.ip),
            "{} is at {}, outside the cluster's subnet {}: not a machine of this cluster",
            node.name,
            node.ip,
            self.config.network.subnet
        );
        Ok(node)
    }

    /// At least three control planes (one may fail) and one worker stay, unless `yes`.
    fn leaves_enough(&self, node: &Node, yes: bool) -> anyhow::Result<()> {
        let nodes: Api<KubeNode> = Api::all(self.client.clone());
        let listed = self.runtime.block_on(nodes.list(&ListParams::default())).context("listing the Nodes")?;
        let (control_planes, workers): (Vec<&KubeNode>, Vec<&KubeNode>) = listed.items.iter().partition(|live| {
            live.metadata.labels.as_ref().is_some_and(|labels| labels.contains_key(kit::client::CONTROL_PLANE_ROLE))
        });
        let now = match node.role {
            Role::ControlPlane => control_planes.len(),
            Role::Worker => workers.len(),
        };
        match too_few_after_removal(node.role, now) {
            Some(why) if !yes => anyhow::bail!("removing {} {why}: add --yes to remove it anyway", node.name),
            _ => Ok(()),
        }
    }
}

/// Why removing one machine of `role` from `now` such machines leaves too few: fewer than three
/// control planes (etcd then tolerates no failure) or no worker.
fn too_few_after_removal(role: Role, now: usize) -> Option<String> {
    let left = now.saturating_sub(1);
    let (least, what) = match role {
        Role::ControlPlane => (3, "control planes (etcd then tolerates no failure)"),
        Role::Worker => (1, "workers (nothing left to run the apps)"),
    };
    (left < least).then(|| format!("leaves {left} {what}, fewer than {least}"))
}

/// Deletes the Node, then the pods still bound to it, at once (grace 0: their machine is gone,
/// nothing runs them): their controllers make them again where the scheduler puts them.
/// Kubernetes's pod garbage collector does the same for pods of a Node that is gone, but only
/// after 40 s without it (pkg/controller/podgc/gc_controller.go, quarantineTime and gcOrphaned);
/// a new machine registers its Node again sooner, and would otherwise inherit the pods bound
/// to the old one's name as if they had never stopped.
async fn delete_node(client: &kube::Client, name: &str) -> anyhow::Result<String> {
    let nodes: Api<KubeNode> = Api::all(client.clone());
    let said = match nodes.delete(name, &DeleteParams::default()).await {
        Ok(_) => "deleted",
        Err(kube::Error::Api(answer)) if answer.code == 404 => "there was none",
        Err(error) => return Err(error).context("deleting the Node"),
    };
    let pods: Api<Pod> = Api::all(client.clone());
    let bound = pods
        .list(&ListParams::default().fields(&format!("spec.nodeName={name}")))
        .await
        .context("listing the pods bound to it")?;
    let now = DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() };
    for pod in &bound.items {
        let (namespace, pod_name) =
            (pod.metadata.namespace.clone().unwrap_or_default(), pod.metadata.name.clone().unwrap_or_default());
        match Api::<Pod>::namespaced(client.clone(), &namespace).delete(&pod_name, &now).await {
            Ok(_) => {}
            Err(kube::Error::Api(answer)) if answer.code == 404 => {}
            Err(error) => return Err(error).with_context(|| format!("deleting the pod {namespace}/{pod_name}")),
        }
    }
    Ok(format!("{said}; {} pod(s) bound to it deleted", bound.items.len()))
}

/// How long a joining control plane's member may take to be a healthy voter.
const MEMBER_TIMEOUT: Duration = Duration::from_secs(5 * 60);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removal_keeps_three_control_planes_and_one_worker() {
        assert_eq!(too_few_after_removal(Role::ControlPlane, 4), None);
        let three = too_few_after_removal(Role::ControlPlane, 3).unwrap_or_default();
        assert!(three.contains("leaves 2 control planes"), "{three}");
        assert_eq!(too_few_after_removal(Role::Worker, 2), None);
        let last = too_few_after_removal(Role::Worker, 1).unwrap_or_default();
        assert!(last.contains("leaves 0 workers"), "{last}");
    }
}
