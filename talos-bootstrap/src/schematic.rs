//! The Image Factory schematic: which system extensions the installer image carries. Longhorn
//! (stage 06) needs iSCSI and the util-linux tools on every node; Talos is immutable, so they
//! must be baked into the image the node installs, from the very first install.

use sha2::{Digest, Sha256};

/// Official extensions every node gets (names as the Image Factory lists them).
pub const EXTENSIONS: &[&str] = &["siderolabs/iscsi-tools", "siderolabs/util-linux-tools"];

/// The Image Factory's registry for installer images.
const FACTORY_INSTALLER: &str = "factory.talos.dev/installer";

/// The schematic document, in the exact form the Image Factory hashes (Go's YAML encoder:
/// four-space indent). `POST https://factory.talos.dev/schematics` with it returns the same ID.
pub fn document(extensions: &[&str]) -> String {
    if extensions.is_empty() {
        return "customization: {}\n".to_owned();
    }
    let mut text = "customization:\n    systemExtensions:\n        officialExtensions:\n".to_owned();
    let mut sorted = extensions.to_vec();
    sorted.sort_unstable();
    for extension in sorted {
        text.push_str(&format!("            - {extension}\n"));
    }
    text
}

/// The schematic ID: the sha256 of the document, so it is computed offline.
pub fn id(document: &str) -> String {
    Sha256::digest(document.as_bytes()).iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The installer image nodes install from: `factory.talos.dev/installer/<id>:<talos version>`.
pub fn installer_image(talos: kit::config::Version) -> String {
    format!("{FACTORY_INSTALLER}/{}:{talos}", id(&document(EXTENSIONS)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_match_the_image_factory() {
        // The Image Factory's README lists this ID for the default (empty) schematic.
        assert_eq!(id(&document(&[])), "376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba");
        // The factory's ID for iscsi-tools + util-linux-tools, as Longhorn's Talos guides use it.
        assert_eq!(id(&document(EXTENSIONS)), "613e1592b2da41ae5e265e8789429f22e121aab91cb4deb6bc3c0b6262961245");
        // talos-ha writes the list sorted, so the ID does not depend on how it is listed.
        assert_eq!(document(&["siderolabs/util-linux-tools", "siderolabs/iscsi-tools"]), document(EXTENSIONS));
    }
}
