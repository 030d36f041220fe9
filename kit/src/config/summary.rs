//! The short human summary of a valid config that `cargo xtask validate` prints.

use std::fmt::{self, Write as _};

use super::ClusterConfig;

impl ClusterConfig {
    pub fn summary(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; the helper keeps the lines readable.
        let _ = self.write_summary(&mut out);
        out
    }

    fn write_summary(&self, out: &mut String) -> fmt::Result {
        let v = &self.versions;
        let net = &self.network;
        let nameservers: Vec<String> = net.nameservers.iter().map(ToString::to_string).collect();
        writeln!(out, "cluster   {} (names under {})", self.name, self.domain)?;
        writeln!(out, "versions  Talos {} · Kubernetes {}", v.talos, v.kubernetes)?;
        writeln!(out, "api       {} (VIP {} floats over the control planes)", self.api_endpoint(), net.vip)?;
        writeln!(out, "network   {} via {}, DNS {}", net.subnet, net.gateway, nameservers.join(", "))?;
        writeln!(
            out,
            "nodes     {} control planes, {} workers",
            self.control_planes().count(),
            self.workers().count()
        )?;
        for node in &self.nodes {
            writeln!(out, "  {:<8} {:<13} {:<16} {}", node.name, node.role.as_str(), node.ip, node.install_disk)?;
        }
        writeln!(out, "metallb   pool {} ({} addresses)", self.metallb_pool, self.metallb_pool.address_count())?;
        writeln!(out, "traefik   {}  e.g. https://{}", self.traefik_ip, self.service_host("whoami", self.traefik_ip))?;
        writeln!(
            out,
            "envoy     {}  e.g. https://{}",
            self.envoy_gateway_ip,
            self.service_host("demo", self.envoy_gateway_ip)
        )?;
        writeln!(
            out,
            "pins      MetalLB {} · metrics-server {} · Traefik {} · cert-manager {} · Longhorn {} · Headlamp {} · Envoy Gateway {}",
            v.metallb, v.metrics_server, v.traefik, v.cert_manager, v.longhorn, v.headlamp, v.envoy_gateway
        )?;
        for warning in &self.warnings {
            writeln!(out, "warning   {warning}")?;
        }
        Ok(())
    }
}
