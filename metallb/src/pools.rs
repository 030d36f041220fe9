//! MetalLB's configuration as typed objects, derived from `cluster.yaml`: two address pools
//! (the entry points as single addresses nobody gets by chance, and the rest of the pool) and
//! the L2 advertisement that announces them over ARP.

use std::net::Ipv4Addr;

use kit::config::{ClusterConfig, IpRange};
use kit::manifest::to_dynamic;
use kube::api::{DynamicObject, ObjectMeta};
use serde::Serialize;

use crate::{ADVERTISEMENT, ENTRYPOINT_POOL, GENERAL_POOL, NAMESPACE};

/// metallb.io/v1beta1 IPAddressPool: the fields talos-ha sets.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IpAddressPool {
    api_version: &'static str,
    kind: &'static str,
    pub metadata: ObjectMeta,
    pub spec: IpAddressPoolSpec,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IpAddressPoolSpec {
    pub addresses: Vec<String>,
    pub auto_assign: bool,
}

/// metallb.io/v1beta1 L2Advertisement: which pools the speakers announce over ARP.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct L2Advertisement {
    api_version: &'static str,
    kind: &'static str,
    pub metadata: ObjectMeta,
    pub spec: L2AdvertisementSpec,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct L2AdvertisementSpec {
    pub ip_address_pools: Vec<String>,
}

fn metadata(name: &str) -> ObjectMeta {
    ObjectMeta { name: Some(name.into()), namespace: Some(NAMESPACE.into()), ..ObjectMeta::default() }
}

fn pool(name: &str, addresses: Vec<String>, auto_assign: bool) -> IpAddressPool {
    IpAddressPool {
        api_version: "metallb.io/v1beta1",
        kind: "IPAddressPool",
        metadata: metadata(name),
        spec: IpAddressPoolSpec { addresses, auto_assign },
    }
}

/// The pools: the entry points as single addresses, and the rest of `metallb.pool` as ranges
/// (left out when the config's pool holds nothing but the entry points).
pub fn pools(config: &ClusterConfig) -> Vec<IpAddressPool> {
    let reserved = [config.traefik_ip, config.envoy_gateway_ip];
    let entrypoints = reserved.iter().map(|ip| format!("{ip}/32")).collect();
    let general = ranges_without(config.metallb_pool, &reserved);
    let mut pools = vec![pool(ENTRYPOINT_POOL, entrypoints, false)];
    if !general.is_empty() {
        pools.push(pool(GENERAL_POOL, general, true));
    }
    pools
}

/// `range` minus the `excluded` addresses, as `first-last` ranges.
fn ranges_without(range: IpRange, excluded: &[Ipv4Addr]) -> Vec<String> {
    let mut ranges = Vec::new();
    let mut start: Option<u32> = None;
    let (first, last) = (u32::from(range.first), u32::from(range.last));
    for address in first..=last {
        let taken = excluded.contains(&Ipv4Addr::from(address));
        match (taken, start) {
            (false, None) => start = Some(address),
            (true, Some(from)) => {
                ranges.push(format!("{}-{}", Ipv4Addr::from(from), Ipv4Addr::from(address - 1)));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(from) = start {
        ranges.push(format!("{}-{}", Ipv4Addr::from(from), Ipv4Addr::from(last)));
    }
    ranges
}

/// Announces every pool over ARP.
pub fn advertisement(config: &ClusterConfig) -> L2Advertisement {
    let ip_address_pools = pools(config).into_iter().filter_map(|pool| pool.metadata.name).collect();
    L2Advertisement {
        api_version: "metallb.io/v1beta1",
        kind: "L2Advertisement",
        metadata: metadata(ADVERTISEMENT),
        spec: L2AdvertisementSpec { ip_address_pools },
    }
}

/// The pools, then the advertisement: what the stage applies after the release.
pub fn objects(config: &ClusterConfig) -> anyhow::Result<Vec<DynamicObject>> {
    let mut objects: Vec<DynamicObject> = pools(config).iter().map(to_dynamic).collect::<anyhow::Result<_>>()?;
    objects.push(to_dynamic(&advertisement(config))?);
    Ok(objects)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_entry_points_are_carved_out_of_the_pool() {
        let range: IpRange = "172.16.16.101-172.16.16.120".parse().expect("range");
        let reserved = [Ipv4Addr::new(172, 16, 16, 101), Ipv4Addr::new(172, 16, 16, 102)];
        assert_eq!(ranges_without(range, &reserved), ["172.16.16.103-172.16.16.120"]);
        let middle = [Ipv4Addr::new(172, 16, 16, 110)];
        assert_eq!(ranges_without(range, &middle), ["172.16.16.101-172.16.16.109", "172.16.16.111-172.16.16.120"]);
        let everything: Vec<Ipv4Addr> = (101..=120).map(|last| Ipv4Addr::new(172, 16, 16, last)).collect();
        assert!(ranges_without(range, &everything).is_empty());
    }
}
