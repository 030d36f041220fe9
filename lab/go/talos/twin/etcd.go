package main

// A configured control plane's etcd member, run from its config alone, as Talos runs it
// (internal/app/machined/pkg/system/services/etcd.go): the real etcd binary, at the node's
// address, with peer and client certificates from the config's etcd CA (`cluster.etcd.ca`).
// One control plane starts a new cluster when it is bootstrapped; the others join it: each
// adds itself as a learner through a member that answers, starts with the cluster's members,
// and is promoted once it has caught up.
//
// Talos finds the other control planes through its discovery of the cluster's members; the
// twin is told their addresses by the lab (`--control-planes`): a stand-in for discovery.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	talosx509 "github.com/siderolabs/crypto/x509"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/siderolabs/talos/pkg/machinery/config"
)

const (
	etcdClientPort = "2379"
	etcdPeerPort   = "2380"
)

type etcdMember struct {
	binary       string
	address      string
	name         string
	dir          string
	controlPlane []string

	tls *tls.Config

	mu      sync.Mutex
	service *service
	// failure is why the service's pre stage failed (a snapshot that could not be restored).
	failure string
}

func newEtcdMember(provider config.Provider, binary, address, name, stateDir string, controlPlanes []string) (*etcdMember, error) {
	ca, err := talosx509.NewCertificateAuthorityFromCertificateAndKey(provider.Cluster().Etcd().CA())
	if err != nil {
		return nil, fmt.Errorf("cluster.etcd.ca: %w", err)
	}

	dir := filepath.Join(stateDir, "etcd")
	if err = os.MkdirAll(filepath.Join(dir, "pki"), 0o700); err != nil {
		return nil, err
	}

	// One key pair serves the member as peer, server and client (Talos makes separate ones;
	// the trust is the same: the etcd CA).
	keyPair, err := talosx509.NewKeyPair(ca,
		talosx509.IPAddresses([]net.IP{net.ParseIP(address), net.ParseIP("127.0.0.1")}),
		talosx509.DNSNames([]string{name, "localhost"}),
		talosx509.CommonName(name),
		talosx509.ExtKeyUsage([]x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}),
		talosx509.NotAfter(time.Now().Add(365*24*time.Hour)),
	)
	if err != nil {
		return nil, err
	}

	for file, data := range map[string][]byte{"ca.crt": ca.CrtPEM, "member.crt": keyPair.CrtPEM, "member.key": keyPair.KeyPEM} {
		if err = os.WriteFile(filepath.Join(dir, "pki", file), data, 0o600); err != nil {
			return nil, err
		}
	}

	pool := x509.NewCertPool()
	pool.AddCert(ca.Crt)

	var peers []string

	for _, ip := range controlPlanes {
		if ip != address {
			peers = append(peers, ip)
		}
	}

	return &etcdMember{
		binary:       binary,
		address:      address,
		name:         name,
		dir:          dir,
		controlPlane: peers,
		tls:          &tls.Config{Certificates: []tls.Certificate{*keyPair.Certificate}, RootCAs: pool, MinVersion: tls.VersionTLS12},
	}, nil
}

func (e *etcdMember) dataDir() string { return filepath.Join(e.dir, "data") }

// hasData is what Bootstrap checks: an etcd data directory that is not empty.
func (e *etcdMember) hasData() bool {
	entries, _ := os.ReadDir(e.dataDir()) //nolint:errcheck

	return len(entries) > 0
}

func (e *etcdMember) peerURL(ip string) string {
	return "https://" + net.JoinHostPort(ip, etcdPeerPort)
}

func (e *etcdMember) clientURL(ip string) string {
	return "https://" + net.JoinHostPort(ip, etcdClientPort)
}

// start runs the etcd binary with the given initial cluster; with data on disk, etcd ignores
// the initial flags and rejoins as the member it was.
func (e *etcdMember) start(initialCluster, state string) error {
	e.mu.Lock()
	defer e.mu.Unlock()

	if e.service != nil && e.service.running() {
		return nil
	}

	pki := filepath.Join(e.dir, "pki")
	e.service = newService("etcd", e.binary, e.dir, []string{
		"--name=" + e.name,
		"--data-dir=" + e.dataDir(),
		"--listen-peer-urls=" + e.peerURL(e.address),
		"--initial-advertise-peer-urls=" + e.peerURL(e.address),
		"--listen-client-urls=" + e.clientURL(e.address) + "," + e.clientURL("127.0.0.1"),
		"--advertise-client-urls=" + e.clientURL(e.address),
		"--initial-cluster=" + initialCluster,
		"--initial-cluster-state=" + state,
		"--cert-file=" + filepath.Join(pki, "member.crt"),
		"--key-file=" + filepath.Join(pki, "member.key"),
		"--trusted-ca-file=" + filepath.Join(pki, "ca.crt"),
		"--client-cert-auth",
		"--peer-cert-file=" + filepath.Join(pki, "member.crt"),
		"--peer-key-file=" + filepath.Join(pki, "member.key"),
		"--peer-trusted-ca-file=" + filepath.Join(pki, "ca.crt"),
		"--peer-client-cert-auth",
	})
	log.Printf("etcd member %s starts, cluster state %s", e.name, state)

	return e.service.start()
}

// stop ends the etcd process (the machine shuts down).
func (e *etcdMember) stop() {
	e.mu.Lock()
	service := e.service
	e.mu.Unlock()

	if service != nil {
		service.stop()
	}
}

// bootstrap starts a new cluster of one, this member: empty, or restored from the snapshot
// uploaded for recovery. A restore that fails fails etcd's pre stage, as Talos's does: the
// service shows the error and etcd does not start.
func (e *etcdMember) bootstrap(recoverSnapshot, skipHashCheck bool) error {
	if recoverSnapshot {
		if err := e.restoreFromSnapshot(skipHashCheck); err != nil {
			log.Printf("etcd: %v", err)
			e.mu.Lock()
			e.failure = "Failed to run pre stage: " + err.Error()
			e.mu.Unlock()

			return nil
		}
	}

	return e.start(e.name+"="+e.peerURL(e.address), "new")
}

// failed is why etcd could not start, if it could not.
func (e *etcdMember) failed() string {
	e.mu.Lock()
	defer e.mu.Unlock()

	return e.failure
}

// client talks to the members at `endpoints`.
func (e *etcdMember) client(endpoints ...string) (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{Endpoints: endpoints, TLS: e.tls, DialTimeout: 3 * time.Second})
}

func (e *etcdMember) localClient() (*clientv3.Client, error) {
	return e.client(e.clientURL("127.0.0.1"))
}

// rejoin restarts a member that has data (after a reboot); without data it joins.
func (e *etcdMember) run(ctx context.Context) {
	if e.hasData() {
		if err := e.start("", "existing"); err != nil {
			log.Printf("etcd: %v", err)
		}

		return
	}

	go e.join(ctx)
}

// join waits for a member of the cluster to answer, adds this node as a learner, starts etcd
// with the cluster's members, then asks for its promotion until it is a voting member. It
// stops as soon as this node is bootstrapped instead.
func (e *etcdMember) join(ctx context.Context) {
	for ctx.Err() == nil {
		if e.hasData() || e.running() {
			return
		}

		err := e.joinOnce(ctx)
		if err == nil {
			e.promote(ctx)

			return
		}

		time.Sleep(2 * time.Second)
	}
}

func (e *etcdMember) running() bool {
	e.mu.Lock()
	defer e.mu.Unlock()

	return e.service != nil && e.service.running()
}

// peerEndpoints are the client URLs of the other control planes' members.
func (e *etcdMember) peerEndpoints() []string {
	endpoints := make([]string, 0, len(e.controlPlane))
	for _, ip := range e.controlPlane {
		endpoints = append(endpoints, e.clientURL(ip))
	}

	return endpoints
}

func (e *etcdMember) joinOnce(ctx context.Context) error {
	endpoints := e.peerEndpoints()
	if len(endpoints) == 0 {
		return errors.New("no other control plane")
	}

	client, err := e.client(endpoints...)
	if err != nil {
		return err
	}
	defer client.Close() //nolint:errcheck

	callCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()

	list, err := client.MemberList(clientv3.WithRequireLeader(callCtx))
	if err != nil {
		return err
	}

	// Joining means an empty data directory: a member of the same name is this machine's
	// previous self (before a reset or a disk swap) and is removed first, or the new member and
	// the old one would conflict (system/services/etcd.go, addMember). An unnamed member at this
	// machine's peer URL is a learner this machine added and never started (a join interrupted
	// by a reboot); Talos would be refused its add ("Peer URLs already exists") until someone
	// removed it, the twin removes it too, so a box's retried join does not stall.
	self := e.peerURL(e.address)

	for _, member := range list.Members {
		stale := member.Name == e.name || (member.Name == "" && slices.Contains(member.PeerURLs, self))
		if !stale {
			continue
		}

		if _, err = client.MemberRemove(callCtx, member.ID); err != nil {
			return fmt.Errorf("error removing self from the member list: %w", err)
		}
	}

	if _, err = client.MemberAddAsLearner(callCtx, []string{self}); err != nil {
		return fmt.Errorf("error adding member: %w", err)
	}

	if list, err = client.MemberList(callCtx); err != nil {
		return fmt.Errorf("error getting second etcd member list: %w", err)
	}

	var initial []string

	for _, member := range list.Members {
		name := member.Name
		if len(member.PeerURLs) > 0 && member.PeerURLs[0] == self {
			name = e.name
		}

		if name == "" {
			continue
		}

		for _, url := range member.PeerURLs {
			initial = append(initial, name+"="+url)
		}
	}

	if !strings.Contains(strings.Join(initial, ","), self) {
		initial = append(initial, e.name+"="+self)
	}

	return e.start(strings.Join(initial, ","), "existing")
}

// promote asks a voting member to make this learner a voting member, until it is one (a
// learner serves no cluster RPCs itself, and the leader refuses while it has not caught up).
func (e *etcdMember) promote(ctx context.Context) {
	for ctx.Err() == nil {
		time.Sleep(time.Second)

		voter, err := e.promoteOnce(ctx)
		if voter {
			log.Printf("etcd member %s is a voting member", e.name)

			return
		}

		if err != nil {
			log.Printf("etcd member %s not promoted yet: %v", e.name, err)
		}
	}
}

// voting says whether the local member answers and is a voting member (no longer a learner).
func (e *etcdMember) voting(ctx context.Context) bool {
	local, err := e.localClient()
	if err != nil {
		return false
	}
	defer local.Close() //nolint:errcheck

	callCtx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()

	status, err := local.Status(callCtx, e.clientURL("127.0.0.1"))

	return err == nil && !status.IsLearner
}

// promoteOnce says whether this member votes; if it does not, it asks for its promotion.
func (e *etcdMember) promoteOnce(ctx context.Context) (bool, error) {
	local, err := e.localClient()
	if err != nil {
		return false, err
	}
	defer local.Close() //nolint:errcheck

	callCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()

	status, err := local.Status(callCtx, e.clientURL("127.0.0.1"))
	if err != nil {
		return false, err
	}

	if !status.IsLearner {
		return true, nil
	}

	voters, err := e.client(e.peerEndpoints()...)
	if err != nil {
		return false, err
	}
	defer voters.Close() //nolint:errcheck

	_, err = voters.MemberPromote(callCtx, status.Header.MemberId)

	return false, err
}
