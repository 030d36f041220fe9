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

/// One add-on pin: its `versions.` key, what talos-ha installs unless told otherwise, and what
/// the seed's README pinned.
#[derive(Debug, Clone, Copy)]
pub struct Pin {
    pub key: &'static str,
    /// The newest release whose upstream supports Kubernetes v1.35 and that the box can run
    /// (`compatibility.rs` holds the ranges; shared/design/addon-upgrades.md the builds).
    pub default: &'static str,
    /// The seed's pin: what a cluster built by hand from the seed runs today.
    pub seed: &'static str,
}

/// Every add-on pin, in stage order. The defaults moved off the seed's set where the seed's
/// release is outside its upstream's support for Kubernetes v1.35 or past its end of life;
/// `cargo xtask upgrade` walks a cluster from one to the other.
pub const PINS: &[Pin] = &[
    Pin { key: "metallb", default: "v0.16.1", seed: "v0.15.3" },
    Pin { key: "metricsServer", default: "v0.9.0", seed: "v0.7.2" },
    Pin { key: "kubeletServingCertApprover", default: "v0.11.0", seed: "v0.11.0" },
    Pin { key: "traefik", default: "v3.7.9", seed: "v3.3.7" },
    Pin { key: "certManager", default: "v1.20.3", seed: "v1.16.5" },
    Pin { key: "longhorn", default: "v1.12.1", seed: "v1.7.3" },
    Pin { key: "headlamp", default: "v0.45.0", seed: "v0.45.0" },
    Pin { key: "envoyGateway", default: "v1.9.0", seed: "v1.6.1" },
];

/// The default pin of `key`, a key of [`PINS`].
pub fn default_pin(key: &str) -> &'static str {
    PINS.iter().find(|pin| pin.key == key).map_or_else(|| unreachable!("no pin {key}"), |pin| pin.default)
}

/// The `versions:` block that installs the seed's set of add-ons (README shows it). Talos and
/// Kubernetes stay at talos-ha's: the seed's Talos v1.9 cannot run Kubernetes v1.35.
pub fn seed_versions_block() -> String {
    format!("versions:\n{}", seed_pin_lines())
}

/// The block's lines under `versions:`, one for each add-on whose seed pin is not the default.
pub fn seed_pin_lines() -> String {
    PINS.iter().filter(|pin| pin.seed != pin.default).map(|pin| format!("  {}: {}\n", pin.key, pin.seed)).collect()
}

/// Every version the cluster pins (the add-ons' defaults are [`PINS`]).
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

impl Versions {
    /// The pin `versions.<key>` of an add-on, replaced by `version` (one hop of an upgrade).
    pub fn set(&mut self, key: &str, version: Version) -> anyhow::Result<()> {
        let pin = match key {
            "metallb" => &mut self.metallb,
            "metricsServer" => &mut self.metrics_server,
            "kubeletServingCertApprover" => &mut self.kubelet_serving_cert_approver,
            "traefik" => &mut self.traefik,
            "certManager" => &mut self.cert_manager,
            "longhorn" => &mut self.longhorn,
            "headlamp" => &mut self.headlamp,
            "envoyGateway" => &mut self.envoy_gateway,
            // Kubernetes is pinned like an add-on for one run: `upgrade apply --pin
            // kubernetes=…` upgrades to it and then writes it into cluster.yaml.
            "kubernetes" => &mut self.kubernetes,
            _ => {
                let keys: Vec<&str> = PINS.iter().map(|pin| pin.key).collect();
                anyhow::bail!("{key} is not an add-on pin; the keys are {}", keys.join(", "))
            }
        };
        *pin = version;
        Ok(())
    }
}

/// `source` (cluster.yaml's text) with `versions.<key>` set to `version`, everything else (its
/// comments among it) as it was; `None` when no such line is found under `versions:`.
pub fn with_version(source: &str, key: &str, version: Version) -> Option<String> {
    let mut in_versions = false;
    let mut found = false;
    let lines: Vec<String> = source
        .split_inclusive('\n')
        .map(|line| {
            let indented = line.starts_with([' ', '\t']);
            if !indented && !line.trim().is_empty() && !line.trim_start().starts_with('#') {
                in_versions = line.trim_end() == "versions:";
            }
            let trimmed = line.trim_start();
            let Some(rest) = trimmed.strip_prefix(key).and_then(|rest| rest.strip_prefix(':')) else {
                return line.to_owned();
            };
            if !in_versions || !indented || found {
                return line.to_owned();
            }
            found = true;
            let indent = &line[..line.len() - trimmed.len()];
            let value = rest.trim_start();
            let value_end = value.find([' ', '\t', '\n', '\r']).unwrap_or(value.len());
            let tail = &value[value_end..];
            format!("{indent}{key}: {version}{tail}")
        })
        .collect();
    found.then(|| lines.concat())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> Version {
        text.parse().unwrap_or_else(|()| panic!("{text} should parse"))
    }

    #[test]
    fn a_version_is_rewritten_in_place_with_its_comment() {
        let source = "name: home\nversions:\n  talos: v1.12.1   # Talos 1.12\n  kubernetes: v1.34.4 # the minor\n  # kubernetes: v1.0.0\nlabels:\n  kubernetes: v9\n";
        let rewritten = with_version(source, "kubernetes", v("v1.35.0"));
        assert_eq!(
            rewritten.as_deref(),
            Some(
                "name: home\nversions:\n  talos: v1.12.1   # Talos 1.12\n  kubernetes: v1.35.0 # the minor\n  # kubernetes: v1.0.0\nlabels:\n  kubernetes: v9\n"
            )
        );
        assert_eq!(
            with_version("versions:\n  talos: v1.12.1\n", "kubernetes", v("v1.35.0")),
            None,
            "no line to rewrite"
        );
    }

    #[test]
    fn parses_upstream_tags_only() {
        assert_eq!(v("v1.35.0"), Version { major: 1, minor: 35, patch: 0 });
        for bad in ["1.35.0", "v1.35", "v1.35.0.1", "v1.035.0", "v1.35.x", "v1..0", "v", ""] {
            assert!(bad.parse::<Version>().is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn a_pin_is_set_by_its_key_and_an_unknown_key_names_the_keys() {
        let mut versions = Versions {
            talos: v("v1.12.1"),
            kubernetes: v("v1.35.0"),
            metallb: v("v0.16.1"),
            metrics_server: v("v0.9.0"),
            kubelet_serving_cert_approver: v("v0.11.0"),
            traefik: v("v3.7.9"),
            cert_manager: v("v1.20.3"),
            longhorn: v("v1.12.1"),
            headlamp: v("v0.45.0"),
            envoy_gateway: v("v1.9.0"),
        };
        versions.set("certManager", v("v1.17.4")).expect("a known key");
        assert_eq!(versions.cert_manager, v("v1.17.4"));
        let error = versions.set("longhron", v("v1.8.2")).expect_err("a typo").to_string();
        assert!(error.starts_with("longhron is not an add-on pin; the keys are metallb, metricsServer"), "{error}");
        assert_eq!(versions.longhorn, v("v1.12.1"), "nothing changed");
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
