//! A Kubernetes stage declares what it installs once, as a [`Bundle`]: the ordered steps of
//! applying parts (a pinned upstream manifest, patched; our typed objects) and waiting for
//! what the next step needs. kit derives every verb from that one declaration:
//!
//! - `plan`: a server-side dry run of every part's objects, plus the stage's work beyond
//!   objects, asked what it would do;
//! - `apply`: each step in order (one engine, so one field manager), then that work;
//! - `render`: each part's objects in the file it names, for the talos target; an upstream
//!   file nobody patched is written as it was published;
//! - `verify`: a line for each awaited workload, the stage's own postconditions, then what
//!   the lab transform left out.
//!
//! So render shows what apply sends by construction, and day-2 can read a stage's parts and
//! gates as data. A stage that is not a bundle of objects (stage 01) implements
//! [`crate::stage::Stage`] by hand instead.
//!
//! ```ignore
//! pub struct Metallb;
//!
//! impl BundleStage for Metallb {
//!     const NAME: &'static str = "metallb";
//!     const FOLDER: &'static str = "02-metallb";
//!     const TITLE: &'static str = "Stage 02: MetalLB in L2 mode";
//!     const LESSON: &'static str = include_str!("../README.md");
//!
//!     fn bundle(&self, ctx: &Context) -> anyhow::Result<Bundle> {
//!         Ok(Bundle::new()
//!             .apply([Part::upstream(ctx, Component::Metallb, "metallb-native.yaml")?])
//!             .wait(Ready::deployment("metallb-system", "controller"))
//!             .apply_through_webhook("MetalLB", [Part::ours("ip-pools.yaml", pools::objects(&ctx.config)?)]))
//!     }
//!
//!     async fn check(&self, ctx: &Context) -> anyhow::Result<Vec<Check>> { … }
//!     async fn verify(&self, ctx: &Context, client: &kube::Client) -> anyhow::Result<Vec<Check>> { … }
//! }
//! ```
//! `kit::stage::main(Metallb)` then runs it: every [`BundleStage`] is a [`Stage`].

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::api::DynamicObject;

use crate::apply::Engine;
use crate::artifacts::Component;
use crate::check::common;
use crate::context::{Context, Target};
use crate::manifest::{LabNotes, lab_transform, objects_yaml, parse_manifest, patch_typed};
use crate::report::{Change, Check};
use crate::stage::Stage;

/// How long `apply` waits for a workload unless the stage says otherwise.
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(300);
/// How long `verify` gives an awaited workload: it was ready once apply ended.
const VERIFY_WAIT: Duration = Duration::from_secs(60);

/// What a Kubernetes stage applies, in order, and what it waits for between.
#[derive(Default)]
pub struct Bundle {
    steps: Vec<Step>,
}

/// One step of a bundle.
pub enum Step {
    /// Server-side apply the parts' objects together (one engine call: its two waves order
    /// CRDs and Namespaces before what needs them). `through_webhook` names the component
    /// whose admission webhook checks them, which may refuse calls for a while after it starts.
    Apply { parts: Vec<Part>, through_webhook: Option<&'static str> },
    /// Wait until a workload runs before the next step.
    Wait(Ready),
}

impl Step {
    /// The objects an `Apply` step sends, in order (none for a wait).
    pub fn objects(&self) -> Vec<DynamicObject> {
        match self {
            Step::Apply { parts, .. } => parts.iter().flat_map(|part| part.objects.iter().cloned()).collect(),
            Step::Wait(_) => Vec::new(),
        }
    }
}

impl Bundle {
    pub fn new() -> Bundle {
        Bundle::default()
    }

    /// Applies `parts` together.
    pub fn apply(mut self, parts: impl IntoIterator<Item = Part>) -> Bundle {
        self.steps.push(Step::Apply { parts: parts.into_iter().collect(), through_webhook: None });
        self
    }

    /// Applies `parts`, which `component`'s admission webhook checks (its refusals while it
    /// warms up are retried).
    pub fn apply_through_webhook(mut self, component: &'static str, parts: impl IntoIterator<Item = Part>) -> Bundle {
        self.steps.push(Step::Apply { parts: parts.into_iter().collect(), through_webhook: Some(component) });
        self
    }

    /// Waits for `ready` before the next step (and `verify` checks it).
    pub fn wait(mut self, ready: Ready) -> Bundle {
        self.steps.push(Step::Wait(ready));
        self
    }

    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// Every object the bundle applies, in the order apply sends them: what `plan` dry-runs.
    pub fn objects(&self) -> Vec<DynamicObject> {
        self.steps.iter().flat_map(Step::objects).collect()
    }

    /// The add-ons whose releases the bundle applies, each once.
    pub fn components(&self) -> Vec<Component> {
        let mut components: Vec<Component> = Vec::new();
        for component in self.parts().filter_map(|part| part.component) {
            if !components.contains(&component) {
                components.push(component);
            }
        }
        components
    }

    /// The workloads the bundle waits for.
    pub fn waits(&self) -> impl Iterator<Item = &Ready> {
        self.steps.iter().filter_map(|step| match step {
            Step::Wait(ready) => Some(ready),
            Step::Apply { .. } => None,
        })
    }

    fn parts(&self) -> impl Iterator<Item = &Part> {
        self.steps.iter().flat_map(|step| match step {
            Step::Apply { parts, .. } => parts.as_slice(),
            Step::Wait(_) => &[],
        })
    }

    /// What the lab transform left out of the parts, as lines `verify` cannot check.
    pub fn lab_checks(&self) -> Vec<Check> {
        let notes = self.parts().flat_map(|part| part.notes.iter());
        notes.map(|note| Check::not_checkable_in_lab("lab transform", note.clone())).collect()
    }

    /// The files `render` writes, in the order their parts first appear: each holds its parts'
    /// objects in order, except that a file of one upstream part nobody patched keeps the
    /// bytes its release published (with upstream's comments).
    pub fn files(&self) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        let mut names: Vec<&str> = Vec::new();
        for part in self.parts() {
            if !names.contains(&part.file.as_str()) {
                names.push(&part.file);
            }
        }
        names
            .into_iter()
            .map(|name| {
                let parts: Vec<&Part> = self.parts().filter(|part| part.file == name).collect();
                let contents = match parts.as_slice() {
                    [Part { published: Some(text), .. }] => text.clone().into_bytes(),
                    _ => objects_yaml(&parts.iter().flat_map(|part| part.objects.iter().cloned()).collect::<Vec<_>>())?,
                };
                Ok((name.to_owned(), contents))
            })
            .collect()
    }
}

/// One file's worth of a bundle: a pinned upstream manifest (patched where the stage needs;
/// lab-transformed on the lab target, with notes of what that left out) or our own objects.
pub struct Part {
    /// The file `render` writes it to.
    file: String,
    objects: Vec<DynamicObject>,
    notes: LabNotes,
    /// The release's own text, while it is what the objects say (the talos target, unpatched).
    published: Option<String>,
    /// The add-on whose release this is (none for our own objects).
    component: Option<Component>,
}

impl Part {
    /// A pinned upstream manifest (from the cache, the mirror or its official URL, checked
    /// against the lock), as objects; on the lab target lab-transformed, never on the talos one.
    pub fn upstream(ctx: &Context, component: Component, file: &str) -> anyhow::Result<Part> {
        let text = ctx.upstream_text(component, file)?;
        let mut objects = parse_manifest(file, &text)?;
        let (notes, published) = match ctx.target {
            Target::Lab => (lab_transform(&mut objects), None),
            Target::Talos => (Vec::new(), Some(text)),
        };
        Ok(Part { file: file.to_owned(), objects, notes, published, component: Some(component) })
    }

    /// Our own objects (typed, converted with `manifest::to_dynamic`), rendered as `file`.
    pub fn ours(file: &str, objects: Vec<DynamicObject>) -> Part {
        Part { file: file.to_owned(), objects, notes: Vec::new(), published: None, component: None }
    }

    /// A typed patch on the part's `K` named `name` (see `manifest::patch_typed`): the
    /// customisation is code, never an edited copy of the release.
    pub fn patch<K>(mut self, name: &str, edit: impl FnOnce(&mut K)) -> anyhow::Result<Part>
    where
        K: kube::Resource<DynamicType = ()> + serde::Serialize + serde::de::DeserializeOwned,
    {
        patch_typed(&mut self.objects, name, edit)?;
        self.published = None;
        Ok(self)
    }

    /// Edits the objects as a whole (for patches that span several of them).
    pub fn edit(mut self, edit: impl FnOnce(&mut [DynamicObject]) -> anyhow::Result<()>) -> anyhow::Result<Part> {
        edit(&mut self.objects)?;
        self.published = None;
        Ok(self)
    }

    /// Rendered under another name (`components.yaml` as `metrics-server.yaml`; two parts
    /// named alike share one file).
    pub fn rendered_as(mut self, file: &str) -> Part {
        self.file = file.to_owned();
        self
    }

    pub fn objects(&self) -> &[DynamicObject] {
        &self.objects
    }
}

/// A workload a bundle waits for: `apply` until it runs (300 s unless [`Ready::within`]),
/// `verify` reports whether it still does.
pub struct Ready {
    workload: Workload,
    namespace: String,
    name: String,
    within: Duration,
    /// A DaemonSet's least count of ready pods, and what each stands for ("worker").
    on_each: Option<(usize, &'static str)>,
}

#[derive(Clone, Copy)]
enum Workload {
    /// Rolled out: every replica on the latest spec, and Available.
    Deployment,
    /// Every desired pod updated and ready.
    DaemonSet,
}

impl Ready {
    pub fn deployment(namespace: &str, name: &str) -> Ready {
        Ready::new(Workload::Deployment, namespace, name)
    }

    pub fn daemon_set(namespace: &str, name: &str) -> Ready {
        Ready::new(Workload::DaemonSet, namespace, name)
    }

    fn new(workload: Workload, namespace: &str, name: &str) -> Ready {
        Ready { workload, namespace: namespace.into(), name: name.into(), within: ROLLOUT_TIMEOUT, on_each: None }
    }

    /// Apply waits this long instead.
    pub fn within(mut self, timeout: Duration) -> Ready {
        self.within = timeout;
        self
    }

    /// A DaemonSet must be ready on at least `count` nodes, one for each `what` ("worker").
    pub fn on_each(mut self, count: usize, what: &'static str) -> Ready {
        self.on_each = Some((count, what));
        self
    }

    /// The least number of ready pods a DaemonSet must have (0 when any will do).
    fn least(&self) -> usize {
        self.on_each.map_or(0, |(count, _)| count)
    }

    fn kind(&self) -> &'static str {
        match self.workload {
            Workload::Deployment => "Deployment",
            Workload::DaemonSet => "DaemonSet",
        }
    }

    /// Waits until the workload runs (`apply`), for its own time or `timeout` when given.
    async fn wait(&self, client: &kube::Client, timeout: Option<Duration>) -> anyhow::Result<()> {
        let (namespace, name) = (&self.namespace, &self.name);
        let within = timeout.unwrap_or(self.within);
        tracing::info!("waiting for {} {namespace}/{name} to be ready", self.kind());
        match self.workload {
            Workload::Deployment => crate::wait::deployment_available(client, namespace, name, within).await,
            Workload::DaemonSet => {
                crate::wait::daemonset_ready(client, namespace, name, self.least(), within).await.map(drop)
            }
        }
    }

    /// Whether it still runs (`verify`); a failure names the stage to re-run.
    async fn check(&self, client: &kube::Client, stage: &str) -> Check {
        let (namespace, name) = (self.namespace.as_str(), self.name.as_str());
        match self.workload {
            Workload::Deployment => common::deployment(client, namespace, name, VERIFY_WAIT, stage).await,
            Workload::DaemonSet => {
                let check = format!("daemonset {name}");
                let fix = format!("{stage} apply, then `kubectl -n {namespace} get pods -o wide`");
                match crate::wait::daemonset_ready(client, namespace, name, self.least(), VERIFY_WAIT).await {
                    Ok(ready) => Check::pass(
                        check,
                        format!(
                            "DaemonSet {namespace}/{name} is ready on {ready} nodes{}",
                            self.on_each.map(|(_, what)| format!(" (every {what})")).unwrap_or_default()
                        ),
                    ),
                    Err(error) => Check::fail(check, format!("{error:#}"), fix),
                }
            }
        }
    }
}

/// A Kubernetes stage as a declaration: what it installs ([`BundleStage::bundle`]), what must
/// hold before ([`BundleStage::check`]) and after ([`BundleStage::verify`]), and any work beyond
/// objects ([`BundleStage::after_apply`]). kit derives the stage's verbs from it.
pub trait BundleStage {
    /// The binary's name and the stage's id, e.g. `metallb`.
    const NAME: &'static str;
    /// The seed's folder for this stage, e.g. `02-metallb`.
    const FOLDER: &'static str;
    /// One line: what the stage does (shown in `--help`).
    const TITLE: &'static str;
    /// The lesson `explain` prints: the crate's README.md.
    const LESSON: &'static str;

    /// What the stage installs on `ctx.target`, in order.
    fn bundle(&self, ctx: &Context) -> anyhow::Result<Bundle>;

    /// Preconditions, each named, with a fix.
    fn check(&self, ctx: &Context) -> impl Future<Output = anyhow::Result<Vec<Check>>>;

    /// The stage's own postconditions; kit puts a line for each awaited workload before them
    /// and what the lab transform left out after them.
    fn verify(&self, ctx: &Context, client: &kube::Client) -> impl Future<Output = anyhow::Result<Vec<Check>>>;

    /// Work beyond objects, after the last step (a token file, the CA export, a demotion).
    /// `plan` calls it with `dry_run` to show what it would change, and it changes nothing then.
    fn after_apply(
        &self,
        _ctx: &Context,
        _client: &kube::Client,
        _dry_run: bool,
    ) -> impl Future<Output = anyhow::Result<Vec<Change>>> {
        async { Ok(Vec::new()) }
    }
}

/// Nothing is planned or applied when a pin is more than one hop from the release the cluster
/// runs: the stage would skip a release its upstream says not to skip (`kit::upgrade::guard`).
async fn refuse_skipped_hops(bundle: &Bundle, ctx: &Context, client: &kube::Client) -> anyhow::Result<()> {
    for component in bundle.components() {
        crate::upgrade::guard(client, component, component.version(&ctx.config.versions)).await?;
    }
    Ok(())
}

impl<S: BundleStage + Sync> Stage for S {
    const NAME: &'static str = <S as BundleStage>::NAME;
    const FOLDER: &'static str = <S as BundleStage>::FOLDER;
    const TITLE: &'static str = <S as BundleStage>::TITLE;
    const LESSON: &'static str = <S as BundleStage>::LESSON;

    async fn check(&self, ctx: &Context) -> anyhow::Result<Vec<Check>> {
        BundleStage::check(self, ctx).await
    }

    async fn plan(&self, ctx: &Context) -> anyhow::Result<Vec<Change>> {
        let bundle = self.bundle(ctx)?;
        let client = ctx.client().await?;
        refuse_skipped_hops(&bundle, ctx, &client).await?;
        let mut changes = Engine::new(client.clone(), <S as BundleStage>::NAME).await?.plan(&bundle.objects()).await?;
        changes.extend(self.after_apply(ctx, &client, true).await?);
        Ok(changes)
    }

    async fn apply(&self, ctx: &Context) -> anyhow::Result<Vec<Change>> {
        let bundle = self.bundle(ctx)?;
        let client = ctx.client().await?;
        refuse_skipped_hops(&bundle, ctx, &client).await?;
        let mut engine = Engine::new(client.clone(), <S as BundleStage>::NAME).await?;
        let mut changes = Vec::new();
        for step in bundle.steps() {
            match step {
                Step::Apply { through_webhook: None, .. } => changes.extend(engine.apply(&step.objects()).await?),
                Step::Apply { through_webhook: Some(component), .. } => {
                    changes.extend(engine.apply_through_webhook(&step.objects(), component).await?);
                }
                Step::Wait(ready) => ready.wait(&client, ctx.rollout_timeout).await?,
            }
        }
        changes.extend(self.after_apply(ctx, &client, false).await?);
        Ok(changes)
    }

    async fn verify(&self, ctx: &Context) -> anyhow::Result<Vec<Check>> {
        let bundle = self.bundle(ctx)?;
        let client = ctx.client().await?;
        let mut checks = Vec::new();
        for ready in bundle.waits() {
            checks.push(ready.check(&client, <S as BundleStage>::NAME).await);
        }
        checks.extend(BundleStage::verify(self, ctx, &client).await?);
        checks.extend(bundle.lab_checks());
        Ok(checks)
    }

    /// What a real cluster gets: the talos target's bundle, never the lab's transformed one.
    async fn render(&self, ctx: &Context, out: &Path) -> anyhow::Result<Vec<PathBuf>> {
        let mut files = self.bundle(&ctx.as_talos_target())?.files()?;
        files.push(("README.md".to_owned(), <S as BundleStage>::LESSON.as_bytes().to_vec()));
        crate::fsutil::write_folder(out, <S as BundleStage>::FOLDER, files)
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::api::rbac::v1::ClusterRoleBinding;

    use super::*;
    use crate::context::Verb;
    use crate::manifest::{describe, to_dynamic};
    use crate::report::Status;

    fn context(target: Target, kubeconfig: &Path) -> Context {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        Context {
            config: crate::config::ClusterConfig::load(&root.join("cluster.yaml")).expect("the documented config"),
            target,
            verb: Verb::Plan,
            kubeconfig: kubeconfig.to_owned(),
            mirror: Some(root.join("../shared/upstream")),
            bootstrap: false,
            api_wait: crate::client::API_WAIT,
            rollout_timeout: None,
        }
    }

    fn config_map(name: &str) -> DynamicObject {
        let mut object = ConfigMap::default();
        object.metadata.name = Some(name.to_owned());
        object.metadata.namespace = Some("fixture".to_owned());
        to_dynamic(&object).expect("a ConfigMap")
    }

    /// A stage of three steps and four files: an upstream release as published, a patched one
    /// sharing a file with ours, and our objects split over two steps into one file.
    struct Fixture;

    impl BundleStage for Fixture {
        const NAME: &'static str = "fixture";
        const FOLDER: &'static str = "00-fixture";
        const TITLE: &'static str = "a fixture bundle";
        const LESSON: &'static str = "# fixture\n";

        fn bundle(&self, ctx: &Context) -> anyhow::Result<Bundle> {
            let rbac = Part::upstream(ctx, Component::Traefik, "kubernetes-crd-rbac.yml")?
                .rendered_as("rbac-and-ours.yaml")
                .patch::<ClusterRoleBinding>("traefik-ingress-controller", |binding| {
                    binding
                        .subjects
                        .iter_mut()
                        .flatten()
                        .for_each(|subject| subject.namespace = Some("traefik".into()));
                })?;
            Ok(Bundle::new()
                .apply([Part::upstream(ctx, Component::Metallb, "metallb-native.yaml")?])
                .wait(Ready::deployment("metallb-system", "controller"))
                .apply_through_webhook(
                    "MetalLB",
                    [
                        rbac,
                        Part::ours("rbac-and-ours.yaml", vec![config_map("a")]),
                        Part::ours("ours.yaml", vec![config_map("b")]),
                    ],
                )
                .apply([Part::ours("ours.yaml", vec![config_map("c")])]))
        }

        async fn check(&self, _ctx: &Context) -> anyhow::Result<Vec<Check>> {
            Ok(Vec::new())
        }

        async fn verify(&self, _ctx: &Context, _client: &kube::Client) -> anyhow::Result<Vec<Check>> {
            Ok(vec![Check::pass("own", "the stage's own postcondition")])
        }
    }

    fn json(objects: &[DynamicObject]) -> Vec<serde_json::Value> {
        objects.iter().map(|object| serde_json::to_value(object).expect("json")).collect()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn render_writes_exactly_what_plan_and_apply_send_in_the_declared_order() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let ctx = context(Target::Talos, &dir.path().join("kubeconfig"));
        let bundle = Fixture.bundle(&ctx)?;
        // What apply sends, step by step, is what plan dry-runs, in the same order.
        let applied: Vec<DynamicObject> = bundle.steps().iter().flat_map(Step::objects).collect();
        assert_eq!(json(&applied), json(&bundle.objects()));
        let webhook: Vec<_> = bundle
            .steps()
            .iter()
            .filter_map(|step| match step {
                Step::Apply { through_webhook, .. } => Some(*through_webhook),
                Step::Wait(_) => None,
            })
            .collect();
        assert_eq!(webhook, [None, Some("MetalLB"), None], "each apply step keeps its webhook");

        let written = Stage::render(&Fixture, &ctx, dir.path()).await?;
        let names: Vec<String> =
            written.iter().filter_map(|path| path.file_name()).map(|name| name.to_string_lossy().into()).collect();
        assert_eq!(names, ["metallb-native.yaml", "rbac-and-ours.yaml", "ours.yaml", "README.md"]);
        let folder = dir.path().join(<Fixture as BundleStage>::FOLDER);
        let mut rendered = Vec::new();
        for name in &names[..3] {
            rendered.extend(parse_manifest(name, &std::fs::read_to_string(folder.join(name))?)?);
        }
        // Every object sent is rendered once, each file holding its parts in declared order.
        let sent = bundle.objects();
        assert_eq!(rendered.len(), sent.len());
        let by_file = |file: &str| -> Vec<String> {
            let parts = bundle.parts().filter(|part| part.file == file);
            parts.flat_map(|part| part.objects.iter().map(describe)).collect()
        };
        for name in &names[..3] {
            let in_file = parse_manifest(name, &std::fs::read_to_string(folder.join(name))?)?;
            assert_eq!(in_file.iter().map(describe).collect::<Vec<_>>(), by_file(name), "{name}");
        }
        let mut rendered = json(&rendered);
        let mut sent = json(&sent);
        rendered.sort_by_key(ToString::to_string);
        sent.sort_by_key(ToString::to_string);
        assert!(rendered == sent, "render holds exactly the objects plan and apply send");

        // The unpatched release keeps the bytes it was published with; the patched one cannot.
        let published = ctx.upstream_text(Component::Metallb, "metallb-native.yaml")?;
        assert_eq!(std::fs::read_to_string(folder.join("metallb-native.yaml"))?, published);
        assert!(std::fs::read_to_string(folder.join("rbac-and-ours.yaml"))?.contains("namespace: traefik"));
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn lab_notes_reach_verify_after_the_stages_own_lines() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        // A client is built from this file and never dialled: the fixture's verify asks nothing,
        // and a bundle without waits has no workload to read.
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters: [{name: c, cluster: {server: \"https://127.0.0.1:9\"}}]\n\
             contexts: [{name: c, context: {cluster: c, user: u}}]\nusers: [{name: u, user: {token: t}}]\n",
        )?;
        struct NoWaits;
        impl BundleStage for NoWaits {
            const NAME: &'static str = "no-waits";
            const FOLDER: &'static str = "00-no-waits";
            const TITLE: &'static str = "a fixture bundle without waits";
            const LESSON: &'static str = "# fixture\n";

            fn bundle(&self, ctx: &Context) -> anyhow::Result<Bundle> {
                Ok(Bundle::new().apply([Part::upstream(ctx, Component::Metallb, "metallb-native.yaml")?]))
            }

            async fn check(&self, _ctx: &Context) -> anyhow::Result<Vec<Check>> {
                Ok(Vec::new())
            }

            async fn verify(&self, ctx: &Context, client: &kube::Client) -> anyhow::Result<Vec<Check>> {
                BundleStage::verify(&Fixture, ctx, client).await
            }
        }
        let lab = Stage::verify(&NoWaits, &context(Target::Lab, &kubeconfig)).await?;
        assert_eq!(lab[0].name, "own", "the stage's own lines come first");
        let notes: Vec<&Check> = lab[1..].iter().collect();
        assert!(notes.iter().all(|check| check.status == Status::NotCheckableInLab && check.name == "lab transform"));
        assert!(
            notes
                .iter()
                .any(|check| check.reason.contains("ValidatingWebhookConfiguration metallb-webhook-configuration")),
            "{notes:?}"
        );
        assert!(notes.iter().any(|check| check.reason.contains("conversion webhook replaced by None")), "{notes:?}");
        let talos = Stage::verify(&NoWaits, &context(Target::Talos, &kubeconfig)).await?;
        assert_eq!(talos.len(), 1, "the talos target transforms nothing: {talos:?}");
        Ok(())
    }
}
