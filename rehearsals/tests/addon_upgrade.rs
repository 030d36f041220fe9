//! Issue 25: a box installed at the seed's add-on releases (README's `versions:` block), its
//! pins then moved to talos-ha's defaults as a user would (the block deleted), is refused by a
//! plain install (it would skip releases) and upgraded by `cargo xtask upgrade apply`, hop by
//! hop: 15 hops, a Longhorn CRD left storing `v1beta1` migrated before v1.10, the upgrade killed
//! mid-way and resumed. Afterwards nothing is left to upgrade, a full install changes nothing
//! (no object talos-ha applied was lost, every stage's verify passes), and what the releases
//! dropped is gone. cert-manager's controller runs for real at both ends (v1.16.5, then
//! v1.20.3): the CA that signed the leaves before the upgrade still verifies them after.
//! Then the box, at every default, runs issue 26's restore drill (`rehearsals::drill`).

use std::os::unix::process::CommandExt as _;
use std::process::{Output, Stdio};
use std::time::Instant;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use rehearsals::OwnBox;

fn log(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The box's config with README's seed block in place of the default pins, or without it.
fn set_seed_pins(own: &OwnBox, seed: bool) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&own.config.source)?;
    let pins = kit::config::seed_pin_lines();
    let kubernetes = "  kubernetes: v1.35.0\n";
    let text =
        if seed { text.replacen(kubernetes, &format!("{kubernetes}{pins}"), 1) } else { text.replace(&pins, "") };
    std::fs::write(&own.config.source, text)?;
    Ok(())
}

/// A child's stderr, line by line, through a channel that a thread fills until it ends (so the
/// child never blocks on a full pipe while the test does something else).
fn read_lines(stderr: std::process::ChildStderr) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead as _;
    let (sender, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

/// The `upgrade rehearse` child and its box's config. A test that fails while the rehearsal
/// runs stops it and takes its box down: the child's own teardown never runs then, and the box
/// would outlive the test.
struct Rehearsal {
    child: std::process::Child,
    config: std::path::PathBuf,
}

impl Drop for Rehearsal {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // cargo and the xtask it runs: the whole group.
        if let Ok(id) = i32::try_from(self.child.id()) {
            nix::sys::signal::killpg(nix::unistd::Pid::from_raw(id), nix::sys::signal::Signal::SIGKILL).ok();
        }
        self.child.wait().ok();
        let down = xtask::cargo()
            .current_dir(xtask::workspace_root())
            .args(["xtask", "lab", "down", "--purge", "--config"])
            .arg(&self.config)
            .status();
        eprintln!("the unfinished rehearsal's box taken down: {down:?}");
    }
}

/// Cordons (or uncordons) `nodes`: the scheduler places no new pod on an unschedulable node.
async fn set_unschedulable(client: &kube::Client, nodes: &[String], unschedulable: bool) -> anyhow::Result<()> {
    let api: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client.clone());
    let patch = serde_json::json!({ "spec": { "unschedulable": unschedulable } });
    for node in nodes {
        api.patch(node, &Default::default(), &kube::api::Patch::Merge(&patch)).await?;
    }
    Ok(())
}

/// The certificate (`tls.crt`) cert-manager stored in Secret `namespace/name`.
async fn certificate(client: &kube::Client, namespace: &str, name: &str) -> anyhow::Result<Vec<u8>> {
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> = kube::Api::namespaced(client.clone(), namespace);
    let data = secrets.get(name).await?.data.unwrap_or_default();
    data.get("tls.crt")
        .map(|pem| pem.0.clone())
        .ok_or_else(|| anyhow::anyhow!("Secret {namespace}/{name} holds no tls.crt"))
}

async fn stored_versions(client: &kube::Client, crd: &str) -> anyhow::Result<Vec<String>> {
    let crds: kube::Api<CustomResourceDefinition> = kube::Api::all(client.clone());
    Ok(crds.get(crd).await?.status.and_then(|status| status.stored_versions).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_seeds_add_ons_are_upgraded_hop_by_hop_to_the_defaults() -> anyhow::Result<()> {
    let own = OwnBox::new("seed-set", 25443)?;
    let port_base = own.lab.ports.base.to_string();
    set_seed_pins(&own, true)?;
    let install = own.xtask(&["install-all", "--port-base", &port_base]);
    let installed = tokio::task::spawn_blocking(move || { install }.output()).await??;
    anyhow::ensure!(installed.status.success(), "the seed's set installs: {}", log(&installed));
    let client = kit::client::client_from_kubeconfig(&own.lab.kubeconfig).await?;
    let controller_log = own.lab.dir.join("logs").join("cert-manager-controller.log");
    assert!(std::fs::read_to_string(&controller_log)?.contains("version=\"v1.16.5\""), "the seed's controller runs");
    let ca_before = certificate(&client, "cert-manager", "talos-ha-ca").await?;
    let whoami_host = own.config.service_host("whoami", own.config.traefik_ip);
    cert_manager::chain::verify(&certificate(&client, "whoami", "whoami-tls").await?, &ca_before, &whoami_host)?;

    // A restore of an old etcd can leave a Longhorn CRD storing v1beta1, which v1.10 drops.
    let crds: kube::Api<CustomResourceDefinition> = kube::Api::all(client.clone());
    let stale = serde_json::json!({ "status": { "storedVersions": ["v1beta1", "v1beta2"] } });
    crds.patch_status("volumes.longhorn.io", &Default::default(), &kube::api::Patch::Merge(&stale)).await?;

    // The user moves the pins to the defaults. A plain apply would skip Longhorn's minors.
    set_seed_pins(&own, false)?;
    let skipped = own.xtask(&["install-all", "--only", "longhorn", "--port-base", &port_base]).output()?;
    assert!(!skipped.status.success(), "{}", log(&skipped));
    assert!(
        log(&skipped).contains("versions.longhorn is v1.12.1, but the cluster runs v1.7.3")
            && log(&skipped).contains("v1.8.2 → v1.9.2 → v1.10.2 → v1.11.3 → v1.12.1")
            && log(&skipped).contains("cargo xtask upgrade apply"),
        "{}",
        log(&skipped)
    );

    let plan = own.xtask(&["upgrade", "plan"]).output()?;
    assert_eq!(plan.status.code(), Some(2), "something to do: {}", log(&plan));
    let shown = stdout(&plan);
    assert!(shown.contains("15 add-on hop(s) to take"), "{shown}");
    assert!(shown.contains("longhorn       v1.7.3 → v1.12.1: to upgrade"), "{shown}");
    assert!(shown.contains("migrate every longhorn.io object still stored at another version to v1beta2"), "{shown}");
    // The same for a script: one JSON object per add-on.
    let json = own.xtask(&["upgrade", "plan", "--output", "json"]).output()?;
    let upgrades: Vec<serde_json::Value> = stdout(&json).lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    let longhorn = upgrades.iter().find(|upgrade| upgrade["component"] == "longhorn").cloned().unwrap_or_default();
    assert_eq!((&longhorn["running"], &longhorn["pin"]), (&"v1.7.3".into(), &"v1.12.1".into()), "{longhorn}");
    let hops: Vec<&serde_json::Value> = longhorn["hops"].as_array().into_iter().flatten().collect();
    assert_eq!(
        hops.iter().map(|hop| hop["to"].clone()).collect::<Vec<_>>(),
        ["v1.8.2", "v1.9.2", "v1.10.2", "v1.11.3", "v1.12.1"]
    );

    // As on a real cluster: apply asks for a rehearsal; rehearse copies what runs into a box
    // of its own, upgrades that, and takes it down. It runs beside this box's own upgrade below
    // once it has read what runs here.
    let unrehearsed = own.xtask_as_real(&["upgrade", "apply"]).output()?;
    assert!(!unrehearsed.status.success(), "{}", log(&unrehearsed));
    assert!(log(&unrehearsed).contains("no rehearsal of this upgrade passed"), "{}", log(&unrehearsed));
    assert!(log(&unrehearsed).contains("cargo xtask upgrade rehearse"), "{}", log(&unrehearsed));
    let rehearsed = own.xtask_as_real(&["upgrade", "plan"]).output()?;
    assert!(stdout(&rehearsed).contains("rehearsal: none of this upgrade yet"), "{}", stdout(&rehearsed));
    let rehearsal_started = Instant::now();
    let mut rehearsal = Rehearsal {
        child: own
            .xtask_as_real(&["upgrade", "rehearse"])
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?,
        config: own.config.state_dir().join("rehearsal").join("cluster.yaml"),
    };
    let lines = read_lines(rehearsal.child.stderr.take().ok_or_else(|| anyhow::anyhow!("no stderr"))?);
    let mut rehearsal_log = Vec::new();
    loop {
        let line = lines.recv().map_err(|_| anyhow::anyhow!("rehearse ended early: {rehearsal_log:#?}"))?;
        let copying = line.starts_with("rehearsal: a box (seed-set-rehearsal) at what runs:");
        rehearsal_log.push(line);
        if copying {
            break;
        }
    }

    // Killed (the whole process group) as a Longhorn hop starts, then run again.
    let (before_kill, reached) = rehearsals::killed_at(own.xtask(&["upgrade", "apply"]), |line| {
        line.starts_with("longhorn v1.8.2 → v1.9.2: starting")
    })?;
    assert!(reached, "the upgrade reached Longhorn's second hop: {before_kill:?}");

    // A hop whose workloads never become ready stops with what failed, what was done and the
    // command that resumes: with every worker cordoned no new pod is placed, so Longhorn's
    // next hop cannot roll its Deployments out.
    let workers: Vec<String> = own.config.workers().map(|node| node.name.clone()).collect();
    set_unschedulable(&client, &workers, true).await?;
    let stalled = own.xtask(&["upgrade", "apply", "--rollout-timeout", "20"]).output()?;
    set_unschedulable(&client, &workers, false).await?;
    let stalled_log = log(&stalled);
    assert!(!stalled.status.success(), "{stalled_log}");
    assert!(stalled_log.contains(": longhorn apply failed:"), "{stalled_log}");
    assert!(stalled_log.contains("done before the stop: "), "{stalled_log}");
    assert!(
        stalled_log.contains("then resume with (it reads what runs and continues):\n  cargo xtask upgrade apply"),
        "{stalled_log}"
    );

    let started = Instant::now();
    let resumed = own.xtask(&["upgrade", "apply"]).output()?;
    let took = started.elapsed();
    let resumed_log = log(&resumed);
    assert!(resumed.status.success(), "{resumed_log}");
    assert!(
        !resumed_log.contains("metallb v0.15.3 → v0.16.1: starting"),
        "done hops are not taken again: {resumed_log}"
    );
    assert!(resumed_log.contains("volumes.longhorn.io: 0 object(s) rewritten at v1beta2"), "{resumed_log}");
    assert!(resumed_log.contains("pruned Service longhorn-system/longhorn-conversion-webhook"), "{resumed_log}");
    for line in resumed_log.lines().filter(|line| line.contains(": done in ")) {
        tests::shown(&format!("addon upgrade: {line}"));
    }
    tests::shown(&format!("addon upgrade: resumed run {:.1}s", took.as_secs_f64()));

    let again = own.xtask(&["upgrade", "plan"]).output()?;
    assert_eq!(again.status.code(), Some(0), "nothing left to upgrade: {}", stdout(&again));
    assert_eq!(stored_versions(&client, "volumes.longhorn.io").await?, ["v1beta2"]);
    assert_eq!(stored_versions(&client, "tlsroutes.gateway.networking.k8s.io").await?, ["v1"]);
    assert!(crds.get_opt("xlistenersets.gateway.networking.x-k8s.io").await?.is_none(), "dropped by EG 1.8");
    let bindings: kube::Api<k8s_openapi::api::rbac::v1::RoleBinding> =
        kube::Api::namespaced(client.clone(), "cert-manager");
    assert!(bindings.get_opt("cert-manager-cert-manager-tokenrequest").await?.is_none(), "renamed in 1.19");

    // The CA kept its key pair through four minors (rotationPolicy Never, stated before 1.18
    // flipped the default): the leaves it signed before still chain to it, and the controller
    // that runs now is v1.20.3's.
    assert_eq!(certificate(&client, "cert-manager", "talos-ha-ca").await?, ca_before, "the same CA");
    cert_manager::chain::verify(&certificate(&client, "whoami", "whoami-tls").await?, &ca_before, &whoami_host)?;
    let controller = std::fs::read_to_string(&controller_log)?;
    assert!(controller.contains("version=\"v1.20.3\""), "the pinned release's controller took over: {controller}");

    // Every stage at the defaults: nothing to create or change, and every verify passes.
    let whole = own.xtask(&["install-all", "--port-base", &port_base]).output()?;
    assert!(whole.status.success(), "{}", log(&whole));
    assert!(log(&whole).contains("nothing changed: the cluster was already converged"), "{}", log(&whole));

    // The rehearsal's box ran beside all of the above; its report now.
    rehearsal_log.extend(lines.iter());
    let rehearsal_log = rehearsal_log.join("\n");
    assert!(rehearsal.child.wait()?.success(), "{rehearsal_log}");
    assert!(rehearsal_log.contains("longhorn v1.9.2 → v1.10.2: done in"), "{rehearsal_log}");
    assert!(rehearsal_log.contains("rehearsal: passed, 15 hop(s)"), "{rehearsal_log}");
    tests::shown(&format!(
        "addon upgrade: rehearsal (a second box installed, upgraded, removed) {:.1}s",
        rehearsal_started.elapsed().as_secs_f64()
    ));
    let namespaces = std::process::Command::new("ip").args(["netns", "list"]).output()?;
    assert!(!stdout(&namespaces).contains("seed-set-rehearsal"), "the rehearsal box is gone");
    let record = std::fs::read_to_string(own.config.state_dir().join("upgrade-rehearsal.json"))?;
    assert!(record.contains("\"passed\": true") && record.contains("\"longhorn\": \"v1.7.3\""), "{record}");

    // Issue 26's drill on this box, installed with every stage: quorum lost, restored.
    let (alone, recovered) = rehearsals::drill::restore_after_losing_quorum(&own).await?;
    tests::shown(&format!(
        "restore drill: cp01 restored alone in {alone:.1}s, all three members and every check after {recovered:.1}s"
    ));
    Ok(())
}
