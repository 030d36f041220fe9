package main

// The calls that change a control plane's place in the cluster, or the machine itself, as
// Talos answers them (internal/app/machined/internal/server/v1alpha1/v1alpha1_server.go and
// internal/pkg/etcd/etcd.go): removing a member by its ID, a member leaving (removed, its etcd
// stopped and its data deleted), a snapshot of the local member's data, and a reset (leave etcd
// when asked to be graceful, wipe the whole system disk or the volumes named, then reboot or
// power off).

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/google/uuid"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/siderolabs/talos/pkg/machinery/api/common"
	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/constants"
	"github.com/siderolabs/talos/pkg/machinery/resources/block"
)

// clusterClient talks to every control plane's member (Talos: NewClientFromControlPlaneIPs).
func (c *configured) clusterClient() (*clientv3.Client, error) {
	return c.etcd.client(append([]string{c.etcd.clientURL(c.address)}, c.etcd.peerEndpoints()...)...)
}

// removeMember removes a member through the cluster (a leader is required); NotFound when
// there is no such member.
func (c *configured) removeMember(ctx context.Context, id uint64) error {
	client, err := c.clusterClient()
	if err != nil {
		return fmt.Errorf("failed to create etcd client: %w", err)
	}
	defer client.Close() //nolint:errcheck

	callCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()

	if _, err = client.MemberRemove(clientv3.WithRequireLeader(callCtx), id); err != nil {
		if errors.Is(err, rpctypes.ErrMemberNotFound) {
			return status.Error(codes.NotFound, err.Error())
		}

		return fmt.Errorf("failed to remove member %d: %w", id, err)
	}

	return nil
}

// EtcdRemoveMemberByID removes another member (a control plane that is gone for good).
func (c *configured) EtcdRemoveMemberByID(ctx context.Context, in *machine.EtcdRemoveMemberByIDRequest) (*machine.EtcdRemoveMemberByIDResponse, error) {
	if err := c.checkControlplane("etcd remove member"); err != nil {
		return nil, err
	}

	if err := c.removeMember(ctx, in.MemberId); err != nil {
		return nil, err
	}

	return &machine.EtcdRemoveMemberByIDResponse{Messages: []*machine.EtcdRemoveMemberByID{{}}}, nil
}

// leave removes this machine's member, stops etcd and deletes its data (etcd.go, LeaveCluster).
func (c *configured) leave(ctx context.Context) error {
	local, err := c.etcd.localClient()
	if err != nil {
		return err
	}

	callCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()

	self, err := local.Status(callCtx, c.etcd.clientURL("127.0.0.1"))
	local.Close() //nolint:errcheck

	if err != nil {
		return fmt.Errorf("finding this member: %w", err)
	}

	if err = c.removeMember(ctx, self.Header.MemberId); err != nil && status.Code(err) != codes.NotFound {
		return err
	}

	c.etcd.stop()

	return os.RemoveAll(c.etcd.dataDir())
}

// EtcdLeaveCluster: this control plane's member leaves the cluster.
func (c *configured) EtcdLeaveCluster(ctx context.Context, _ *machine.EtcdLeaveClusterRequest) (*machine.EtcdLeaveClusterResponse, error) {
	if err := c.checkControlplane("etcd leave"); err != nil {
		return nil, err
	}

	if err := c.leave(ctx); err != nil {
		return nil, fmt.Errorf("failed to leave cluster: %w", err)
	}

	return &machine.EtcdLeaveClusterResponse{Messages: []*machine.EtcdLeaveCluster{{}}}, nil
}

// EtcdSnapshot streams the local member's snapshot (`talosctl etcd snapshot db.snapshot`).
func (c *configured) EtcdSnapshot(_ *machine.EtcdSnapshotRequest, srv machine.MachineService_EtcdSnapshotServer) error {
	if err := c.checkControlplane("etcd snapshot"); err != nil {
		return err
	}

	client, err := c.etcd.localClient()
	if err != nil {
		return fmt.Errorf("failed to create etcd client: %w", err)
	}
	defer client.Close() //nolint:errcheck

	snapshot, err := client.Snapshot(srv.Context())
	if err != nil {
		return fmt.Errorf("failed reading etcd snapshot: %w", err)
	}
	defer snapshot.Close() //nolint:errcheck

	chunk := make([]byte, 64*1024)

	for {
		n, err := snapshot.Read(chunk)
		if n > 0 {
			if sendErr := srv.Send(&common.Data{Bytes: append([]byte(nil), chunk[:n]...)}); sendErr != nil {
				return sendErr
			}
		}

		if errors.Is(err, io.EOF) {
			return nil
		}

		if err != nil {
			return err
		}
	}
}

// Reset checks what it is asked to wipe as Talos does (v1alpha1_server.go, Reset), answers
// with the actor ID of the reset, then runs the reset sequence (v1alpha1_sequencer.go, Reset):
// graceful, a control plane leaves etcd first; the machine's services stop; the system disk is
// wiped, all of it or only the volumes named (ResetSystemDiskSpec); then the machine reboots
// or powers off. A machine whose STATE survives (only EPHEMERAL wiped) boots into its config
// with an empty etcd: the first step of Talos's disaster recovery. Draining the node on a
// graceful reset is not modelled (the twin has no pods of its own to evict).
func (c *configured) Reset(ctx context.Context, in *machine.ResetRequest) (*machine.ResetResponse, error) {
	actorID := uuid.New().String()

	if len(in.GetUserDisksToWipe()) > 0 {
		if err := c.checkUserDisks(in); err != nil {
			return nil, err
		}
	}

	var volumes []string

	if len(in.GetSystemPartitionsToWipe()) > 0 {
		if in.Mode == machine.ResetRequest_USER_DISKS {
			return nil, errors.New("reset failed: invalid input, wipe mode USER_DISKS doesn't support SystemPartitionsToWipe parameter")
		}

		for _, spec := range in.GetSystemPartitionsToWipe() {
			volume, err := safe.ReaderGetByID[*block.VolumeStatus](ctx, c.resources, spec.Label)
			if err != nil {
				return nil, fmt.Errorf("failed to get volume status with label %q: %w", spec.Label, err)
			}

			if volume.TypedSpec().Location == "" {
				return nil, fmt.Errorf("failed to reset: volume %q is not located", spec.Label)
			}

			if spec.Wipe {
				volumes = append(volumes, spec.Label)
			}
		}
	}

	// ALL and SYSTEM_DISK wipe the system disk: the volumes named, or the whole of it.
	wipeSystemDisk := in.Mode != machine.ResetRequest_USER_DISKS
	if wipeSystemDisk && len(in.GetSystemPartitionsToWipe()) == 0 {
		volumes = slices.Collect(maps.Keys(volumeContents))
	}

	log.Printf("reset request received. actorID: %s", actorID)

	c.runAfterAnswer("reset", actorID, c.resetPhases(in, volumes))

	return &machine.ResetResponse{Messages: []*machine.Reset{{Metadata: c.metadata(), ActorId: actorID}}}, nil
}

// checkUserDisks refuses a user disk that is not there or is the system disk (Reset's input
// checks). The twin keeps nothing on user disks, so wiping one changes nothing else.
func (c *configured) checkUserDisks(in *machine.ResetRequest) error {
	if in.Mode == machine.ResetRequest_SYSTEM_DISK {
		return errors.New("reset failed: invalid input, wipe mode SYSTEM_DISK doesn't support UserDisksToWipe parameter")
	}

	systemDisk := c.config.Machine().Install().Disk()

	for _, device := range in.GetUserDisksToWipe() {
		if !slices.ContainsFunc(c.hardware.Disks, func(disk Disk) bool { return disk.DevPath == device }) {
			return fmt.Errorf("reset user disk failed: device %s wasn't found", device)
		}

		if device == systemDisk {
			return fmt.Errorf("reset user disk failed: device %s is the system disk", device)
		}
	}

	return nil
}

// volumeContents is what each system volume holds of the twin's disk folder: STATE the
// machine config and the node identity (discovery.go), EPHEMERAL (/var) etcd's data, the
// kubelet's and the control plane's files, META the installer's tags, BOOT the boot entries
// (upgrade.go).
var volumeContents = map[string][]string{
	constants.StatePartitionLabel:     {"config.yaml", constants.NodeIdentityFilename},
	constants.EphemeralPartitionLabel: {"etcd", "kubelet", "kubernetes"},
	constants.MetaPartitionLabel:      {metaFile},
	constants.BootPartitionLabel:      {bootFile},
}

// resetPhases is Talos's reset sequence for a machine installed to disk
// (v1alpha1_sequencer.go, Reset): graceful, it cordons and drains the node and leaves etcd (a
// member that cannot leave fails the sequence, and nothing is wiped); then every service
// stops; then the volumes named are wiped (resetSpec), or the whole system disk (reset); then
// the machine reboots or powers off. Wiping only EPHEMERAL keeps the config: the machine comes
// back configured, its etcd empty.
func (c *configured) resetPhases(in *machine.ResetRequest, volumes []string) []phase {
	var phases []phase

	if in.GetGraceful() {
		phases = append(phases,
			phase{name: "drain", tasks: []task{{name: "cordonAndDrainNode", run: logOnly(c.cordonAndDrain)}}},
			phase{name: "cleanup", tasks: []task{{name: "removeAllPods", run: logOnly(c.stopAllPods)}}},
		)
	} else {
		phases = append(phases, phase{name: "cleanup", tasks: []task{{name: "stopAllPods", run: logOnly(c.stopAllPods)}}})
	}

	phases = append(phases, phase{name: "dbus", tasks: []task{noop("stopDBus")}})

	if in.GetGraceful() && c.etcd != nil {
		phases = append(phases, phase{name: "leave", tasks: []task{{name: "leaveEtcd", run: func() error {
			return c.leave(context.Background())
		}}}})
	}

	// kexec when the boot partition stays (the volumes named do not include it).
	targeted := len(in.GetSystemPartitionsToWipe()) > 0

	phases = append(phases, phase{name: "preReset", tasks: []task{noop("sendResetSignal")}})
	phases = append(phases, c.stopAll(targeted)...)
	phases = append(phases, phase{name: "forceCleanup", tasks: []task{noop("forceCleanup")}})

	wipe := task{name: "resetSystemDisk", run: func() error { return c.wipe(volumes) }}
	wipePhase := "reset"

	if targeted {
		wipe.name, wipePhase = "resetSystemDiskSpec", "resetSpec"
	}

	if len(volumes) > 0 {
		phases = append(phases, phase{name: wipePhase, tasks: []task{wipe}})
	}

	if in.GetReboot() {
		return append(phases, phase{name: "reboot", tasks: []task{{name: "reboot", run: c.goDown(true)}}})
	}

	return append(phases, phase{name: "shutdown", tasks: []task{{name: "shutdown", run: c.goDown(false)}}})
}

// logOnly is Talos's taskErrorHandler(logError, …): the task's failure is logged, the sequence
// goes on.
func logOnly(run func() error) func() error {
	return func() error {
		if err := run(); err != nil {
			log.Printf("ignoring: %v", err)
		}

		return nil
	}
}

// wipe empties what the volumes named hold of the machine's folder.
func (c *configured) wipe(volumes []string) error {
	dir := filepath.Dir(c.configFile)

	var failed []error

	for _, volume := range volumes {
		log.Printf("reset: wiping %s", volume)

		for _, entry := range volumeContents[volume] {
			if err := os.RemoveAll(filepath.Join(dir, entry)); err != nil {
				failed = append(failed, fmt.Errorf("wiping %s: %w", volume, err))
			}
		}
	}

	return errors.Join(failed...)
}
