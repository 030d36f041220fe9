package main

// Where a machine's address comes from.
//
// In maintenance mode a machine booted from the ISO runs DHCP on its physical links and takes
// the lease the site's DHCP server hands it (the box's stand-in for that server is the
// `--dhcp-lease` and `--router` flags: a reservation at the node's cluster.yaml address, the
// prerequisite the review's item 4 names).
//
// Once configured, the machine's network documents decide, as Talos resolves them against its
// links:
//
//   - LinkAliasConfig (internal/app/machined/pkg/controllers/network/link_alias_config.go): an
//     alias names the one physical link its selector matches; a selector that matches no link,
//     or more than one, is skipped ("link selector matched multiple links, skipping");
//   - LinkConfig (network/address_config.go, then address_spec.go through
//     pkg/machinery/resources/network/link_name_resolver.go): its addresses and routes go on the
//     link its name resolves to, by alias or by name; a name that resolves to no link puts them
//     nowhere;
//   - DHCP (pkg/machinery/config/container/container.go, RunDefaultDHCPOperators): as soon as
//     any link document exists, the default DHCP on physical links stops.
//
// So a selector that matches two ports leaves the machine with no address at all: it drops off
// the LAN right after it takes its config (the review's item 5).

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/netip"

	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/jsimonetti/rtnetlink/v2"
	"golang.org/x/sys/unix"

	networkpb "github.com/siderolabs/talos/pkg/machinery/api/resource/definitions/network"
	"github.com/siderolabs/talos/pkg/machinery/cel/celenv"
	"github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/proto"
	"github.com/siderolabs/talos/pkg/machinery/resources/network"
)

// lease is what the site's DHCP server reserves for this machine: its address and its router.
type lease struct {
	address netip.Prefix
	router  netip.Addr
}

// boxAddressing is what the machine puts on the box's port (its cabled link): addresses and
// the gateways of its default routes. No addresses means the machine is off the LAN.
type boxAddressing struct {
	addresses []netip.Prefix
	routers   []netip.Addr
}

func parseLease(address, router string) (lease, error) {
	prefix, err := netip.ParsePrefix(address)
	if err != nil {
		return lease{}, fmt.Errorf("--dhcp-lease %q: want address/prefix: %w", address, err)
	}

	gateway, err := netip.ParseAddr(router)
	if err != nil {
		return lease{}, fmt.Errorf("--router %q: %w", router, err)
	}

	return lease{address: prefix, router: gateway}, nil
}

func (l lease) addressing() boxAddressing {
	return boxAddressing{addresses: []netip.Prefix{l.address}, routers: []netip.Addr{l.router}}
}

// configuredAddressing resolves the config's link documents against the machine's links (its
// LinkStatus resources, which get their aliases here as `talosctl get links` shows them) and
// returns what lands on the cabled link.
func configuredAddressing(ctx context.Context, resources state.State, provider config.Provider, hardware Hardware, dhcp lease) (boxAddressing, error) {
	if provider.RunDefaultDHCPOperators() {
		return dhcp.addressing(), nil
	}

	if err := assignAliases(ctx, resources, provider); err != nil {
		return boxAddressing{}, err
	}

	links, err := safe.StateListAll[*network.LinkStatus](ctx, resources)
	if err != nil {
		return boxAddressing{}, err
	}

	resolver := network.NewLinkResolver(links.All)
	cabled := cabledLink(hardware)

	var addressing boxAddressing

	for _, document := range provider.NetworkCommonLinkConfigs() {
		if resolver.Resolve(document.Name()) != cabled {
			log.Printf("network: link config %q resolves to no cabled link of this machine; its addresses go nowhere", document.Name())

			continue
		}

		for _, address := range document.Addresses() {
			addressing.addresses = append(addressing.addresses, address.Address())
		}

		for _, route := range document.Routes() {
			gateway, ok := route.Gateway().Get()
			destination, hasDestination := route.Destination().Get()

			if ok && (!hasDestination || destination.Bits() == 0) {
				addressing.routers = append(addressing.routers, gateway)
			}
		}
	}

	return addressing, nil
}

// assignAliases gives each LinkAliasConfig's name to the one physical link its selector
// matches (link_alias_config.go, then link_alias_spec.go sets it on the link).
func assignAliases(ctx context.Context, resources state.State, provider config.Provider) error {
	links, err := safe.StateListAll[*network.LinkStatus](ctx, resources)
	if err != nil {
		return err
	}

	// Selectors see the physical links only, as the protos CEL evaluates.
	var physical []*network.LinkStatus

	var specs []*networkpb.LinkStatusSpec

	for link := range links.All() {
		if !link.TypedSpec().Physical() {
			continue
		}

		var spec networkpb.LinkStatusSpec
		if err = proto.ResourceSpecToProto(link, &spec); err != nil {
			return err
		}

		physical = append(physical, link)
		specs = append(specs, &spec)
	}

	for _, alias := range provider.NetworkLinkAliasConfigs() {
		var matched []*network.LinkStatus

		for index, spec := range specs {
			matches, err := alias.LinkSelector().EvalBool(celenv.LinkLocator(), map[string]any{"link": spec})
			if err != nil {
				return fmt.Errorf("link alias %q: evaluating its selector: %w", alias.Name(), err)
			}

			if matches {
				matched = append(matched, physical[index])
			}
		}

		if len(matched) != 1 {
			log.Printf("network: link alias %q: selector %s matched %d links, skipping", alias.Name(), alias.LinkSelector(), len(matched))

			continue
		}

		if _, err = safe.StateUpdateWithConflicts(ctx, resources, matched[0].Metadata(), func(link *network.LinkStatus) error {
			link.TypedSpec().Alias = alias.Name()

			return nil
		}); err != nil {
			return err
		}
	}

	return nil
}

// takeAddressing makes the box's port carry exactly these addresses and default routes through
// these routers, at boot. A machine boots with no address on its links; the twin's network
// namespace outlives a twin that was killed (a power cut) while it held the VIP or announced a
// service address, and such an address left there is taken off here, before the port answers
// anything: otherwise two machines would answer ARP for it until this one's election ran.
func takeAddressing(addressing boxAddressing) error {
	return onBoxPort(func(conn *rtnetlink.Conn, port *net.Interface) error {
		return replaceAddressing(conn, port, addressing)
	})
}

// onBoxPort runs change with a netlink connection and the box's port.
func onBoxPort(change func(conn *rtnetlink.Conn, port *net.Interface) error) error {
	port, err := net.InterfaceByName(boxLink)
	if err != nil {
		return err
	}

	conn, err := rtnetlink.Dial(nil)
	if err != nil {
		return err
	}
	defer conn.Close() //nolint:errcheck

	return change(conn, port)
}

// addressMessage is an IPv4 address on the port, as netlink takes it.
func addressMessage(port *net.Interface, address netip.Prefix) *rtnetlink.AddressMessage {
	ip := net.IP(address.Addr().AsSlice())

	return &rtnetlink.AddressMessage{
		Family:       unix.AF_INET,
		PrefixLength: uint8(address.Bits()),
		Scope:        unix.RT_SCOPE_UNIVERSE,
		Index:        uint32(port.Index),
		Attributes:   &rtnetlink.AddressAttributes{Address: ip, Local: ip},
	}
}

// replaceAddressing removes the port's other IPv4 addresses, adds the missing ones and points
// the default routes at the routers.
func replaceAddressing(conn *rtnetlink.Conn, port *net.Interface, addressing boxAddressing) error {
	current, err := conn.Address.List()
	if err != nil {
		return err
	}

	wanted := map[netip.Prefix]bool{}
	for _, address := range addressing.addresses {
		wanted[address] = true
	}

	for _, message := range current {
		if message.Index != uint32(port.Index) || message.Family != unix.AF_INET {
			continue
		}

		ip, _ := netip.AddrFromSlice(message.Attributes.Address.To4())
		if prefix := netip.PrefixFrom(ip, int(message.PrefixLength)); wanted[prefix] {
			delete(wanted, prefix)

			continue
		}

		if err = conn.Address.Delete(&message); err != nil {
			return fmt.Errorf("removing an address from %s: %w", boxLink, err)
		}
	}

	for _, address := range addressing.addresses {
		if !wanted[address] {
			continue
		}

		if err = conn.Address.New(addressMessage(port, address)); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("adding %s to %s: %w", address, boxLink, err)
		}
	}

	for _, router := range addressing.routers {
		route := &rtnetlink.RouteMessage{
			Family:   unix.AF_INET,
			Table:    unix.RT_TABLE_MAIN,
			Protocol: unix.RTPROT_STATIC,
			Scope:    unix.RT_SCOPE_UNIVERSE,
			Type:     unix.RTN_UNICAST,
			Attributes: rtnetlink.RouteAttributes{
				Gateway:  net.IP(router.AsSlice()),
				OutIface: uint32(port.Index),
			},
		}

		if err = conn.Route.Replace(route); err != nil {
			return fmt.Errorf("default route via %s: %w", router, err)
		}
	}

	return nil
}

// listenAddress is the machine's own address on the LAN: the first of its addressing.
func (a boxAddressing) listenAddress() (string, bool) {
	for _, address := range a.addresses {
		if address.Addr().Is4() {
			return address.Addr().String(), true
		}
	}

	return "", false
}
