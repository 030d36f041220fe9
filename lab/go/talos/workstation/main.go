// Command talos-workstation runs the box's workstation services: what the cluster in a box
// needs besides its machines, on the workstation (the box's admin namespace). Each is a
// stand-in, named as such, for something that cannot run here:
//
//   - the API forward: 127.0.0.1:<port> on this machine and on the workstation both lead to the
//     cluster endpoint (the VIP) inside the box, so tools and tests outside the box use the
//     cluster without ever dialling a box address themselves;
//   - the Image Factory: `POST /schematics` answers with the schematic's ID as the factory
//     computes it (the real one is on the internet, which the box cannot reach);
//   - kubelet-serving-cert-approver: its pods are kwok fakes, so this approves kubelet
//     serving-certificate requests in their place, by the approver's rules;
//   - the add-on controllers the box has builds of (MetalLB's, cert-manager's): their pods
//     are fakes too, so the real controllers run here, at the release the cluster runs,
//     once their stage has installed their CRDs (controllers.go).
//
// It is started by `cargo xtask lab up` on this machine's network and enters the box itself:
// one OS thread joins the workstation namespace and makes every socket and process that
// must live in the box.
package main

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
	"gopkg.in/yaml.v3"
	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

func main() {
	namespace := flag.String("namespace", "", "the workstation's network namespace (/run/netns/<namespace>)")
	listen := flag.String("listen", "127.0.0.1:16443", "where the API forward listens, on this machine and on the workstation")
	endpoint := flag.String("endpoint", "", "the cluster endpoint host:port inside the box (the VIP)")
	factory := flag.String("image-factory", "127.0.0.1:16444", "where the Image Factory stand-in listens, on the workstation")
	factoryDir := flag.String("image-factory-dir", "", "where the Image Factory stand-in keeps the schematics uploaded to it")
	kubeconfig := flag.String("kubeconfig", "", "the cluster's admin kubeconfig (stage 01 writes it)")
	hostKubeconfig := flag.String("host-kubeconfig", "", "the copy of the admin kubeconfig aimed at the forward, written here")
	binaries := flag.String("lab-binaries", "", "the lab's binary cache: the add-on controllers' builds, as <component>-<release>/controller")
	metallbPort := flag.Int("metallb-metrics-port", 16445, "the port of MetalLB's controller's metrics, on the workstation")
	runDir := flag.String("run", "", "where the pid files of the processes started here go")
	logDir := flag.String("logs", "", "where their logs go")
	readyFile := flag.String("ready-file", "", "written with this process's PID once every listener is up")
	flag.Parse()

	box, err := enterBox(*namespace)
	if err != nil {
		log.Fatalf("talos-workstation: %v", err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	// On this machine's network (the main goroutine is not on the box's thread).
	outside, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("talos-workstation: the API forward on this machine: %v", err)
	}

	var inside, factoryListener net.Listener

	box.do(func() {
		if inside, err = net.Listen("tcp", *listen); err != nil {
			return
		}

		factoryListener, err = net.Listen("tcp", *factory)
	})

	if err != nil {
		log.Fatalf("talos-workstation: listening in the box: %v", err)
	}

	for _, listener := range []net.Listener{outside, inside} {
		go forward(listener, box, *endpoint)
	}

	go http.Serve(factoryListener, imageFactory{dir: *factoryDir}) //nolint:errcheck,gosec

	log.Printf("forwarding %s (here and on the workstation) to %s in the box; Image Factory stand-in on %s", *listen, *endpoint, *factory)

	if err = os.WriteFile(*readyFile, []byte(strconv.Itoa(os.Getpid())), 0o600); err != nil {
		log.Fatalf("talos-workstation: %v", err)
	}

	cluster := &clusterServices{
		box: box, kubeconfig: *kubeconfig, hostKubeconfig: *hostKubeconfig, listen: *listen,
		binaries: *binaries, metallbPort: *metallbPort, runDir: *runDir, logDir: *logDir,
	}
	cluster.controllers = cluster.hostControllers()

	for ctx.Err() == nil {
		if err := cluster.reconcile(ctx); err != nil {
			log.Printf("%v", err)
		}

		select {
		case <-ctx.Done():
		case <-time.After(2 * time.Second):
		}
	}

	cluster.stop()
}

// inBox runs functions on one OS thread that has joined the workstation's namespace: sockets
// and processes made there belong to the box.
type inBox struct {
	work chan func()
}

func enterBox(namespace string) (*inBox, error) {
	handle, err := netns.GetFromPath(filepath.Join("/run/netns", namespace))
	if err != nil {
		return nil, fmt.Errorf("the box has no namespace %s (cargo xtask lab up builds it): %w", namespace, err)
	}

	box := &inBox{work: make(chan func())}
	entered := make(chan error)

	go func() {
		// Never unlocked: the thread stays in the box until the process ends.
		runtime.LockOSThread()

		if err := netns.Set(handle); err != nil {
			entered <- err

			return
		}

		close(entered)

		for work := range box.work {
			work()
		}
	}()

	return box, <-entered
}

func (b *inBox) do(work func()) {
	done := make(chan struct{})
	b.work <- func() {
		work()
		close(done)
	}
	<-done
}

func (b *inBox) dial(ctx context.Context, network, address string) (conn net.Conn, err error) {
	b.do(func() {
		var dialer net.Dialer
		conn, err = dialer.DialContext(ctx, network, address)
	})

	return conn, err
}

// forward copies every connection to the endpoint, in both directions.
func forward(listener net.Listener, box *inBox, endpoint string) {
	for {
		client, err := listener.Accept()
		if err != nil {
			return
		}

		go func() {
			defer client.Close() //nolint:errcheck

			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			server, err := box.dial(ctx, "tcp", endpoint)

			cancel()

			if err != nil {
				return
			}

			defer server.Close() //nolint:errcheck

			done := make(chan struct{}, 2)

			go func() { io.Copy(server, client); done <- struct{}{} }() //nolint:errcheck
			go func() { io.Copy(client, server); done <- struct{}{} }() //nolint:errcheck
			<-done
		}()
	}
}

// schematic is the part of an Image Factory schematic talos-ha sends.
type schematic struct {
	Customization struct {
		SystemExtensions struct {
			OfficialExtensions []string `yaml:"officialExtensions,omitempty"`
		} `yaml:"systemExtensions,omitempty"`
	} `yaml:"customization"`
}

// imageFactory answers `POST /schematics` as the Image Factory does: the schematic is parsed,
// its extensions sorted, and its ID is the sha256 of its canonical YAML (Go's encoder,
// four-space indent: siderolabs/image-factory pkg/schematic, Marshal and ID). It keeps each
// schematic as <dir>/<id>.yaml, where the machines read what their installer image carries.
type imageFactory struct {
	dir string
}

func (f imageFactory) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/schematics" {
		http.NotFound(w, r)

		return
	}

	var posted schematic
	if err := yaml.NewDecoder(r.Body).Decode(&posted); err != nil {
		http.Error(w, fmt.Sprintf("invalid schematic: %v", err), http.StatusBadRequest)

		return
	}

	slices.Sort(posted.Customization.SystemExtensions.OfficialExtensions)

	var canonical strings.Builder

	encoder := yaml.NewEncoder(&canonical)
	encoder.SetIndent(4)

	if err := encoder.Encode(posted); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)

		return
	}

	sum := sha256.Sum256([]byte(canonical.String()))
	id := hex.EncodeToString(sum[:])

	if err := os.MkdirAll(f.dir, 0o700); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)

		return
	}

	if err := os.WriteFile(filepath.Join(f.dir, id+".yaml"), []byte(canonical.String()), 0o600); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)

		return
	}

	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	fmt.Fprintf(w, "{\"id\":%q}\n", id) //nolint:errcheck
}

// clusterServices is what needs the cluster's API: the host kubeconfig, the approver
// stand-in, the add-on controllers.
type clusterServices struct {
	box            *inBox
	kubeconfig     string
	hostKubeconfig string
	listen         string
	binaries       string
	metallbPort    int
	runDir         string
	logDir         string
	controllers    []*hostController
}

func (c *clusterServices) reconcile(ctx context.Context) error {
	raw, err := os.ReadFile(c.kubeconfig)
	if err != nil {
		return nil //nolint:nilerr // no cluster yet: stage 01 has not fetched its kubeconfig
	}

	if err = c.writeHostKubeconfig(raw); err != nil {
		return err
	}

	restConfig, err := clientcmd.RESTConfigFromKubeConfig(raw)
	if err != nil {
		return fmt.Errorf("%s: %w", c.kubeconfig, err)
	}

	restConfig.Dial = c.box.dial
	restConfig.Timeout = 10 * time.Second

	client, err := kubernetes.NewForConfig(restConfig)
	if err != nil {
		return err
	}

	if err = approveServingCertificates(ctx, client); err != nil {
		return fmt.Errorf("kubelet-serving-cert-approver stand-in: %w", err)
	}

	for _, controller := range c.controllers {
		if err = controller.reconcile(ctx, c, client); err != nil {
			return err
		}
	}

	return nil
}

// writeHostKubeconfig: the admin kubeconfig, its server the forward (the API server's
// certificate names 127.0.0.1, as Talos's does).
func (c *clusterServices) writeHostKubeconfig(raw []byte) error {
	config, err := clientcmd.Load(raw)
	if err != nil {
		return err
	}

	for _, cluster := range config.Clusters {
		cluster.Server = "https://" + c.listen
	}

	out, err := clientcmd.Write(*config)
	if err != nil {
		return err
	}

	if current, err := os.ReadFile(c.hostKubeconfig); err == nil && string(current) == string(out) {
		return nil
	}

	if err = os.MkdirAll(filepath.Dir(c.hostKubeconfig), 0o700); err != nil {
		return err
	}

	return os.WriteFile(c.hostKubeconfig, out, 0o600)
}

// approveServingCertificates approves what kubelet-serving-cert-approver would
// (alex1989hu/kubelet-serving-cert-approver, approver/csr.go): kubelet-serving requests from
// system:node:<name> for a Node that exists, whose subject is that user in system:nodes,
// asking only for server auth (with digital signature, key encipherment), and naming only
// that Node's name and addresses.
//
// It approves only while the approver itself is deployed and its (fake) pods are ready: a
// cluster without it keeps its requests pending, as a real one would (the kubelet-csr
// diagnostic stays, and `talosctl health` waits).
func approveServingCertificates(ctx context.Context, client *kubernetes.Clientset) error {
	approver, err := client.AppsV1().Deployments(approverNamespace).Get(ctx, approverNamespace, metav1.GetOptions{})
	if err != nil || approver.Status.ReadyReplicas == 0 {
		return nil //nolint:nilerr // no approver runs: nothing approves
	}

	requests, err := client.CertificatesV1().CertificateSigningRequests().List(ctx, metav1.ListOptions{
		FieldSelector: "spec.signerName=" + certificatesv1.KubeletServingSignerName,
	})
	if err != nil {
		return err
	}

	for _, request := range requests.Items {
		if decided(request) {
			continue
		}

		reason := refusal(ctx, client, request)
		if reason != "" {
			log.Printf("not approving %s: %s", request.Name, reason)

			continue
		}

		request.Status.Conditions = append(request.Status.Conditions, certificatesv1.CertificateSigningRequestCondition{
			Type:    certificatesv1.CertificateApproved,
			Status:  corev1.ConditionTrue,
			Reason:  "AutoApproved",
			Message: "approved by the talos-ha box's stand-in for kubelet-serving-cert-approver",
		})

		if _, err = client.CertificatesV1().CertificateSigningRequests().UpdateApproval(ctx, request.Name, &request, metav1.UpdateOptions{}); err != nil {
			return err
		}

		log.Printf("approved %s for %s", request.Name, request.Spec.Username)
	}

	return nil
}

// approverNamespace is where kubelet-serving-cert-approver's release deploys it, under the same
// name (its ha-install.yaml).
const approverNamespace = "kubelet-serving-cert-approver"

func decided(request certificatesv1.CertificateSigningRequest) bool {
	for _, condition := range request.Status.Conditions {
		if condition.Type == certificatesv1.CertificateApproved || condition.Type == certificatesv1.CertificateDenied {
			return true
		}
	}

	return false
}

// refusal says why a request is not one to approve ("" when it is).
func refusal(ctx context.Context, client *kubernetes.Clientset, request certificatesv1.CertificateSigningRequest) string {
	nodeName, isNode := strings.CutPrefix(request.Spec.Username, "system:node:")
	if !isNode || !slices.Contains(request.Spec.Groups, "system:nodes") {
		return "not from a node"
	}

	node, err := client.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
	if err != nil {
		return fmt.Sprintf("no Node %s", nodeName)
	}

	block, _ := pem.Decode(request.Spec.Request)
	if block == nil {
		return "no PEM request"
	}

	parsed, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return err.Error()
	}

	if parsed.Subject.CommonName != request.Spec.Username || !slices.Equal(parsed.Subject.Organization, []string{"system:nodes"}) {
		return "the subject is not the requesting node"
	}

	allowed := []certificatesv1.KeyUsage{certificatesv1.UsageDigitalSignature, certificatesv1.UsageKeyEncipherment, certificatesv1.UsageServerAuth}
	for _, usage := range request.Spec.Usages {
		if !slices.Contains(allowed, usage) {
			return fmt.Sprintf("usage %q", usage)
		}
	}

	if len(parsed.EmailAddresses) > 0 || len(parsed.URIs) > 0 {
		return "e-mail or URI names"
	}

	known := []string{node.Name}
	for _, address := range node.Status.Addresses {
		known = append(known, address.Address)
	}

	for _, name := range parsed.DNSNames {
		if !slices.Contains(known, name) {
			return fmt.Sprintf("name %s is not the node's", name)
		}
	}

	for _, ip := range parsed.IPAddresses {
		if !slices.Contains(known, ip.String()) {
			return fmt.Sprintf("address %s is not the node's", ip)
		}
	}

	return ""
}

func (c *clusterServices) stop() {
	for _, controller := range c.controllers {
		controller.stop()
	}
}

// writePidFile writes "pid starttime", how the lab knows a process (lab/src/process.rs).
func writePidFile(path string, pid int) error {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return err
	}

	// The fields after the command (which may hold spaces) start after the last ')';
	// starttime is field 22, the 20th after it.
	fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	if len(fields) < 20 {
		return fmt.Errorf("/proc/%d/stat: too few fields", pid)
	}

	return os.WriteFile(path, []byte(fmt.Sprintf("%d %s\n", pid, fields[19])), 0o600)
}
