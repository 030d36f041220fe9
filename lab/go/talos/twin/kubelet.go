package main

// The kubelet's side of a configured machine, as far as the control plane can see it. Talos
// starts the kubelet with a bootstrap kubeconfig holding the config's cluster token; the
// kubelet asks for its client certificate with a CertificateSigningRequest the controller
// manager approves (the bootstrap RBAC Talos deploys allows it), then registers its Node, with
// the control-plane taint on control planes (internal/app/machined/pkg/controllers/k8s/
// kubelet_spec.go). With `rotate-server-certificates` it also asks for a serving certificate,
// which the approver the config ships approves.
//
// Talos then labels a control plane's Node with its own admin credentials
// (k8s/node_apply.go, k8s/node_label_spec.go).
//
// What no twin can do is run containers. Once its Node is registered, each twin runs kwok for
// that Node alone, with the kubelet's own credentials: kwok is the stand-in for the kubelet's
// container side. It keeps the Node Ready (its status and its Lease), and runs the pods
// scheduled to it as fakes, with addresses from the Node's pod range. A machine that goes
// down takes its kwok with it, so its Node goes NotReady as a real one would.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/cert"
	"k8s.io/client-go/util/certificate/csr"

	"github.com/cosi-project/runtime/pkg/state"
	talosx509 "github.com/siderolabs/crypto/x509"

	"github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/constants"
	"github.com/siderolabs/talos/pkg/machinery/resources/k8s"
	"github.com/siderolabs/talos/pkg/machinery/resources/runtime"
	"github.com/siderolabs/talos/pkg/machinery/version"
)

type kubelet struct {
	config   config.Provider
	address  string
	hostname string
	dir      string
	// kwok and the stages it plays (written by the lab).
	kwokBinary string
	kwokConfig string
	// A control plane's static pods (nil on a worker).
	controlPlane *controlPlane

	// The machine's resources: the kubelet-csr diagnostic and the static pods' status.
	resources state.State
	// This boot's ID (the kernel makes a new one on every boot).
	bootID string

	mu      sync.Mutex
	runtime *service
	// The kubelet image it runs as (machine.kubelet.image; it changes with a restart).
	image string
}

// restConfig is a client of the local endpoint (KubePrism) trusting the cluster CA.
func (k *kubelet) restConfig(certPEM, keyPEM []byte) *rest.Config {
	return &rest.Config{
		Host:    localEndpoint(k.config),
		Timeout: 10 * time.Second,
		TLSClientConfig: rest.TLSClientConfig{
			CAData:   caBundle(k.config.Cluster()),
			CertData: certPEM,
			KeyData:  keyPEM,
		},
	}
}

// admin is the control plane's own admin client config (CN talos:admin, O system:masters), as
// machined's local admin kubeconfig (secrets/kubernetes.go).
func (k *kubelet) admin() (*rest.Config, error) {
	ca, err := talosx509.NewCertificateAuthorityFromCertificateAndKey(k.config.Cluster().IssuingCA())
	if err != nil {
		return nil, err
	}

	pair, err := talosx509.NewKeyPair(ca,
		talosx509.CommonName(constants.KubernetesTalosAdminCertCommonName),
		talosx509.Organization(constants.KubernetesAdminCertOrganization),
		talosx509.ExtKeyUsage([]x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}),
		talosx509.NotAfter(time.Now().Add(certLifetime)),
	)
	if err != nil {
		return nil, err
	}

	return k.restConfig(pair.CrtPEM, pair.KeyPEM), nil
}

// run bootstraps the kubelet's credentials, registers the Node and, when asked to, files the
// serving-certificate request; each step is retried until it works or the machine stops.
func (k *kubelet) run(ctx context.Context) {
	for _, step := range []struct {
		what string
		do   func(context.Context) error
	}{
		{"spec", func(ctx context.Context) error {
			_, err := k.publishSpec(ctx, k.config)

			return err
		}},
		{"client certificate (TLS bootstrap)", k.bootstrapCredentials},
		{"node registration", k.register},
		{"serving certificate request", k.requestServingCertificate},
		{"container runtime stand-in (kwok)", k.startRuntime},
		{"static pods", k.mirrorStaticPods},
	} {
		for {
			err := step.do(ctx)
			if err == nil {
				break
			}

			if ctx.Err() != nil {
				return
			}

			log.Printf("kubelet: %s: %v", step.what, err)
			time.Sleep(3 * time.Second)
		}
	}

	go k.syncStatuses(ctx)
	go k.keepMirrors(ctx)
	k.reportServingCertificate(ctx)
}

// ready: the kubelet runs (its pods do, through kwok).
func (k *kubelet) ready() bool {
	k.mu.Lock()
	defer k.mu.Unlock()

	return k.runtime != nil && k.runtime.running()
}

// mirrorStaticPods: a control plane's kubelet runs kube-apiserver, kube-controller-manager and
// kube-scheduler as static pods and mirrors each into the API as a pod of kube-system bound to
// its Node (what `kubectl get pods -n kube-system`, health's control-plane checks and
// upgrade-k8s see), and machined records their status (k8s/static_pod_status.go). The twin
// runs them as services (controlplane.go); these pods are their mirrors, run by kwok.
func (k *kubelet) mirrorStaticPods(ctx context.Context) error {
	return k.syncStaticPods(ctx, k.config)
}

// syncStaticPods publishes the static pods `provider` asks for and brings each mirror pod in
// line with its static pod: a changed pod's mirror is replaced, as the kubelet replaces the pod.
func (k *kubelet) syncStaticPods(ctx context.Context, provider config.Provider) error {
	if k.controlPlane == nil {
		return nil
	}

	versions, err := k.controlPlane.publish(ctx, k.resources, provider)
	if err != nil {
		return err
	}

	client, node, err := k.ownNode(ctx)
	if err != nil {
		return err
	}

	for _, pod := range k.controlPlane.current() {
		podName := pod.component + "-" + k.hostname
		status := map[string]any{
			"phase":      "Running",
			"conditions": []any{map[string]any{"type": "Ready", "status": "True"}},
		}

		// An image that cannot be pulled leaves the static pod waiting, its container never
		// started (the kubelet's ErrImagePull). The box makes no mirror pod for it: kwok would
		// mark one running, which it is not.
		if pod.pullErr != nil {
			status = map[string]any{
				"phase":      "Pending",
				"conditions": []any{map[string]any{"type": "Ready", "status": "False"}},
				"containerStatuses": []any{map[string]any{
					"name": pod.component, "image": pod.image, "ready": false,
					"state": map[string]any{"waiting": map[string]any{"reason": "ErrImagePull", "message": pod.pullErr.Error()}},
				}},
			}

			err = k.dropMirror(ctx, client, podName)
		} else {
			err = k.mirror(ctx, client, node, podName, pod, versions[pod.component])
		}

		if err != nil {
			return err
		}

		podStatus := k8s.NewStaticPodStatus(k8s.NamespaceName, "kube-system/"+podName)
		podStatus.TypedSpec().PodStatus = status

		if err = putResource(ctx, k.resources, podStatus); err != nil {
			return err
		}
	}

	return nil
}

// mirror makes the mirror pod `podName` of a static pod, bound to its Node, carrying the
// static pod's labels and config version; one that mirrors an older manifest is replaced.
func (k *kubelet) mirror(ctx context.Context, client *kubernetes.Clientset, node *corev1.Node, podName string, pod *staticPod, configVersion string) error {
	mirror := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:      podName,
			Namespace: "kube-system",
			Labels:    pod.labels(),
			Annotations: map[string]string{
				"kubernetes.io/config.mirror": podName, "kubernetes.io/config.hash": podName, "kubernetes.io/config.source": "file",
				constants.AnnotationStaticPodConfigVersion: configVersion,
			},
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: "v1", Kind: "Node", Name: node.Name, UID: node.UID, Controller: ptr(true),
			}},
		},
		Spec: corev1.PodSpec{
			NodeName:          k.hostname,
			HostNetwork:       true,
			PriorityClassName: "system-cluster-critical",
			Containers:        []corev1.Container{{Name: pod.component, Image: pod.image}},
			Tolerations:       []corev1.Toleration{{Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute}},
		},
	}

	current, err := client.CoreV1().Pods("kube-system").Get(ctx, podName, metav1.GetOptions{})
	if err == nil && current.Annotations[constants.AnnotationStaticPodConfigVersion] == configVersion &&
		len(current.Spec.Containers) == 1 && current.Spec.Containers[0].Image == pod.image {
		return nil
	}

	if err == nil {
		if err = k.dropMirror(ctx, client, podName); err != nil {
			return err
		}
	} else if !apierrors.IsNotFound(err) {
		return err
	}

	// An AlreadyExists here is the old mirror not gone yet, or another pass's new one: the
	// caller's next pass looks again (it must not count as done).
	if _, err = client.CoreV1().Pods("kube-system").Create(ctx, mirror, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("mirror pod %s: %w", podName, err)
	}

	log.Printf("kubelet: mirror pod %s at config version %s", podName, configVersion)

	return nil
}

// mirrorCheckPeriod is how often the kubelet makes sure each static pod has its mirror pod.
const mirrorCheckPeriod = 10 * time.Second

// keepMirrors makes a static pod's mirror pod again when it is missing, as the kubelet's pod
// sync does (kubernetes pkg/kubelet/kubelet.go, SyncPod: "Create Mirror Pod for Static Pod if
// it doesn't already exist"): a mirror deleted by a person, or lost between its deletion and
// the creation of its successor, comes back with the static pod's config version.
func (k *kubelet) keepMirrors(ctx context.Context) {
	if k.controlPlane == nil {
		return
	}

	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(mirrorCheckPeriod):
		}

		client, node, err := k.ownNode(ctx)
		if err != nil {
			continue
		}

		for _, pod := range k.controlPlane.current() {
			// A pod whose image could not be pulled has no mirror to keep (syncStaticPods).
			if pod.pullErr != nil {
				continue
			}

			podName := pod.component + "-" + k.hostname
			if _, err = client.CoreV1().Pods("kube-system").Get(ctx, podName, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				continue
			}

			published, err := k.resources.Get(ctx, k8s.NewStaticPod(k8s.NamespaceName, pod.component).Metadata())
			if err != nil {
				continue
			}

			static, ok := published.(*k8s.StaticPod)
			if !ok {
				continue
			}

			log.Printf("kubelet: mirror pod %s is missing; making it again", podName)

			if err = k.mirror(ctx, client, node, podName, pod, configVersionOf(static)); err != nil {
				log.Printf("kubelet: %v", err)
			}
		}
	}
}

// configVersionOf is the config version a StaticPod resource's pod is annotated with.
func configVersionOf(static *k8s.StaticPod) string {
	metadata, _ := static.TypedSpec().Pod["metadata"].(map[string]any) //nolint:errcheck // absent: no version
	annotations, _ := metadata["annotations"].(map[string]any)         //nolint:errcheck
	version, _ := annotations[constants.AnnotationStaticPodConfigVersion].(string)

	return version
}

// dropMirror deletes a mirror pod at once, as the kubelet does when its static pod goes.
func (k *kubelet) dropMirror(ctx context.Context, client *kubernetes.Clientset, podName string) error {
	err := client.CoreV1().Pods("kube-system").Delete(ctx, podName, metav1.DeleteOptions{GracePeriodSeconds: ptr(int64(0))})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("mirror pod %s: %w", podName, err)
	}

	return nil
}

// reportServingCertificate keeps the "kubelet-csr" diagnostic while this kubelet's serving
// certificate request waits for approval, as Talos does
// (runtime/internal/diagnostics/kubelet_csr_not_approved.go; Talos first sees the kubelet's
// API fail its TLS handshake, which the twin has no kubelet API to show).
func (k *kubelet) reportServingCertificate(ctx context.Context) {
	if !k.rotatesServingCertificate() {
		return
	}

	for ctx.Err() == nil {
		pending, err := k.pendingServingRequests(ctx)
		if err == nil {
			k.setDiagnostic(ctx, pending)
		}

		select {
		case <-ctx.Done():
		case <-time.After(3 * time.Second):
		}
	}
}

func (k *kubelet) pendingServingRequests(ctx context.Context) ([]string, error) {
	client, err := k.client()
	if err != nil {
		return nil, err
	}

	requests, err := client.CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{
		FieldSelector: "spec.signerName=" + certificatesv1.KubeletServingSignerName,
	})
	if err != nil {
		return nil, err
	}

	var pending []string

	for _, request := range requests.Items {
		approved := false
		for _, condition := range request.Status.Conditions {
			approved = approved || condition.Type == certificatesv1.CertificateApproved
		}

		if request.Spec.Username == "system:node:"+k.hostname && !approved {
			pending = append(pending, request.Name)
		}
	}

	return pending, nil
}

func (k *kubelet) setDiagnostic(ctx context.Context, pending []string) {
	diagnostic := runtime.NewDiagnostic(runtime.NamespaceName, "kubelet-csr")
	if len(pending) == 0 {
		_ = k.resources.Destroy(ctx, diagnostic.Metadata()) //nolint:errcheck

		return
	}

	diagnostic.TypedSpec().Message = "kubelet server certificate rotation is enabled, but CSR is not approved"
	diagnostic.TypedSpec().Details = []string{"pending CSRs: " + strings.Join(pending, ", ")}

	_ = putResource(ctx, k.resources, diagnostic) //nolint:errcheck
}

func (k *kubelet) rotatesServingCertificate() bool {
	return strings.EqualFold(k.config.Machine().Kubelet().ExtraArgs()["rotate-server-certificates"], "true")
}

func ptr[T any](value T) *T { return &value }

func (k *kubelet) credentials() (certPEM, keyPEM []byte, err error) {
	if certPEM, err = os.ReadFile(filepath.Join(k.dir, "kubelet.crt")); err != nil {
		return nil, nil, err
	}

	keyPEM, err = os.ReadFile(filepath.Join(k.dir, "kubelet.key"))

	return certPEM, keyPEM, err
}

func (k *kubelet) client() (*kubernetes.Clientset, error) {
	certPEM, keyPEM, err := k.credentials()
	if err != nil {
		return nil, err
	}

	return kubernetes.NewForConfig(k.restConfig(certPEM, keyPEM))
}

// ownNode is this kubelet's client and its Node as the API has it.
func (k *kubelet) ownNode(ctx context.Context) (*kubernetes.Clientset, *corev1.Node, error) {
	client, err := k.client()
	if err != nil {
		return nil, nil, err
	}

	node, err := client.CoreV1().Nodes().Get(ctx, k.hostname, metav1.GetOptions{})

	return client, node, err
}

// bootstrapCredentials: with the cluster token, ask for a client certificate for
// system:node:<hostname> and wait for the controller manager to sign it.
func (k *kubelet) bootstrapCredentials(ctx context.Context) error {
	if _, _, err := k.credentials(); err == nil {
		return nil
	}

	token := k.config.Cluster().Token()
	bootstrap := k.restConfig(nil, nil)
	bootstrap.BearerToken = token.ID() + "." + token.Secret()

	client, err := kubernetes.NewForConfig(bootstrap)
	if err != nil {
		return err
	}

	key, keyPEM, err := newKey()
	if err != nil {
		return err
	}

	request, err := cert.MakeCSR(key, &pkix.Name{CommonName: "system:node:" + k.hostname, Organization: []string{"system:nodes"}}, nil, nil)
	if err != nil {
		return err
	}

	usages := []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageClientAuth}

	name, uid, err := csr.RequestCertificateWithContext(ctx, client, request, "", certificatesv1.KubeAPIServerClientKubeletSignerName, nil, usages, key)
	if err != nil {
		return err
	}

	waitCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()

	certPEM, err := csr.WaitForCertificate(waitCtx, client, name, uid)
	if err != nil {
		return err
	}

	if err = os.WriteFile(filepath.Join(k.dir, "kubelet.key"), keyPEM, 0o600); err != nil {
		return err
	}

	log.Printf("kubelet: client certificate for system:node:%s signed (%s)", k.hostname, name)

	return os.WriteFile(filepath.Join(k.dir, "kubelet.crt"), certPEM, 0o600)
}

// register creates the Node as the kubelet does, then, on a control plane, labels it with the
// machine's admin credentials as Talos does.
func (k *kubelet) register(ctx context.Context) error {
	client, err := k.client()
	if err != nil {
		return err
	}

	controlPlane := k.config.Machine().Type().IsControlPlane()

	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: k.hostname,
			Labels: map[string]string{
				"kubernetes.io/hostname": k.hostname, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
				"beta.kubernetes.io/os": "linux", "beta.kubernetes.io/arch": "amd64",
			},
		},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: k.address},
			{Type: corev1.NodeHostName, Address: k.hostname},
		}},
	}
	if controlPlane && !k.config.Cluster().ScheduleOnControlPlanes() {
		node.Spec.Taints = []corev1.Taint{{Key: constants.LabelNodeRoleControlPlane, Effect: corev1.TaintEffectNoSchedule}}
	}

	if _, err = client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}

	// Each boot has its own boot ID, which the kubelet reports (/proc/sys/kernel/random/boot_id):
	// how a client tells a rebooted node from one that never went away; the OS image, the
	// PRETTY_NAME of the release's /etc/os-release (version/osrelease.go: "Talos (v1.12.1)"),
	// which a new release changes; and the kubelet's version (kubeletVersion: a label in the
	// box). kwok keeps all three.
	k.mu.Lock()
	image := k.image
	k.mu.Unlock()

	nodeInfo := fmt.Sprintf(`{"status":{"nodeInfo":{"bootID":%q,"osImage":%q,"kubeletVersion":%q}}}`,
		k.bootID, fmt.Sprintf("%s (%s)", version.Name, version.Tag), kubeletVersion(image))
	if _, err = client.CoreV1().Nodes().PatchStatus(ctx, k.hostname, []byte(nodeInfo)); err != nil {
		return err
	}

	if !controlPlane {
		return nil
	}

	adminConfig, err := k.admin()
	if err != nil {
		return err
	}

	admin, err := kubernetes.NewForConfig(adminConfig)
	if err != nil {
		return err
	}

	patch := fmt.Sprintf(`{"metadata":{"labels":{%q:""}}}`, constants.LabelNodeRoleControlPlane)
	_, err = admin.CoreV1().Nodes().Patch(ctx, k.hostname, "application/merge-patch+json", []byte(patch), metav1.PatchOptions{})

	return err
}

// requestServingCertificate files the kubelet-serving CSR when the config turns on
// `rotate-server-certificates`, as the kubelet does; it does not wait: the approver decides.
func (k *kubelet) requestServingCertificate(ctx context.Context) error {
	if !k.rotatesServingCertificate() {
		return nil
	}

	client, err := k.client()
	if err != nil {
		return err
	}

	existing, err := client.CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}

	for _, request := range existing.Items {
		if request.Spec.SignerName == certificatesv1.KubeletServingSignerName && request.Spec.Username == "system:node:"+k.hostname {
			return nil
		}
	}

	key, _, err := newKey()
	if err != nil {
		return err
	}

	request, err := cert.MakeCSR(key, &pkix.Name{CommonName: "system:node:" + k.hostname, Organization: []string{"system:nodes"}},
		[]string{k.hostname}, []net.IP{net.ParseIP(k.address)})
	if err != nil {
		return err
	}

	usages := []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageServerAuth}
	name, _, err := csr.RequestCertificateWithContext(ctx, client, request, "", certificatesv1.KubeletServingSignerName, nil, usages, key)

	if err == nil {
		log.Printf("kubelet: serving certificate requested (%s)", name)
	}

	return err
}

// startRuntime runs kwok for this Node once the controller manager gave it a pod range.
func (k *kubelet) startRuntime(ctx context.Context) error {
	client, node, err := k.ownNode(ctx)
	if err != nil {
		return err
	}

	if node.Spec.PodCIDR == "" {
		return fmt.Errorf("node %s has no pod range yet", k.hostname)
	}

	// A kubelet renews its Node's Lease whoever renewed it last. kwok takes the Lease under a
	// fresh identity each start and waits out the previous holder's 40 s, which would keep a
	// rebooted machine NotReady for that long: the stand-in starts from no Lease instead.
	err = client.CoordinationV1().Leases(corev1.NamespaceNodeLease).Delete(ctx, k.hostname, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return err
	}

	kubeconfig := filepath.Join(k.dir, "kubelet.kubeconfig")
	text := fmt.Sprintf("apiVersion: v1\nkind: Config\nclusters:\n- name: cluster\n  cluster:\n    server: %s\n"+
		"    certificate-authority-data: %s\nusers:\n- name: kubelet\n  user:\n    client-certificate: %s\n"+
		"    client-key: %s\ncontexts:\n- name: kubelet\n  context:\n    cluster: cluster\n    user: kubelet\n"+
		"current-context: kubelet\n",
		localEndpoint(k.config), base64.StdEncoding.EncodeToString(caBundle(k.config.Cluster())),
		filepath.Join(k.dir, "kubelet.crt"), filepath.Join(k.dir, "kubelet.key"))

	if err = os.WriteFile(kubeconfig, []byte(text), 0o600); err != nil {
		return err
	}

	runtime := newService("kwok", k.kwokBinary, k.dir, []string{
		"--kubeconfig=" + kubeconfig,
		"--config=" + k.kwokConfig,
		"--manage-single-node=" + k.hostname,
		"--node-ip=" + k.address,
		"--cidr=" + node.Spec.PodCIDR,
	})

	k.mu.Lock()
	defer k.mu.Unlock()

	k.runtime = runtime

	return runtime.start()
}

// stopRuntime stops kwok with the machine.
func (k *kubelet) stopRuntime() {
	k.mu.Lock()
	runtime := k.runtime
	k.mu.Unlock()

	if runtime != nil {
		runtime.stop()
	}
}

func newKey() (*ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}

	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, err
	}

	return key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), nil
}

// shutdownGracefully is the kubelet's graceful node shutdown, which Talos's reboot starts
// before it stops the kubelet (runtime/v1alpha1/v1alpha1_sequencer.go, Reboot: "cleanup",
// StopAllPods; v1alpha1_sequencer_tasks.go: "shutting down kubelet gracefully", through the
// logind inhibitor lock the kubelet holds). The kubelet then (kubernetes
// pkg/kubelet/nodeshutdown/nodeshutdown_manager_linux.go) reports its Node not ready ("node is
// shutting down") and terminates its pods within shutdownGracePeriod (Talos sets 30 s, 10 s of
// it for critical pods: constants.KubeletShutdownGracePeriod), each left Failed with reason
// Terminated, so their controllers replace them on the other nodes.
//
// The twin's pods are kwok's fakes, which stop at once; a real kubelet spends seconds in that
// grace period, while the node lifecycle controller taints the not-ready Node so nothing new is
// scheduled there. The twin waits for that taint (at most the grace period) before it
// terminates the pods, so replacements are not placed on the machine going down.
func (k *kubelet) shutdownGracefully(ctx context.Context) {
	k.stopRuntime()

	ctx, cancel := context.WithTimeout(ctx, constants.KubeletShutdownGracePeriod)
	defer cancel()

	client, node, err := k.ownNode(ctx)
	if err != nil {
		log.Printf("kubelet: graceful shutdown: %v", err)

		return
	}

	now := metav1.Now()

	for index, condition := range node.Status.Conditions {
		if condition.Type == corev1.NodeReady {
			node.Status.Conditions[index] = corev1.NodeCondition{
				Type: corev1.NodeReady, Status: corev1.ConditionFalse, Reason: "KubeletNotReady",
				Message: "node is shutting down", LastHeartbeatTime: now, LastTransitionTime: now,
			}
		}
	}

	if _, err = client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		log.Printf("kubelet: graceful shutdown: reporting the node not ready: %v", err)
	}

	for ctx.Err() == nil && !k.tainted(ctx, client, corev1.TaintNodeNotReady) {
		time.Sleep(250 * time.Millisecond)
	}

	pods, err := client.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + k.hostname})
	if err != nil {
		log.Printf("kubelet: graceful shutdown: listing its pods: %v", err)

		return
	}

	terminated := 0

	for _, pod := range pods.Items {
		_, mirror := pod.Annotations[corev1.MirrorPodAnnotationKey]
		if mirror || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
			continue // a static pod's mirror comes back with the machine
		}

		pod.Status.Phase = corev1.PodFailed
		pod.Status.Reason = "Terminated"
		pod.Status.Message = "Pod was terminated in response to imminent node shutdown."
		pod.Status.Conditions = append(pod.Status.Conditions, corev1.PodCondition{
			Type: corev1.DisruptionTarget, Status: corev1.ConditionTrue, Reason: "TerminationByKubelet",
			Message: "Pod was terminated in response to imminent node shutdown.", LastTransitionTime: now,
		})

		for index := range pod.Status.Conditions {
			if pod.Status.Conditions[index].Type == corev1.PodReady || pod.Status.Conditions[index].Type == corev1.ContainersReady {
				pod.Status.Conditions[index].Status = corev1.ConditionFalse
			}
		}

		if _, err = client.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, &pod, metav1.UpdateOptions{}); err != nil {
			log.Printf("kubelet: graceful shutdown: terminating %s/%s: %v", pod.Namespace, pod.Name, err)

			continue
		}

		terminated++
	}

	log.Printf("kubelet: graceful shutdown: node not ready, %d pod(s) terminated", terminated)
}

// tainted says whether this Node carries the taint key now.
func (k *kubelet) tainted(ctx context.Context, client *kubernetes.Clientset, key string) bool {
	node, err := client.CoreV1().Nodes().Get(ctx, k.hostname, metav1.GetOptions{})
	if err != nil {
		return false
	}

	for _, taint := range node.Spec.Taints {
		if taint.Key == key {
			return true
		}
	}

	return false
}

// readyWithin is how long a replaced static pod may take to answer before its mirror is made
// anyway (then it shows the pod as it is: the kubelet's probes would mark it).
const readyWithin = 2 * time.Minute

// waitReady waits until a static pod's process answers on its own port, as the kubelet's
// probes ask: the API server's /readyz (asked with the machine's admin credentials, since it
// refuses anonymous requests), the controller-manager's and scheduler's /healthz on their
// secure ports (10257, 10259), which they serve to anyone.
func (k *kubelet) waitReady(ctx context.Context, pod *staticPod) {
	if pod.service == nil {
		return
	}

	client, err := k.probeClient(pod.component)
	if err != nil {
		log.Printf("kubelet: probing %s: %v", pod.component, err)

		return
	}

	deadline := time.Now().Add(readyWithin)
	for ctx.Err() == nil && time.Now().Before(deadline) {
		if response, err := client.Get(probeURL(pod.component, k.config.Cluster().LocalAPIServerPort())); err == nil {
			response.Body.Close() //nolint:errcheck

			if response.StatusCode == http.StatusOK {
				return
			}
		}

		time.Sleep(time.Second)
	}

	log.Printf("kubelet: %s did not answer ready within %s", pod.component, readyWithin)
}

func probeURL(component string, apiServerPort int) string {
	switch component {
	case "kube-apiserver":
		return fmt.Sprintf("https://localhost:%d/readyz", apiServerPort)
	case "kube-controller-manager":
		return "https://127.0.0.1:10257/healthz"
	default:
		return "https://127.0.0.1:10259/healthz"
	}
}

// probeClient asks a component on this machine: the API server with the admin's client
// certificate, trusting the cluster CA; the others without credentials (their serving
// certificates are self-signed, which the kubelet's probes do not check either).
func (k *kubelet) probeClient(component string) (*http.Client, error) {
	if component != "kube-apiserver" {
		return &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // a probe, as the kubelet's
		}}, nil
	}

	admin, err := k.admin()
	if err != nil {
		return nil, err
	}

	transport, err := rest.TransportFor(admin)
	if err != nil {
		return nil, err
	}

	return &http.Client{Timeout: 3 * time.Second, Transport: transport}, nil
}
