package main

// ApplyConfiguration on a configured machine, as Talos does it
// (internal/app/machined/internal/server/v1alpha1/v1alpha1_server.go, ApplyConfiguration):
// the config is loaded, validated (statically, then against the machine's resources), and
// applied in the mode asked for:
//
//   - NO_REBOOT: only when every change is one Talos makes live (CanApplyImmediate, below),
//     else InvalidArgument; the config is kept and made the running one, and the machine's
//     services follow it (a control plane's static pods: controlplane.go, staticpods.go);
//   - AUTO: NO_REBOOT when it can be, REBOOT otherwise;
//   - STAGED: kept for the next boot only;
//   - REBOOT: kept, then the machine reboots into it;
//   - TRY is not modelled: the twin says so.
//
// With --dry-run nothing is kept: the answer carries Talos's own diff of the running config
// against the new one ("No changes." when equal, generateDiff).

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"reflect"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/config/configdiff"
	"github.com/siderolabs/talos/pkg/machinery/config/configloader"
	"github.com/siderolabs/talos/pkg/machinery/config/container"
	"github.com/siderolabs/talos/pkg/machinery/config/types/v1alpha1"
	configres "github.com/siderolabs/talos/pkg/machinery/resources/config"
)

// follow: the machine's services take a config applied without a reboot. The kubelet restarts
// when its spec changed, its Service resource going away and coming back as Talos's
// KubeletServiceController makes it (what `upgrade-k8s` waits for); then a control plane's
// static pods follow (services.follow).
func (c *configured) follow(provider config.Provider) {
	ctx, kubelet := c.services.ctx, c.services.kubelet

	changed, err := kubelet.publishSpec(ctx, provider)
	if err != nil {
		log.Printf("kubelet: spec: %v", err)
	}

	if changed {
		kubelet.stopRuntime()
		c.syncServices(ctx)

		for ctx.Err() == nil {
			if err = kubelet.startAs(ctx, provider.Machine().Kubelet().Image()); err == nil {
				break
			}

			log.Printf("kubelet: start: %v", err)
			time.Sleep(3 * time.Second)
		}

		c.syncServices(ctx)
	}

	c.services.follow(provider)
}

// installedMetal is the validation mode of a machine already installed: Talos wraps the
// platform's mode so that an installed machine's install disk is not looked for again
// (v1alpha1_server.go, modeWrapper).
type installedMetal struct{ metal }

func (installedMetal) RequiresInstall() bool { return false }

func (c *configured) ApplyConfiguration(ctx context.Context, in *machine.ApplyConfigurationRequest) (*machine.ApplyConfigurationResponse, error) {
	provider, err := configloader.NewFromBytes(in.GetData())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}

	// A configured machine always keeps a v1alpha1 document; Talos refuses a config without one
	// rather than guess that a patch was meant.
	if provider.RawV1Alpha1() == nil {
		return nil, status.Error(codes.InvalidArgument,
			"the applied machine configuration doesn't contain v1alpha1 config, did you mean to patch the machine config instead?")
	}

	warnings, err := provider.Validate(installedMetal{})
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}

	runtimeWarnings, err := provider.RuntimeValidate(ctx, c.resources, installedMetal{})
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}

	warnings = append(warnings, runtimeWarnings...)

	mode, details, modeName, err := c.applyMode(in.GetMode(), provider)
	if err != nil {
		return nil, err
	}

	if in.DryRun {
		diff, err := configdiff.DiffToString(c.config, provider)
		if err != nil {
			return nil, fmt.Errorf("failed to generate diff: %w", err)
		}

		if diff == "" {
			diff = "No changes."
		}

		return &machine.ApplyConfigurationResponse{Messages: []*machine.ApplyConfiguration{{
			Mode:        mode,
			ModeDetails: fmt.Sprintf("Dry run summary:\n%s (skipped in dry-run).\nConfig diff:\n\n%s", details, diff),
		}}}, nil
	}

	log.Printf("apply config request: mode %s", modeName)

	if err = os.WriteFile(c.configFile, in.GetData(), 0o600); err != nil {
		return nil, status.Errorf(codes.Internal, "keeping the config: %s", err)
	}

	switch mode { //nolint:exhaustive // applyMode answers only these
	case machine.ApplyConfigurationRequest_NO_REBOOT:
		c.config = provider
		if err = putResource(ctx, c.resources, configres.NewMachineConfig(provider)); err != nil {
			return nil, status.Errorf(codes.Internal, "publishing the config: %s", err)
		}

		if c.services != nil {
			go c.follow(provider)
		}
	case machine.ApplyConfigurationRequest_REBOOT:
		c.runAfterAnswer("reboot", uuid.New().String(), c.rebootPhases(machine.RebootRequest_DEFAULT))
	}

	return &machine.ApplyConfigurationResponse{Messages: []*machine.ApplyConfiguration{{
		Mode:        mode,
		Warnings:    warnings,
		ModeDetails: details,
	}}}, nil
}

// applyMode is the mode a request is applied in, what Talos says of it, and the name it logs;
// NO_REBOOT of a change that needs a reboot is refused.
func (c *configured) applyMode(asked machine.ApplyConfigurationRequest_Mode, provider config.Provider) (
	machine.ApplyConfigurationRequest_Mode, string, string, error,
) {
	withReboot, withoutReboot := "Applied configuration with a reboot", "Applied configuration without a reboot"

	switch asked { //nolint:exhaustive // TRY and unknown modes are refused below
	case machine.ApplyConfigurationRequest_NO_REBOOT:
		if err := canApplyImmediate(c.config, provider); err != nil {
			return asked, "", "", status.Error(codes.InvalidArgument, err.Error())
		}

		return asked, withoutReboot, "no_reboot", nil
	case machine.ApplyConfigurationRequest_AUTO:
		if err := canApplyImmediate(c.config, provider); err != nil {
			return machine.ApplyConfigurationRequest_REBOOT, withReboot + ": " + err.Error(), "auto(reboot)", nil
		}

		return machine.ApplyConfigurationRequest_NO_REBOOT, withoutReboot, "auto(no_reboot)", nil
	case machine.ApplyConfigurationRequest_STAGED:
		return asked, "Staged configuration to be applied after the next reboot", "staged", nil
	case machine.ApplyConfigurationRequest_REBOOT:
		return asked, withReboot, "reboot", nil
	default:
		return asked, "", "", status.Errorf(codes.Unimplemented, "apply mode %s is not modelled by the twin", asked)
	}
}

// canApplyImmediate: Talos makes a change live only when it is confined to the parts of the
// v1alpha1 document its controllers follow (runtime/v1alpha1/v1alpha1_runtime.go,
// CanApplyImmediate): the debug flag, the whole `cluster` section, and these parts of
// `machine`. Anything else differing needs a reboot, and the error shows the diff.
func canApplyImmediate(current, next config.Provider) error {
	running, wanted := current.RawV1Alpha1(), next.RawV1Alpha1()
	if running == nil || wanted == nil {
		return errors.New("the running or the new config has no v1alpha1 document")
	}

	// The new config with every live part taken from the running one: equal when nothing
	// else changed.
	rest := wanted.DeepCopy()
	rest.ConfigDebug = running.ConfigDebug
	rest.ClusterConfig = running.ClusterConfig

	if rest.MachineConfig != nil && running.MachineConfig != nil {
		for _, part := range liveMachineParts {
			part(rest.MachineConfig, running.MachineConfig)
		}

		if rest.MachineConfig.MachineFeatures != nil && running.MachineConfig.MachineFeatures != nil {
			for _, part := range liveFeatures {
				part(rest.MachineConfig.MachineFeatures, running.MachineConfig.MachineFeatures)
			}
		}
	}

	if reflect.DeepEqual(running, rest) {
		return nil
	}

	diff, err := configdiff.DiffToString(container.NewV1Alpha1(running), container.NewV1Alpha1(rest))
	if err != nil {
		return fmt.Errorf("error calculating diff: %w", err)
	}

	return fmt.Errorf("this config change can't be applied in immediate mode\ndiff:\n%s", diff)
}

// liveMachineParts copy each part of `machine` Talos follows live from the running config.
var liveMachineParts = []func(to, from *v1alpha1.MachineConfig){
	func(to, from *v1alpha1.MachineConfig) { to.MachineCA = from.MachineCA },
	func(to, from *v1alpha1.MachineConfig) { to.MachineAcceptedCAs = from.MachineAcceptedCAs },
	func(to, from *v1alpha1.MachineConfig) { to.MachineTime = from.MachineTime }, //nolint:staticcheck // still a live part
	func(to, from *v1alpha1.MachineConfig) { to.MachineCertSANs = from.MachineCertSANs },
	func(to, from *v1alpha1.MachineConfig) { to.MachineInstall = from.MachineInstall },
	func(to, from *v1alpha1.MachineConfig) { to.MachineNetwork = from.MachineNetwork },
	func(to, from *v1alpha1.MachineConfig) { to.MachineSysfs = from.MachineSysfs },
	func(to, from *v1alpha1.MachineConfig) { to.MachineSysctls = from.MachineSysctls },
	func(to, from *v1alpha1.MachineConfig) { to.MachineLogging = from.MachineLogging },
	func(to, from *v1alpha1.MachineConfig) { to.MachineControlPlane = from.MachineControlPlane },
	func(to, from *v1alpha1.MachineConfig) { to.MachineKubelet = from.MachineKubelet },
	func(to, from *v1alpha1.MachineConfig) { to.MachineKernel = from.MachineKernel },
	func(to, from *v1alpha1.MachineConfig) { to.MachineRegistries = from.MachineRegistries }, //nolint:staticcheck // still a live part
	func(to, from *v1alpha1.MachineConfig) { to.MachinePods = from.MachinePods },
	func(to, from *v1alpha1.MachineConfig) { to.MachineSeccompProfiles = from.MachineSeccompProfiles },
	func(to, from *v1alpha1.MachineConfig) { to.MachineNodeAnnotations = from.MachineNodeAnnotations },
	func(to, from *v1alpha1.MachineConfig) { to.MachineNodeLabels = from.MachineNodeLabels },
	func(to, from *v1alpha1.MachineConfig) { to.MachineNodeTaints = from.MachineNodeTaints },
}

// liveFeatures copy each of `machine.features` Talos follows live.
var liveFeatures = []func(to, from *v1alpha1.FeaturesConfig){
	func(to, from *v1alpha1.FeaturesConfig) {
		to.KubernetesTalosAPIAccessConfig = from.KubernetesTalosAPIAccessConfig
	},
	func(to, from *v1alpha1.FeaturesConfig) { to.KubePrismSupport = from.KubePrismSupport },
	func(to, from *v1alpha1.FeaturesConfig) { to.HostDNSSupport = from.HostDNSSupport },
	func(to, from *v1alpha1.FeaturesConfig) { to.ImageCacheSupport = from.ImageCacheSupport },
	func(to, from *v1alpha1.FeaturesConfig) {
		to.FeatureNodeAddressSortAlgorithm = from.FeatureNodeAddressSortAlgorithm
	},
}
