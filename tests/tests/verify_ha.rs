//! `cargo xtask verify-ha --lab` as a user runs it: control planes switched off and on (their
//! etcd members with them) and a node failure on the cluster in a box, with times.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};

#[test]
fn the_lab_drill_loses_etcd_quorum_and_a_node_and_measures_both() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    // An earlier drill interrupted mid-way left wk02's Lease taken (by the drill's holder name):
    // this run must give it back before it starts.
    runtime.block_on(async {
        let leases: Api<Lease> = Api::namespaced(tests::lab_client().await?, "kube-node-lease");
        let taken =
            serde_json::json!({ "spec": { "holderIdentity": "talos-ha-verify-ha", "leaseDurationSeconds": 3600 } });
        leases.patch("wk02", &PatchParams::default(), &Patch::Merge(&taken)).await?;
        anyhow::Ok(())
    })?;
    let output = xtask::cargo()
        .current_dir(xtask::workspace_root())
        .args(["xtask", "verify-ha", "--lab", "--config"])
        .arg(tests::config_path())
        .arg("--kubeconfig")
        .arg(tests::kubeconfig())
        .output()?;
    let report = String::from_utf8_lossy(&output.stdout);
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{report}\n{log}");
    assert!(log.contains("wk02's Lease is still held by an interrupted drill; giving it back"), "{log}");
    assert!(report.contains("ok    one etcd member down: 20 writes over"), "{report}");
    assert!(report.contains("ok    quorum lost: /readyz/etcd failed"), "{report}");
    assert!(report.contains("ok    recovered: etcd ready and writes committed"), "{report}");
    assert!(report.contains("ok    node failure: "), "{report}");
    assert!(report.contains("went NotReady") && report.contains("ran on the other nodes"), "{report}");
    // The drill left the lab whole: every control plane runs again ...
    let config = kit::config::ClusterConfig::load(&tests::config_path())?;
    let running = xtask::lab::Lab::new(&config, xtask::lab::DEFAULT_PORT_BASE).running_pids();
    for machine in config.control_planes() {
        let twin = format!("twin-{}", machine.name);
        assert!(running.iter().any(|(name, _)| *name == twin), "{twin} runs after the drill");
    }
    // ... and every node and every running pod Ready again: the failed node's heartbeat was
    // given back, and its pods (marked not Ready while it was gone) were reported Ready again.
    let (not_ready, pods_not_ready) = runtime.block_on(async {
        let client = tests::lab_client().await?;
        let nodes = kit::lab::nodes_not_ready(&client, &config).await?;
        let running = ListParams::default().fields("status.phase=Running");
        let pods: Vec<String> = Api::<Pod>::all(client)
            .list(&running)
            .await?
            .items
            .into_iter()
            .filter(|pod| pod.metadata.deletion_timestamp.is_none())
            .filter(|pod| !kit::lab::pod_is_ready(pod))
            .filter_map(|pod| pod.metadata.name)
            .collect();
        anyhow::Ok((nodes, pods))
    })?;
    assert!(not_ready.is_empty(), "nodes not Ready after the drill: {not_ready:?}");
    assert!(pods_not_ready.is_empty(), "running pods not Ready after the drill: {pods_not_ready:?}");
    Ok(())
}
