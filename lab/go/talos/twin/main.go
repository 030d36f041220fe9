// Command talos-twin is a Talos node twin: it stands in the box for one machine booted from
// the Talos ISO, at that machine's address, port 50000, and answers the Talos API as Talos
// v1.12.1 answers it, through Talos's own public packages (the API protos, COSI resources,
// the config loader and its validation). What talosctl is told here is what a real node in
// maintenance mode would tell it.
//
// A machine boots in maintenance mode and waits for its config. A valid config "installs" (the
// node is away for a few seconds) and the machine comes back configured: the secure API, with
// mutual TLS from the config's OS CA, so the generated talosconfig works unchanged. Running
// etcd and the control plane from the config is the next step of the cluster in a box.
//
// Each behaviour names the Talos source file (at v1.12.1) it follows.
package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	cosiv1alpha1 "github.com/cosi-project/runtime/api/v1alpha1"
	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/resource/meta"
	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/cosi-project/runtime/pkg/state/impl/inmem"
	"github.com/cosi-project/runtime/pkg/state/impl/namespaced"
	"github.com/cosi-project/runtime/pkg/state/protobuf/server"
	"github.com/dustin/go-humanize"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/google/uuid"
	"github.com/siderolabs/talos/pkg/grpc/middleware/authz"
	"github.com/siderolabs/talos/pkg/kubeconfig"
	clusterapi "github.com/siderolabs/talos/pkg/machinery/api/cluster"
	"github.com/siderolabs/talos/pkg/machinery/api/common"
	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/api/storage"
	"github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/config/configloader"
	"github.com/siderolabs/talos/pkg/machinery/constants"
	"github.com/siderolabs/talos/pkg/machinery/imager/quirks"
	"github.com/siderolabs/talos/pkg/machinery/nethelpers"
	"github.com/siderolabs/talos/pkg/machinery/resources/block"
	"github.com/siderolabs/talos/pkg/machinery/resources/cluster"
	configres "github.com/siderolabs/talos/pkg/machinery/resources/config"
	"github.com/siderolabs/talos/pkg/machinery/resources/etcd"
	"github.com/siderolabs/talos/pkg/machinery/resources/hardware"
	"github.com/siderolabs/talos/pkg/machinery/resources/k8s"
	"github.com/siderolabs/talos/pkg/machinery/resources/network"
	"github.com/siderolabs/talos/pkg/machinery/resources/runtime"
	talosv1alpha1 "github.com/siderolabs/talos/pkg/machinery/resources/v1alpha1"
	"github.com/siderolabs/talos/pkg/machinery/version"
)

// Hardware is what the lab says this machine has: its network ports, its disks and its memory.
type Hardware struct {
	Links []Link `json:"links"`
	Disks []Disk `json:"disks"`
	// Memory in bytes.
	Memory uint64 `json:"memory"`
}

// Link is one network port.
type Link struct {
	Name    string `json:"name"`
	MAC     string `json:"mac"`
	BusPath string `json:"busPath"`
	Driver  string `json:"driver"`
	Carrier bool   `json:"carrier"`
}

// Disk is one block device.
type Disk struct {
	DevPath   string `json:"devPath"`
	Size      uint64 `json:"size"`
	Model     string `json:"model"`
	Transport string `json:"transport"`
}

// metal is the runtime mode of a machine installed to disk: what `validate --mode metal`
// checks (internal/app/machined/pkg/runtime/mode.go: ModeMetal requires an install).
type metal struct{}

func (metal) String() string        { return "metal" }
func (metal) RequiresInstall() bool { return true }
func (metal) InContainer() bool     { return false }

func main() {
	// The installer's preflight, run by the twin of the release an upgrade installs (upgrade.go).
	if len(os.Args) > 1 && os.Args[1] == "preflight" {
		checks := flag.NewFlagSet("preflight", flag.ExitOnError)
		host := checks.String("host-version", "", "the Talos release the host runs")
		checks.Parse(os.Args[2:]) //nolint:errcheck // ExitOnError

		if err := preflight(*host); err != nil {
			fmt.Println(err)
			os.Exit(1)
		}

		return
	}

	dhcpLease := flag.String("dhcp-lease", "", "the address/prefix the site's DHCP server reserves for this machine (what it takes in maintenance mode)")
	router := flag.String("router", "", "the router the DHCP lease names")
	hardwareFile := flag.String("hardware", "", "a JSON file describing the node's links and disks")
	stateDir := flag.String("state", "", "where the node keeps what it is sent (its config)")
	etcd := flag.String("etcd", "etcd", "the etcd binary a control plane runs (Talos pins etcd apart from Kubernetes; the box has one build)")
	kwok := flag.String("kwok", "kwok", "the kwok binary that stands in for the kubelet's container runtime")
	kwokConfig := flag.String("kwok-config", "", "the stages kwok plays for the pods")
	factoryDir := flag.String("image-factory-dir", "", "where the box's Image Factory stand-in keeps the schematics uploaded to it")
	controlPlanes := flag.String("control-planes", "", "the control planes' addresses, comma-separated (a stand-in for Talos's discovery)")
	images := flag.String("images", "", "the Talos images the box can pull: a folder per release, holding that release's twin")
	iso := flag.String("iso", version.Tag, "the Talos release of the ISO the machine boots while its disk holds no Talos")
	flag.Parse()

	lease, err := parseLease(*dhcpLease, *router)
	if err != nil {
		log.Fatalf("talos-twin: %v", err)
	}

	node := nodeFlags{lease: lease, stateDir: *stateDir, etcd: *etcd, kwok: *kwok, kwokConfig: *kwokConfig, factoryDir: *factoryDir,
		controlPlanes: strings.Split(*controlPlanes, ","), images: *images, iso: *iso,
	}
	stopOnSignal()

	if err := run(node, *hardwareFile); err != nil {
		log.Fatalf("talos-twin: %v", err)
	}
}

// installTime is how long a machine is away between taking its config and answering with it
// (the install to disk and the reboot, much shortened).
const installTime = 3 * time.Second

// nodeFlags is what the lab tells a twin besides its hardware.
type nodeFlags struct {
	// address is the configured machine's own address, from its config (in maintenance mode
	// it has its DHCP lease's).
	address       string
	lease         lease
	stateDir      string
	etcd          string
	kwok          string
	kwokConfig    string
	factoryDir    string
	controlPlanes []string
	hardware      Hardware
	// The box's images folder (Talos releases, upgrade.go; Kubernetes control planes,
	// controlplane.go), and the release the machine boots from the ISO.
	images string
	iso    string
}

func run(node nodeFlags, hardwareFile string) error {
	raw, err := os.ReadFile(hardwareFile)
	if err != nil {
		return err
	}

	var hardware Hardware
	if err = json.Unmarshal(raw, &hardware); err != nil {
		return fmt.Errorf("%s: %w", hardwareFile, err)
	}

	node.hardware = hardware
	ctx := context.Background()
	configFile := filepath.Join(node.stateDir, "config.yaml")

	machineDisk := disk{node.stateDir}
	pulls := registry{images: node.images, factoryDir: node.factoryDir}

	// Each boot starts from nothing but the disk: a machine with a config on it boots into it
	// (the release of its boot entry); one without (new, or reset) boots the ISO and waits in
	// maintenance mode.
	for {
		_, err = os.Stat(configFile)
		installed := err == nil

		if err = bootRelease(node, installed, pulls); err != nil {
			return err
		}

		if installed && machineDisk.failsToBoot(version.Tag) {
			log.Printf("boot failed: Talos %s does not boot on this machine (the lab's fault %s)", version.Tag, faultsFile)

			if reverted, err := machineDisk.revertFailedBoot(); err != nil || !reverted {
				log.Printf("nothing to fall back to (%v): the machine is stuck until it is reinstalled", err)
				select {}
			}

			time.Sleep(rebootTime)

			continue
		}

		resources := state.WrapCore(namespaced.NewState(inmem.Build))
		if err = boot(ctx, resources, hardware); err != nil {
			return err
		}

		if !installed {
			if err = takeAddressing(node.lease.addressing()); err != nil {
				return err
			}

			if err = serveMaintenance(resources, node.lease.address.Addr().String(), configFile); err != nil {
				return err
			}

			log.Printf("installing the config and rebooting")
			installFromConfig(configFile, pulls, machineDisk)
			time.Sleep(installTime)

			continue
		}

		rebooted, err := serveConfigured(ctx, resources, node, configFile)
		if err != nil || !rebooted {
			return err
		}

		log.Printf("rebooting")
		time.Sleep(rebootTime)
	}
}

// installFromConfig is the install sequence of a machine sent its config in maintenance mode:
// the config's installer image is pulled and written to the disk's first boot entry
// (v1alpha1_sequencer_tasks.go, Install). An image the box cannot pull fails the install, and
// the machine boots the ISO again, its config not kept.
func installFromConfig(configFile string, pulls registry, machineDisk disk) {
	provider, err := configloader.NewFromFile(configFile)
	if err == nil {
		var entry bootEntry
		if entry, err = pulls.pull(provider.Machine().Install().Image()); err == nil {
			err = machineDisk.install(entry, false)
		}
	}

	if err != nil {
		log.Printf("install failed: %v", err)
		os.Remove(configFile) //nolint:errcheck
	}
}

// rebootTime is how long a rebooting machine is away (much shortened).
const rebootTime = 3 * time.Second

// runningServices is what the configured machine runs now, if anything: a shutdown takes it
// down first.
var runningServices atomic.Pointer[services]

// stopOnSignal: a machine that shuts down (SIGTERM from the lab) takes its services down with
// it (the VIP released, etcd stopped cleanly).
func stopOnSignal() {
	stopping := make(chan os.Signal, 1)
	signal.Notify(stopping, syscall.SIGTERM, syscall.SIGINT)

	go func() {
		<-stopping

		if running := runningServices.Load(); running != nil {
			running.stop()
		}

		os.Exit(0)
	}()
}

// serveMaintenance answers as a machine booted from the ISO until a valid config arrives.
func serveMaintenance(resources state.State, address, configFile string) error {
	certificate, err := selfSigned()
	if err != nil {
		return err
	}

	listener, err := net.Listen("tcp", net.JoinHostPort(address, "50000"))
	if err != nil {
		return err
	}

	grpcServer := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{certificate}})))
	node := &maintenance{resources: resources, configFile: configFile, stop: grpcServer.Stop}

	machine.RegisterMachineServiceServer(grpcServer, node)
	storage.RegisterStorageServiceServer(grpcServer, &maintenanceDisks{resources: resources})
	// Maintenance mode serves the COSI state read-only, and only what is not sensitive
	// (internal/app/maintenance/server.go, Register; internal/app/resources/access.go).
	cosiv1alpha1.RegisterStateServer(grpcServer, server.NewState(state.Filter(resources, accessPolicy(resources))))

	log.Printf("maintenance mode: waiting for a config on %s", listener.Addr())

	return grpcServer.Serve(listener)
}

// serveConfigured answers as the installed machine: only clients with a certificate from the
// config's OS CA (apid: internal/app/apid/main.go and the secrets controller's API
// certificate, internal/app/machined/pkg/controllers/secrets/api.go).
// It returns true when the machine was asked to reboot (Reboot), after it went down.
func serveConfigured(ctx context.Context, resources state.State, node nodeFlags, configFile string) (bool, error) {
	raw, err := os.ReadFile(configFile)
	if err != nil {
		return false, err
	}

	provider, err := configloader.NewFromBytes(raw)
	if err != nil {
		return false, fmt.Errorf("%s: %w", configFile, err)
	}

	addressing, err := configuredAddressing(ctx, resources, provider, node.hardware, node.lease)
	if err != nil {
		return false, err
	}

	if err = takeAddressing(addressing); err != nil {
		return false, err
	}

	address, onTheLAN := addressing.listenAddress()
	if !onTheLAN {
		// Nothing can reach it; only the console (here: the lab stopping it) gets it back.
		log.Printf("configured, but with no address on the LAN: nothing can reach this machine")

		for {
			time.Sleep(time.Hour)
		}
	}

	node.address = address

	if err = systemVolumes(ctx, resources, provider, node.hardware); err != nil {
		return false, err
	}

	booted, err := disk{node.stateDir}.booted(node.iso)
	if err != nil {
		return false, err
	}

	if err = publishSelf(ctx, resources, provider, node.hardware, booted.Image, node.factoryDir); err != nil {
		return false, err
	}

	if err = publishInventory(ctx, resources, provider, node.hardware, hostname(provider, address)); err != nil {
		return false, err
	}

	// Discovery runs for this boot: a reboot stops it, and the next boot starts it again.
	discoveryCtx, stopDiscovery := context.WithCancel(ctx)
	defer stopDiscovery()

	if err = publishDiscovery(discoveryCtx, resources, provider, node.stateDir, hostname(provider, address), netip.MustParseAddr(address)); err != nil {
		return false, err
	}

	tlsConfig, err := apiTLS(ctx, provider, address, node.controlPlanes)
	if err != nil {
		return false, err
	}

	listener, err := net.Listen("tcp", net.JoinHostPort(address, "50000"))
	if err != nil {
		return false, err
	}

	served := &configured{
		config: provider, configFile: configFile, resources: resources, address: address, bootedAt: time.Now(),
		hardware: node.hardware, events: newEventBus(), registry: registry{images: node.images, factoryDir: node.factoryDir},
	}

	// The boot sequence, phase by phase and task by task as Talos runs it on an installed
	// machine (v1alpha1_sequencer.go, Boot). Its last phase starts every service; the ones
	// before it check and prepare a real machine's memory, disks and files, which the twin's
	// folder stands for, so they have nothing to do here but are published as Talos's are.
	startAll := task{name: "startAllServices", run: func() error {
		running, err := startServices(ctx, provider, node, resources)
		if err != nil {
			return err
		}

		runningServices.Store(running)
		served.services, served.etcd = running, running.etcd

		return nil
	}}

	err = served.runSequence("boot", "", []phase{
		{name: "memorySizeCheck", tasks: []task{noop("memorySizeCheck")}},
		{name: "diskSizeCheck", tasks: []task{noop("diskSizeCheck")}},
		{name: "env", tasks: []task{noop("setUserEnvVars"), noop("waitForCARoots")}},
		{name: "dbus", tasks: []task{noop("startDBus")}},
		{name: "ephemeral", tasks: []task{noop("mountEphemeralPartition")}},
		{name: "udevSetup", tasks: []task{noop("writeUdevRules")}},
		{name: "userDisks", tasks: []task{noop("mountUserDisks")}},
		{name: "userSetup", tasks: []task{noop("writeUserFiles")}},
		{name: "startEverything", tasks: []task{startAll}},
	})
	if err != nil {
		return false, err
	}

	readiness, stopReadiness := context.WithCancel(ctx)
	defer stopReadiness()

	go served.watchReadiness(readiness)

	// machined: the machine's own services, reached through apid only.
	socket := filepath.Join(node.stateDir, "machined.sock")
	_ = os.Remove(socket) //nolint:errcheck

	machinedListener, err := net.Listen("unix", socket)
	if err != nil {
		return false, err
	}

	apidSocket := filepath.Join(node.stateDir, "apid.sock")

	// machined reads the caller's roles from what apid forwards (system/services/machined.go:
	// authz.Injector in MetadataOnly mode); the resource API allows what Talos's allows.
	roles := &authz.Injector{Mode: authz.MetadataOnly}
	machined := grpc.NewServer(grpc.UnaryInterceptor(roles.UnaryInterceptor()), grpc.StreamInterceptor(roles.StreamInterceptor()))
	machine.RegisterMachineServiceServer(machined, served)
	cosiv1alpha1.RegisterStateServer(machined, server.NewState(state.Filter(resources, accessPolicy(resources))))
	clusterapi.RegisterClusterServiceServer(machined, &health{apidSocket: apidSocket, resources: resources})

	go machined.Serve(machinedListener) //nolint:errcheck

	defer machined.Stop()

	front, err := newAPID(provider, address, socket)
	if err != nil {
		return false, err
	}

	// apid also answers this machine's own services on a unix socket, without TLS (Talos's
	// local API socket, what its health check dials).
	_ = os.Remove(apidSocket) //nolint:errcheck

	localListener, err := net.Listen("unix", apidSocket)
	if err != nil {
		return false, err
	}

	local := front.server(nil)
	go local.Serve(localListener) //nolint:errcheck

	defer local.Stop()

	grpcServer := front.server(tlsConfig)
	served.shutDown = grpcServer.Stop

	if provider.Machine().Type().IsControlPlane() {
		trustdServer, err := serveTrustd(provider, address, tlsConfig)
		if err != nil {
			return false, err
		}

		defer trustdServer.Stop()
	}

	log.Printf("configured: serving the Talos API on %s", listener.Addr())

	if err = grpcServer.Serve(listener); err != nil {
		return false, err
	}

	return served.rebooting.Load(), nil
}

// systemVolumes records the install disk's volumes Talos reports once they are mounted
// (internal/app/machined/pkg/controllers/block/volume_manager.go): META (partition 4, the
// installer's tags), STATE (5, the machine config, /system/state) and EPHEMERAL (6, /var: etcd's
// and the kubelet's data, the rest of the disk), sized as this release's installer makes them
// (imager/quirks). A reset names them to wipe one (lifecycle.go). What block discovery finds on
// the disk is published too (block/discovery.go: the GPT disk and each partition with its label
// and filesystem, EFI, BIOS and BOOT first), and the disk Talos booted from (block/system_disk.go).
func systemVolumes(ctx context.Context, resources state.State, provider config.Provider, hw Hardware) error {
	installDisk := provider.Machine().Install().Disk()

	index := slices.IndexFunc(hw.Disks, func(disk Disk) bool { return disk.DevPath == installDisk })
	if index < 0 {
		return fmt.Errorf("machine.install.disk %s is not one of this machine's disks", installDisk)
	}

	disk := hw.Disks[index]

	separator := ""
	if strings.Contains(disk.DevPath, "nvme") {
		separator = "p"
	}

	sizes := quirks.New(version.Tag).PartitionSizes()
	// What precedes EPHEMERAL: EFI, BIOS and BOOT (partitions 1-3), META and STATE.
	reserved := sizes.GrubEFISize() + sizes.GrubBIOSSize() + sizes.GrubBootSize() + sizes.METASize() + sizes.StateSize()

	systemDisk := block.NewSystemDisk(block.NamespaceName, block.SystemDiskID)
	systemDisk.TypedSpec().DiskID = diskName(disk)
	systemDisk.TypedSpec().DevPath = disk.DevPath

	whole := block.NewDiscoveredVolume(block.NamespaceName, diskName(disk))
	*whole.TypedSpec() = block.DiscoveredVolumeSpec{
		DevPath: disk.DevPath, Type: "disk", Name: "gpt", Size: disk.Size, PrettySize: humanize.Bytes(disk.Size),
		SectorSize: 512, IOSize: 512,
	}

	discovered := []resource.Resource{systemDisk, whole}

	for number, volume := range []struct {
		label, mount string
		filesystem   block.FilesystemType
		size         uint64
		// A volume Talos manages (it has a VolumeStatus); the boot partitions are the installer's.
		managed bool
	}{
		{constants.EFIPartitionLabel, "", block.FilesystemTypeVFAT, sizes.GrubEFISize(), false},
		{constants.BIOSGrubPartitionLabel, "", block.FilesystemTypeNone, sizes.GrubBIOSSize(), false},
		{constants.BootPartitionLabel, "", block.FilesystemTypeXFS, sizes.GrubBootSize(), false},
		{constants.MetaPartitionLabel, "", block.FilesystemTypeNone, sizes.METASize(), true},
		{constants.StatePartitionLabel, "/system/state", block.FilesystemTypeXFS, sizes.StateSize(), true},
		{constants.EphemeralPartitionLabel, "/var", block.FilesystemTypeXFS, disk.Size - reserved, true},
	} {
		location := fmt.Sprintf("%s%s%d", disk.DevPath, separator, number+1)

		partition := block.NewDiscoveredVolume(block.NamespaceName, filepath.Base(location))
		*partition.TypedSpec() = block.DiscoveredVolumeSpec{
			DevPath: location, Type: "partition", Parent: diskName(disk), ParentDevPath: disk.DevPath,
			Size: volume.size, PrettySize: humanize.Bytes(volume.size), SectorSize: 512, IOSize: 512,
			Name: discoveredName(volume.label, volume.filesystem), PartitionLabel: volume.label, PartitionIndex: uint(number + 1),
		}
		discovered = append(discovered, partition)

		if !volume.managed {
			continue
		}

		status := block.NewVolumeStatus(block.NamespaceName, volume.label)
		spec := status.TypedSpec()
		spec.Phase = block.VolumePhaseReady
		spec.Type = block.VolumeTypePartition
		spec.Location = location
		spec.ParentLocation = disk.DevPath
		spec.MountLocation = volume.mount
		spec.Filesystem = volume.filesystem
		spec.Size = volume.size
		spec.PrettySize = humanize.Bytes(volume.size)

		discovered = append(discovered, status)
	}

	for _, res := range discovered {
		if err := resources.Create(ctx, res); err != nil && !state.IsConflictError(err) {
			return err
		}
	}

	return nil
}

// discoveredName is what blkid calls a partition's content (block/discovery.go): its
// filesystem's name, "talosmeta" for META once the installer wrote it, nothing for a raw one.
func discoveredName(label string, filesystem block.FilesystemType) string {
	switch {
	case label == constants.MetaPartitionLabel:
		return "talosmeta"
	case filesystem == block.FilesystemTypeNone:
		return ""
	default:
		return filesystem.String()
	}
}

// diskSymlinks are the names udev gives a disk under /dev/disk (block/disks.go reads them): the
// by-id name from its transport ("ata" for SATA) and model.
func diskSymlinks(disk Disk) []string {
	transport := disk.Transport
	if transport == "sata" {
		transport = "ata"
	}

	return []string{fmt.Sprintf("/dev/disk/by-id/%s-%s", transport, strings.ReplaceAll(disk.Model, " ", "_"))}
}

// boot fills the state as a machine booted from the ISO has it: the resource definitions
// talosctl resolves kinds with, MachineStatus in stage "maintenance", its links and disks.
func boot(ctx context.Context, st state.State, hw Hardware) error {
	machineStatus := runtime.NewMachineStatus()
	machineStatus.TypedSpec().Stage = runtime.MachineStageMaintenance
	machineStatus.TypedSpec().Status.Ready = false

	created := []resource.Resource{machineStatus}

	for index, link := range hw.Links {
		mac, err := net.ParseMAC(link.MAC)
		if err != nil {
			return fmt.Errorf("link %s: %w", link.Name, err)
		}

		res := network.NewLinkStatus(network.NamespaceName, link.Name)
		spec := res.TypedSpec()
		spec.Index = uint32(index + 2)
		spec.Type = nethelpers.LinkEther
		spec.HardwareAddr = nethelpers.HardwareAddr(mac)
		spec.PermanentAddr = nethelpers.HardwareAddr(mac)
		spec.BusPath = link.BusPath
		spec.Driver = link.Driver
		spec.LinkState = link.Carrier
		spec.MTU = 1500

		if link.Carrier {
			spec.OperationalState = nethelpers.OperStateUp
		} else {
			spec.OperationalState = nethelpers.OperStateDown
		}

		created = append(created, res)
	}

	for _, disk := range hw.Disks {
		res := block.NewDisk(block.NamespaceName, diskName(disk))
		spec := res.TypedSpec()
		spec.DevPath = disk.DevPath
		spec.Size = disk.Size
		spec.PrettySize = fmt.Sprintf("%d GB", disk.Size/1_000_000_000)
		spec.Model = disk.Model
		spec.Transport = disk.Transport
		spec.IOSize = 512
		spec.SectorSize = 512
		spec.Symlinks = diskSymlinks(disk)

		created = append(created, res)
	}

	// The definitions of definitions and namespaces first, as COSI's registry registers them
	// (state/registry, RegisterDefault): talosctl reads them to resolve `get`'s type names.
	definitions := []meta.ResourceDefinitionProvider{
		meta.ResourceDefinitionExtension{},
		meta.NamespaceExtension{},
		runtime.MachineStatusExtension{},
		runtime.DiagnosticExtension{},
		runtime.ExtensionStatusExtension{},
		&configres.MachineConfig{},
		network.LinkStatusExtension{},
		network.AddressStatusExtension{},
		block.DiskExtension{},
		block.VolumeStatusExtension{},
		block.DiscoveredVolumeExtension{},
		block.SystemDiskExtension{},
		runtime.VersionExtension{},
		runtime.SecurityStateExtension{},
		runtime.PlatformMetadataExtension{},
		network.HostnameStatusExtension{},
		hardware.SystemInformationExtension{},
		hardware.ProcessorExtension{},
		hardware.MemoryModuleExtension{},
		hardware.PCRStatusExtension{},
		etcd.MemberExtension{},
		cluster.IdentityExtension{},
		cluster.AffiliateExtension{},
		cluster.MemberExtension{},
		k8s.StaticPodStatusExtension{},
		k8s.StaticPodExtension{},
		k8s.APIServerConfigExtension{},
		k8s.ControllerManagerConfigExtension{},
		k8s.SchedulerConfigExtension{},
		k8s.KubeletSpecExtension{},
		k8s.ManifestExtension{},
		talosv1alpha1.ServiceExtension{},
	}

	for _, provider := range definitions {
		definition, err := meta.NewResourceDefinition(provider.ResourceDefinition())
		if err != nil {
			return err
		}

		created = append(created, definition)
	}

	for _, res := range created {
		if err := st.Create(ctx, res); err != nil {
			return err
		}
	}

	return nil
}

// maintenance answers the MachineService as a node in maintenance mode answers a client on
// the LAN (internal/app/maintenance/server.go).
type maintenance struct {
	machine.UnimplementedMachineServiceServer

	resources  state.State
	configFile string
	stop       func()
}

// Version needs the admin role, which only SideroLink peers get in maintenance mode
// (server.go: assertAdminRole; pkg/grpc/middleware/authz/injector.go).
func (*maintenance) Version(context.Context, *emptypb.Empty) (*machine.VersionResponse, error) {
	return nil, status.Error(codes.Unimplemented, "API is not implemented in maintenance mode")
}

// ApplyConfiguration loads and validates the config as Talos does, for bare metal, against
// this machine's disks (server.go: ApplyConfiguration, configloader, Validate, RuntimeValidate).
// A valid config is kept and the machine goes away to install it.
func (m *maintenance) ApplyConfiguration(ctx context.Context, in *machine.ApplyConfigurationRequest) (*machine.ApplyConfigurationResponse, error) {
	switch in.Mode { //nolint:exhaustive
	case machine.ApplyConfigurationRequest_TRY, machine.ApplyConfigurationRequest_REBOOT, machine.ApplyConfigurationRequest_AUTO:
	default:
		return nil, status.Errorf(codes.Unimplemented, "apply configuration --mode='%s' is not supported in maintenance mode", in.Mode)
	}

	provider, err := configloader.NewFromBytes(in.GetData())
	if err != nil {
		return nil, fmt.Errorf("failed to parse config: %w", err)
	}

	warnings, err := provider.Validate(metal{})
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "configuration validation failed: %s", err)
	}

	runtimeWarnings, err := provider.RuntimeValidate(ctx, m.resources, metal{})
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "runtime configuration validation failed: %s", err)
	}

	if err = os.WriteFile(m.configFile, in.GetData(), 0o600); err != nil {
		return nil, status.Errorf(codes.Internal, "keeping the config: %s", err)
	}

	// The machine leaves maintenance mode to install: the API goes away once this answer is out.
	go func() {
		time.Sleep(time.Second)
		m.stop()
	}()

	return &machine.ApplyConfigurationResponse{
		Messages: []*machine.ApplyConfiguration{{
			Warnings:    append(warnings, runtimeWarnings...),
			Mode:        in.Mode,
			ModeDetails: "Applied configuration with a reboot",
		}},
	}, nil
}

// configured answers the MachineService as an installed node does.
type configured struct {
	machine.UnimplementedMachineServiceServer

	config     config.Provider
	configFile string
	// The machine's COSI resources (what `talosctl get` reads).
	resources state.State
	address   string
	bootedAt  time.Time
	hardware  Hardware
	// What the machine runs; its etcd member (control planes only).
	services *services
	etcd     *etcdMember
	// This boot's events (events.go).
	events *eventBus
	// Stops the API (the machine goes down); rebooting says it comes back.
	shutDown  func()
	rebooting atomic.Bool
	// The installer images the box can pull (upgrade.go).
	registry registry
	// Set once this boot was running and ready (its upgrade fallback dropped).
	settled atomic.Bool
}

// Reboot answers with the call's actor ID, then runs the reboot sequence: the pods and
// services stop (the VIP released first), the machine goes down and comes back booted into its
// config, its events from then on those of the new boot. Talos's Reboot does not leave etcd
// (v1alpha1_server.go, Reboot; v1alpha1_sequencer.go, Reboot: FORCE skips the teardown).
func (c *configured) Reboot(_ context.Context, in *machine.RebootRequest) (*machine.RebootResponse, error) {
	actorID := uuid.New().String()

	c.runAfterAnswer("reboot", actorID, c.rebootPhases(in.GetMode()))

	return &machine.RebootResponse{Messages: []*machine.Reboot{{Metadata: c.metadata(), ActorId: actorID}}}, nil
}

// rebootPhases is Talos's reboot sequence (v1alpha1_sequencer.go, Reboot).
func (c *configured) rebootPhases(mode machine.RebootRequest_Mode) []phase {
	var phases []phase
	if mode != machine.RebootRequest_FORCE {
		phases = append([]phase{
			{name: "cleanup", tasks: []task{{name: "stopAllPods", run: c.stopAllPods}}},
			{name: "dbus", tasks: []task{noop("stopDBus")}},
		}, c.stopAll(true)...)
	}

	return append(phases, phase{name: "reboot", tasks: []task{{name: "reboot", run: c.goDown(true)}}})
}

// stopAllPods: the VIP election ends (tearDownKubeletLifecycle), then the kubelet's pods stop
// within its graceful-shutdown period (v1alpha1_sequencer_tasks.go, StopAllPods).
func (c *configured) stopAllPods() error {
	c.services.tearDownKubeletLifecycle()
	c.services.kubelet.shutdownGracefully(context.Background())

	return nil
}

// stopAll is Talos's stopAllPhaselist: services stopped, mounts undone (nothing to undo on a
// twin), then every service stopped (v1alpha1_sequencer.go, stopAllPhaselist); an upgrade
// installs after the unmounts, before the kexec.
func (c *configured) stopAll(kexec bool, installs ...phase) []phase {
	phases := []phase{
		{name: "stopServices", tasks: []task{{name: "stopServicesForUpgrade", run: func() error {
			c.services.stop()

			return nil
		}}}},
		{name: "umount", tasks: []task{{name: "unmountPodMounts", run: c.unmountPodMounts}}},
		{name: "unmountBind", tasks: []task{noop("unmountSystemDiskBindMounts")}},
		{name: "unmountSystem", tasks: []task{noop("unmountEphemeralPartition")}},
		{name: "volumeFinalize", tasks: []task{noop("teardownLifecycle")}},
	}

	phases = append(phases, installs...)

	if kexec {
		phases = append(phases, phase{name: "kexec", tasks: []task{noop("kexecPrepare")}})
	}

	return append(phases, phase{name: "stopEverything", tasks: []task{{name: "stopAllServices", run: func() error {
		c.services.stop()

		return nil
	}}}})
}

// goDown is the sequence's last task: the machine's last events are flushed to whoever
// watches, then its API stops; it comes back (reboot) or stays off (shutdown).
func (c *configured) goDown(reboot bool) func() error {
	return func() error {
		c.events.close()

		if !reboot {
			log.Printf("powering off")
			os.Exit(0)
		}

		c.rebooting.Store(true)
		c.shutDown()

		return nil
	}
}

// Read answers the one file a twin has: the boot ID, new at each boot, which `talosctl reboot`
// and `reset` read before and after to know the machine rebooted (v1alpha1_server.go, Read;
// cmd/talosctl/pkg/talos/action/tracker.go, getBootID). Any other path is not there.
func (c *configured) Read(in *machine.ReadRequest, srv machine.MachineService_ReadServer) error {
	if in.GetPath() != bootIDPath {
		return status.Errorf(codes.NotFound, "stat %s: no such file or directory", in.GetPath())
	}

	return srv.Send(&common.Data{Bytes: []byte(c.services.kubelet.bootID + "\n")})
}

// bootIDPath is where Linux keeps the boot ID.
const bootIDPath = "/proc/sys/kernel/random/boot_id"

// bootstrapReadyAfter models how long after boot Talos refuses Bootstrap because the
// container runtime is not up yet (v1alpha1_runtime.go, IsBootstrapAllowed).
const bootstrapReadyAfter = 5 * time.Second

// metadata names the node in machined's own answers. apid tags every answer it merges with
// the same (apid.go, AppendInfo; talosctl prints it as the NODE column), so this matters only
// for an answer that reaches a client without apid's tagging, through the local socket.
func (c *configured) metadata() *common.Metadata {
	return &common.Metadata{Hostname: c.address}
}

// checkControlplane refuses etcd calls on workers
// (internal/app/machined/internal/server/v1alpha1/v1alpha1_server.go, checkControlplane).
func (c *configured) checkControlplane(api string) error {
	if c.etcd == nil {
		return status.Errorf(codes.Unimplemented, "%s is only available on control plane nodes", api)
	}

	return nil
}

// Bootstrap starts a new etcd cluster on this node, once in the cluster's life, or restores
// one from an uploaded snapshot (RecoverEtcd; recovery.go) (v1alpha1_server.go, Bootstrap):
// FailedPrecondition while the node is not ready for it or is a worker, AlreadyExists once
// the etcd data directory holds data.
func (c *configured) Bootstrap(_ context.Context, in *machine.BootstrapRequest) (*machine.BootstrapResponse, error) {
	if time.Since(c.bootedAt) < bootstrapReadyAfter {
		return nil, status.Error(codes.FailedPrecondition, "bootstrap is not available yet")
	}

	if c.etcd == nil {
		return nil, status.Error(codes.FailedPrecondition, "bootstrap can only be performed on a control plane node")
	}

	// A member already started (bootstrapped a moment ago, or joined) is writing its data
	// directory: the same answer, without racing etcd's first write.
	if c.etcd.hasData() || c.etcd.running() {
		return nil, status.Error(codes.AlreadyExists, "etcd data directory is not empty")
	}

	if err := c.etcd.bootstrap(in.RecoverEtcd, in.RecoverSkipHashCheck); err != nil {
		return nil, status.Errorf(codes.Internal, "starting etcd: %s", err)
	}

	return &machine.BootstrapResponse{Messages: []*machine.Bootstrap{{Metadata: c.metadata()}}}, nil
}

// Kubeconfig streams an admin kubeconfig for the cluster endpoint, made from the config's
// Kubernetes CA by Talos's own generator, wrapped in a .tar.gz as Talos sends it
// (v1alpha1_server.go, Kubeconfig; pkg/kubeconfig, GenerateAdmin).
func (c *configured) Kubeconfig(_ *emptypb.Empty, stream machine.MachineService_KubeconfigServer) error {
	if err := c.checkControlplane("kubeconfig"); err != nil {
		return err
	}

	var kubeconfigYAML bytes.Buffer
	if err := kubeconfig.GenerateAdmin(c.config.Cluster(), &kubeconfigYAML); err != nil {
		return err
	}

	var archive bytes.Buffer

	zipped := gzip.NewWriter(&archive)
	tarred := tar.NewWriter(zipped)

	header := &tar.Header{Typeflag: tar.TypeReg, Name: "kubeconfig", Size: int64(kubeconfigYAML.Len()), ModTime: time.Now(), Mode: 0o600}
	if err := tarred.WriteHeader(header); err != nil {
		return err
	}

	if _, err := io.Copy(tarred, &kubeconfigYAML); err != nil {
		return err
	}

	if err := tarred.Close(); err != nil {
		return err
	}

	if err := zipped.Close(); err != nil {
		return err
	}

	return stream.Send(&common.Data{Metadata: c.metadata(), Bytes: archive.Bytes()})
}

// EtcdMemberList asks the local member (talosctl etcd members sends QueryLocal), and needs a
// leader (v1alpha1_server.go, EtcdMemberList).
func (c *configured) EtcdMemberList(ctx context.Context, _ *machine.EtcdMemberListRequest) (*machine.EtcdMemberListResponse, error) {
	if err := c.checkControlplane("member list"); err != nil {
		return nil, err
	}

	client, err := c.etcd.localClient()
	if err != nil {
		return nil, err
	}
	defer client.Close() //nolint:errcheck

	callCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()

	resp, err := client.MemberList(clientv3.WithRequireLeader(callCtx))
	if err != nil {
		return nil, err
	}

	members := make([]*machine.EtcdMember, 0, len(resp.Members))
	for _, member := range resp.Members {
		members = append(members, &machine.EtcdMember{
			Id: member.ID, Hostname: member.Name, PeerUrls: member.PeerURLs, ClientUrls: member.ClientURLs, IsLearner: member.IsLearner,
		})
	}

	return &machine.EtcdMemberListResponse{Messages: []*machine.EtcdMembers{{Metadata: c.metadata(), Members: members}}}, nil
}

// EtcdStatus is the local member's own status (v1alpha1_server.go, EtcdStatus).
func (c *configured) EtcdStatus(ctx context.Context, _ *emptypb.Empty) (*machine.EtcdStatusResponse, error) {
	if err := c.checkControlplane("etcd status"); err != nil {
		return nil, err
	}

	client, err := c.etcd.localClient()
	if err != nil {
		return nil, fmt.Errorf("failed to create etcd client: %w", err)
	}
	defer client.Close() //nolint:errcheck

	callCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()

	resp, err := client.Status(callCtx, c.etcd.clientURL("127.0.0.1"))
	if err != nil {
		return nil, fmt.Errorf("failed to query etcd status: %w", err)
	}

	return &machine.EtcdStatusResponse{Messages: []*machine.EtcdStatus{{
		Metadata: c.metadata(),
		MemberStatus: &machine.EtcdMemberStatus{
			MemberId:         resp.Header.MemberId,
			ProtocolVersion:  resp.Version,
			StorageVersion:   resp.StorageVersion,
			DbSize:           resp.DbSize,
			DbSizeInUse:      resp.DbSizeInUse,
			Leader:           resp.Leader,
			RaftIndex:        resp.RaftIndex,
			RaftTerm:         resp.RaftTerm,
			RaftAppliedIndex: resp.RaftAppliedIndex,
			Errors:           resp.Errors,
			IsLearner:        resp.IsLearner,
		},
	}}}, nil
}

// Version reports the Talos release the twin models (pkg/machinery/version).
// A bare-metal machine: its platform is "metal" (health's memory and disk checks skip only
// containers).
func (*configured) Version(context.Context, *emptypb.Empty) (*machine.VersionResponse, error) {
	return &machine.VersionResponse{Messages: []*machine.Version{{
		Version:  version.NewVersion(),
		Platform: &machine.PlatformInfo{Name: "metal", Mode: "metal"},
	}}}, nil
}

// selfSigned is the maintenance API's certificate: made at boot, trusted by no one (talosctl
// --insecure does not check it).
func selfSigned() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}

	template := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "maintenance"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}

	der, err := x509.CreateCertificate(rand.Reader, template, template, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}

	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// maintenanceDisks is the storage API a machine in maintenance mode serves
// (internal/app/maintenance/server.go, Register; internal/app/storaged/server.go, Disks): the
// disks it found. `talosctl reset --reboot --wait` asks it to learn that a reset machine came
// back in maintenance mode.
type maintenanceDisks struct {
	storage.UnimplementedStorageServiceServer

	resources state.State
}

func (m *maintenanceDisks) Disks(ctx context.Context, _ *emptypb.Empty) (*storage.DisksResponse, error) {
	disks, err := safe.StateListAll[*block.Disk](ctx, m.resources)
	if err != nil {
		return nil, err
	}

	var found []*storage.Disk

	for disk := range disks.All() {
		spec := disk.TypedSpec()

		// storaged's type by transport; the box's disks are neither CD-ROMs nor rotational.
		kind := storage.Disk_UNKNOWN

		switch spec.Transport {
		case "nvme":
			kind = storage.Disk_NVME
		case "mmc":
			kind = storage.Disk_SD
		case "":
		default:
			kind = storage.Disk_SSD
		}

		found = append(found, &storage.Disk{
			DeviceName: filepath.Join("/dev", disk.Metadata().ID()),
			Model:      spec.Model,
			Size:       spec.Size,
			Type:       kind,
			BusPath:    spec.BusPath,
		})
	}

	return &storage.DisksResponse{Messages: []*storage.Disks{{Disks: found}}}, nil
}
