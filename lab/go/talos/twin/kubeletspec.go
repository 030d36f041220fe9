package main

// The kubelet as Talos configures it: the KubeletSpec resource (k8s namespace, ID `kubelet`)
// rendered from `machine.kubelet` (internal/app/machined/pkg/controllers/k8s/kubelet_spec.go),
// and the kubelet service restarted whenever that spec changes (kubelet_service.go): the
// `kubelet` Service resource goes away and comes back running and healthy. `talosctl
// upgrade-k8s` reads the spec (its image, to keep the suffix; its flags, for those the next
// release removes) and waits for exactly that restart after it patches the image.

import (
	"context"
	"log"

	"github.com/cosi-project/runtime/pkg/state"
	"github.com/google/go-containerregistry/pkg/name"

	"github.com/siderolabs/talos/pkg/argsbuilder"
	"github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/constants"
	"github.com/siderolabs/talos/pkg/machinery/resources/k8s"
)

// kubeletSpec is the spec Talos renders for the kubelet: its image, and its flags (Talos's own,
// then `machine.kubelet.extraArgs`, which may not replace the ones naming Talos's files). The
// kubelet's configuration file (`config`) is not rendered: kwok plays the kubelet.
func kubeletSpec(provider config.Provider, nodename string) (*k8s.KubeletSpec, error) {
	args := argsbuilder.Args{
		"config":               "/etc/kubernetes/kubelet.yaml",
		"cert-dir":             constants.KubeletPKIDir,
		"hostname-override":    nodename,
		"bootstrap-kubeconfig": constants.KubeletBootstrapKubeconfig,
		"kubeconfig":           constants.KubeletKubeconfig,
	}

	denied := argsbuilder.MergePolicies{}
	for _, flag := range []string{"bootstrap-kubeconfig", "kubeconfig", "container-runtime", "container-runtime-endpoint", "config", "cert-dir"} {
		denied[flag] = argsbuilder.MergeDenied
	}

	kubelet := provider.Machine().Kubelet()
	if err := args.Merge(argsbuilder.Args(kubelet.ExtraArgs()), argsbuilder.WithMergePolicies(denied)); err != nil {
		return nil, err
	}

	spec := k8s.NewKubeletSpec(k8s.NamespaceName, k8s.KubeletID)
	*spec.TypedSpec() = k8s.KubeletSpecSpec{Image: kubelet.Image(), Args: args.Args(), ExpectedNodename: nodename}

	return spec, nil
}

// publishSpec records the kubelet's spec for `provider`; true when it changed, which restarts
// the kubelet.
func (k *kubelet) publishSpec(ctx context.Context, provider config.Provider) (bool, error) {
	spec, err := kubeletSpec(provider, k.hostname)
	if err != nil {
		return false, err
	}

	before, err := k.resources.Get(ctx, spec.Metadata())
	if err != nil && !state.IsNotFoundError(err) {
		return false, err
	}

	if err = putResource(ctx, k.resources, spec); err != nil {
		return false, err
	}

	after, err := k.resources.Get(ctx, spec.Metadata())
	if err != nil {
		return false, err
	}

	return before != nil && !before.Metadata().Version().Equal(after.Metadata().Version()), nil
}

// kubeletVersion is the version the Node reports: the kubelet image's tag. A label in the box
// (kwok runs no kubelet; the real one compiles its version in).
func kubeletVersion(image string) string {
	ref, err := name.NewTag(image)
	if err != nil {
		return ""
	}

	return ref.TagStr()
}

// startAs starts the stopped kubelet again (kwok, its stand-in) as the release `image` names,
// which its Node then reports.
func (k *kubelet) startAs(ctx context.Context, image string) error {
	k.mu.Lock()
	k.image = image
	k.mu.Unlock()

	log.Printf("kubelet: restarting as %s", image)

	if err := k.register(ctx); err != nil {
		return err
	}

	return k.startRuntime(ctx)
}
