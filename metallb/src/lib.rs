//! Stage 02: MetalLB. The pinned upstream manifest, then our two address pools and the L2
//! advertisement, typed and derived from `cluster.yaml` (`pools.rs`); what must hold before
//! and after is in `checks.rs`. The lesson is in README.md.

mod checks;
pub mod pools;

use kit::artifacts::Component;
use kit::bundle::{Bundle, BundleStage, Part, Ready};
use kit::check::common;
use kit::context::{Context, Target};
use kit::report::Check;

pub use kit::names::{ENTRYPOINT_POOL, GENERAL_POOL, METALLB_NAMESPACE as NAMESPACE};
pub const ADVERTISEMENT: &str = "talos-ha-l2";
const MANIFEST: &str = "metallb-native.yaml";
const CONTROLLER: &str = "controller";
const SPEAKER: &str = "speaker";

pub struct Metallb;

impl BundleStage for Metallb {
    const NAME: &'static str = "metallb";
    const FOLDER: &'static str = "02-metallb";
    const TITLE: &'static str = "Stage 02: MetalLB in L2 mode, handing LoadBalancer addresses from the config's pool";
    const LESSON: &'static str = include_str!("../README.md");

    /// The release; then, once its controller runs, the pools, through the validating webhook
    /// the controller serves (failurePolicy: Fail).
    fn bundle(&self, ctx: &Context) -> anyhow::Result<Bundle> {
        Ok(Bundle::new()
            .apply([Part::upstream(ctx, Component::Metallb, MANIFEST)?])
            .wait(Ready::deployment(NAMESPACE, CONTROLLER))
            .apply_through_webhook("MetalLB", [Part::ours("ip-pools.yaml", pools::objects(&ctx.config)?)]))
    }

    async fn check(&self, ctx: &Context) -> anyhow::Result<Vec<Check>> {
        let (mut found, client) = common::cluster(ctx).await;
        let Some(client) = client else { return Ok(found) }; // nothing else can be checked
        found.push(checks::pool_free(&client, ctx.config.metallb_pool).await?);
        // In the lab too: the box's control planes deploy Talos's own kube-proxy DaemonSet.
        found.push(checks::kube_proxy_arp(&client).await?);
        Ok(found)
    }

    async fn verify(&self, ctx: &Context, client: &kube::Client) -> anyhow::Result<Vec<Check>> {
        let mut found = vec![checks::speakers(client, ctx.config.nodes.len()).await];
        found.extend(checks::stored(client, &ctx.config).await?);
        found.push(checks::load_balancer(client, &ctx.config, ctx.target).await?);
        if ctx.target == Target::Lab {
            let why = "the speakers are kwok fakes: nothing answers ARP for the addresses on the box's LAN";
            found.push(Check::not_checkable_in_lab("arp", why));
        }
        Ok(found)
    }
}
