package main

// The control-plane VIP (a Layer2VIPConfig document): one healthy control plane holds the
// shared address at a time. The control planes hold an election in etcd; the winner adds the
// address to its link and announces it with a gratuitous ARP, so every machine on the LAN
// sends the VIP's traffic to it. When the holder goes down, its etcd session lapses (at once
// on a clean shutdown, which resigns first of all, before any pod stops: services.go,
// tearDownKubeletLifecycle; after the session's TTL on a crash) and another control plane
// wins and announces itself.
//
// Follows internal/app/machined/pkg/controllers/network/operator/vip.go (the election: etcd
// healthy first, key "talos:vip:election:<ip>", resign a stale leadership of its own) and
// network/address_spec.go (the address, then the gratuitous ARP).
//
// The config names the link by its name on the machine (the port its linkSelector matched);
// in its namespace of the box the twin's one real port is eth0, so the address goes there.

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/netip"
	"time"

	"github.com/cosi-project/runtime/pkg/state"
	"github.com/jsimonetti/rtnetlink/v2"
	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"go.etcd.io/etcd/client/v3/concurrency"
	"golang.org/x/sys/unix"

	"github.com/siderolabs/talos/pkg/machinery/constants"
)

// boxLink is the twin's network port inside its namespace of the box.
const boxLink = "eth0"

// campaignRetry is how long a failed campaign waits before the next (Talos: 5 s).
const campaignRetry = 5 * time.Second

type vip struct {
	address  netip.Addr
	hostname string
	etcd     *etcdMember
	// Where the machine reports its addresses, and the name of its cabled port there.
	resources state.State
	link      string
}

func (v *vip) electionKey() string {
	return fmt.Sprintf("%s:vip:election:%s", constants.EtcdRootTalosKey, v.address)
}

// run campaigns until ctx ends (the machine goes down).
func (v *vip) run(ctx context.Context) {
	for ctx.Err() == nil {
		if err := v.campaign(ctx); err != nil && !errors.Is(err, context.Canceled) {
			log.Printf("vip %s: campaign: %v", v.address, err)
		}

		select {
		case <-time.After(campaignRetry):
		case <-ctx.Done():
		}
	}
}

func (v *vip) campaign(ctx context.Context) error {
	for !v.etcd.voting(ctx) {
		select {
		case <-time.After(time.Second):
		case <-ctx.Done():
			return ctx.Err()
		}
	}

	client, err := v.etcd.localClient()
	if err != nil {
		return err
	}
	defer client.Close() //nolint:errcheck

	session, err := concurrency.NewSession(client)
	if err != nil {
		return fmt.Errorf("etcd session: %w", err)
	}
	defer session.Close() //nolint:errcheck

	election := concurrency.NewElection(session, v.electionKey())

	// A leadership left over from before this machine's restart is resigned first.
	if leader, err := election.Leader(ctx); err == nil && string(leader.Kvs[0].Value) == v.hostname {
		stale := concurrency.ResumeElection(session, v.electionKey(), string(leader.Kvs[0].Key), leader.Kvs[0].CreateRevision)
		if err = stale.Resign(ctx); err != nil {
			return fmt.Errorf("resigning a previous leadership: %w", err)
		}
	}

	if err = election.Campaign(ctx, v.hostname); err != nil {
		return err
	}

	defer func() {
		resignCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()

		election.Resign(resignCtx) //nolint:errcheck
	}()

	if err = v.hold(); err != nil {
		return err
	}

	log.Printf("vip %s: this node holds it", v.address)

	defer func() {
		if err := v.release(); err != nil {
			log.Printf("vip %s: %v", v.address, err)
		}

		log.Printf("vip %s: released", v.address)
	}()

	select {
	case <-session.Done():
		return errors.New("etcd session closed")
	case <-ctx.Done():
		return nil
	}
}

// changeAddress runs change with a netlink connection, the VIP's address message and the port.
func (v *vip) changeAddress(change func(conn *rtnetlink.Conn, message *rtnetlink.AddressMessage, link *net.Interface) error) error {
	return onBoxPort(func(conn *rtnetlink.Conn, port *net.Interface) error {
		return change(conn, addressMessage(port, netip.PrefixFrom(v.address, 32)), port)
	})
}

// hold adds the VIP to the link and announces it: a gratuitous ARP request for the VIP from
// this link's MAC, so the LAN's ARP caches point the VIP here.
func (v *vip) hold() error {
	return v.changeAddress(func(conn *rtnetlink.Conn, message *rtnetlink.AddressMessage, link *net.Interface) error {
		if err := conn.Address.New(message); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("adding %s to %s: %w", v.address, boxLink, err)
		}

		client, err := arp.Dial(link)
		if err != nil {
			return fmt.Errorf("arp on %s: %w", boxLink, err)
		}
		defer client.Close() //nolint:errcheck

		packet, err := arp.NewPacket(arp.OperationRequest, client.HardwareAddr(), v.address, client.HardwareAddr(), v.address)
		if err != nil {
			return err
		}

		if err = client.WriteTo(packet, ethernet.Broadcast); err != nil {
			return err
		}

		return putResource(context.Background(), v.resources, addressStatus(netip.PrefixFrom(v.address, 32), v.link))
	})
}

// release takes the VIP off the link.
func (v *vip) release() error {
	return v.changeAddress(func(conn *rtnetlink.Conn, message *rtnetlink.AddressMessage, _ *net.Interface) error {
		if err := conn.Address.Delete(message); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return fmt.Errorf("removing %s from %s: %w", v.address, boxLink, err)
		}

		status := addressStatus(netip.PrefixFrom(v.address, 32), v.link)
		if err := v.resources.Destroy(context.Background(), status.Metadata()); err != nil && !state.IsNotFoundError(err) {
			return err
		}

		return nil
	})
}
