//! The machines' Talos API as the xtask's day-2 commands ask it: the talosctl that fits the
//! config, run from where the machines are reached (a thread inside the box's workstation for
//! a `--lab` config, `kit::lab::at_the_machines`).

use std::future::Future;

use kit::config::ClusterConfig;
use kit::report::Check;
use kit::talos::Talosctl;

/// Runs `work` with talosctl where the machines are reached.
pub fn with_talosctl<T, F, Fut>(config: &ClusterConfig, work: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce(Talosctl, ClusterConfig) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<T>>,
{
    kit::lab::at_the_machines(config, move |config| async move {
        let talosctl = Talosctl::find(&config).await?;
        work(talosctl, config).await
    })
}

/// The `etcd` check: every control plane asked about its own member (`kit::talos::etcd_check`).
pub fn etcd_check(config: &ClusterConfig) -> anyhow::Result<Check> {
    with_talosctl(config, |talosctl, config| async move { Ok(kit::talos::etcd_check(&talosctl, &config).await.0) })
}
