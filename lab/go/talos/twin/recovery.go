package main

// etcd's disaster recovery as Talos runs it: a client uploads a snapshot to a control plane
// whose etcd has no data (EPHEMERAL wiped) and waits to join (v1alpha1_server.go, EtcdRecover),
// then bootstraps that node "recovering" (Bootstrap with RecoverEtcd): instead of an empty
// cluster, etcd's data directory is restored from the snapshot as a cluster of one member, this
// node, and started (system/services/etcd.go, BootstrapEtcd and recoverFromSnapshot). The other
// control planes join it as they join any cluster. What the snapshot held (every Kubernetes
// object) is back; the member IDs are new.

import (
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"

	"go.etcd.io/etcd/etcdutl/v3/snapshot"
	"go.uber.org/zap"

	"github.com/siderolabs/talos/pkg/machinery/api/common"
	"github.com/siderolabs/talos/pkg/machinery/api/machine"
)

// recoverySnapshot is where an uploaded snapshot waits for the bootstrap that restores it
// (Talos: constants.EtcdRecoverySnapshotPath, /var/lib/etcd.snapshot, on EPHEMERAL).
func (e *etcdMember) recoverySnapshot() string { return filepath.Join(e.dir, "recovery.snapshot") }

// EtcdRecover receives the snapshot a later `bootstrap --recover-from` restores, written and
// synced before the answer (v1alpha1_server.go, EtcdRecover). A failed upload leaves nothing.
func (c *configured) EtcdRecover(srv machine.MachineService_EtcdRecoverServer) error {
	if err := c.checkControlplane("etcd recover"); err != nil {
		return err
	}

	path := c.etcd.recoverySnapshot()

	file, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("error creating etcd recovery snapshot: %w", err)
	}

	if err = receiveInto(srv, file); err != nil {
		file.Close()    //nolint:errcheck
		os.Remove(path) //nolint:errcheck

		return err
	}

	if err = file.Close(); err != nil {
		os.Remove(path) //nolint:errcheck

		return fmt.Errorf("error closing snapshot: %w", err)
	}

	return srv.SendAndClose(&machine.EtcdRecoverResponse{Messages: []*machine.EtcdRecover{{Metadata: c.metadata()}}})
}

// receiveInto writes the client's stream into file, then syncs it to the disk.
func receiveInto(srv machine.MachineService_EtcdRecoverServer, file *os.File) error {
	for {
		var msg *common.Data

		msg, err := srv.Recv()
		if errors.Is(err, io.EOF) {
			break
		}

		if err != nil {
			return err
		}

		if _, err = file.Write(msg.Bytes); err != nil {
			return fmt.Errorf("error writing snapshot: %w", err)
		}
	}

	if err := file.Sync(); err != nil {
		return fmt.Errorf("error fsyncing snapshot: %w", err)
	}

	return nil
}

// restoreFromSnapshot checks the uploaded snapshot (etcd's own hash at its end, unless the
// client said to skip it: a raw copy of a data directory has none), restores it into the
// empty data directory as a cluster of this member alone, and deletes it.
func (e *etcdMember) restoreFromSnapshot(skipHashCheck bool) error {
	manager := snapshot.NewV3(zap.NewNop())

	status, err := manager.Status(e.recoverySnapshot())
	if err != nil {
		return fmt.Errorf("error verifying snapshot: %w", err)
	}

	log.Printf("recovering etcd from snapshot: hash %08x, revision %d, total keys %d, total size %d",
		status.Hash, status.Revision, status.TotalKey, status.TotalSize)

	self := e.peerURL(e.address)

	if err = manager.Restore(snapshot.RestoreConfig{
		SnapshotPath:   e.recoverySnapshot(),
		Name:           e.name,
		OutputDataDir:  e.dataDir(),
		PeerURLs:       []string{self},
		InitialCluster: e.name + "=" + self,
		SkipHashCheck:  skipHashCheck,
	}); err != nil {
		return fmt.Errorf("error recovering from the snapshot: %w", err)
	}

	return os.Remove(e.recoverySnapshot())
}
