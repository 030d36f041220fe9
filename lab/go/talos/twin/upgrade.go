package main

// The machine's disk as Talos's installer leaves it, and the upgrade that rewrites it
// (../shared/design/talos-day2.md §2.4 and §3):
//
//   - two boot entries, A and B, each an installed Talos image, and the bootloader's default
//     (bootloader/grub/grub.go, boot_label.go): `boot.json` in the machine's folder. Booting an
//     entry of another release runs that release's twin: the box's images folder (`--images`)
//     holds one per release, and the twin execs it with its own flags and PID, as a machine
//     boots the kernel of the entry (installer images of a release the box has no twin of
//     cannot be pulled);
//   - META's `Upgrade` tag, the label booted before an upgrade, kept until the new boot is
//     running and ready: a boot that fails before then reverts to it (internal/app/machined/
//     revert.go; controllers/runtime/drop_upgrade_fallback.go): `meta.json`;
//   - the Upgrade call with its checks and its sequence, and Rollback.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/google/uuid"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/client/v3/concurrency"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/siderolabs/talos/pkg/kubernetes"
	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/compatibility"
	"github.com/siderolabs/talos/pkg/machinery/constants"
	"github.com/siderolabs/talos/pkg/machinery/version"
)

// bootEntry is one installed Talos: the installer image it came from and its release.
type bootEntry struct {
	Image string `json:"image"`
	Tag   string `json:"tag"`
}

// bootloader is what the BOOT partition says: the entries by label and the one booted.
type bootloader struct {
	Entries map[string]bootEntry `json:"entries"`
	Default string               `json:"default"`
}

// metaTags are the tags on META the twin models.
type metaTags struct {
	// Upgrade is the label to fall back to while an upgraded boot is not yet running and ready.
	Upgrade string `json:"upgrade,omitempty"`
	// StagedImage is a staged upgrade's installer image, installed by the next boot before
	// anything is mounted (meta.StagedUpgradeImageRef; Talos stores the installer's options
	// beside it, which the twin's installer has none of).
	StagedImage string `json:"stagedUpgradeImageRef,omitempty"`
}

const (
	// imageTwin is a release's twin in its folder of the box's images (lab/src/lib.rs, write_images).
	imageTwin = "talos-twin"
	bootFile  = "boot.json"
	metaFile  = "meta.json"
	// faultsFile, in the twin's folder beside its hardware, is the lab's named fault: the
	// releases this machine fails to boot (what a missing driver does to a real image). It is
	// the lab's, not the machine's: a wipe of the disk keeps it.
	faultsFile = "fails-to-boot"
	// busyMountsFile is the lab's other named fault, beside it: mount points under /var that
	// something keeps open (a volume a process still writes to), which an upgrade's unmount
	// cannot take down.
	busyMountsFile = "busy-mounts"
)

// The bootloader's labels (internal/app/machined/pkg/runtime/v1alpha1/bootloader/options/boot_label.go).
const (
	labelA = "A"
	labelB = "B"
)

func readJSON(file string, into any) (bool, error) {
	raw, err := os.ReadFile(file)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}

	if err != nil {
		return false, err
	}

	return true, json.Unmarshal(raw, into)
}

func writeJSON(file string, value any) error {
	raw, err := json.MarshalIndent(value, "", "  ")
	if err != nil {
		return err
	}

	return os.WriteFile(file, raw, 0o600)
}

// disk is the machine's folder read as its disk's BOOT and META.
type disk struct{ dir string }

func (d disk) bootloader() (bootloader, bool, error) {
	var loaded bootloader
	found, err := readJSON(filepath.Join(d.dir, bootFile), &loaded)

	return loaded, found, err
}

func (d disk) meta() (metaTags, error) {
	var tags metaTags
	_, err := readJSON(filepath.Join(d.dir, metaFile), &tags)

	return tags, err
}

func (d disk) writeBootloader(b bootloader) error {
	return writeJSON(filepath.Join(d.dir, bootFile), b)
}
func (d disk) writeMeta(tags metaTags) error { return writeJSON(filepath.Join(d.dir, metaFile), tags) }

// install writes an image into the entry not booted now (A on a blank disk) and makes it the
// default; on an upgrade META's Upgrade names the entry left, for the fallback
// (cmd/installer/pkg/install/install.go).
func (d disk) install(entry bootEntry, upgrade bool) error {
	current, found, err := d.bootloader()
	if err != nil {
		return err
	}

	next := labelA
	if found && current.Default == labelA {
		next = labelB
	}

	if !found {
		current = bootloader{Entries: map[string]bootEntry{}}
	}

	previous := current.Default
	current.Entries[next] = entry
	current.Default = next

	if err = d.writeBootloader(current); err != nil {
		return err
	}

	if upgrade {
		return d.writeMeta(metaTags{Upgrade: previous})
	}

	return d.writeMeta(metaTags{})
}

// revert flips the default to the other entry (grub/revert.go: an error when that label was
// never installed).
func (d disk) revert() error {
	current, found, err := d.bootloader()
	if err != nil {
		return err
	}

	other := labelA
	if current.Default == labelA {
		other = labelB
	}

	if _, ok := current.Entries[other]; !found || !ok {
		return fmt.Errorf("cannot rollback to %q, label does not exist", "")
	}

	current.Default = other

	return d.writeBootloader(current)
}

// booted is the release of the default entry; a disk with a config but no boot entries is
// one installed before the box kept them: it boots the ISO's release.
func (d disk) booted(iso string) (bootEntry, error) {
	current, found, err := d.bootloader()
	if err != nil || !found {
		return bootEntry{Tag: iso}, err
	}

	return current.Entries[current.Default], nil
}

// failsToBoot says whether the lab marked this machine as failing to boot `tag`.
func (d disk) failsToBoot(tag string) bool {
	raw, err := os.ReadFile(filepath.Join(d.dir, faultsFile))
	if err != nil {
		return false
	}

	return strings.Contains("\n"+string(raw)+"\n", "\n"+tag+"\n")
}

// busyMounts are the mount points the lab marked as held open on this machine.
func (d disk) busyMounts() []string {
	raw, err := os.ReadFile(filepath.Join(d.dir, busyMountsFile))
	if err != nil {
		return nil
	}

	return strings.Fields(string(raw))
}

// revertFailedBoot is what machined does when a boot fails before it is running and ready:
// with META's Upgrade set, the bootloader flips back to the entry before the upgrade and the
// tag is dropped; without it there is nothing to go back to (revert.go, revertBootloadInternal).
func (d disk) revertFailedBoot() (bool, error) {
	tags, err := d.meta()
	if err != nil || tags.Upgrade == "" {
		return false, err
	}

	log.Printf("reverting failed upgrade, switching to %q", tags.Upgrade)

	if err = d.revert(); err != nil {
		return false, err
	}

	return true, d.writeMeta(metaTags{})
}

// bootRelease runs the release the disk boots: when that is another release than this
// twin's, the box's twin of it takes over this process (syscall.Exec: same PID and flags).
// The booted release first installs a staged upgrade, if META holds one, and boots again.
func bootRelease(node nodeFlags, installed bool, pulls registry) error {
	tag := node.iso
	if installed {
		entry, err := disk{node.stateDir}.booted(node.iso)
		if err != nil {
			return err
		}

		tag = entry.Tag
	}

	if tag != version.Tag {
		next := filepath.Join(node.images, tag, imageTwin)
		log.Printf("booting Talos %s (%s)", tag, next)

		return syscall.Exec(next, os.Args, os.Environ())
	}

	if !installed {
		return nil
	}

	staged, err := installStaged(node.stateDir, pulls)
	if err != nil || !staged {
		return err
	}

	return bootRelease(node, installed, pulls)
}

// installStaged is the Install sequence of a boot that finds a staged upgrade on META: the
// tag is cleared first, so that a failing install cannot loop (v1alpha1_state.go, probeMeta),
// then the staged installer runs as an upgrade's does; the machine reboots into the entry it
// wrote (v1alpha1_sequencer_tasks.go, Install: IsInstallStaged). An install that fails leaves
// the boot on the release it was (Talos: the boot fails, reverts nothing, and boots again
// without the tag).
func installStaged(dir string, pulls registry) (bool, error) {
	machineDisk := disk{dir}

	tags, err := machineDisk.meta()
	if err != nil || tags.StagedImage == "" {
		return false, err
	}

	image := tags.StagedImage
	tags.StagedImage = ""

	if err = machineDisk.writeMeta(tags); err != nil {
		return false, err
	}

	log.Printf("performing staged upgrade via %q", image)

	target, err := pulls.pull(image)
	if err == nil {
		err = installUpgrade(pulls.images, dir, target)
	}

	if err != nil {
		log.Printf("Talos staged upgrade failed: %v", err)

		return false, nil
	}

	log.Printf("staged upgrade successful")

	return true, nil
}

// registry is what the box can pull: installer images of the releases it has a twin of, the
// vanilla ones (`ghcr.io/siderolabs/installer:<tag>`, no extensions) and the Image Factory's
// for a schematic the factory stand-in holds.
type registry struct {
	images     string
	factoryDir string
}

// pull resolves an installer image (install.PullAndValidateInstallerImage, pull.go); what the
// box does not have is not found, in containerd's words.
func (r registry) pull(ref string) (bootEntry, error) {
	notFound := fmt.Errorf("failed to resolve reference %q: %s: not found", ref, ref)

	colon := strings.LastIndex(ref, ":")
	if colon < 0 || strings.Contains(ref[colon:], "/") {
		return bootEntry{}, notFound
	}

	repository, tag := ref[:colon], ref[colon+1:]

	if _, err := os.Stat(filepath.Join(r.images, tag)); err != nil {
		return bootEntry{}, notFound
	}

	if id, ok := factorySchematic(ref); ok {
		if _, err := os.Stat(filepath.Join(r.factoryDir, id+".yaml")); err != nil {
			return bootEntry{}, notFound
		}
	} else if repository != "ghcr.io/siderolabs/installer" {
		return bootEntry{}, notFound
	}

	return bootEntry{Image: ref, Tag: tag}, nil
}

// preflight is the installer's own check, run by the target release's twin: can this release
// be installed over a host running `host`? (cmd/installer/pkg/install/preflight.go, talosVersion;
// compatibility.TalosVersion.UpgradeableFrom: the target release's own tables.)
func preflight(host string) error {
	hostVersion, err := compatibility.ParseTalosVersion(&machine.VersionInfo{Tag: host})
	if err != nil {
		return fmt.Errorf("error parsing host Talos version: %w", err)
	}

	installer, err := compatibility.ParseTalosVersion(version.NewVersion())
	if err != nil {
		return fmt.Errorf("error parsing installer Talos version: %w", err)
	}

	return installer.UpgradeableFrom(hostVersion)
}

// Upgrade checks the image and, on a control plane without Force, etcd (under its upgrade
// mutex, held for the call alone: the drain that follows is unguarded), then answers and runs
// the upgrade sequence, or for a staged upgrade records the image on META and reboots
// (v1alpha1_server.go, Upgrade).
func (c *configured) Upgrade(ctx context.Context, in *machine.UpgradeRequest) (*machine.UpgradeResponse, error) {
	actorID := uuid.New().String()

	log.Printf("upgrade request received: staged %v, force %v, reboot mode %v", in.GetStage(), in.GetForce(), in.GetRebootMode())
	log.Printf("validating %q", in.GetImage())

	target, err := c.registry.pull(in.GetImage())
	if err != nil {
		return nil, fmt.Errorf("error validating installer image %q: %w", in.GetImage(), err)
	}

	if c.etcd != nil && !in.GetForce() {
		unlock, err := c.lockUpgradeMutex(ctx)
		if err != nil {
			return nil, fmt.Errorf("failed to acquire upgrade mutex: %w", err)
		}

		defer unlock()

		if err = c.validateEtcdForUpgrade(ctx); err != nil {
			return nil, fmt.Errorf("error validating etcd for upgrade: %w", err)
		}
	}

	if in.GetStage() {
		if err = c.stage(in.GetImage()); err != nil {
			return nil, err
		}

		c.runAfterAnswer("stageUpgrade", actorID, c.stageUpgradePhases(in.GetRebootMode() == machine.UpgradeRequest_DEFAULT))
	} else {
		c.runAfterAnswer("upgrade", actorID, c.upgradePhases(target))
	}

	return &machine.UpgradeResponse{Messages: []*machine.Upgrade{{Metadata: c.metadata(), Ack: "Upgrade request received", ActorId: actorID}}}, nil
}

// minimumUpgradeLeaseSeconds is the TTL of the etcd session that holds the upgrade mutex
// (v1alpha1_server.go, MinimumEtcdUpgradeLeaseLockSeconds).
const minimumUpgradeLeaseSeconds = 60

// lockUpgradeMutex takes Talos's etcd upgrade mutex or fails at once when another control
// plane holds it (v1alpha1_server.go, tryLockUpgradeMutex).
func (c *configured) lockUpgradeMutex(ctx context.Context) (func(), error) {
	client, err := c.clusterClient()
	if err != nil {
		return nil, fmt.Errorf("failed to create etcd client: %w", err)
	}

	session, err := concurrency.NewSession(client, concurrency.WithContext(ctx), concurrency.WithTTL(minimumUpgradeLeaseSeconds))
	if err != nil {
		client.Close() //nolint:errcheck

		return nil, fmt.Errorf("error establishing etcd concurrency session: %w", err)
	}

	mutex := concurrency.NewMutex(session, constants.EtcdTalosEtcdUpgradeMutex)
	if err = mutex.TryLock(ctx); err != nil {
		session.Close() //nolint:errcheck
		client.Close()  //nolint:errcheck

		return nil, fmt.Errorf("error trying to lock etcd upgrade mutex: %w", err)
	}

	return func() {
		unlockCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()

		mutex.Unlock(unlockCtx) //nolint:errcheck
		session.Close()         //nolint:errcheck
		client.Close()          //nolint:errcheck
	}, nil
}

// validateEtcdForUpgrade refuses what Talos refuses: exactly two members, a member not
// started, a member that cannot serve a read within 15 s (internal/pkg/etcd/etcd.go,
// ValidateForUpgrade and ValidateQuorum).
func (c *configured) validateEtcdForUpgrade(ctx context.Context) error {
	client, err := c.clusterClient()
	if err != nil {
		return err
	}
	defer client.Close() //nolint:errcheck

	members, err := client.MemberList(ctx)
	if err != nil {
		return err
	}

	if len(members.Members) == 2 {
		return fmt.Errorf("etcd member count(%d) is insufficient to maintain quorum if upgrade commences", len(members.Members))
	}

	for _, member := range members.Members {
		if member.Name == "" {
			return fmt.Errorf("etcd member %016x is not started, all members must be running to perform an upgrade", member.ID)
		}

		if err = c.memberServes(ctx, member.ClientURLs); err != nil {
			return fmt.Errorf("etcd member %016x is not healthy; all members must be healthy to perform an upgrade: %w", member.ID, err)
		}
	}

	return nil
}

// memberServes reads a key from one member (ValidateQuorum: any answer, permission denied
// included, went through consensus).
func (c *configured) memberServes(ctx context.Context, urls []string) error {
	client, err := c.etcd.client(urls...)
	if err != nil {
		return fmt.Errorf("failed to create client to member: %w", err)
	}
	defer client.Close() //nolint:errcheck

	readCtx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()

	if _, err = client.Get(readCtx, "health"); err != nil && !errors.Is(err, rpctypes.ErrPermissionDenied) {
		return err
	}

	return nil
}

// upgradePhases is Talos's upgrade sequence (v1alpha1_sequencer.go, Upgrade): the node is
// cordoned and drained, its pods and services stop, the installer writes the other boot entry,
// and the machine reboots into it.
func (c *configured) upgradePhases(target bootEntry) []phase {
	install := []phase{
		{name: "upgrade", tasks: []task{{name: "upgrade", run: func() error { return c.install(target) }}}},
		{name: "meta", tasks: []task{noop("reloadMeta")}},
	}

	phases := []phase{
		{name: "drain", tasks: []task{{name: "cordonAndDrainNode", run: c.cordonAndDrain}}},
		{name: "cleanup", tasks: []task{{name: "stopAllPods", run: c.stopAllPods}}},
		{name: "dbus", tasks: []task{noop("stopDBus")}},
	}
	phases = append(phases, c.stopAll(true, install...)...)

	return append(phases, phase{name: "reboot", tasks: []task{{name: "reboot", run: c.goDown(true)}}})
}

// stage records a staged upgrade's image on META for the next boot (v1alpha1_server.go,
// Upgrade with Stage).
func (c *configured) stage(image string) error {
	machineDisk := disk{filepath.Dir(c.configFile)}

	tags, err := machineDisk.meta()
	if err != nil {
		return fmt.Errorf("error reading meta: %w", err)
	}

	tags.StagedImage = image

	if err = machineDisk.writeMeta(tags); err != nil {
		return fmt.Errorf("error adding staged upgrade image ref tag: %w", err)
	}

	return nil
}

// stageUpgradePhases is Talos's StageUpgrade sequence (v1alpha1_sequencer.go): no drain and no
// install, the pods and services stopped, the mounts taken down as a reboot takes them
// (a mount that stays busy no longer matters: the machine reboots regardless), and the reboot
// whose boot installs the staged image.
func (c *configured) stageUpgradePhases(kexec bool) []phase {
	phases := []phase{
		{name: "cleanup", tasks: []task{{name: "stopAllPods", run: c.stopAllPods}}},
		{name: "dbus", tasks: []task{noop("stopDBus")}},
	}
	phases = append(phases, c.stopAll(kexec)...)

	return append(phases, phase{name: "reboot", tasks: []task{{name: "reboot", run: c.goDown(true)}}})
}

// install runs the target release's installer over this machine (installUpgrade).
func (c *configured) install(target bootEntry) error {
	return installUpgrade(c.registry.images, filepath.Dir(c.configFile), target)
}

// installUpgrade runs the target release's installer: its preflight judges the running
// release by the target's own tables, then it writes the other boot entry and META's fallback
// (internal/pkg/install/install.go; cmd/installer/pkg/install).
func installUpgrade(images, dir string, target bootEntry) error {
	installer := filepath.Join(images, target.Tag, imageTwin)

	output, err := exec.Command(installer, "preflight", "--host-version="+version.Tag).CombinedOutput()
	if err != nil {
		return fmt.Errorf("pre-flight checks failed: %s", strings.TrimSpace(string(output)))
	}

	return disk{dir}.install(target, true)
}

// unmountPodMounts takes down what is mounted under /var before an upgrade rewrites the disk;
// one still held open fails the task, and with it the upgrade, which leaves the machine with
// its services stopped (v1alpha1_sequencer_tasks.go, UnmountPodMounts: SafeUnmount's error).
func (c *configured) unmountPodMounts() error {
	busy := disk{filepath.Dir(c.configFile)}.busyMounts()
	if len(busy) == 0 {
		return nil
	}

	log.Printf("unmounting %s", busy[0])

	return fmt.Errorf("error unmounting %s: %w", busy[0], syscall.EBUSY)
}

// Rollback boots the other entry: the bootloader flips its default and the machine reboots
// (v1alpha1_server.go, Rollback).
func (c *configured) Rollback(_ context.Context, _ *machine.RollbackRequest) (*machine.RollbackResponse, error) {
	log.Printf("rollback via API received")

	if err := (disk{filepath.Dir(c.configFile)}).revert(); err != nil {
		return nil, err
	}

	c.runAfterAnswer("reboot", uuid.New().String(), c.rebootPhases(machine.RebootRequest_DEFAULT))

	return &machine.RollbackResponse{Messages: []*machine.Rollback{{Metadata: c.metadata()}}}, nil
}

// cordonedAnnotation marks a Node Talos cordoned itself, so that it uncordons only those
// (controllers/k8s/node_apply.go).
const cordonedAnnotation = constants.AnnotationCordonedKey

// cordonAndDrain is Talos's cordonAndDrainNode: the Node is cordoned (marked as Talos's doing),
// then drained by Talos's own drain (pkg/kubernetes, Drain: every pod that is not a mirror or
// a DaemonSet's evicted through the eviction API, so PodDisruptionBudgets hold, each with a 60 s
// grace, a refusal (429) retried every 5 s; evictions still refused after five minutes are
// logged and the sequence goes on), with the kubelet's own credentials.
func (c *configured) cordonAndDrain() error {
	ctx := context.Background()

	client, node, err := c.services.kubelet.ownNode(ctx)
	if err != nil {
		return fmt.Errorf("cordoning: %w", err)
	}

	if !node.Spec.Unschedulable {
		cordon := fmt.Sprintf(`{"metadata":{"annotations":{%q:%q}},"spec":{"unschedulable":true}}`, cordonedAnnotation, constants.AnnotationCordonedValue)
		if _, err = client.CoreV1().Nodes().Patch(ctx, node.Name, types.StrategicMergePatchType, []byte(cordon), metav1.PatchOptions{}); err != nil {
			return fmt.Errorf("cordoning %s: %w", node.Name, err)
		}
	}

	certPEM, keyPEM, err := c.services.kubelet.credentials()
	if err != nil {
		return err
	}

	drainer, err := kubernetes.NewForConfig(c.services.kubelet.restConfig(certPEM, keyPEM))
	if err != nil {
		return err
	}

	return drainer.Drain(ctx, node.Name)
}

// runningAndReady is what a machine does once it is running and ready after a boot: META's
// upgrade fallback is dropped (controllers/runtime/drop_upgrade_fallback.go) and a Node Talos
// cordoned is uncordoned (controllers/k8s/node_cordoned_spec.go).
func (c *configured) runningAndReady(ctx context.Context) {
	machineDisk := disk{filepath.Dir(c.configFile)}

	if tags, err := machineDisk.meta(); err == nil && tags.Upgrade != "" {
		log.Printf("dropping the upgrade fallback %q: this boot is running and ready", tags.Upgrade)

		if err = machineDisk.writeMeta(metaTags{}); err != nil {
			log.Printf("META: %v", err)
		}
	}

	client, node, err := c.services.kubelet.ownNode(ctx)
	if err != nil || node.Annotations[cordonedAnnotation] == "" {
		return
	}

	uncordon := fmt.Sprintf(`{"metadata":{"annotations":{%q:null}},"spec":{"unschedulable":false}}`, cordonedAnnotation)
	if _, err = client.CoreV1().Nodes().Patch(ctx, node.Name, types.StrategicMergePatchType, []byte(uncordon), metav1.PatchOptions{}); err != nil {
		log.Printf("uncordoning: %v", err)
	}
}
