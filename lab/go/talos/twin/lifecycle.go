package main

// The calls that change a control plane's place in the cluster, or the machine itself, as
// Talos answers them (internal/app/machined/internal/server/v1alpha1/v1alpha1_server.go and
// internal/pkg/etcd/etcd.go): removing a member by its ID, a member leaving (removed, its etcd
// stopped and its data deleted), a snapshot of the local member's data, and a reset (leave etcd
// when asked to be graceful, wipe the disk, then reboot into maintenance mode or power off).

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/siderolabs/talos/pkg/machinery/api/common"
	"github.com/siderolabs/talos/pkg/machinery/api/machine"
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

// Reset answers, then leaves etcd (graceful, on a control plane), stops the machine's
// services, wipes what the install put on the disk (the config and every service's data;
// the hardware stays), and reboots into maintenance mode, or powers off without --reboot
// (v1alpha1_server.go, Reset; the reset sequence).
func (c *configured) Reset(ctx context.Context, in *machine.ResetRequest) (*machine.ResetResponse, error) {
	if in.Graceful && c.etcd != nil {
		if err := c.leave(ctx); err != nil {
			return nil, status.Errorf(codes.FailedPrecondition, "leaving etcd before the reset: %s", err)
		}
	}

	go func() {
		time.Sleep(500 * time.Millisecond)

		c.services.stop()

		if err := wipe(filepath.Dir(c.configFile)); err != nil {
			log.Printf("reset: %v", err)
		}

		if !in.Reboot {
			log.Printf("reset: powering off")
			os.Exit(0)
		}

		c.rebooting.Store(true)
		c.shutDown()
	}()

	return &machine.ResetResponse{Messages: []*machine.Reset{{Metadata: c.metadata()}}}, nil
}

// wipe empties the machine's state folder but for its hardware description.
func wipe(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}

	for _, entry := range entries {
		if entry.Name() == "hardware.json" {
			continue
		}

		if err = os.RemoveAll(filepath.Join(dir, entry.Name())); err != nil {
			return err
		}
	}

	return nil
}
