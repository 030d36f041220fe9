//! The artifact store against a loopback HTTP server that serves the shared upstream folder
//! (the tests' stand-in for the official URLs), and against that folder as a mirror.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use kit::artifacts::{ARTIFACTS, Artifact, ArtifactStore, Component, LOCK_FILE, Source, read_sums, sha256_hex};
use kit::config::ClusterConfig;

/// `../shared/upstream` beside the repository, or `TALOS_HA_TEST_MIRROR`.
fn upstream() -> PathBuf {
    std::env::var_os("TALOS_HA_TEST_MIRROR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/upstream"))
}

/// Serves `root` on 127.0.0.1 until dropped; counts the requests it answered.
struct LoopbackServer {
    server: Arc<tiny_http::Server>,
    base_url: String,
    requests: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl LoopbackServer {
    fn serve(root: PathBuf) -> LoopbackServer {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind a loopback port"));
        let base_url = format!("http://{}", server.server_addr().to_ip().expect("an IP address"));
        let requests = Arc::new(AtomicUsize::new(0));
        let (serving, counted) = (Arc::clone(&server), Arc::clone(&requests));
        let thread = std::thread::spawn(move || {
            for request in serving.incoming_requests() {
                counted.fetch_add(1, Ordering::SeqCst);
                let relative = request.url().trim_start_matches('/').to_owned();
                let response = match std::fs::read(root.join(&relative)) {
                    Ok(bytes) if !relative.contains("..") => {
                        tiny_http::Response::from_data(bytes).with_status_code(200)
                    }
                    _ => tiny_http::Response::from_data(b"not found".to_vec()).with_status_code(404),
                };
                let _ = request.respond(response);
            }
        });
        LoopbackServer { server, base_url, requests, thread: Some(thread) }
    }
}

impl Drop for LoopbackServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A config in a fresh folder (so it has its own lock) and a store with its own cache.
fn store(dir: &Path, source: Source) -> ArtifactStore {
    let config_path = dir.join("cluster.yaml");
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("../cluster.yaml"), &config_path).expect("copy config");
    let config = ClusterConfig::load(&config_path).expect("valid config");
    let mut store = ArtifactStore::new(&config, None, &dir.join("cache"));
    store.source = source;
    store
}

fn metallb() -> Artifact {
    Artifact::find(Component::Metallb, "metallb-native.yaml").expect("pinned")
}

/// Where MetalLB's manifest at the default pin lives, in a mirror, a cache or a URL.
fn metallb_path() -> String {
    format!("metallb/{}/metallb-native.yaml", test_versions().metallb)
}

#[test]
fn every_pinned_artifact_is_in_the_test_mirror() {
    let sums = read_sums(&upstream().join("SHA256SUMS")).expect("SHA256SUMS");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(dir.path(), Source::Mirror(upstream()));
    for artifact in ARTIFACTS {
        let bytes = store.fetch(artifact).unwrap_or_else(|e| panic!("{}: {e:#}", artifact.file));
        let relative = artifact.relative_path(artifact.component.version(&test_versions()));
        assert_eq!(sums.get(&relative), Some(&sha256_hex(&bytes)), "{relative}");
    }
    let lock = read_sums(&dir.path().join(LOCK_FILE)).expect("lock");
    assert_eq!(lock.len(), ARTIFACTS.len(), "every artifact is locked on first use");
}

fn test_versions() -> kit::config::Versions {
    ClusterConfig::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../cluster.yaml")).expect("config").versions
}

#[test]
fn a_first_download_locks_and_caches_and_a_second_run_needs_no_network() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = LoopbackServer::serve(upstream());
    let store = store(dir.path(), Source::Download { base_url: Some(server.base_url.clone()) });
    let first = store.fetch(&metallb()).expect("download");
    assert_eq!(server.requests.load(Ordering::SeqCst), 1);
    let lock = read_sums(&store.lock_file).expect("lock");
    assert_eq!(lock.get(&metallb_path()), Some(&sha256_hex(&first)));
    assert!(store.cache_dir.join(metallb_path()).exists());

    drop(server); // no network from here on
    let second = store.fetch(&metallb()).expect("served from the cache");
    assert_eq!(first, second);
}

#[test]
fn a_tampered_file_is_refused_naming_both_sums() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = LoopbackServer::serve(upstream());
    let store = store(dir.path(), Source::Download { base_url: Some(server.base_url.clone()) });
    let original = store.fetch(&metallb()).expect("download");
    let cached = store.cache_dir.join(metallb_path());
    std::fs::write(&cached, b"kind: Namespace\nmetadata: {name: evil}\n").expect("tamper");
    let error = format!("{:#}", store.fetch(&metallb()).expect_err("tampered cache must be refused"));
    assert!(error.contains(&sha256_hex(&original)), "names the locked sum: {error}");
    assert!(error.contains(&sha256_hex(b"kind: Namespace\nmetadata: {name: evil}\n")), "names the new sum: {error}");
}

#[test]
fn a_missing_file_names_the_url_or_the_mirror_path_tried() {
    let dir = tempfile::tempdir().expect("tempdir");
    let empty = tempfile::tempdir().expect("empty upstream");
    let server = LoopbackServer::serve(empty.path().to_owned());
    let store_http = store(dir.path(), Source::Download { base_url: Some(server.base_url.clone()) });
    let error = format!("{:#}", store_http.fetch(&metallb()).expect_err("404"));
    assert!(error.contains(&format!("{}/{}", server.base_url, metallb_path())), "{error}");
    assert!(error.contains("--mirror"), "says what to do offline: {error}");

    let store_mirror = store(dir.path(), Source::Mirror(empty.path().to_owned()));
    let error = format!("{:#}", store_mirror.fetch(&metallb()).expect_err("not in mirror"));
    assert!(error.contains(&empty.path().join(metallb_path()).display().to_string()), "{error}");
}

#[test]
fn an_altered_mirror_file_is_refused_by_its_sha256sums() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mirror = tempfile::tempdir().expect("mirror");
    let file = mirror.path().join(metallb_path());
    std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
    std::fs::write(&file, b"altered").expect("write");
    std::fs::copy(upstream().join("SHA256SUMS"), mirror.path().join("SHA256SUMS")).expect("sums");
    let store = store(dir.path(), Source::Mirror(mirror.path().to_owned()));
    let error = format!("{:#}", store.fetch(&metallb()).expect_err("altered"));
    assert!(error.contains("SHA256SUMS") && error.contains("altered"), "{error}");
    assert!(!dir.path().join(LOCK_FILE).exists(), "nothing is locked from a bad mirror");
}

/// Audit U16: the tests fetch through a loopback server, so the URLs a user's apply downloads
/// from are never requested here; each must be the official one the mirror's SOURCES.md
/// records for the pinned version (read from the release pages when the mirror was made).
#[test]
fn every_official_url_is_the_one_the_upstream_sources_record() -> anyhow::Result<()> {
    let sources = std::fs::read_to_string(upstream().join("SOURCES.md"))?;
    let config = ClusterConfig::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../cluster.yaml"))?;
    for artifact in ARTIFACTS {
        let url = artifact.official_url(artifact.component.version(&config.versions));
        assert!(sources.contains(&format!("| {url}")), "{url} is not the URL SOURCES.md records");
    }
    Ok(())
}
