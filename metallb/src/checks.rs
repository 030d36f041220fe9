//! What stage 02 checks before (the pool is free, kube-proxy lets L2 mode work) and after
//! (a speaker per node, the pools and advertisement stored as the config gives them, MetalLB
//! handing out addresses). Each check's verdict is a pure function, tested without a cluster.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Service;
use kit::config::{ClusterConfig, IpRange};
use kit::context::Target;
use kit::report::Check;
use kube::api::{Api, DynamicObject, ObjectMeta};
use kube::discovery::ApiResource;

use crate::pools::{IpAddressPool, L2Advertisement, advertisement, pools};
use crate::{ADVERTISEMENT, ENTRYPOINT_POOL, GENERAL_POOL, NAMESPACE, SPEAKER};

/// The annotation MetalLB's controller puts on a Service it gave an address.
const ALLOCATED_FROM_POOL: &str = "metallb.io/ip-allocated-from-pool";

/// No Service holds an address of the pool that MetalLB did not give it: another load
/// balancer (an earlier install, kube-vip's, a cloud's) answering for those addresses would
/// fight MetalLB's announcements for them.
pub async fn pool_free(client: &kube::Client, pool: IpRange) -> anyhow::Result<Check> {
    let services: Api<Service> = Api::all(client.clone());
    let listed = services.list(&Default::default()).await.context("listing Services")?;
    Ok(pool_free_verdict(&listed.items, pool))
}

fn pool_free_verdict(services: &[Service], pool: IpRange) -> Check {
    let mut ours = 0;
    let mut others = Vec::new();
    for service in services {
        let from_metallb = service
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|annotations| annotations.contains_key(ALLOCATED_FROM_POOL));
        let ingress = service.status.as_ref().and_then(|status| status.load_balancer.as_ref()?.ingress.as_ref());
        let held: Vec<&str> = ingress
            .into_iter()
            .flatten()
            .filter_map(|entry| entry.ip.as_deref())
            .filter(|ip| ip.parse::<Ipv4Addr>().is_ok_and(|ip| pool.contains(ip)))
            .collect();
        match (held.is_empty(), from_metallb) {
            (true, _) => {}
            (false, true) => ours += 1,
            (false, false) => others.push(format!(
                "{}/{} ({})",
                service.metadata.namespace.as_deref().unwrap_or_default(),
                service.metadata.name.as_deref().unwrap_or_default(),
                held.join(", ")
            )),
        }
    }
    if others.is_empty() {
        Check::pass(
            "pool",
            format!("no Service holds an address of {pool} that MetalLB did not give it ({ours} MetalLB gave)"),
        )
    } else {
        Check::fail(
            "pool",
            format!("Services hold addresses of {pool} that MetalLB did not give: {}", others.join("; ")),
            "another load balancer answers for them: remove it, or move metallb.pool in cluster.yaml",
        )
    }
}

/// A speaker runs on every node: each answers ARP for the addresses its node announces.
pub async fn speakers(client: &kube::Client, nodes: usize) -> Check {
    match kit::wait::daemonset_ready(client, NAMESPACE, SPEAKER, nodes, Duration::from_secs(60)).await {
        Ok(_) => Check::pass("speakers", format!("a speaker is ready on each of the {nodes} nodes")),
        Err(error) => Check::fail(
            "speakers",
            format!("{error:#}"),
            "metallb apply, then look at the speaker pods and the nodes they are missing on",
        ),
    }
}

/// In IPVS mode kube-proxy binds every Service address to every node, so without strictARP
/// every node answers ARP for MetalLB's addresses and L2 mode cannot work.
pub async fn kube_proxy_arp(client: &kube::Client) -> anyhow::Result<Check> {
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), "kube-system");
    let Some(kube_proxy) = daemonsets.get_opt("kube-proxy").await? else {
        return Ok(Check::pass("kube-proxy", "no kube-proxy DaemonSet (another dataplane replaces it)"));
    };
    let args: Vec<String> = kube_proxy
        .spec
        .and_then(|spec| spec.template.spec)
        .map(|pod| {
            pod.containers
                .into_iter()
                .flat_map(|c| c.command.unwrap_or_default().into_iter().chain(c.args.unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default();
    let ipvs = args.iter().any(|arg| arg == "--proxy-mode=ipvs");
    let strict = args.iter().any(|arg| arg == "--ipvs-strict-arp=true");
    Ok(match (ipvs, strict) {
        (true, false) => Check::fail(
            "kube-proxy",
            "kube-proxy runs in IPVS mode without strictARP: every node would answer ARP for MetalLB's addresses",
            "set `cluster.proxy.extraArgs: { ipvs-strict-arp: \"true\" }` in the Talos machine config (stage 01)",
        ),
        (true, true) => Check::pass("kube-proxy", "IPVS mode with strictARP"),
        _ => Check::pass("kube-proxy", "iptables/nftables mode: L2 announcements work"),
    })
}

/// What MetalLB's controller did with a LoadBalancer Service: gave it an address, or
/// refused with an `AllocationFailed` event (metallb v0.15.3 controller/service.go).
enum Allocation {
    Address(String),
    Refused(String),
    Nothing,
}

/// A throw-away LoadBalancer Service, which asks no particular address, in the lab too:
/// MetalLB's controller runs there on the box's workstation. With a general pool it must get
/// one of its addresses (never an entry point); with only the entry-point pool (a valid
/// config: `metallb.pool` holding just the two entry points) MetalLB must refuse it, which
/// is what `autoAssign: false` on the entry points promises.
///
/// MetalLB's controller allocates from the pools as its informers last saw them: right after
/// the pools changed, or after the API came back from a control plane's loss (its informers
/// list again, with back-off), it may not have caught up. An answer that disagrees with the
/// config is asked again for up to 30 s before it counts as the controller's.
pub async fn load_balancer(client: &kube::Client, config: &ClusterConfig, target: Target) -> anyhow::Result<Check> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let allocation = probe_allocation(client).await?;
        let answered = !matches!(allocation, Allocation::Nothing);
        let verdict = load_balancer_verdict(allocation, config, target);
        if verdict.status != kit::report::Status::Fail || !answered || tokio::time::Instant::now() >= deadline {
            return Ok(verdict);
        }
        tracing::info!("{}; asking again in 5 s, in case MetalLB's controller has not caught up", verdict.reason);
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// Creates the probe Service (any left by an earlier attempt deleted first), reads what
/// MetalLB did with it within 30 s, and deletes it.
async fn probe_allocation(client: &kube::Client) -> anyhow::Result<Allocation> {
    use k8s_openapi::api::core::v1::{Event, ServicePort, ServiceSpec};
    use kube::api::{DeleteParams, ListParams, PostParams};

    let name = "talos-ha-lb-probe";
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let _ = services.delete(name, &DeleteParams::default()).await;
    let probe = Service {
        metadata: ObjectMeta { name: Some(name.into()), ..ObjectMeta::default() },
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".into()),
            ports: Some(vec![ServicePort { port: 80, ..ServicePort::default() }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let created =
        services.create(&PostParams::default(), &probe).await.context("creating the LoadBalancer probe Service")?;
    let uid = created.metadata.uid.unwrap_or_default();
    let about_probe = ListParams::default().fields(&format!("involvedObject.name={name},involvedObject.uid={uid}"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let allocation = loop {
        let ingress = services.get(name).await?.status.and_then(|s| s.load_balancer).and_then(|lb| lb.ingress);
        if let Some(ip) = ingress.and_then(|list| list.into_iter().find_map(|i| i.ip)) {
            break Allocation::Address(ip);
        }
        let refused = events.list(&about_probe).await.context("reading the probe's events")?;
        if let Some(event) = refused.items.into_iter().find(|e| e.reason.as_deref() == Some("AllocationFailed")) {
            break Allocation::Refused(event.message.unwrap_or_default());
        }
        if tokio::time::Instant::now() >= deadline {
            break Allocation::Nothing;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    services.delete(name, &DeleteParams::default()).await.context("deleting the probe Service")?;
    Ok(allocation)
}

fn load_balancer_verdict(allocation: Allocation, config: &ClusterConfig, target: Target) -> Check {
    let reserved = [config.traefik_ip, config.envoy_gateway_ip];
    let general = pools(config).iter().any(|pool| pool.metadata.name.as_deref() == Some(GENERAL_POOL));
    let name = "load balancer";
    let look = "look at the IPAddressPools (metallb verify) and the controller's log";
    match allocation {
        Allocation::Address(ip) => match ip.parse::<Ipv4Addr>() {
            Ok(ip) if general && config.metallb_pool.contains(ip) && !reserved.contains(&ip) => {
                Check::pass(name, format!("a probe LoadBalancer Service got {ip} from {GENERAL_POOL}"))
            }
            _ if reserved.iter().any(|entry| entry.to_string() == ip) => Check::fail(
                name,
                format!("a probe LoadBalancer Service that asked no address got the entry point {ip}"),
                format!("{ENTRYPOINT_POOL} must have autoAssign: false: metallb apply"),
            ),
            _ => Check::fail(name, format!("the probe got {ip}, which is not a free address of {GENERAL_POOL}"), look),
        },
        Allocation::Refused(why) if !general => Check::pass(
            name,
            format!(
                "metallb.pool holds only the entry points, and MetalLB gives them to no other Service \
                 (a probe was refused: {why})"
            ),
        ),
        Allocation::Refused(why) => {
            Check::fail(name, format!("MetalLB refused a probe LoadBalancer Service: {why}"), look)
        }
        Allocation::Nothing => Check::fail(
            name,
            "a probe LoadBalancer Service got neither an address nor a refusal from MetalLB within 30s",
            match target {
                // The lab starts MetalLB's controller only once this stage's CRDs exist.
                Target::Lab => {
                    "run `cargo xtask lab up` to start MetalLB's controller (install-all --lab does), \
                                then look at state/lab/logs/metallb-controller.log"
                }
                Target::Talos => "look at the controller's log: kubectl -n metallb-system logs deploy/controller",
            },
        ),
    }
}

/// The pools and advertisement as the API stores them, compared with what the config wants.
pub async fn stored(client: &kube::Client, config: &ClusterConfig) -> anyhow::Result<Vec<Check>> {
    let resource = |kind: &str, plural: &str| ApiResource {
        group: "metallb.io".into(),
        version: "v1beta1".into(),
        api_version: "metallb.io/v1beta1".into(),
        kind: kind.into(),
        plural: plural.into(),
    };
    let pool_api: Api<DynamicObject> = Api::namespaced_with(client.clone(), NAMESPACE, &kit::names::ip_address_pool());
    let mut checks = Vec::new();
    let wanted_pools = pools(config);
    for wanted in &wanted_pools {
        let name = wanted.metadata.name.clone().unwrap_or_default();
        let stored = pool_api.get_opt(&name).await.with_context(|| format!("reading IPAddressPool {name}"))?;
        checks.push(pool_verdict(wanted, stored.as_ref().map(|pool| &pool.data)));
    }
    let advertisements: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), NAMESPACE, &resource("L2Advertisement", "l2advertisements"));
    let stored = advertisements.get_opt(ADVERTISEMENT).await?;
    checks.push(advertisement_verdict(&advertisement(config), stored.as_ref().map(|adv| &adv.data)));
    Ok(checks)
}

/// A stored pool has the config's addresses and its autoAssign: an entry-point pool that
/// assigns automatically lets any LoadBalancer Service take .101 or .102.
fn pool_verdict(wanted: &IpAddressPool, stored: Option<&serde_json::Value>) -> Check {
    let name = wanted.metadata.name.clone().unwrap_or_default();
    let check = format!("pool {name}");
    let Some(stored) = stored else {
        return Check::fail(check, format!("IPAddressPool {NAMESPACE}/{name} is missing"), "metallb apply");
    };
    let addresses = stored.pointer("/spec/addresses").cloned().unwrap_or_default();
    // MetalLB's CRD defaults autoAssign to true.
    let auto_assign = stored.pointer("/spec/autoAssign").and_then(serde_json::Value::as_bool).unwrap_or(true);
    if addresses != serde_json::json!(wanted.spec.addresses) {
        Check::fail(
            check,
            format!("stored addresses are {addresses}, the config gives {:?}", wanted.spec.addresses),
            "metallb apply",
        )
    } else if auto_assign != wanted.spec.auto_assign {
        Check::fail(
            check,
            format!("autoAssign is {auto_assign}, the config's pool wants {}", wanted.spec.auto_assign),
            "metallb apply",
        )
    } else {
        Check::pass(check, format!("{}, autoAssign {auto_assign}", wanted.spec.addresses.join(", ")))
    }
}

/// The stored advertisement announces exactly the config's pools: a pool left out is never
/// answered for over ARP, however well MetalLB assigns it.
fn advertisement_verdict(wanted: &L2Advertisement, stored: Option<&serde_json::Value>) -> Check {
    let check = "l2 advertisement";
    let Some(stored) = stored else {
        return Check::fail(check, format!("{ADVERTISEMENT} is missing"), "metallb apply");
    };
    let mut announced: Vec<String> = stored
        .pointer("/spec/ipAddressPools")
        .and_then(serde_json::Value::as_array)
        .map(|pools| pools.iter().filter_map(|pool| pool.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    let mut pools = wanted.spec.ip_address_pools.clone();
    announced.sort();
    pools.sort();
    if announced == pools {
        Check::pass(check, format!("{ADVERTISEMENT} announces {}", pools.join(", ")))
    } else if announced.is_empty() {
        // An empty list announces every pool, ours and anyone else's.
        Check::fail(check, format!("{ADVERTISEMENT} lists no pools, so it announces every pool"), "metallb apply")
    } else {
        Check::fail(
            check,
            format!("{ADVERTISEMENT} announces {}, the config's pools are {}", announced.join(", "), pools.join(", ")),
            "metallb apply",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, ip: &str, from_metallb: bool) -> Service {
        let annotations = from_metallb.then(|| serde_json::json!({ ALLOCATED_FROM_POOL: "general" }));
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "namespace": "default", "annotations": annotations },
            "status": { "loadBalancer": { "ingress": [{ "ip": ip }] } },
        }))
        .expect("a Service")
    }

    #[test]
    fn a_pool_address_another_load_balancer_holds_fails_the_check() {
        let pool: IpRange = "172.16.16.101-172.16.16.120".parse().expect("range");
        let ours = service("traefik", "172.16.16.101", true);
        let elsewhere = service("outside", "10.0.0.5", false);
        let passed = pool_free_verdict(&[ours.clone(), elsewhere], pool);
        assert_eq!(passed.status, kit::report::Status::Pass, "{}", passed.reason);
        assert!(passed.reason.contains("(1 MetalLB gave)"), "{}", passed.reason);
        let failed = pool_free_verdict(&[ours, service("kube-vip-lb", "172.16.16.110", false)], pool);
        assert_eq!(failed.status, kit::report::Status::Fail);
        assert!(failed.reason.contains("default/kube-vip-lb (172.16.16.110)"), "{}", failed.reason);
    }

    fn config_with_pool(pool: &str) -> ClusterConfig {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../cluster.yaml")).expect("cluster.yaml");
        let edited = text.replace("pool: 172.16.16.101-172.16.16.120", &format!("pool: {pool}"));
        ClusterConfig::parse(&edited, std::path::Path::new("cluster.yaml")).expect("a valid config")
    }

    #[test]
    fn stored_pools_must_keep_the_configs_auto_assign_and_the_advertisement_every_pool() {
        let config = config_with_pool("172.16.16.101-172.16.16.120");
        let wanted = pools(&config);
        let stored = |pool: &IpAddressPool| serde_json::to_value(pool).expect("json");
        assert_eq!(pool_verdict(&wanted[0], Some(&stored(&wanted[0]))).status, kit::report::Status::Pass);
        let mut assigning = wanted[0].clone();
        assigning.spec.auto_assign = true;
        let failed = pool_verdict(&wanted[0], Some(&stored(&assigning)));
        assert_eq!(failed.status, kit::report::Status::Fail);
        assert!(failed.reason.contains("autoAssign is true"), "{}", failed.reason);
        // A stored pool without the field has MetalLB's default, true.
        let mut without = stored(&wanted[0]);
        without["spec"].as_object_mut().expect("spec").remove("autoAssign");
        assert_eq!(pool_verdict(&wanted[0], Some(&without)).status, kit::report::Status::Fail);
        assert_eq!(pool_verdict(&wanted[1], None).status, kit::report::Status::Fail);

        let advertised = advertisement(&config);
        let json = serde_json::to_value(&advertised).expect("json");
        assert_eq!(advertisement_verdict(&advertised, Some(&json)).status, kit::report::Status::Pass);
        let mut one = json.clone();
        one["spec"]["ipAddressPools"] = serde_json::json!([GENERAL_POOL]);
        let failed = advertisement_verdict(&advertised, Some(&one));
        assert!(failed.reason.contains(&format!("announces {GENERAL_POOL}, the config")), "{}", failed.reason);
        let mut every = json;
        every["spec"]["ipAddressPools"] = serde_json::json!([]);
        assert!(advertisement_verdict(&advertised, Some(&every)).reason.contains("announces every pool"));
    }

    #[test]
    fn a_pool_of_only_the_entry_points_is_valid_and_its_probe_must_be_refused() {
        let config = config_with_pool("172.16.16.101-172.16.16.102");
        let names: Vec<_> = pools(&config).into_iter().filter_map(|pool| pool.metadata.name).collect();
        assert_eq!(names, [ENTRYPOINT_POOL]);
        let refused = Allocation::Refused("no available IPs".into());
        assert_eq!(load_balancer_verdict(refused, &config, Target::Lab).status, kit::report::Status::Pass);
        let taken = load_balancer_verdict(Allocation::Address("172.16.16.101".into()), &config, Target::Lab);
        assert_eq!(taken.status, kit::report::Status::Fail);
        assert!(taken.reason.contains("got the entry point 172.16.16.101"), "{}", taken.reason);

        let general = config_with_pool("172.16.16.101-172.16.16.120");
        let given = load_balancer_verdict(Allocation::Address("172.16.16.103".into()), &general, Target::Lab);
        assert_eq!(given.status, kit::report::Status::Pass, "{}", given.reason);
        let refused = Allocation::Refused("no available IPs".into());
        assert_eq!(load_balancer_verdict(refused, &general, Target::Lab).status, kit::report::Status::Fail);
    }
}
