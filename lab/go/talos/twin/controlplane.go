package main

// A configured control plane's Kubernetes control plane, run from its config alone as Talos
// runs it: kube-apiserver, kube-controller-manager and kube-scheduler, the real binaries the
// lab builds, with certificates from the config's CAs and the flags Talos derives from the
// config. On Talos they are static pods the kubelet runs; the twin runs them as its services.
//
//   - certificates: internal/app/machined/pkg/controllers/secrets/kubernetes_dynamic_certs.go
//     (the API server's serving and kubelet-client certificates, the front proxy's),
//     kubernetes_cert_sans.go (the serving certificate's names), etcd.go (the API server's
//     etcd client certificate), kubernetes.go (the controller-manager's and scheduler's
//     kubeconfigs, aimed at the local endpoint);
//   - config files: internal/app/machined/pkg/controllers/k8s/render_config_static_pods.go
//     and k8stemplates/apiserver.go (the encryption config);
//   - flags: internal/app/machined/pkg/controllers/k8s/control_plane_static_pod.go, with the
//     config's extraArgs merged by Talos's own argsbuilder;
//   - binaries: the build of the release each component's image names (`kubernetesImage`), as
//     the kubelet runs the image the static pod names.

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"log"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	talosx509 "github.com/siderolabs/crypto/x509"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/siderolabs/talos/pkg/argsbuilder"
	"github.com/siderolabs/talos/pkg/kubeconfig"
	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/config"
	configtypes "github.com/siderolabs/talos/pkg/machinery/config/config"
	"github.com/siderolabs/talos/pkg/machinery/constants"
)

// certLifetime is how long the control plane's own certificates last (Talos renews them
// before then: KubernetesCertificateValidityDuration).
const certLifetime = 365 * 24 * time.Hour

// staticPod is one control-plane component as Talos renders it for the kubelet
// (control_plane_static_pod.go): its image and its flags. The box runs the build the image
// names as a service; none when the image cannot be pulled.
type staticPod struct {
	component string
	image     string
	args      []string
	service   *service
	pullErr   error
}

// same: the kubelet leaves a static pod whose manifest did not change running as it is.
func (p *staticPod) same(other *staticPod) bool {
	return p.image == other.image && slices.Equal(p.args, other.args)
}

type controlPlane struct {
	imagesDir string
	address   string
	dir       string

	mu sync.Mutex
	// kube-apiserver, kube-controller-manager and kube-scheduler.
	pods []*staticPod
}

// localEndpoint is where this machine's own components reach the API: KubePrism when it is
// enabled, else the local API server (secrets/root.go).
func localEndpoint(provider config.Provider) string {
	if kubePrism := provider.Machine().Features().KubePrism(); kubePrism != nil && kubePrism.Enabled() {
		return fmt.Sprintf("https://127.0.0.1:%d", kubePrism.Port())
	}

	return fmt.Sprintf("https://localhost:%d", provider.Cluster().LocalAPIServerPort())
}

// kubernetesImage is the build of a control-plane component that its image names, from the
// box's images (`images/kubernetes/<tag>/<component>`, written by the lab): the box's stand-in
// for pulling the image. A release the box has no build of cannot be pulled, as on a node
// whose registry lacks the tag; the kubelet then leaves that static pod pending.
func kubernetesImage(imagesDir, component, image string) (string, error) {
	ref, err := name.NewTag(image)
	if err != nil {
		return "", fmt.Errorf("image %q: %w", image, err)
	}

	binary := filepath.Join(kubernetesBuild(imagesDir, ref.TagStr()), component)
	if _, err = os.Stat(binary); err != nil {
		return "", fmt.Errorf("failed to pull image %q: not found (the box has no build of Kubernetes %s)", image, ref.TagStr())
	}

	return binary, nil
}

// kubernetesBuild is where the box keeps Kubernetes release `tag`'s images (its builds).
func kubernetesBuild(imagesDir, tag string) string {
	return filepath.Join(imagesDir, "kubernetes", tag)
}

// kubernetesReleaseImages are the images of a Kubernetes release by their repository's name:
// the control plane's, which the box runs from its builds, and the kubelet's and kube-proxy's,
// which kwok and its fake pods stand in for.
var kubernetesReleaseImages = []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy", "kubelet"}

// ImagePull pulls an image into a containerd namespace (v1alpha1_images.go, ImagePull): a
// Kubernetes release's image is there when the box has a build of that release, and NotFound
// otherwise, as from a registry that lacks the tag. The box models no other image: anything
// else is answered as pulled.
func (c *configured) ImagePull(_ context.Context, in *machine.ImagePullRequest) (*machine.ImagePullResponse, error) {
	ref, err := name.NewTag(in.GetReference())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "error parsing image reference %q: %s", in.GetReference(), err)
	}

	repository := ref.Context().RepositoryStr()
	if slices.Contains(kubernetesReleaseImages, repository[strings.LastIndex(repository, "/")+1:]) {
		if _, err = os.Stat(kubernetesBuild(c.registry.images, ref.TagStr())); err != nil {
			return nil, status.Errorf(codes.NotFound, "error pulling image: failed to resolve reference %q: %s: not found",
				in.GetReference(), in.GetReference())
		}
	}

	return &machine.ImagePullResponse{Messages: []*machine.ImagePull{{Metadata: c.metadata()}}}, nil
}

// newControlPlane writes what the three components read into <state>/kubernetes and returns
// them, not yet started.
func newControlPlane(provider config.Provider, imagesDir, address, stateDir string) (*controlPlane, error) {
	cp := &controlPlane{imagesDir: imagesDir, address: address, dir: filepath.Join(stateDir, "kubernetes")}
	if err := os.MkdirAll(cp.dir, 0o700); err != nil {
		return nil, err
	}

	files, err := controlPlaneFiles(provider, address, cp.path)
	if err != nil {
		return nil, err
	}

	for name, data := range files {
		if err = os.WriteFile(cp.path(name), data, 0o600); err != nil {
			return nil, err
		}
	}

	cp.pods, err = cp.render(provider)

	return cp, err
}

func (cp *controlPlane) path(name string) string { return filepath.Join(cp.dir, name) }

// render is the three static pods the config asks for: each component's image, and the flags
// Talos derives from the config; a component whose image cannot be pulled gets no service.
func (cp *controlPlane) render(provider config.Provider) ([]*staticPod, error) {
	cluster := provider.Cluster()

	apiserverArgs, err := apiServerArgs(provider, cp.address, cp.path)
	if err != nil {
		return nil, err
	}

	controllerManager := argsbuilder.Args{
		"allocate-node-cidrs":              "true",
		"bind-address":                     "127.0.0.1",
		"cluster-cidr":                     strings.Join(cluster.Network().PodCIDRs(), ","),
		"service-cluster-ip-range":         strings.Join(cluster.Network().ServiceCIDRs(), ","),
		"cluster-signing-cert-file":        cp.path("ca.crt"),
		"cluster-signing-key-file":         cp.path("ca.key"),
		"controllers":                      "*,tokencleaner",
		"configure-cloud-routes":           "false",
		"kubeconfig":                       cp.path("controller-manager.kubeconfig"),
		"authentication-kubeconfig":        cp.path("controller-manager.kubeconfig"),
		"authorization-kubeconfig":         cp.path("controller-manager.kubeconfig"),
		"leader-elect":                     "true",
		"root-ca-file":                     cp.path("ca.crt"),
		"service-account-private-key-file": cp.path("service-account.key"),
		"profiling":                        "false",
		"tls-min-version":                  "VersionTLS13",
	}
	if err = controllerManager.Merge(argsbuilder.Args(cluster.ControllerManager().ExtraArgs())); err != nil {
		return nil, fmt.Errorf("cluster.controllerManager.extraArgs: %w", err)
	}

	scheduler := argsbuilder.Args{
		"config":                                 cp.path("scheduler-config.yaml"),
		"authentication-tolerate-lookup-failure": "false",
		"authentication-kubeconfig":              cp.path("scheduler.kubeconfig"),
		"authorization-kubeconfig":               cp.path("scheduler.kubeconfig"),
		"bind-address":                           "127.0.0.1",
		"leader-elect":                           "true",
		"profiling":                              "false",
		"tls-min-version":                        "VersionTLS13",
	}
	if err = scheduler.Merge(argsbuilder.Args(cluster.Scheduler().ExtraArgs())); err != nil {
		return nil, fmt.Errorf("cluster.scheduler.extraArgs: %w", err)
	}

	pods := []*staticPod{
		{component: "kube-apiserver", image: cluster.APIServer().Image(), args: apiserverArgs},
		{
			component: "kube-controller-manager", image: cluster.ControllerManager().Image(),
			args: append([]string{"--use-service-account-credentials"}, controllerManager.Args()...),
		},
		{component: "kube-scheduler", image: cluster.Scheduler().Image(), args: scheduler.Args()},
	}

	for _, pod := range pods {
		var binary string
		if binary, pod.pullErr = kubernetesImage(cp.imagesDir, pod.component, pod.image); pod.pullErr == nil {
			pod.service = newService(pod.component, binary, cp.dir, pod.args)
		}
	}

	return pods, nil
}

// apiServerArgs are the API server's flags as Talos sets them, with cluster.apiServer.extraArgs
// merged (flags that name Talos's own files cannot be overridden).
func apiServerArgs(provider config.Provider, address string, path func(string) string) ([]string, error) {
	cluster := provider.Cluster()
	endpoint := cluster.Endpoint().String()

	var etcdServers []string
	for _, host := range []string{"localhost", "127.0.0.1"} {
		etcdServers = append(etcdServers, "https://"+net.JoinHostPort(host, etcdClientPort))
	}

	builder := argsbuilder.Args{
		"admission-control-config-file":      path("admission-control-config.yaml"),
		"allow-privileged":                   "true",
		"anonymous-auth":                     "false",
		"api-audiences":                      endpoint,
		"bind-address":                       "0.0.0.0",
		"client-ca-file":                     path("ca.crt"),
		"enable-admission-plugins":           "NodeRestriction",
		"requestheader-client-ca-file":       path("aggregator-ca.crt"),
		"requestheader-allowed-names":        "front-proxy-client",
		"requestheader-extra-headers-prefix": "X-Remote-Extra-",
		"requestheader-group-headers":        "X-Remote-Group",
		"requestheader-username-headers":     "X-Remote-User",
		"proxy-client-cert-file":             path("front-proxy-client.crt"),
		"proxy-client-key-file":              path("front-proxy-client.key"),
		"enable-bootstrap-token-auth":        "true",
		"tls-min-version":                    "VersionTLS12",
		"encryption-provider-config":         path("encryptionconfig.yaml"),
		"audit-policy-file":                  path("auditpolicy.yaml"),
		"audit-log-path":                     path("audit.log"),
		"audit-log-maxage":                   "30",
		"audit-log-maxbackup":                "10",
		"audit-log-maxsize":                  "100",
		"profiling":                          "false",
		"etcd-cafile":                        path("etcd-client-ca.crt"),
		"etcd-certfile":                      path("etcd-client.crt"),
		"etcd-keyfile":                       path("etcd-client.key"),
		"etcd-servers":                       strings.Join(etcdServers, ","),
		"kubelet-client-certificate":         path("apiserver-kubelet-client.crt"),
		"kubelet-client-key":                 path("apiserver-kubelet-client.key"),
		"secure-port":                        strconv.Itoa(cluster.LocalAPIServerPort()),
		"service-account-issuer":             endpoint,
		"service-account-key-file":           path("service-account.pub"),
		"service-account-signing-key-file":   path("service-account.key"),
		"service-cluster-ip-range":           strings.Join(cluster.Network().ServiceCIDRs(), ","),
		"tls-cert-file":                      path("apiserver.crt"),
		"tls-private-key-file":               path("apiserver.key"),
		"kubelet-preferred-address-types":    "InternalIP,ExternalIP,Hostname",
		"advertise-address":                  address,
		// Kubernetes 1.29 and newer read the authorizers from a file
		// (handleKubeAPIServerAuthorizationFlags).
		"authorization-config": path("authorization-config.yaml"),
	}

	denied := argsbuilder.MergePolicies{
		"enable-admission-plugins": argsbuilder.MergeAdditive,
		"feature-gates":            argsbuilder.MergeAdditive,
		"tls-cipher-suites":        argsbuilder.MergeAdditive,
	}
	for _, file := range []string{
		"etcd-servers", "client-ca-file", "requestheader-client-ca-file", "proxy-client-cert-file", "proxy-client-key-file",
		"encryption-provider-config", "etcd-cafile", "etcd-certfile", "etcd-keyfile", "kubelet-client-certificate",
		"kubelet-client-key", "service-account-key-file", "service-account-signing-key-file", "tls-cert-file",
		"tls-private-key-file", "authorization-config",
	} {
		denied[file] = argsbuilder.MergeDenied
	}

	if err := builder.Merge(argsbuilder.Args(cluster.APIServer().ExtraArgs()), argsbuilder.WithMergePolicies(denied)); err != nil {
		return nil, fmt.Errorf("cluster.apiServer.extraArgs: %w", err)
	}

	return builder.Args(), nil
}

// controlPlaneFiles are the certificates, keys, kubeconfigs and config files, by file name.
func controlPlaneFiles(provider config.Provider, address string, path func(string) string) (map[string][]byte, error) {
	cluster := provider.Cluster()

	ca, err := talosx509.NewCertificateAuthorityFromCertificateAndKey(cluster.IssuingCA())
	if err != nil {
		return nil, fmt.Errorf("cluster.ca: %w", err)
	}

	aggregator, err := talosx509.NewCertificateAuthorityFromCertificateAndKey(cluster.AggregatorCA())
	if err != nil {
		return nil, fmt.Errorf("cluster.aggregatorCA: %w", err)
	}

	etcdCA, err := talosx509.NewCertificateAuthorityFromCertificateAndKey(cluster.Etcd().CA())
	if err != nil {
		return nil, fmt.Errorf("cluster.etcd.ca: %w", err)
	}

	serviceAccount, err := cluster.ServiceAccount().GetKey()
	if err != nil {
		return nil, fmt.Errorf("cluster.serviceAccount.key: %w", err)
	}

	ips, dnsNames, err := apiServerSANs(provider, address)
	if err != nil {
		return nil, err
	}

	serverUsage := x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment
	pairs := []struct {
		name    string
		ca      *talosx509.CertificateAuthority
		options []talosx509.Option
	}{
		{"apiserver", ca, []talosx509.Option{
			talosx509.IPAddresses(ips), talosx509.DNSNames(dnsNames),
			talosx509.CommonName("kube-apiserver"), talosx509.Organization("kube-master"),
			talosx509.KeyUsage(serverUsage), talosx509.ExtKeyUsage([]x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}),
		}},
		{"apiserver-kubelet-client", ca, []talosx509.Option{
			talosx509.CommonName(constants.KubernetesAPIServerKubeletClientCommonName),
			talosx509.Organization(constants.KubernetesAdminCertOrganization),
			talosx509.KeyUsage(serverUsage), talosx509.ExtKeyUsage([]x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}),
		}},
		{"front-proxy-client", aggregator, []talosx509.Option{
			talosx509.CommonName("front-proxy-client"),
			talosx509.KeyUsage(serverUsage), talosx509.ExtKeyUsage([]x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}),
		}},
		{"etcd-client", etcdCA, []talosx509.Option{
			talosx509.CommonName("kube-apiserver"),
			talosx509.ExtKeyUsage([]x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}),
		}},
	}

	files := map[string][]byte{
		"ca.crt":              caBundle(cluster),
		"ca.key":              cluster.IssuingCA().Key,
		"aggregator-ca.crt":   cluster.AggregatorCA().Crt,
		"etcd-client-ca.crt":  cluster.Etcd().CA().Crt,
		"service-account.key": cluster.ServiceAccount().Key,
		"service-account.pub": serviceAccount.GetPublicKeyPEM(),
	}

	for _, pair := range pairs {
		keyPair, err := talosx509.NewKeyPair(pair.ca, append(pair.options, talosx509.NotAfter(time.Now().Add(certLifetime)))...)
		if err != nil {
			return nil, fmt.Errorf("%s certificate: %w", pair.name, err)
		}

		files[pair.name+".crt"], files[pair.name+".key"] = keyPair.CrtPEM, keyPair.KeyPEM
	}

	for _, component := range []struct{ file, identity string }{
		{"controller-manager.kubeconfig", constants.KubernetesControllerManagerOrganization},
		{"scheduler.kubeconfig", constants.KubernetesSchedulerOrganization},
	} {
		var out bytes.Buffer

		if err := kubeconfig.Generate(&kubeconfig.GenerateInput{
			ClusterName:         cluster.Name(),
			IssuingCA:           cluster.IssuingCA(),
			AcceptedCAs:         acceptedCAs(cluster),
			CertificateLifetime: certLifetime,
			CommonName:          component.identity,
			Organization:        component.identity,
			Endpoint:            localEndpoint(provider),
			Username:            component.identity,
			ContextName:         "default",
		}, &out); err != nil {
			return nil, fmt.Errorf("%s: %w", component.file, err)
		}

		files[component.file] = out.Bytes()
	}

	configs, err := controlPlaneConfigs(provider, path)
	if err != nil {
		return nil, err
	}

	for name, data := range configs {
		files[name] = data
	}

	return files, nil
}

// acceptedCAs are the Kubernetes CAs a client trusts: the config's accepted CAs and the issuing
// CA's certificate (secrets/root.go).
func acceptedCAs(cluster configtypes.ClusterConfig) []*talosx509.PEMEncodedCertificate {
	accepted := slices.Clone(cluster.AcceptedCAs())

	return append(accepted, &talosx509.PEMEncodedCertificate{Crt: cluster.IssuingCA().Crt})
}

// caBundle is the accepted CAs as one PEM file.
func caBundle(cluster configtypes.ClusterConfig) []byte {
	var bundle []byte
	for _, accepted := range acceptedCAs(cluster) {
		bundle = append(bundle, accepted.Crt...)
	}

	return bundle
}

// apiServerSANs are the names the API server's certificate holds (kubernetes_cert_sans.go):
// the cluster endpoint's host, the config's certSANs, the `kubernetes` Service's names and
// address, localhost, and the node's own address.
func apiServerSANs(provider config.Provider, address string) ([]net.IP, []string, error) {
	cluster := provider.Cluster()
	domain := cluster.Network().DNSDomain()
	dnsNames := []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc." + domain, "localhost"}

	var ips []net.IP

	for _, name := range append([]string{cluster.Endpoint().Hostname()}, cluster.CertSANs()...) {
		if ip := net.ParseIP(name); ip != nil {
			ips = append(ips, ip)
		} else {
			dnsNames = append(dnsNames, name)
		}
	}

	serviceIPs, err := cluster.Network().APIServerIPs()
	if err != nil {
		return nil, nil, fmt.Errorf("cluster.network.serviceSubnets: %w", err)
	}

	for _, ip := range append(serviceIPs, netip.MustParseAddr(address), netip.MustParseAddr("127.0.0.1")) {
		ips = append(ips, ip.AsSlice())
	}

	return ips, dnsNames, nil
}

// controlPlaneConfigs are the API server's admission, audit, authorization and encryption
// configs and the scheduler's, from the config (JSON, which the components read as YAML).
func controlPlaneConfigs(provider config.Provider, path func(string) string) (map[string][]byte, error) {
	cluster := provider.Cluster()

	var plugins []map[string]any
	for _, plugin := range cluster.APIServer().AdmissionControl() {
		plugins = append(plugins, map[string]any{"name": plugin.Name(), "configuration": plugin.Configuration()})
	}

	// Node and RBAC come first, then whatever the config adds (control_plane.go).
	authorizers := []map[string]any{{"type": "Node", "name": "node"}, {"type": "RBAC", "name": "rbac"}}
	for _, authorizer := range cluster.APIServer().AuthorizationConfig() {
		entry := map[string]any{"type": authorizer.Type(), "name": authorizer.Name()}
		if webhook := authorizer.Webhook(); webhook != nil {
			entry["webhook"] = webhook
		}

		authorizers = append(authorizers, entry)
	}

	providers := []map[string]any{}
	if secret := cluster.SecretboxEncryptionSecret(); secret != "" {
		providers = append(providers, map[string]any{"secretbox": map[string]any{"keys": []map[string]any{{"name": "key2", "secret": secret}}}})
	}

	if secret := cluster.AESCBCEncryptionSecret(); secret != "" {
		providers = append(providers, map[string]any{"aescbc": map[string]any{"keys": []map[string]any{{"name": "key1", "secret": secret}}}})
	}

	providers = append(providers, map[string]any{"identity": map[string]any{}})

	scheduler := map[string]any{}
	for key, value := range cluster.Scheduler().Config() {
		scheduler[key] = value
	}

	scheduler["apiVersion"] = "kubescheduler.config.k8s.io/v1"
	scheduler["kind"] = "KubeSchedulerConfiguration"
	scheduler["clientConnection"] = map[string]any{"kubeconfig": path("scheduler.kubeconfig")}

	documents := map[string]any{
		"admission-control-config.yaml": map[string]any{
			"apiVersion": "apiserver.config.k8s.io/v1", "kind": "AdmissionConfiguration", "plugins": plugins,
		},
		"auditpolicy.yaml": cluster.APIServer().AuditPolicy(),
		"authorization-config.yaml": map[string]any{
			"apiVersion": "apiserver.config.k8s.io/v1", "kind": "AuthorizationConfiguration", "authorizers": authorizers,
		},
		"encryptionconfig.yaml": map[string]any{
			"apiVersion": "v1", "kind": "EncryptionConfig",
			"resources": []map[string]any{{"resources": []string{"secrets"}, "providers": providers}},
		},
		"scheduler-config.yaml": scheduler,
	}

	files := map[string][]byte{}

	for name, document := range documents {
		data, err := json.MarshalIndent(document, "", "  ")
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}

		files[name] = data
	}

	return files, nil
}

// run starts the three components once the local etcd member answers as a voting member: the
// API server needs its etcd, and the two loops need the API server (they retry until it
// answers, as on Talos).
func (cp *controlPlane) run(ctx context.Context, etcd *etcdMember) {
	for ctx.Err() == nil && !etcd.voting(ctx) {
		time.Sleep(time.Second)
	}

	cp.mu.Lock()
	defer cp.mu.Unlock()

	for _, pod := range cp.pods {
		pod.start()
	}
}

// start runs the pod's process; one whose image could not be pulled stays waiting, and says why.
func (p *staticPod) start() {
	if p.service == nil {
		log.Printf("%s: %v", p.component, p.pullErr)

		return
	}

	if err := p.service.start(); err != nil {
		log.Printf("%v", err)
	}
}

// reconcile takes a config applied without a reboot: each static pod whose image or flags
// changed is replaced (the old process stopped, the new image's build started), as the kubelet
// replaces a pod whose manifest changed; the others run on. Returns the pods that replaced
// others.
// The files the components read (certificates, kubeconfigs, config files) stay those rendered
// at boot.
func (cp *controlPlane) reconcile(provider config.Provider) ([]*staticPod, error) {
	wanted, err := cp.render(provider)
	if err != nil {
		return nil, err
	}

	cp.mu.Lock()
	defer cp.mu.Unlock()

	var replaced []*staticPod

	for i, pod := range cp.pods {
		if pod.same(wanted[i]) {
			continue
		}

		if pod.service != nil {
			pod.service.stop()
		}

		log.Printf("%s: replaced, now %s", pod.component, wanted[i].image)
		wanted[i].start()
		cp.pods[i] = wanted[i]
		replaced = append(replaced, wanted[i])
	}

	return replaced, nil
}

// current is the static pods as they run now.
func (cp *controlPlane) current() []*staticPod {
	cp.mu.Lock()
	defer cp.mu.Unlock()

	return slices.Clone(cp.pods)
}

// stop takes the three components down together.
func (cp *controlPlane) stop() {
	cp.mu.Lock()
	defer cp.mu.Unlock()

	var stopping sync.WaitGroup

	for _, pod := range cp.pods {
		if pod.service != nil {
			stopping.Go(pod.service.stop)
		}
	}

	stopping.Wait()
}
