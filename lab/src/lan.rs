//! The box: the config's LAN, sealed inside this machine.
//!
//! On the real site six machines hang off one switch, each at its `cluster.yaml` address, with
//! the router at `network.gateway`. The box builds the same picture out of Linux network
//! namespaces, each one a machine's own network stack (its interfaces, addresses, routes):
//!
//! ```text
//!  <cluster>-admin ── eth0 ─┐                      the workstation: talosctl, kubectl, stages
//!  <cluster>-cp01  ── eth0 ─┤                      one namespace per node, at its address
//!  …                        ├── bridge lan0 (gateway address)   in <cluster>-lan: the switch
//!  <cluster>-wk03  ── eth0 ─┘
//! ```
//! Each machine's `eth0` is one end of a veth pair whose other end is plugged into the bridge
//! in the switch namespace. Nothing is plugged into this machine's own network: the switch
//! namespace has the bridge and nothing else, and no namespace of the box has an interface
//! outside it. So a packet for a config address can only ever reach another namespace of the
//! box, and a packet for anything else has nowhere to go. That is what makes the config's
//! addresses safe to use here (the network rule: outside the box, nothing dials them).
//!
//! Built with iproute2's `ip`, the commands a person would type, as root. (Without root the
//! box is not built yet: the message says what to do.)

use std::net::Ipv4Addr;

use anyhow::Context as _;
use kit::config::ClusterConfig;
use xshell::{Shell, cmd};

/// The bridge in the switch namespace, and each machine's interface.
const BRIDGE: &str = "lan0";
const INTERFACE: &str = "eth0";

/// One machine on the LAN: its namespace, its address, and the switch port it is plugged into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub namespace: String,
    pub address: Ipv4Addr,
    /// The veth end in the switch namespace (at most 15 characters, so numbered).
    pub port: String,
}

/// A DHCP lease: an address on the LAN and the router behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub router: Ipv4Addr,
}

/// The box for one cluster config.
#[derive(Debug, Clone)]
pub struct Lan {
    /// The cluster's name, which every namespace of its box starts with.
    pub cluster: String,
    /// The switch namespace.
    pub switch: String,
    pub gateway: Ipv4Addr,
    pub prefix_len: u8,
    /// The workstation first, then every node in config order.
    pub members: Vec<Member>,
}

impl Lan {
    pub fn new(config: &ClusterConfig) -> Lan {
        let namespace = |who: &str| machine_namespace(&config.name, who);
        let admin = Member {
            name: "admin".to_owned(),
            namespace: kit::lab::workstation_namespace(&config.name),
            address: admin_address(config),
            port: "port0".to_owned(),
        };
        let nodes = config.nodes.iter().enumerate().map(|(index, node)| Member {
            name: node.name.clone(),
            namespace: namespace(&node.name),
            address: node.ip,
            port: format!("port{}", index + 1),
        });
        Lan {
            cluster: config.name.clone(),
            switch: namespace("lan"),
            gateway: config.network.gateway,
            prefix_len: config.network.subnet.prefix_len(),
            members: std::iter::once(admin).chain(nodes).collect(),
        }
    }

    /// What the site's DHCP server hands a machine booted from the ISO: a reservation at its
    /// config address (the prerequisite of contacting it there in maintenance mode). Its twin
    /// takes the lease itself, and drops it once its config's network documents say otherwise.
    pub fn lease(&self, member: &Member) -> Lease {
        Lease { address: member.address, prefix_len: self.prefix_len, router: self.gateway }
    }

    /// The workstation's namespace: where talosctl, kubectl and the stage binaries run.
    pub fn admin(&self) -> &Member {
        &self.members[0]
    }

    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|member| member.name == name)
    }

    /// Every namespace of the box: the switch, then the machines.
    pub fn namespaces(&self) -> Vec<&str> {
        std::iter::once(self.switch.as_str()).chain(self.members.iter().map(|m| m.namespace.as_str())).collect()
    }

    /// Builds whatever part of the box is missing; a complete box is left as it is.
    pub fn up(&self) -> anyhow::Result<()> {
        ensure_root()?;
        let sh = Shell::new()?;
        let existing = existing_namespaces(&sh)?;
        let switch = &self.switch;
        if !existing.contains(switch) {
            cmd!(sh, "ip netns add {switch}").quiet().run()?;
            cmd!(sh, "ip -n {switch} link set lo up").quiet().run()?;
            cmd!(sh, "ip -n {switch} link add {BRIDGE} type bridge").quiet().run()?;
            let gateway = format!("{}/{}", self.gateway, self.prefix_len);
            // The router's address lives on the switch: the machines' default route points at
            // it, and behind it there is nothing.
            cmd!(sh, "ip -n {switch} addr add {gateway} dev {BRIDGE}").quiet().run()?;
            cmd!(sh, "ip -n {switch} link set {BRIDGE} up").quiet().run()?;
        }
        for member in &self.members {
            if !existing.contains(&member.namespace) {
                self.plug_in(&sh, member).with_context(|| format!("plugging {} into the box", member.name))?;
            }
        }
        Ok(())
    }

    /// One machine: a namespace and a veth pair (`eth0` inside, a port on the bridge). The
    /// workstation gets its static address and a default route to the gateway; a node's twin
    /// takes its own (its DHCP lease, then its config's).
    fn plug_in(&self, sh: &Shell, member: &Member) -> anyhow::Result<()> {
        let (namespace, switch, port) = (&member.namespace, &self.switch, &member.port);
        cmd!(sh, "ip netns add {namespace}").quiet().run()?;
        cmd!(sh, "ip -n {namespace} link set lo up").quiet().run()?;
        // Both ends are created straight inside the box: neither ever exists on this machine.
        cmd!(sh, "ip link add {INTERFACE} netns {namespace} type veth peer name {port} netns {switch}")
            .quiet()
            .run()?;
        cmd!(sh, "ip -n {switch} link set {port} master {BRIDGE} up").quiet().run()?;
        cmd!(sh, "ip -n {namespace} link set {INTERFACE} up").quiet().run()?;
        if member == self.admin() {
            let address = format!("{}/{}", member.address, self.prefix_len);
            let gateway = self.gateway.to_string();
            cmd!(sh, "ip -n {namespace} addr add {address} dev {INTERFACE}").quiet().run()?;
            cmd!(sh, "ip -n {namespace} route add default via {gateway}").quiet().run()?;
        }
        Ok(())
    }

    /// Takes a machine's switch port down or up: the cable of a machine without power carries
    /// nothing, so the machine neither answers ARP nor resets connections (its namespace, with
    /// the addresses it had, outlives a killed twin).
    pub fn set_port(&self, member: &Member, up: bool) -> anyhow::Result<()> {
        let sh = Shell::new()?;
        let (switch, port, state) = (&self.switch, &member.port, if up { "up" } else { "down" });
        cmd!(sh, "ip -n {switch} link set {port} {state}").quiet().run()?;
        Ok(())
    }

    /// Removes every namespace of the box (their interfaces go with them). Returns how many
    /// there were.
    pub fn down(&self) -> anyhow::Result<usize> {
        let sh = Shell::new()?;
        let existing = existing_namespaces(&sh)?;
        let mut removed = 0;
        for namespace in self.namespaces().into_iter().rev().filter(|ns| existing.iter().any(|e| e == ns)) {
            ensure_root()?;
            cmd!(sh, "ip netns delete {namespace}").quiet().run()?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Unplugs a machine the config no longer names (its namespace and its port go), if it is
    /// there; whether it was.
    pub fn unplug_retired(&self, name: &str) -> anyhow::Result<bool> {
        let namespace = machine_namespace(&self.cluster, name);
        let sh = Shell::new()?;
        if !existing_namespaces(&sh)?.contains(&namespace) {
            return Ok(false);
        }
        ensure_root()?;
        cmd!(sh, "ip netns delete {namespace}").quiet().run()?;
        Ok(true)
    }

    /// Which namespaces of the box exist now.
    pub fn present(&self) -> anyhow::Result<Vec<String>> {
        let existing = existing_namespaces(&Shell::new()?)?;
        Ok(self.namespaces().into_iter().filter(|ns| existing.iter().any(|e| e == ns)).map(str::to_owned).collect())
    }

    /// Why the box would leak, if it would: an interface of a box namespace whose other end is
    /// outside the box, or a route through anything but the box's own interfaces.
    pub fn leaks(&self) -> anyhow::Result<Vec<String>> {
        let sh = Shell::new()?;
        let mut leaks = Vec::new();
        for namespace in self.namespaces() {
            let links: Vec<serde_json::Value> =
                serde_json::from_str(&cmd!(sh, "ip -n {namespace} -j link show").quiet().read()?)?;
            for link in &links {
                let name = link["ifname"].as_str().unwrap_or_default();
                // A port of the switch leads to a machine of the box, one the config names or one
                // that was removed from it and still sits on the LAN, powered off.
                let allowed = if namespace == self.switch {
                    name == "lo" || name == BRIDGE || is_port(name)
                } else {
                    name == "lo" || name == INTERFACE
                };
                if !allowed {
                    leaks.push(format!("{namespace} has an interface {name} that is not part of the box"));
                }
            }
            let routes: Vec<serde_json::Value> =
                serde_json::from_str(&cmd!(sh, "ip -n {namespace} -j route show").quiet().read()?)?;
            for route in &routes {
                let device = route["dev"].as_str().unwrap_or_default();
                if ![INTERFACE, BRIDGE].contains(&device) {
                    leaks.push(format!("{namespace} routes {} through {device}", route["dst"]));
                }
            }
        }
        // This machine's own stack has no end of any veth of the box.
        let host: Vec<serde_json::Value> = serde_json::from_str(&cmd!(sh, "ip -j link show").quiet().read()?)?;
        for link in host {
            let name = link["ifname"].as_str().unwrap_or_default();
            if self.members.iter().any(|m| m.port == name) && link["link_netnsid"].is_number() {
                leaks.push(format!("this machine has the box's port {name}"));
            }
        }
        Ok(leaks)
    }
}

/// The workstation's address: the highest host address of the subnet that nothing in the
/// config uses (not the gateway, the VIP, a node, or the MetalLB pool).
pub fn admin_address(config: &ClusterConfig) -> Ipv4Addr {
    let subnet = config.network.subnet;
    let used = |ip: Ipv4Addr| {
        ip == config.network.gateway
            || ip == config.network.vip
            || config.nodes.iter().any(|node| node.ip == ip)
            || config.metallb_pool.contains(ip)
    };
    subnet.hosts().rev().find(|ip| !used(*ip)).unwrap_or(subnet.network())
}

/// The namespace of one machine (or of the switch, `lan`) of a cluster's box.
pub fn machine_namespace(cluster: &str, who: &str) -> String {
    format!("{cluster}-{who}")
}

/// Whether an interface of the switch is one of its ports (`port<N>`, one per machine).
fn is_port(name: &str) -> bool {
    name.strip_prefix("port").is_some_and(|number| !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()))
}

fn existing_namespaces(sh: &Shell) -> anyhow::Result<Vec<String>> {
    // `ip netns list` prints `name (id: N)` or just `name`.
    let listed = cmd!(sh, "ip netns list").quiet().read().context("`ip netns list` (is iproute2 installed?)")?;
    Ok(listed.lines().filter_map(|line| line.split_whitespace().next()).map(str::to_owned).collect())
}

fn ensure_root() -> anyhow::Result<()> {
    anyhow::ensure!(
        nix::unistd::geteuid().is_root(),
        "the box (the config's LAN in network namespaces) needs root for now: run `sudo -E cargo xtask lab up` \
         (a box for ordinary users, through user namespaces, is not built yet)"
    );
    anyhow::ensure!(
        which::which("ip").is_ok(),
        "the box is built with iproute2's `ip`, which is not installed: `apt-get install iproute2`"
    );
    Ok(())
}

/// How a test or a tool becomes the workstation of the box without leaving its own process.
pub use kit::lab::enter_namespace as enter;

/// Whether something accepts connections at `address` inside `namespace` (asked from a thread
/// that enters the namespace, so nothing outside the box dials a box address).
pub fn listens(namespace: &str, address: std::net::SocketAddr) -> bool {
    let namespace = namespace.to_owned();
    std::thread::spawn(move || {
        enter(&namespace).is_ok()
            && std::net::TcpStream::connect_timeout(&address, std::time::Duration::from_millis(500)).is_ok()
    })
    .join()
    .unwrap_or(false)
}

/// Runs `command` inside `namespace` from a thread that enters it (the process it starts is
/// there too), and returns what it printed and how it ended.
pub fn output_in(namespace: &str, mut command: std::process::Command) -> anyhow::Result<std::process::Output> {
    let namespace = namespace.to_owned();
    std::thread::spawn(move || {
        enter(&namespace)?;
        command.output().with_context(|| format!("running {:?} in {namespace}", command.get_program()))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the thread in the box panicked"))?
}

/// Runs `command` inside `namespace` (`ip netns exec`), with `env` set: what `lab shell` does.
pub fn exec_in(
    namespace: &str,
    command: &[String],
    env: &[(&str, std::ffi::OsString)],
) -> anyhow::Result<std::process::ExitStatus> {
    ensure_root()?;
    let mut process = std::process::Command::new("ip");
    process.args(["netns", "exec", namespace]).args(command);
    for (name, value) in env {
        process.env(name, value);
    }
    process.status().with_context(|| format!("running {command:?} in {namespace}"))
}
