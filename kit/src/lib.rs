//! `kit`: the one library every talos-ha stage and the xtask share.
//!
//! - [`config`]: `cluster.yaml` → a validated [`config::ClusterConfig`].
//! - [`stage`]: the stage contract (`check | plan | apply | verify | render | explain`) and its CLI.
//! - [`apply`]: the apply engine (server-side apply in dependency order, plan, lab transform).
//! - [`artifacts`]: pinned upstream manifests: download, cache, lock, mirror.
//! - [`certs`]: cert-manager Certificates and the Traefik Ingress a stage exposes its UI with.
//! - [`check`]: named checks with a status, a reason and a fix.
//! - [`http`]: one request to a service on the LAN, trusting only the cluster CA.
//! - [`lab`]: the cluster in a box: its workstation, its ports, its kubeconfig.
//! - [`names`]: names one stage creates and a later one relies on (pools, the CA issuer).
//! - [`talos`]: the Talos API through talosctl: node state, pre-flight, etcd health, the VIP.
//! - [`tool`]: external tools (talosctl): found, version-checked, run with a timeout, redacted.

pub mod apply;
pub mod artifacts;
pub mod certs;
pub mod check;
pub mod config;
pub mod fsutil;
pub mod golden;
pub mod http;
pub mod lab;
pub mod logging;
pub mod names;
pub mod rbac;
pub mod stage;
pub mod talos;
pub mod tool;
pub mod wait;
