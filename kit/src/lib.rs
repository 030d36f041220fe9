//! `kit`: the one library every talos-ha stage and the xtask share, in floors. A module uses
//! only modules on lower floors, so nothing imports upward and there are no cycles (the test
//! `layers` reads the floors below and holds every file to them).
//!
//! floor 0: report, manifest, names, fsutil, logging, golden, wait, http, rbac
//! floor 1: config
//! floor 2: client, artifacts, certs, tool
//! floor 3: context, apply, talos, upgrade, lab
//! floor 4: check, stage
//! floor 5: bundle
//!
//! - [`report`]: what a step reports: a named [`report::Check`] or a [`report::Change`] to an object.
//! - [`manifest`]: manifests as data: parsed, typed, patched, lab-transformed, written as YAML.
//! - [`config`]: `cluster.yaml` → a validated [`config::ClusterConfig`].
//! - [`client`]: a Kubernetes client from one kubeconfig, and Node and pod readiness.
//! - [`artifacts`]: pinned upstream manifests: download, cache, lock, mirror.
//! - [`lab`]: the cluster in a box as a stage sees it: its workstation, its ports, its kubeconfig.
//! - [`context`]: what a stage is given: the model, the target, the verb.
//! - [`apply`]: the apply engine (server-side apply in dependency order, plan, leftovers).
//! - [`talos`]: the Talos API through talosctl: node state, pre-flight, etcd health, the VIP.
//! - [`check`]: the checks stages share (the API, nodes, workloads, exposure, addresses).
//! - [`stage`]: the stage contract (`check | plan | apply | verify | render | explain`) and its CLI.
//! - [`bundle`]: a Kubernetes stage declared once as ordered steps; every verb derived from it.
//! - [`certs`]: cert-manager Certificates and the Traefik Ingress a stage exposes its UI with.
//! - [`http`]: one request to a service on the LAN, trusting only the cluster CA.
//! - [`names`]: names one stage creates and a later one relies on (pools, the CA issuer).
//! - [`upgrade`]: add-on upgrades as data: the hops from what runs to the pin, and each hop's work.
//! - [`tool`]: external tools (talosctl): found, version-checked, run with a timeout, redacted.

pub mod apply;
pub mod artifacts;
pub mod bundle;
pub mod certs;
pub mod check;
pub mod client;
pub mod config;
pub mod context;
pub mod fsutil;
pub mod golden;
pub mod http;
pub mod lab;
pub mod logging;
pub mod manifest;
pub mod names;
pub mod rbac;
pub mod report;
pub mod stage;
pub mod talos;
pub mod tool;
pub mod upgrade;
pub mod wait;
