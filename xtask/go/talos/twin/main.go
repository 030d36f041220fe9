// Command talos-twin is a Talos node twin: it stands in the box for one machine booted from
// the Talos ISO, at that machine's address, port 50000, and answers the Talos API as Talos
// v1.12.1 answers it, through Talos's own public packages (the API protos, COSI resources,
// the config loader and its validation). What talosctl is told here is what a real node in
// maintenance mode would tell it.
//
// This first step is maintenance mode only: the node waits for its config. A configured node
// (secure API, etcd, the control plane) is the next step of the cluster in a box.
//
// Each behaviour names the Talos source file (at v1.12.1) it follows.
package main

import (
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
	"log"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	cosiv1alpha1 "github.com/cosi-project/runtime/api/v1alpha1"
	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/resource/meta"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/cosi-project/runtime/pkg/state/impl/inmem"
	"github.com/cosi-project/runtime/pkg/state/impl/namespaced"
	"github.com/cosi-project/runtime/pkg/state/protobuf/server"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/config/configloader"
	"github.com/siderolabs/talos/pkg/machinery/nethelpers"
	"github.com/siderolabs/talos/pkg/machinery/resources/block"
	"github.com/siderolabs/talos/pkg/machinery/resources/network"
	"github.com/siderolabs/talos/pkg/machinery/resources/runtime"
)

// Hardware is what the lab says this machine has: its network ports and its disks.
type Hardware struct {
	Links []Link `json:"links"`
	Disks []Disk `json:"disks"`
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
	address := flag.String("address", "", "the node's address (it listens on <address>:50000)")
	hardwareFile := flag.String("hardware", "", "a JSON file describing the node's links and disks")
	stateDir := flag.String("state", "", "where the node keeps what it is sent (its config)")
	flag.Parse()

	if err := run(*address, *hardwareFile, *stateDir); err != nil {
		log.Fatalf("talos-twin: %v", err)
	}
}

func run(address, hardwareFile, stateDir string) error {
	raw, err := os.ReadFile(hardwareFile)
	if err != nil {
		return err
	}

	var hardware Hardware
	if err = json.Unmarshal(raw, &hardware); err != nil {
		return fmt.Errorf("%s: %w", hardwareFile, err)
	}

	ctx := context.Background()
	resources := state.WrapCore(namespaced.NewState(inmem.Build))

	if err = boot(ctx, resources, hardware); err != nil {
		return err
	}

	certificate, err := selfSigned()
	if err != nil {
		return err
	}

	listener, err := net.Listen("tcp", net.JoinHostPort(address, "50000"))
	if err != nil {
		return err
	}

	grpcServer := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{certificate}})))
	node := &maintenance{resources: resources, stateDir: stateDir, stop: grpcServer.Stop}

	machine.RegisterMachineServiceServer(grpcServer, node)
	// Maintenance mode serves the COSI state read-only, and only what is not sensitive
	// (internal/app/maintenance/server.go, Register; internal/app/resources/access.go).
	cosiv1alpha1.RegisterStateServer(grpcServer, server.NewState(state.Filter(resources, readOnly)))

	log.Printf("maintenance mode: waiting for a config on %s", listener.Addr())

	return grpcServer.Serve(listener)
}

// boot fills the state as a machine booted from the ISO has it: the resource definitions
// talosctl resolves kinds with, MachineStatus in stage "maintenance", its links and disks.
func boot(ctx context.Context, st state.State, hardware Hardware) error {
	status := runtime.NewMachineStatus()
	status.TypedSpec().Stage = runtime.MachineStageMaintenance
	status.TypedSpec().Status.Ready = false

	created := []resource.Resource{status}

	for index, link := range hardware.Links {
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

	for _, disk := range hardware.Disks {
		res := block.NewDisk(block.NamespaceName, filepath.Base(disk.DevPath))
		spec := res.TypedSpec()
		spec.DevPath = disk.DevPath
		spec.Size = disk.Size
		spec.PrettySize = fmt.Sprintf("%d GB", disk.Size/1_000_000_000)
		spec.Model = disk.Model
		spec.Transport = disk.Transport
		spec.IOSize = 512
		spec.SectorSize = 512

		created = append(created, res)
	}

	definitions := []meta.ResourceDefinitionProvider{
		runtime.MachineStatusExtension{},
		network.LinkStatusExtension{},
		block.DiskExtension{},
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

// readOnly lets a client read, never write (the maintenance API's reader role).
func readOnly(_ context.Context, access state.Access) error {
	if !access.Verb.Readonly() {
		return status.Error(codes.PermissionDenied, "not authorized")
	}

	return nil
}

// maintenance answers the MachineService as a node in maintenance mode answers a client on
// the LAN (internal/app/maintenance/server.go).
type maintenance struct {
	machine.UnimplementedMachineServiceServer

	resources state.State
	stateDir  string
	stop      func()
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

	if err = os.WriteFile(filepath.Join(m.stateDir, "config.yaml"), in.GetData(), 0o600); err != nil {
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
