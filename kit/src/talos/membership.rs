//! Who is in the cluster, as Talos's "replacing a node" procedure reads and changes it: etcd's
//! members as a control plane lists them (`talosctl etcd members`,
//! cmd/talosctl/cmd/talos/etcd.go), the member a machine left behind, its removal by ID
//! (`etcd remove-member`, v1alpha1_server.go EtcdRemoveMemberByID: through the cluster, a
//! leader required, NotFound once it is gone), and a machine's graceful reset (`talosctl reset`:
//! cordon and drain, leave etcd, wipe, power off; v1alpha1_sequencer.go Reset).

use std::net::Ipv4Addr;
use std::time::Duration;

use super::{PROBE_TIMEOUT, TalosApi};
use crate::config::Node;

/// One etcd member as a control plane lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdMember {
    /// The member ID in Talos's hex form (what `etcd remove-member` takes).
    pub id: String,
    /// The machine's hostname; empty for a learner that was added and never started (etcd
    /// learns a member's name when it first runs).
    pub hostname: String,
    pub peer_urls: Vec<String>,
    pub learner: bool,
}

impl EtcdMember {
    /// Whether one of its peer URLs is at `ip` (`https://<ip>:2380`).
    pub fn is_at(&self, ip: Ipv4Addr) -> bool {
        self.peer_urls.iter().any(|url| url_host(url) == Some(ip))
    }

    /// The address of its first peer URL: the machine's.
    pub fn address(&self) -> Option<Ipv4Addr> {
        self.peer_urls.iter().find_map(|url| url_host(url))
    }

    /// Its peer URLs, as one string.
    pub fn peers(&self) -> String {
        self.peer_urls.join(",")
    }
}

fn url_host(url: &str) -> Option<Ipv4Addr> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.split([':', '/']).next()?.trim_matches(['[', ']']).parse().ok()
}

/// The rows of `talosctl etcd members`: NODE ID HOSTNAME PEER-URLS CLIENT-URLS LEARNER. The
/// table is aligned with spaces, so an empty column leaves no word: a learner that was added
/// and never started has neither a hostname nor client URLs yet. Between the ID and LEARNER,
/// the word that is not a URL is the hostname and the first URL list is the peers'.
pub fn parse_members(table: &str) -> Vec<EtcdMember> {
    table
        .lines()
        .skip(1)
        .filter_map(|row| {
            let words: Vec<&str> = row.split_whitespace().collect();
            let [_, id, middle @ .., learner] = words.as_slice() else { return None };
            let hostname = middle.iter().find(|word| !word.contains("://")).copied().unwrap_or_default();
            let peers = middle.iter().find(|word| word.contains("://"))?;
            Some(EtcdMember {
                id: (*id).to_owned(),
                hostname: hostname.to_owned(),
                peer_urls: peers.split(',').map(str::to_owned).collect(),
                learner: *learner == "true",
            })
        })
        .collect()
}

/// etcd's members as `node` lists them (it asks its own member; a leader is needed).
pub async fn members(api: &impl TalosApi, node: &Node) -> anyhow::Result<Vec<EtcdMember>> {
    Ok(parse_members(&api.ask(node, &["etcd", "members"], PROBE_TIMEOUT).await?))
}

/// The member `node` left behind in `members`: the one with its hostname at its address, or an
/// unnamed one at its address (a learner it added and never started). `Ok(None)` when there is
/// none (never joined, or removed already). A member with its hostname at another address, or
/// another machine's member at its address, is an error: that is not the machine cluster.yaml
/// describes (a replacement at a new address joins as an unhealthy learner while the old
/// member stays, siderolabs/talos#7903), and removing by a guess could take a healthy member.
pub fn left_behind<'m>(members: &'m [EtcdMember], node: &Node) -> anyhow::Result<Option<&'m EtcdMember>> {
    let named = |member: &&EtcdMember| member.hostname == node.name;
    let at_address = |member: &&EtcdMember| member.is_at(node.ip);
    if let Some(member) = members.iter().find(|member| named(member) && at_address(member)) {
        return Ok(Some(member));
    }
    if let Some(elsewhere) = members.iter().find(named) {
        anyhow::bail!(
            "etcd's member {} is named {} but its peer address is {}, not {} (cluster.yaml's): a control plane that \
             moves to a new address is not replaced by this tool (siderolabs/talos#7903); remove that member by hand \
             (`talosctl etcd remove-member {}`) once you are sure it is the old machine",
            elsewhere.id,
            node.name,
            elsewhere.peers(),
            node.ip,
            elsewhere.id
        );
    }
    if let Some(other) = members.iter().find(|member| at_address(member) && !member.hostname.is_empty()) {
        anyhow::bail!(
            "etcd's member {} at {} is named {}, not {}: cluster.yaml gives that address to another machine than \
             etcd knows there; fix cluster.yaml or the machine's hostname first",
            other.id,
            node.ip,
            other.hostname,
            node.name
        );
    }
    Ok(members.iter().find(|member| at_address(member)))
}

/// `talosctl etcd remove-member <id>`, asked of `via` (a healthy control plane). `Ok(false)`
/// when etcd has no such member any more (a run interrupted after removing it).
pub async fn remove_member(api: &impl TalosApi, via: &Node, id: &str) -> anyhow::Result<bool> {
    let output = api.talosctl(via, &["etcd", "remove-member", id], PROBE_TIMEOUT * 2, &mut |_| {}).await?;
    if !output.success && output.stderr.contains("NotFound") {
        return Ok(false);
    }
    output.ok(format!("talosctl etcd remove-member {id} on {} ({})", via.name, via.ip))?;
    Ok(true)
}

/// How long a graceful reset may take: Talos's drain (up to 5 minutes), leaving etcd, the wipe.
pub const RESET_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// `talosctl reset --graceful --reboot=false`, waiting as talosctl does (its events until the
/// machine goes down): Talos cordons and drains the node, a control plane leaves etcd (its
/// member removed by itself, its data deleted), the system disk is wiped and the machine powers
/// off. `progress` gets talosctl's lines.
pub async fn reset_and_power_off(
    api: &impl TalosApi,
    node: &Node,
    progress: &mut (dyn FnMut(&str) + Send),
) -> anyhow::Result<()> {
    let output = api.talosctl(node, &["reset", "--graceful", "--reboot=false"], RESET_TIMEOUT, progress).await?;
    output.ok(format!("talosctl reset --graceful on {} ({})", node.name, node.ip)).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Role;

    const TABLE: &str = "NODE            ID                 HOSTNAME   PEER URLS                   CLIENT URLS                 LEARNER\n\
        172.16.16.147   1d3f6a2b9c8e7d01   cp01       https://172.16.16.147:2380   https://172.16.16.147:2379   false\n\
        172.16.16.147   2e4a7b3c0d9f8e12   cp02       https://172.16.16.148:2380   https://172.16.16.148:2379   false\n\
        172.16.16.147   3f5b8c4d1e0a9f23   cp03       https://172.16.16.149:2380   https://172.16.16.149:2379   false\n";

    fn node(name: &str, ip: &str) -> Node {
        Node {
            name: name.into(),
            role: Role::ControlPlane,
            ip: ip.parse().expect("an address"),
            install_disk: "/dev/sda".into(),
            link_selector: String::new(),
        }
    }

    #[test]
    fn members_are_read_with_their_ids_names_and_peer_addresses() {
        let members = parse_members(TABLE);
        assert_eq!(members.len(), 3);
        assert_eq!(members[1].id, "2e4a7b3c0d9f8e12");
        assert_eq!(members[1].hostname, "cp02");
        assert!(members[1].is_at("172.16.16.148".parse().expect("an address")));
        assert!(!members[1].learner);
        // A learner added and never started has no name and no client URLs yet.
        let unstarted = "NODE ID HOSTNAME PEER URLS CLIENT URLS LEARNER\n\
            172.16.16.147   4a6c9d5e2f1b0a34   https://172.16.16.148:2380      true\n";
        let members = parse_members(unstarted);
        assert_eq!(members[0].hostname, "");
        assert!(members[0].learner && members[0].is_at("172.16.16.148".parse().expect("an address")));
    }

    #[test]
    fn the_member_left_behind_is_found_by_name_and_address_and_nothing_else() -> anyhow::Result<()> {
        let members = parse_members(TABLE);
        let found = left_behind(&members, &node("cp02", "172.16.16.148"))?;
        assert_eq!(found.map(|member| member.id.as_str()), Some("2e4a7b3c0d9f8e12"));
        // Removed already: nothing to remove again.
        let rest: Vec<EtcdMember> = members.iter().filter(|member| member.hostname != "cp02").cloned().collect();
        assert_eq!(left_behind(&rest, &node("cp02", "172.16.16.148"))?, None);
        // The name at another address (a machine moved), or another name at the address: refused.
        let moved = left_behind(&members, &node("cp02", "172.16.16.158")).expect_err("moved");
        assert!(format!("{moved}").contains("#7903"), "{moved}");
        let other = left_behind(&members, &node("cp04", "172.16.16.148")).expect_err("another machine");
        assert!(format!("{other}").contains("named cp02"), "{other}");
        Ok(())
    }
}
