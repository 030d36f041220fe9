//! The Image Factory schematic: which system extensions the installer image carries. Longhorn
//! (stage 06) needs iSCSI and the util-linux tools on every node; Talos is immutable, so they
//! must be baked into the image the node installs, from the very first install.

use anyhow::Context as _;
use kit::talos::upgrade::FACTORY_INSTALLER;
use sha2::{Digest, Sha256};

/// Official extensions every node gets (names as the Image Factory lists them).
pub const EXTENSIONS: &[&str] = &["siderolabs/iscsi-tools", "siderolabs/util-linux-tools"];

/// The Image Factory: it serves installer images only for schematics it has stored
/// (siderolabs/image-factory internal/schematic/schematic.go, Get), so `apply` uploads ours.
pub const IMAGE_FACTORY: &str = "https://factory.talos.dev";

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

/// The installer image nodes install from: `factory.talos.dev/metal-installer/<id>:<talos version>`.
pub fn installer_image(talos: kit::config::Version) -> String {
    format!("{FACTORY_INSTALLER}/{}:{talos}", id(&document(EXTENSIONS)))
}

/// The factory's answer to an upload.
#[derive(serde::Deserialize)]
struct Uploaded {
    id: String,
}

/// Uploads the schematic to the Image Factory at `factory` (`POST /schematics`, idempotent: the
/// same document always gets the same ID). The ID it returns must be the one the configs name,
/// or the nodes would pull an installer that is not ours.
pub async fn upload(factory: &str) -> anyhow::Result<kit::report::Change> {
    let document = document(EXTENSIONS);
    let wanted = id(&document);
    let url = format!("{}/schematics", factory.trim_end_matches('/'));
    tracing::info!("uploading the schematic ({}) to {url}", EXTENSIONS.join(", "));
    let posted = {
        let (url, document) = (url.clone(), document.clone());
        tokio::task::spawn_blocking(move || kit::http::post(&url, "application/yaml", &document)).await?
    };
    let answer = posted.with_context(|| {
        format!("uploading the schematic to {url}; the nodes pull their installer from there, so it must be reachable")
    })?;
    anyhow::ensure!(
        (200..300).contains(&answer.status),
        "the Image Factory at {url} answered {} to the schematic upload: {}",
        answer.status,
        answer.body.trim()
    );
    let uploaded: Uploaded = serde_json::from_str(&answer.body).with_context(|| {
        format!("the Image Factory at {url} answered something else than {{\"id\": …}}: {}", answer.body.trim())
    })?;
    anyhow::ensure!(
        uploaded.id == wanted,
        "the Image Factory at {url} stored the schematic as {} but the machine configs name {wanted}: nothing was \
         sent to the nodes; the factory hashes schematics differently from this version of talos-ha, so report it",
        uploaded.id
    );
    Ok(kit::report::Change {
        object: format!("Schematic {wanted}"),
        action: kit::report::Action::Unchanged,
        diff: Some(format!("uploaded to {url} (idempotent)")),
    })
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
