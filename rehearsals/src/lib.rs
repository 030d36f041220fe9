//! Rehearsals on boxes of their own. Each test here builds a cluster in a box beside the shared
//! lab (another cluster name, so other network namespaces; its own state folder and port base),
//! does to it what must never be done to the shared one (installs it from nothing, kills the
//! install, wipes etcd, resets machines), and takes it down with its data. Nothing here touches
//! the shared lab, so `cargo xtask test` runs this package beside the lab's own tests
//! (`tests/`), which keeps the whole suite inside its time budget on two cores.
//!
//! - `twins.rs`: stage 01 one step at a time against the node twins.
//! - `fresh_clone.rs`: README's first command from nothing, twice.
//! - `interrupted_install.rs`: a first install killed at three points, and a wiped cluster.
