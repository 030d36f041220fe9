package main

// Envoy Gateway's controller in the box. It runs as upstream's Deployment runs it
// (install.yaml: `envoy-gateway server --config-path=/config/envoy-gateway.yaml`, its
// ConfigMap at /config, the Secret `envoy-gateway` at /certs, its namespace in
// ENVOY_GATEWAY_NAMESPACE), with the Kubernetes provider its config names: it watches the
// Gateway API objects, creates each Gateway's Envoy Deployment and LoadBalancer Service (kwok
// runs the pods; MetalLB's controller gives the Service its address) and reports the Gateway's
// status. Its paths are fixed (/certs for the xDS and webhook servers:
// internal/xds/runner/runner.go and internal/provider/kubernetes/kubernetes.go at v1.9.0), so
// the process is confined to a root of its own (chroot) that holds exactly what the pod's
// volumes would: the binary is built static for it.

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

const envoyGatewayNamespace = "envoy-gateway-system"

// envoyGatewayRoot fills the controller's root with what its pod mounts: the config from
// ConfigMap envoy-gateway-config, the control plane's certificates from Secret envoy-gateway
// (made first, as the release's certgen Job would, when kwok's stand-in of that Job made none)
// and a kubeconfig. It returns the root and the process's environment.
func (c *clusterServices) envoyGatewayRoot(ctx context.Context, client *kubernetes.Clientset, binary string) (string, []string, error) {
	root := filepath.Join(c.runDir, "envoy-gateway-root")
	if err := os.RemoveAll(root); err != nil {
		return "", nil, err
	}

	config, err := client.CoreV1().ConfigMaps(envoyGatewayNamespace).Get(ctx, "envoy-gateway-config", metav1.GetOptions{})
	if err != nil {
		return "", nil, fmt.Errorf("Envoy Gateway's config: %w", err)
	}

	secrets := client.CoreV1().Secrets(envoyGatewayNamespace)

	certs, err := secrets.Get(ctx, "envoy-gateway", metav1.GetOptions{})
	if err != nil {
		if err = c.certgen(binary); err != nil {
			return "", nil, err
		}

		if certs, err = secrets.Get(ctx, "envoy-gateway", metav1.GetOptions{}); err != nil {
			return "", nil, fmt.Errorf("Secret envoy-gateway after certgen: %w", err)
		}
	}

	kubeconfig, err := os.ReadFile(c.kubeconfig)
	if err != nil {
		return "", nil, err
	}

	files := map[string][]byte{
		"config/envoy-gateway.yaml": []byte(config.Data["envoy-gateway.yaml"]),
		"kubeconfig":                kubeconfig,
	}
	for _, name := range []string{"tls.crt", "tls.key", "ca.crt"} {
		files["certs/"+name] = certs.Data[name]
	}

	for name, data := range files {
		if err = writeFile(filepath.Join(root, name), data); err != nil {
			return "", nil, err
		}
	}

	// The pod's emptyDir for Wasm modules, and a temporary directory.
	for _, dir := range []string{"var/lib/eg/wasm", "tmp"} {
		if err = os.MkdirAll(filepath.Join(root, dir), 0o700); err != nil {
			return "", nil, err
		}
	}

	env := []string{
		"KUBECONFIG=/kubeconfig", "ENVOY_GATEWAY_NAMESPACE=" + envoyGatewayNamespace,
		"KUBERNETES_CLUSTER_DOMAIN=cluster.local", "HOME=/tmp",
	}

	return root, env, nil
}

// certgen is the release's certgen Job: `envoy-gateway certgen` makes the control plane's
// certificates and stores them as Secrets (internal/cmd/certgen.go); it keeps Secrets that exist.
// The lab transform left the topology injector's webhook configuration out, so there is no
// caBundle to patch.
func (c *clusterServices) certgen(binary string) error {
	var out bytes.Buffer

	cmd := exec.Command(binary, "certgen", "--disable-topology-injector") //nolint:gosec // a build from the lab's own cache
	cmd.Env = []string{"KUBECONFIG=" + c.kubeconfig, "ENVOY_GATEWAY_NAMESPACE=" + envoyGatewayNamespace}
	cmd.Stdout, cmd.Stderr = &out, &out

	var err error

	c.box.do(func() { err = cmd.Start() })

	if err == nil {
		err = cmd.Wait()
	}

	if err != nil {
		return fmt.Errorf("envoy-gateway certgen: %w: %s", err, out.String())
	}

	return nil
}

func writeFile(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}

	return os.WriteFile(path, data, 0o600)
}
