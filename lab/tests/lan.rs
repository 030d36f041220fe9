//! Issue 15, part 1: the box. The config's LAN is built from network namespaces; a machine
//! in it, once it took its address, reaches another at its config address; nothing of it is connected to this machine's
//! own network; building it twice changes nothing; taking it down leaves nothing behind.
//! (Root only, as the box itself for now: CI runs as root.)

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use lab::lan::Lan;

/// The repository's config under another cluster name, so its namespaces never meet a running
/// lab's.
fn config(dir: &std::path::Path) -> anyhow::Result<kit::config::ClusterConfig> {
    let text =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("cluster.yaml"))?
            .replace("name: talos-ha ", "name: lantest ");
    let path = dir.join("cluster.yaml");
    std::fs::write(&path, text)?;
    Ok(kit::config::ClusterConfig::load(&path)?)
}

/// Runs `work` on a thread whose network stack is `namespace`'s (setns affects the calling
/// thread only).
fn in_namespace<T: Send + 'static>(
    namespace: &str,
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> std::thread::JoinHandle<anyhow::Result<T>> {
    let namespace = namespace.to_owned();
    std::thread::spawn(move || {
        lab::lan::enter(&namespace)?;
        work()
    })
}

#[test]
fn the_box_is_the_configs_lan_sealed_inside_this_machine() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = config(dir.path())?;
    let lan = Lan::new(&config);
    lan.down()?; // a box an interrupted run left behind
    lan.up()?;
    let result = (|| {
        assert_eq!(lan.present()?.len(), 1 + 1 + config.nodes.len(), "the switch, the workstation, six nodes");
        let leaks = lan.leaks()?;
        assert!(leaks.is_empty(), "{leaks:?}");

        // A machine takes its own address (its twin: the DHCP lease, then its config's); here
        // cp01 takes its lease by hand. It then listens on its config address, port 50000
        // (where its Talos API will be); the workstation connects to that address. The packets
        // cross the bridge, inside the box.
        let cp01 = lan.member("cp01").expect("cp01 is on the LAN").clone();
        let lease = lan.lease(&cp01);
        let took = std::process::Command::new("ip")
            .args(["-n", &cp01.namespace, "addr", "add"])
            .arg(format!("{}/{}", lease.address, lease.prefix_len))
            .args(["dev", "eth0"])
            .status()?;
        assert!(took.success(), "cp01 takes its lease");
        let address = SocketAddr::from((cp01.address, 50000));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let server = in_namespace(&cp01.namespace, move || {
            let listener = TcpListener::bind(address)?;
            ready_tx.send(())?;
            let (mut stream, peer) = listener.accept()?;
            stream.write_all(b"hello from cp01")?;
            Ok(peer)
        });
        ready_rx.recv_timeout(Duration::from_secs(5))?;
        let client = in_namespace(&lan.admin().namespace, move || {
            let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer)?;
            Ok(answer)
        });
        let answer = client.join().map_err(|_| anyhow::anyhow!("client thread panicked"))??;
        let peer = server.join().map_err(|_| anyhow::anyhow!("server thread panicked"))??;
        assert_eq!(answer, "hello from cp01");
        assert_eq!(peer.ip(), std::net::IpAddr::V4(lan.admin().address), "the workstation's own address");
        assert!(!config.nodes.iter().any(|node| node.ip == lan.admin().address), "a free address");

        lan.up()?; // a complete box is left as it is
        assert!(lan.leaks()?.is_empty());
        anyhow::Ok(())
    })();
    let removed = lan.down()?;
    result?;
    assert_eq!(removed, 8);
    assert!(lan.present()?.is_empty(), "nothing is left behind");
    Ok(())
}
