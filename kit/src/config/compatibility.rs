//! Which Kubernetes releases each pinned component's upstream supports or tests, beside Talos's
//! own table (`versions.rs`). A component outside its range may well work (these are stable
//! APIs), but nobody has tested the pair: `validate` warns and names the newest release of that
//! component that covers the cluster's Kubernetes. A version this table does not know is said
//! to be "not in the table", never refused.
//!
//! Sources, read at the tags named (see shared/upstream/SOURCES.md, "Upgrade paths"):
//! - Envoy Gateway: envoyproxy/gateway@v1.9.0 site/content/en/news/releases/matrix.md
//! - cert-manager: cert-manager/website content/docs/releases/README.md (supported releases)
//! - Longhorn: longhorn/website content/docs/<version>/best-practices.md (tested Kubernetes)
//! - metrics-server: kubernetes-sigs/metrics-server@v0.9.0 README.md, "Compatibility Matrix"
//!   (a minimum only)
//! - kubelet-serving-cert-approver: alex1989hu/kubelet-serving-cert-approver@v0.11.0 README.md,
//!   "Kubernetes Compatibility Matrix" (newest listed: 1.35)
//! - MetalLB: metallb/metallb@v0.16.1 website/content/_index.md ("Kubernetes 1.13.0 or later";
//!   no upper bound, by policy it follows supported Kubernetes releases)
//! - Traefik: traefik/traefik@v3.7.9 docs/content/migrate/v3.md (v3 needs 1.21+ for
//!   EndpointSlices; no matrix)
//! - Headlamp: no range stated upstream, so it is not in the table.

use super::Version;
use super::versions::Versions;

/// One release series of a component and the Kubernetes minors (1.x) its upstream covers;
/// `None` where upstream states no bound.
struct Series {
    component: &'static str,
    /// `major.minor` of the component.
    series: (u32, u32),
    /// The newest patch of that series upstream has released (what to upgrade to).
    newest: &'static str,
    oldest_kubernetes: Option<u32>,
    newest_kubernetes: Option<u32>,
}

const fn series(
    component: &'static str,
    series: (u32, u32),
    newest: &'static str,
    oldest_kubernetes: Option<u32>,
    newest_kubernetes: Option<u32>,
) -> Series {
    Series { component, series, newest, oldest_kubernetes, newest_kubernetes }
}

/// Oldest series first within each component.
const TABLE: &[Series] = &[
    series("envoyGateway", (1, 6), "v1.6.7", Some(30), Some(33)),
    series("envoyGateway", (1, 7), "v1.7.5", Some(32), Some(35)),
    series("envoyGateway", (1, 8), "v1.8.3", Some(32), Some(35)),
    series("envoyGateway", (1, 9), "v1.9.0", Some(33), Some(36)),
    series("certManager", (1, 16), "v1.16.5", Some(25), Some(32)),
    series("certManager", (1, 17), "v1.17.4", Some(29), Some(33)),
    series("certManager", (1, 18), "v1.18.6", Some(29), Some(33)),
    series("certManager", (1, 19), "v1.19.6", Some(31), Some(35)),
    series("certManager", (1, 20), "v1.20.3", Some(32), Some(35)),
    series("certManager", (1, 21), "v1.21.1", Some(33), Some(36)),
    series("longhorn", (1, 7), "v1.7.3", Some(30), Some(32)),
    series("longhorn", (1, 8), "v1.8.2", Some(31), Some(33)),
    series("longhorn", (1, 9), "v1.9.2", Some(31), Some(33)),
    series("longhorn", (1, 10), "v1.10.2", Some(31), Some(33)),
    series("longhorn", (1, 11), "v1.11.3", Some(34), Some(36)),
    series("longhorn", (1, 12), "v1.12.1", Some(33), Some(36)),
    series("metricsServer", (0, 7), "v0.7.2", Some(27), None),
    series("metricsServer", (0, 8), "v0.8.1", Some(31), None),
    series("metricsServer", (0, 9), "v0.9.0", Some(34), None),
    series("kubeletServingCertApprover", (0, 11), "v0.11.0", None, Some(35)),
    series("metallb", (0, 15), "v0.15.3", Some(13), None),
    series("metallb", (0, 16), "v0.16.1", Some(13), None),
    series("traefik", (3, 3), "v3.3.7", Some(21), None),
    series("traefik", (3, 7), "v3.7.9", Some(21), None),
];

impl Series {
    fn covers(&self, kubernetes: Version) -> bool {
        kubernetes.major == 1
            && self.oldest_kubernetes.is_none_or(|oldest| kubernetes.minor >= oldest)
            && self.newest_kubernetes.is_none_or(|newest| kubernetes.minor <= newest)
    }

    fn range(&self) -> String {
        match (self.oldest_kubernetes, self.newest_kubernetes) {
            (Some(oldest), Some(newest)) => format!("1.{oldest}–1.{newest}"),
            (Some(oldest), None) => format!("1.{oldest} and newer"),
            (None, Some(newest)) => format!("up to 1.{newest}"),
            (None, None) => "any".to_owned(),
        }
    }
}

/// What the table says of one component's pin against the cluster's Kubernetes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fit {
    /// Upstream covers it.
    Covered,
    /// Outside the range upstream covers: why, and the release to move to (if any covers it).
    Outside { range: String, newest_covering: Option<&'static str> },
    /// A version of a series the table does not list (an override).
    NotInTable,
}

/// Where `version` of `component` stands against `kubernetes`.
pub fn fit(component: &str, version: Version, kubernetes: Version) -> Fit {
    let rows: Vec<&Series> = TABLE.iter().filter(|row| row.component == component).collect();
    let Some(row) = rows.iter().find(|row| row.series == (version.major, version.minor)) else {
        return Fit::NotInTable;
    };
    if row.covers(kubernetes) {
        return Fit::Covered;
    }
    let newest_covering = rows.iter().rev().find(|row| row.covers(kubernetes)).map(|row| row.newest);
    Fit::Outside { range: row.range(), newest_covering }
}

/// Every release series of `component` (its `versions.` key) the table knows, oldest first, with
/// the newest patch of each: the releases an upgrade passes through.
pub fn releases(component: &str) -> Vec<((u32, u32), Version)> {
    TABLE
        .iter()
        .filter(|row| row.component == component)
        .filter_map(|row| Some((row.series, row.newest.parse().ok()?)))
        .collect()
}

/// Every pinned component against the cluster's Kubernetes, by its `versions.` key.
pub fn pins(versions: &Versions) -> Vec<(&'static str, Version, Fit)> {
    let pinned = [
        ("metallb", versions.metallb),
        ("metricsServer", versions.metrics_server),
        ("kubeletServingCertApprover", versions.kubelet_serving_cert_approver),
        ("traefik", versions.traefik),
        ("certManager", versions.cert_manager),
        ("longhorn", versions.longhorn),
        ("envoyGateway", versions.envoy_gateway),
    ];
    pinned.into_iter().map(|(key, version)| (key, version, fit(key, version, versions.kubernetes))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> Version {
        text.parse().unwrap_or_else(|()| panic!("{text} should parse"))
    }

    #[test]
    fn a_pin_outside_its_range_names_the_newest_release_that_covers_the_cluster() {
        let k135 = v("v1.35.0");
        assert_eq!(
            fit("envoyGateway", v("v1.6.1"), k135),
            Fit::Outside { range: "1.30–1.33".into(), newest_covering: Some("v1.9.0") }
        );
        assert_eq!(
            fit("certManager", v("v1.16.5"), k135),
            Fit::Outside { range: "1.25–1.32".into(), newest_covering: Some("v1.21.1") }
        );
        assert_eq!(
            fit("longhorn", v("v1.7.3"), k135),
            Fit::Outside { range: "1.30–1.32".into(), newest_covering: Some("v1.12.1") }
        );
        assert_eq!(fit("envoyGateway", v("v1.7.5"), k135), Fit::Covered, "1.32–1.35 covers 1.35");
        assert_eq!(fit("metricsServer", v("v0.7.2"), k135), Fit::Covered, "a minimum only");
        assert_eq!(fit("metallb", v("v0.15.3"), v("v1.36.0")), Fit::Covered, "no upper bound upstream");
    }

    #[test]
    fn the_edges_and_what_the_table_does_not_know() {
        assert_eq!(fit("envoyGateway", v("v1.6.1"), v("v1.33.4")), Fit::Covered, "the newest minor listed");
        assert!(matches!(fit("envoyGateway", v("v1.6.1"), v("v1.34.0")), Fit::Outside { .. }));
        assert_eq!(fit("envoyGateway", v("v1.5.0"), v("v1.33.0")), Fit::NotInTable, "an override it cannot judge");
        assert_eq!(fit("headlamp", v("v0.45.0"), v("v1.35.0")), Fit::NotInTable, "no range upstream");
        // Nothing covers Kubernetes 1.37 yet: the warning says so instead of naming a release.
        assert_eq!(
            fit("longhorn", v("v1.12.1"), v("v1.37.0")),
            Fit::Outside { range: "1.33–1.36".into(), newest_covering: None }
        );
    }
}
