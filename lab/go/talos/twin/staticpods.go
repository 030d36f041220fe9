package main

// The control plane's static pods as Talos publishes them: the config resources rendered from
// the machine config (internal/app/machined/pkg/controllers/k8s/control_plane.go), and from
// them the StaticPod resources the kubelet runs (control_plane_static_pod.go), each annotated
// with the version of the config resource it came from. `talosctl upgrade-k8s` relies on that
// chain: it watches a component's config resource, patches the image into the machine config,
// takes the version the change gave the resource, and waits for the mirror pod carrying that
// version in `talos.dev/config-version` to be Ready (go-kubernetes, upgrade's
// checkPodStatus). A config resource's version moves only when its spec changes
// (putResource), as a controller's Modify leaves an unchanged resource alone.

import (
	"context"
	"net"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/siderolabs/go-kubernetes/kubernetes/compatibility"

	"github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/constants"
	"github.com/siderolabs/talos/pkg/machinery/resources/k8s"
)

// controlPlaneConfig is a component's config resource, rendered from the machine config with
// the fields the twin runs the component from.
func controlPlaneConfig(provider config.Provider, address, component string) resource.Resource {
	cluster := provider.Cluster()

	switch component {
	case k8s.APIServerID:
		res := k8s.NewAPIServerConfig()
		*res.TypedSpec() = k8s.APIServerConfigSpec{
			Image:                cluster.APIServer().Image(),
			ControlPlaneEndpoint: cluster.Endpoint().String(),
			EtcdServers:          []string{"https://" + net.JoinHostPort("localhost", etcdClientPort)},
			LocalPort:            cluster.LocalAPIServerPort(),
			ServiceCIDRs:         cluster.Network().ServiceCIDRs(),
			ExtraArgs:            cluster.APIServer().ExtraArgs(),
			EnvironmentVariables: cluster.APIServer().Env(),
			AdvertisedAddress:    address,
		}

		return res
	case k8s.ControllerManagerID:
		res := k8s.NewControllerManagerConfig()
		*res.TypedSpec() = k8s.ControllerManagerConfigSpec{
			Enabled:              true,
			Image:                cluster.ControllerManager().Image(),
			PodCIDRs:             cluster.Network().PodCIDRs(),
			ServiceCIDRs:         cluster.Network().ServiceCIDRs(),
			ExtraArgs:            cluster.ControllerManager().ExtraArgs(),
			EnvironmentVariables: cluster.ControllerManager().Env(),
		}

		return res
	default:
		res := k8s.NewSchedulerConfig()
		*res.TypedSpec() = k8s.SchedulerConfigSpec{
			Enabled:              true,
			Image:                cluster.Scheduler().Image(),
			ExtraArgs:            cluster.Scheduler().ExtraArgs(),
			EnvironmentVariables: cluster.Scheduler().Env(),
		}

		return res
	}
}

// publishConfigs records each component's config resource and the Manifests, as Talos's
// controllers render them from the config the moment it changes, and returns the components'
// versions.
func publishConfigs(ctx context.Context, resources state.State, provider config.Provider, address string) (map[string]string, error) {
	versions := map[string]string{}

	for _, component := range []string{k8s.APIServerID, k8s.ControllerManagerID, k8s.SchedulerID} {
		configResource := controlPlaneConfig(provider, address, component)
		if err := putResource(ctx, resources, configResource); err != nil {
			return nil, err
		}

		published, err := resources.Get(ctx, configResource.Metadata())
		if err != nil {
			return nil, err
		}

		versions[component] = published.Metadata().Version().String()
	}

	return versions, publishManifests(ctx, resources, provider)
}

// publish records the config resources and the StaticPod of each component as it runs, and
// returns the config version each static pod carries.
func (cp *controlPlane) publish(ctx context.Context, resources state.State, provider config.Provider) (map[string]string, error) {
	versions, err := publishConfigs(ctx, resources, provider, cp.address)
	if err != nil {
		return nil, err
	}

	for _, pod := range cp.current() {
		static := k8s.NewStaticPod(k8s.NamespaceName, pod.component)
		static.TypedSpec().Pod = pod.manifest(versions[pod.component])

		if err = putResource(ctx, resources, static); err != nil {
			return nil, err
		}
	}

	return versions, nil
}

// manifest is the pod Talos writes for the kubelet: the component's image and flags, its
// labels (the version the image's tag names among them) and the config version annotated.
func (p *staticPod) manifest(configVersion string) map[string]any {
	return map[string]any{
		"apiVersion": "v1",
		"kind":       "Pod",
		"metadata": map[string]any{
			"name":        p.component,
			"namespace":   "kube-system",
			"annotations": map[string]any{constants.AnnotationStaticPodConfigVersion: configVersion},
			"labels":      toAny(p.labels()),
		},
		"spec": map[string]any{
			"hostNetwork":       true,
			"priorityClassName": "system-cluster-critical",
			"containers": []any{map[string]any{
				"name":    p.component,
				"image":   p.image,
				"command": toAnySlice(append([]string{"/usr/local/bin/" + p.component}, p.args...)),
			}},
		},
	}
}

// labels are the static pod's, as Talos sets them: upgrade-k8s finds a component's pods by
// `k8s-app`; the version is the image tag's, read as Talos reads it.
func (p *staticPod) labels() map[string]string {
	return map[string]string{
		"tier": "control-plane", "k8s-app": p.component, "component": p.component,
		"app.kubernetes.io/name": p.component, "app.kubernetes.io/component": "control-plane",
		"app.kubernetes.io/managed-by": "Talos",
		"app.kubernetes.io/version":    compatibility.VersionFromImageRef(p.image).String(),
	}
}

func toAny(values map[string]string) map[string]any {
	converted := make(map[string]any, len(values))
	for key, value := range values {
		converted[key] = value
	}

	return converted
}

func toAnySlice(values []string) []any {
	converted := make([]any, len(values))
	for i, value := range values {
		converted[i] = value
	}

	return converted
}
