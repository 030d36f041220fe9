//! Versions: the pinned defaults, the `vX.Y.Z` form, and which Kubernetes releases each
//! Talos release supports.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// A release version as upstream tags it: `vMAJOR.MINOR.PATCH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl FromStr for Version {
    type Err = ();

    fn from_str(text: &str) -> Result<Self, ()> {
        let numbers = text.strip_prefix('v').ok_or(())?;
        let mut parts = numbers.split('.').map(|part| {
            // Reject "+1", "01" and friends: upstream tags never use them.
            let canonical =
                !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) && (part == "0" || !part.starts_with('0'));
            if canonical { part.parse::<u32>().map_err(|_| ()) } else { Err(()) }
        });
        let (Some(major), Some(minor), Some(patch), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(());
        };
        Ok(Version { major: major?, minor: minor?, patch: patch? })
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl Serialize for Version {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Which Kubernetes minors a Talos minor runs, from Talos's own support matrix.
/// (Talos minor, oldest Kubernetes minor, newest Kubernetes minor); all are 1.x.
const TALOS_SUPPORTS_KUBERNETES: &[(u32, u32, u32)] =
    &[(9, 27, 32), (10, 28, 33), (11, 29, 34), (12, 30, 35), (13, 31, 36)];

/// Why a Talos/Kubernetes pair cannot run together, or `None` when it can.
pub fn talos_kubernetes_mismatch(talos: Version, kubernetes: Version) -> Option<String> {
    let known = || {
        let first = TALOS_SUPPORTS_KUBERNETES.first().map_or(0, |row| row.0);
        let last = TALOS_SUPPORTS_KUBERNETES.last().map_or(0, |row| row.0);
        format!("talos-ha knows Talos v1.{first} to v1.{last}")
    };
    let Some(&(_, oldest, newest)) =
        TALOS_SUPPORTS_KUBERNETES.iter().find(|(minor, _, _)| talos.major == 1 && *minor == talos.minor)
    else {
        return Some(format!("is not a Talos release with a known support range ({})", known()));
    };
    let fits = kubernetes.major == 1 && (oldest..=newest).contains(&kubernetes.minor);
    (!fits).then(|| {
        format!(
            "is outside what Talos v1.{} supports: Talos 1.{} runs Kubernetes 1.{oldest}–1.{newest}",
            talos.minor, talos.minor
        )
    })
}

/// Every version the cluster pins, with the defaults from DESIGN.md.
/// Component versions select the upstream release manifests that the stages install.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Versions {
    pub talos: Version,
    pub kubernetes: Version,
    pub metallb: Version,
    pub metrics_server: Version,
    pub kubelet_serving_cert_approver: Version,
    pub traefik: Version,
    pub cert_manager: Version,
    pub longhorn: Version,
    pub headlamp: Version,
    pub envoy_gateway: Version,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> Version {
        text.parse().unwrap_or_else(|()| panic!("{text} should parse"))
    }

    #[test]
    fn parses_upstream_tags_only() {
        assert_eq!(v("v1.35.0"), Version { major: 1, minor: 35, patch: 0 });
        for bad in ["1.35.0", "v1.35", "v1.35.0.1", "v1.035.0", "v1.35.x", "v1..0", "v", ""] {
            assert!(bad.parse::<Version>().is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn support_matrix_edges() {
        assert_eq!(talos_kubernetes_mismatch(v("v1.12.1"), v("v1.35.0")), None);
        assert_eq!(talos_kubernetes_mismatch(v("v1.12.1"), v("v1.30.4")), None);
        let seed_pair = talos_kubernetes_mismatch(v("v1.9.1"), v("v1.35.0")).unwrap_or_default();
        assert!(seed_pair.contains("Talos 1.9 runs Kubernetes 1.27–1.32"), "{seed_pair}");
        assert!(talos_kubernetes_mismatch(v("v1.12.1"), v("v1.36.0")).is_some());
        assert!(talos_kubernetes_mismatch(v("v1.8.0"), v("v1.30.0")).is_some());
        assert!(talos_kubernetes_mismatch(v("v1.13.0"), v("v2.31.0")).is_some());
    }
}
