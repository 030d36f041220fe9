package main

// What a configured machine reports about what it is, each resource as the Talos controller
// that owns it publishes it (internal/app/machined/pkg/controllers/...):
//
//   - runtime/version.go: `Versions`, the release's tag;
//   - runtime/security_state.go: `SecurityStates`. The box's machines boot no UEFI firmware, so
//     no Secure Boot, no UKI and no PCR signing key; module signature enforcement and SELinux
//     follow the kernel command line this release's installer writes (pkg/machinery/kernel,
//     DefaultArgs, with the config's extra kernel arguments); FIPS is off;
//   - network/platform_config_apply.go, from platform/metal/metal.go: `PlatformMetadatas`, the
//     metal platform (its hostname only comes from a `talos.hostname` kernel argument, which the
//     box's machines are not given);
//   - network/hostname_status.go: `HostnameStatuses`, the name the machine took (services.go);
//   - hardware/system.go: `SystemInformations`, `Processors` and `MemoryModules`, read from SMBIOS
//     on a real machine. The box's machines have no SMBIOS: the system's UUID is derived from the
//     cabled port's MAC (stable across boots, one per machine, as a board's is), the processor is
//     the host kernel's (the CPUs the twin runs on) and one memory module holds the memory the
//     hardware file declares;
//   - etcd/member.go: a control plane's `EtcdMembers` "local", its member ID while etcd runs
//     healthy, gone otherwise.

import (
	"context"
	"fmt"
	"log"
	"path/filepath"
	"strings"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/google/uuid"
	"github.com/prometheus/procfs"
	talosprocfs "github.com/siderolabs/go-procfs/procfs"
	"github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/constants"
	"github.com/siderolabs/talos/pkg/machinery/imager/quirks"
	"github.com/siderolabs/talos/pkg/machinery/kernel"
	"github.com/siderolabs/talos/pkg/machinery/resources/etcd"
	"github.com/siderolabs/talos/pkg/machinery/resources/hardware"
	"github.com/siderolabs/talos/pkg/machinery/resources/network"
	"github.com/siderolabs/talos/pkg/machinery/resources/runtime"
	"github.com/siderolabs/talos/pkg/machinery/resources/v1alpha1"
	"github.com/siderolabs/talos/pkg/machinery/version"
)

// diskName is a disk's name in the kernel (and its resource ID): `sda` for /dev/sda.
func diskName(disk Disk) string {
	return filepath.Base(disk.DevPath)
}

// systemUUID stands in for the SMBIOS UUID: a name-based UUID of the machine's first port's MAC.
func systemUUID(hw Hardware) string {
	if len(hw.Links) == 0 {
		return uuid.Nil.String()
	}

	return uuid.NewSHA1(uuid.NameSpaceOID, []byte(hw.Links[0].MAC)).String()
}

// publishInventory records what the machine is (see the top of this file).
func publishInventory(ctx context.Context, resources state.State, provider config.Provider, hw Hardware, name string) error {
	versionRes := runtime.NewVersion()
	versionRes.TypedSpec().Version = version.Tag

	cmdline := bootCmdline(provider)
	security := runtime.NewSecurityStateSpec(runtime.NamespaceName)
	security.TypedSpec().ModuleSignatureEnforced = kernelArgIs(cmdline, constants.KernelParamEnforceModuleSigVerify, "1")
	security.TypedSpec().SELinuxState = selinuxState(cmdline)
	security.TypedSpec().FIPSState = runtime.FIPSStateDisabled

	platform := runtime.NewPlatformMetadataSpec(runtime.NamespaceName, runtime.PlatformMetadataID)
	platform.TypedSpec().Platform = (metal{}).String()

	hostnameStatus := network.NewHostnameStatus(network.NamespaceName, network.HostnameID)
	hostnameStatus.TypedSpec().Hostname = name

	system := hardware.NewSystemInformation(hardware.SystemInformationID)
	system.TypedSpec().UUID = systemUUID(hw)
	system.TypedSpec().Manufacturer = "talos-ha box"
	system.TypedSpec().ProductName = "node twin"

	memory := hardware.NewMemoryModuleInfo("DIMM-0")
	memory.TypedSpec().DeviceLocator = "DIMM 0"
	memory.TypedSpec().Size = uint32(hw.Memory >> 20)

	for _, res := range []resource.Resource{versionRes, security, platform, hostnameStatus, system, memory} {
		if err := putResource(ctx, resources, res); err != nil {
			return err
		}
	}

	processors, err := hostProcessors()
	if err != nil {
		return fmt.Errorf("reading the host's processors: %w", err)
	}

	for _, processor := range processors {
		if err = putResource(ctx, resources, processor); err != nil {
			return err
		}
	}

	return nil
}

// bootCmdline is the kernel command line the machine booted with: this release's defaults and
// the config's `machine.install.extraKernelArgs`, as the installer writes them.
func bootCmdline(provider config.Provider) *talosprocfs.Cmdline {
	args := append(kernel.DefaultArgs(quirks.New(version.Tag)), provider.Machine().Install().ExtraKernelArgs()...)

	return talosprocfs.NewCmdline(strings.Join(args, " "))
}

// kernelArgIs says whether the command line sets `key` to `value`.
func kernelArgIs(cmdline *talosprocfs.Cmdline, key, value string) bool {
	got := cmdline.Get(key).First()

	return got != nil && *got == value
}

// selinuxState is what `selinux=1` (Talos loads its policy) and `enforcing=1` make of SELinux
// (security_state.go, getSelinuxState: permissive unless enforcing).
func selinuxState(cmdline *talosprocfs.Cmdline) runtime.SELinuxState {
	switch {
	case !kernelArgIs(cmdline, constants.KernelParamSELinux, "1"):
		return runtime.SELinuxStateDisabled
	case kernelArgIs(cmdline, constants.KernelParamSELinuxEnforcing, "1"):
		return runtime.SELinuxStateEnforcing
	default:
		return runtime.SELinuxStatePermissive
	}
}

// hostProcessors are the host kernel's CPUs, one Processor per physical package, as SMBIOS lists
// sockets ("CPU-0").
func hostProcessors() ([]*hardware.Processor, error) {
	cpus, err := fromProc(procfs.FS.CPUInfo)
	if err != nil {
		return nil, err
	}

	sockets := map[string]*hardware.Processor{}

	var ordered []*hardware.Processor

	for _, cpu := range cpus {
		socket, seen := sockets[cpu.PhysicalID]
		if !seen {
			socket = hardware.NewProcessorInfo(fmt.Sprintf("CPU-%d", len(ordered)))
			spec := socket.TypedSpec()
			spec.Socket = strings.ReplaceAll(socket.Metadata().ID(), "-", " ")
			spec.Manufacturer = cpu.VendorID
			spec.ProductName = cpu.ModelName
			spec.CoreCount = uint32(cpu.CPUCores)
			spec.BootSpeed = uint32(cpu.CPUMHz)
			sockets[cpu.PhysicalID] = socket
			ordered = append(ordered, socket)
		}

		socket.TypedSpec().ThreadCount++
		socket.TypedSpec().CoreEnabled = socket.TypedSpec().CoreCount
	}

	return ordered, nil
}

// syncEtcdMember keeps a control plane's `EtcdMembers` "local" as member.go does: its member ID
// while the etcd service runs healthy (Services "etcd", syncServices), none otherwise.
func (c *configured) syncEtcdMember(ctx context.Context) {
	if c.etcd == nil {
		return
	}

	local := etcd.NewMember(etcd.NamespaceName, etcd.LocalMemberID)

	service, err := safe.StateGetByID[*v1alpha1.Service](ctx, c.resources, "etcd")
	if err != nil || !service.TypedSpec().Running || !service.TypedSpec().Healthy {
		if err = c.resources.Destroy(ctx, local.Metadata()); err != nil && !state.IsNotFoundError(err) {
			log.Printf("etcd member resource: %v", err)
		}

		return
	}

	status, err := c.EtcdStatus(ctx, nil)
	if err != nil {
		return
	}

	local.TypedSpec().MemberID = etcd.FormatMemberID(status.GetMessages()[0].GetMemberStatus().GetMemberId())

	if err = putResource(ctx, c.resources, local); err != nil {
		log.Printf("etcd member resource: %v", err)
	}
}
