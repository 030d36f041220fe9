package main

// The add-on controllers the box runs for real. kwok runs no containers, so an add-on's pods
// are fakes; where the box has a build of the controller's release, the workstation runs that
// build as a host process, in the workstation namespace, against the box's API server. It is
// the release the cluster runs: read from the image tag of the controller's Deployment, so an
// upgrade (a new tag) restarts the controller at the new release, and a release the box has no
// build for leaves the controller a stand-in until one exists (`cargo xtask lab build`).
//
// The builds live in the lab's binary cache as <component>-<release>/controller (the path
// `kit::lab::controller_binary` gives, and `lab build` writes).

import (
	"context"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/mod/semver"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// hostController is one add-on controller and the process running it.
type hostController struct {
	// The component's folder name in the cache (kit::artifacts::Component::dir); also the
	// name of its log and pid file, with "-controller".
	component string
	// The Deployment whose pods the controller stands for: its image tag is the release.
	namespace, deployment string
	// An API group version its CRDs serve: the controller starts once they exist.
	groupVersion string
	// The controller's arguments (given its Deployment and the release it runs), or ok=false
	// while it cannot start yet.
	args func(ctx context.Context, client *kubernetes.Clientset, deployment *appsv1.Deployment, release string) (args []string, ok bool)
	// prepare, when set, readies what the process needs before each start and returns its
	// environment, and the root it is confined to ("" for none): a root holds the files its
	// pod would mount, and the binary is put there as /<component>, the process chrooted.
	prepare func(ctx context.Context, client *kubernetes.Clientset, binary string) (root string, env []string, err error)

	process *exec.Cmd
	// The command line the running process was started with.
	commandLine []string
	// Closed when the process has exited.
	exited chan struct{}
}

// hostControllers: MetalLB's (stage 02), Traefik (stage 04), cert-manager's (stage 05) and
// Envoy Gateway's (stage 08).
func (c *clusterServices) hostControllers() []*hostController {
	return []*hostController{
		{
			component: "metallb", namespace: "metallb-system", deployment: "controller",
			groupVersion: "metallb.io/v1beta1", args: c.metallbArgs,
		},
		{
			component: "traefik", namespace: "traefik", deployment: "traefik",
			groupVersion: "traefik.io/v1alpha1", args: traefikArgs, prepare: c.traefikEnvironment,
		},
		{
			component: "cert-manager", namespace: "cert-manager", deployment: "cert-manager",
			groupVersion: "cert-manager.io/v1", args: c.certManagerArgs,
		},
		{
			component: "envoy-gateway", namespace: envoyGatewayNamespace, deployment: "envoy-gateway",
			groupVersion: "gateway.envoyproxy.io/v1alpha1", args: containerArgs, prepare: c.envoyGatewayRoot,
		},
	}
}

// metallbArgs: webhook off (the lab transform leaves MetalLB's webhook out), its memberlist
// Secret and Deployment as the manifest names them, metrics on the lab's port. From v0.16 the
// controller reads its own Pod at start (ConfigurationState objects name it as their owner)
// and exits when it is missing (metallb v0.16.1 controller/main.go, -pod-name, and
// internal/k8s/k8s.go): here that Pod is kwok's stand-in, and a new one (the Deployment rolled)
// restarts the controller.
func (c *clusterServices) metallbArgs(ctx context.Context, client *kubernetes.Clientset, _ *appsv1.Deployment, release string) ([]string, bool) {
	args := []string{
		"-kubeconfig=" + c.kubeconfig, "-namespace=metallb-system", "-webhook-mode=disabled",
		"-disable-cert-rotation=true", "-ml-secret-name=metallb-memberlist", "-deployment=controller",
		fmt.Sprintf("-port=%d", c.metallbPort),
	}

	if semver.Compare(release, "v0.16.0") < 0 {
		return args, true
	}

	pod := runningPod(ctx, client, "metallb-system", "app=metallb,component=controller")

	return append(args, "-pod-name="+pod), pod != ""
}

// certManagerArgs: talos-ha's main over cert-manager's packages (lab/go/cert-manager) needs
// only the cluster; ClusterIssuers keep their Secrets in cert-manager's namespace, as the
// manifest's --cluster-resource-namespace=$(POD_NAMESPACE) says. Its webhook and cainjector stay
// stand-ins: the lab transform leaves the webhook configurations out.
func (c *clusterServices) certManagerArgs(context.Context, *kubernetes.Clientset, *appsv1.Deployment, string) ([]string, bool) {
	return []string{"--kubeconfig=" + c.kubeconfig, "--cluster-resource-namespace=cert-manager"}, true
}

// containerArgs: the arguments the Deployment gives its container, as its pod runs them.
func containerArgs(_ context.Context, _ *kubernetes.Clientset, deployment *appsv1.Deployment, _ string) ([]string, bool) {
	return slices.Clone(deployment.Spec.Template.Spec.Containers[0].Args), true
}

// traefikArgs: the arguments stage 04's Deployment gives Traefik, its entry points moved by
// traefikPortShift. On a cluster each pod has a network namespace of its own; in the box every
// host controller shares the workstation's, where Envoy Gateway's controller-runtime metrics
// listener already holds :8080, Traefik's internal entry point (not configurable:
// internal/provider/kubernetes/kubernetes.go at v1.9.0 leaves controller-runtime's default).
// Nothing dials these ports in the box: no data path runs there.
func traefikArgs(ctx context.Context, client *kubernetes.Clientset, deployment *appsv1.Deployment, release string) ([]string, bool) {
	args, _ := containerArgs(ctx, client, deployment, release)
	for i, arg := range args {
		flag, address, found := strings.Cut(arg, "=")
		if !found || !strings.HasPrefix(flag, "--entryPoints.") || !strings.HasSuffix(flag, ".address") {
			continue
		}

		host, rest, _ := strings.Cut(address, ":")
		port, protocol, _ := strings.Cut(rest, "/")

		number, err := strconv.Atoi(port)
		if err != nil {
			return nil, false
		}

		args[i] = fmt.Sprintf("%s=%s:%d", flag, host, number+traefikPortShift)
		if protocol != "" {
			args[i] += "/" + protocol
		}
	}

	return args, true
}

// traefikPortShift is added to Traefik's entry point ports in the box: above the lab's own
// ports (API forwards from 16443 up) and Envoy Gateway's (18000-19001, 8081, 9443).
const traefikPortShift = 40000

// traefikEnvironment: Traefik has no kubeconfig flag; its Kubernetes providers read KUBECONFIG
// when KUBERNETES_SERVICE_HOST is unset (pkg/provider/kubernetes/crd/kubernetes.go at v3.7.9).
func (c *clusterServices) traefikEnvironment(context.Context, *kubernetes.Clientset, string) (string, []string, error) {
	return "", []string{"KUBECONFIG=" + c.kubeconfig, "HOME=" + c.runDir}, nil
}

// desired is the command line the controller should run with now, or nil: the add-on is not
// installed (or its CRDs are not served yet), its image tag is no release, or the box has no
// build of that release.
func (h *hostController) desired(ctx context.Context, client *kubernetes.Clientset, binaries string) []string {
	deployment, err := client.AppsV1().Deployments(h.namespace).Get(ctx, h.deployment, metav1.GetOptions{})
	if err != nil || deployment.DeletionTimestamp != nil || len(deployment.Spec.Template.Spec.Containers) == 0 {
		return nil
	}

	image := deployment.Spec.Template.Spec.Containers[0].Image
	release := image[strings.LastIndexByte(image, ':')+1:]

	if !semver.IsValid(release) {
		return nil
	}

	binary := filepath.Join(binaries, h.component+"-"+release, "controller")
	if _, err = os.Stat(binary); err != nil {
		return nil
	}

	served, err := client.Discovery().ServerResourcesForGroupVersion(h.groupVersion)
	if err != nil || served == nil {
		return nil
	}

	args, ok := h.args(ctx, client, deployment, release)
	if !ok {
		return nil
	}

	return append([]string{binary}, args...)
}

func (h *hostController) running() bool {
	if h.process == nil {
		return false
	}

	select {
	case <-h.exited:
		return false
	default:
		return true
	}
}

// reconcile starts, restarts or stops the controller so it runs what desired says.
func (h *hostController) reconcile(ctx context.Context, c *clusterServices, client *kubernetes.Clientset) error {
	want := h.desired(ctx, client, c.binaries)
	if h.running() && slices.Equal(want, h.commandLine) {
		return nil
	}

	if h.running() {
		log.Printf("%s controller: now %q (was %q)", h.component, want, h.commandLine)
		h.stop()
	}

	if want == nil {
		return nil
	}

	name := h.component + "-controller"

	logFile, err := os.OpenFile(filepath.Join(c.logDir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}

	cmd := exec.Command(want[0], want[1:]...) //nolint:gosec // a build from the lab's own cache
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}

	if h.prepare != nil {
		if cmd, err = h.prepared(ctx, client, want); err != nil {
			logFile.Close() //nolint:errcheck

			return fmt.Errorf("preparing %s: %w", name, err)
		}
	}

	cmd.Stdout, cmd.Stderr = logFile, logFile

	c.box.do(func() { err = cmd.Start() })

	if err != nil {
		logFile.Close() //nolint:errcheck

		return fmt.Errorf("starting %s: %w", name, err)
	}

	exited := make(chan struct{})
	h.process, h.commandLine, h.exited = cmd, want, exited

	go func() {
		cmd.Wait()      //nolint:errcheck
		logFile.Close() //nolint:errcheck
		close(exited)
	}()

	log.Printf("%s started (pid %d): %s", name, cmd.Process.Pid, want[0])

	return writePidFile(filepath.Join(c.runDir, name+".pid"), cmd.Process.Pid)
}

// prepared is the command for a controller with a prepare step: the environment prepare gave,
// and for one with a root of its own, the binary linked into that root and the process
// chrooted there.
func (h *hostController) prepared(ctx context.Context, client *kubernetes.Clientset, want []string) (*exec.Cmd, error) {
	root, env, err := h.prepare(ctx, client, want[0])
	if err != nil {
		return nil, err
	}

	if root == "" {
		cmd := exec.Command(want[0], want[1:]...) //nolint:gosec // a build from the lab's own cache
		cmd.Env = env
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}

		return cmd, nil
	}

	inside := "/" + h.component
	if err = linkOrCopy(want[0], filepath.Join(root, inside)); err != nil {
		return nil, err
	}

	cmd := exec.Command(inside, want[1:]...) //nolint:gosec // the build, inside its root
	cmd.Env, cmd.Dir = env, "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM, Chroot: root}

	return cmd, nil
}

// linkOrCopy puts a binary into a root: a hard link where both are on one file system, else a
// copy.
func linkOrCopy(from, to string) error {
	if os.Link(from, to) == nil {
		return nil
	}

	data, err := os.ReadFile(from)
	if err != nil {
		return err
	}

	return os.WriteFile(to, data, 0o700)
}

func (h *hostController) stop() {
	if h.running() {
		h.process.Process.Signal(syscall.SIGTERM) //nolint:errcheck
		<-h.exited
	}
}

// runningPod is the name of a running pod the selector matches, or "" (none yet, or the API did
// not answer: reconcile asks again in 2 s).
func runningPod(ctx context.Context, client *kubernetes.Clientset, namespace, selector string) string {
	pods, err := client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return ""
	}

	for _, pod := range pods.Items {
		if pod.DeletionTimestamp == nil && pod.Status.Phase == corev1.PodRunning {
			return pod.Name
		}
	}

	return ""
}
