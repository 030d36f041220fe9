package main

// What a configured machine reports about itself through COSI, for `talosctl get`:
//
//   - its machine config (`get machineconfig`: internal/app/machined/pkg/controllers/config);
//   - its addresses (`get addresses`: network/address_status.go), the VIP among them while this
//     machine holds it;
//   - its system extensions (`get extensions`: runtime/extension_status.go): those the
//     installer image carries, which the Image Factory built from the schematic named in the
//     image of the boot entry the machine booted (upgrade.go; after an upgrade that is not
//     `machine.install.image`). The box's Image Factory stand-in keeps every schematic uploaded to
//     it in a folder (`--image-factory-dir`), where the twin reads its image's; a schematic the
//     factory never received gives no extensions, as an image that cannot be pulled installs none.
//     A factory image also carries the virtual `schematic` extension, its version the schematic ID.

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/state"
	"gopkg.in/yaml.v3"

	"github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/nethelpers"
	configres "github.com/siderolabs/talos/pkg/machinery/resources/config"
	"github.com/siderolabs/talos/pkg/machinery/resources/network"
	"github.com/siderolabs/talos/pkg/machinery/resources/runtime"
)

// cabledLink is the name of the machine's port that is plugged in: where its address is (the
// port its config's link selector matched; the box wires it to the twin's eth0).
func cabledLink(hardware Hardware) string {
	for _, link := range hardware.Links {
		if link.Carrier {
			return link.Name
		}
	}

	return boxLink
}

// addressStatus is one address on the machine's cabled port.
func addressStatus(prefix netip.Prefix, link string) *network.AddressStatus {
	status := network.NewAddressStatus(network.NamespaceName, fmt.Sprintf("%s/%s", link, prefix))
	spec := status.TypedSpec()
	spec.Address = prefix
	spec.Local = prefix.Addr()
	spec.LinkName = link
	spec.Family = nethelpers.FamilyInet4
	spec.Scope = nethelpers.ScopeGlobal
	spec.Flags = nethelpers.AddressFlags(nethelpers.AddressPermanent)

	return status
}

// putResource creates a resource, or replaces the one there if it differs (as a controller's
// Modify leaves an unchanged resource, and its version, alone).
func putResource(ctx context.Context, resources state.State, res resource.Resource) error {
	current, err := resources.Get(ctx, res.Metadata())
	if state.IsNotFoundError(err) {
		return resources.Create(ctx, res)
	}

	if err != nil {
		return err
	}

	res.Metadata().SetVersion(current.Metadata().Version())

	if resource.Equal(current, res) {
		return nil
	}

	return resources.Update(ctx, res)
}

// publishSelf records the machine config, the addresses on the box's port and the installed
// extensions.
func publishSelf(ctx context.Context, resources state.State, provider config.Provider, hardware Hardware, image, factoryDir string) error {
	if err := putResource(ctx, resources, configres.NewMachineConfig(provider)); err != nil {
		return err
	}

	port, err := net.InterfaceByName(boxLink)
	if err != nil {
		return err
	}

	addresses, err := port.Addrs()
	if err != nil {
		return err
	}

	for _, address := range addresses {
		prefix, err := netip.ParsePrefix(address.String())
		if err != nil || !prefix.Addr().Is4() || prefix.Bits() == 32 {
			continue // the VIP is published by its holder
		}

		if err = putResource(ctx, resources, addressStatus(prefix, cabledLink(hardware))); err != nil {
			return err
		}
	}

	names := installedExtensions(image, factoryDir)

	for index, name := range names {
		extension := runtime.NewExtensionStatus(runtime.NamespaceName, fmt.Sprint(index))
		extension.TypedSpec().Image = name + ".sqsh"
		extension.TypedSpec().Metadata.Name = name
		extension.TypedSpec().Metadata.Author = "Sidero Labs"

		if err = putResource(ctx, resources, extension); err != nil {
			return err
		}
	}

	// An Image Factory image also carries a virtual extension named "schematic" whose version
	// is the schematic's ID: the one place Talos 1.12 says which schematic a machine booted.
	if id, ok := factorySchematic(image); ok {
		schematic := runtime.NewExtensionStatus(runtime.NamespaceName, fmt.Sprint(len(names)))
		schematic.TypedSpec().Metadata.Name = "schematic"
		schematic.TypedSpec().Metadata.Version = id
		schematic.TypedSpec().Metadata.Author = "Image Factory"

		if err = putResource(ctx, resources, schematic); err != nil {
			return err
		}
	}

	return nil
}

// factorySchematic is the schematic ID of an Image Factory installer image
// (`factory.talos.dev/<platform>-installer/<id>:<tag>` or `…/installer/<id>:<tag>`).
func factorySchematic(image string) (string, bool) {
	repository := strings.SplitN(image, ":", 2)[0]

	parts := strings.Split(repository, "/")
	if len(parts) != 3 || parts[0] != "factory.talos.dev" || !strings.HasSuffix(parts[1], "installer") || parts[2] == "" {
		return "", false
	}

	return parts[2], true
}

// installedExtensions are the short names ("iscsi-tools") of the official extensions of the
// schematic in the booted image's path (`…/metal-installer/<schematic id>:<version>`).
func installedExtensions(image, factoryDir string) []string {
	id, ok := factorySchematic(image)
	if !ok {
		return nil
	}

	raw, err := os.ReadFile(filepath.Join(factoryDir, id+".yaml"))
	if err != nil {
		return nil
	}

	var stored struct {
		Customization struct {
			SystemExtensions struct {
				OfficialExtensions []string `yaml:"officialExtensions"`
			} `yaml:"systemExtensions"`
		} `yaml:"customization"`
	}

	if yaml.Unmarshal(raw, &stored) != nil {
		return nil
	}

	var names []string
	for _, official := range stored.Customization.SystemExtensions.OfficialExtensions {
		names = append(names, path.Base(official))
	}

	return names
}
