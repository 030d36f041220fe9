// cert-manager's controller as the box runs it: a host process on the box's workstation,
// against the box's API server, issuing for real with the SelfSigned and CA issuers that
// talos-ha's stage 05 configures.
//
// Upstream's main (cmd/controller) is a nested module, github.com/cert-manager/cert-manager/
// controller-binary, that the Go module proxy does not serve, so `go install` cannot build it.
// This is talos-ha's own main over the served root module's public packages. It does what
// upstream's app does (cmd/controller/app/controller.go at the pinned tag): build the shared
// controller context (pkg/controller/context.go, NewContextFactory), construct every
// controller that registered itself (pkg/controller/register.go, Known), start the shared
// informers, and run the control loops until asked to stop.
//
// What it links in is what a SelfSigned/CA cluster needs: the Issuer and ClusterIssuer
// controllers, the Certificate controllers (trigger, key manager, request manager, issuing,
// readiness, revision manager), and the CertificateRequest approver with the SelfSigned and CA
// signers (pkg/controller/*/ : each registers in its init). Left out, and why:
//   - ACME, Vault and Venafi: talos-ha configures none of them (and Venafi's client module is
//     not served for every release);
//   - the ingress and Gateway shims: talos-ha writes its Certificates itself;
//   - leader election: the box runs one controller (upstream takes a Lease in kube-system);
//   - the metrics and healthz listeners: nothing in the box scrapes them.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"reflect"
	"runtime/debug"
	"sort"
	"sync"
	"syscall"

	controllerpkg "github.com/cert-manager/cert-manager/pkg/controller"
	logf "github.com/cert-manager/cert-manager/pkg/logs"
	"github.com/cert-manager/cert-manager/pkg/metrics"
	"github.com/go-logr/logr"
	"k8s.io/utils/clock"

	// Each of these registers its controller (or issuer) in its init.
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/approver"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/ca"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/selfsigned"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/issuing"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/keymanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/readiness"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/requestmanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/revisionmanager"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificates/trigger"
	_ "github.com/cert-manager/cert-manager/pkg/controller/clusterissuers"
	_ "github.com/cert-manager/cert-manager/pkg/controller/issuers"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/ca"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/selfsigned"
)

// Upstream's defaults for the flags its manifest does not set (cmd/controller/app/options).
const (
	workersPerController = 5
	kubernetesAPIQPS     = 20
	kubernetesAPIBurst   = 50
)

func main() {
	kubeconfig := flag.String("kubeconfig", "", "the admin kubeconfig of the cluster to issue for")
	clusterResourceNamespace := flag.String("cluster-resource-namespace", "cert-manager",
		"where a ClusterIssuer's Secrets live (upstream's manifest passes the controller's own namespace)")
	version := flag.Bool("version", false, "print the cert-manager release this binary was built from, and exit")
	flag.Parse()

	if *version {
		fmt.Println(builtFrom())

		return
	}

	if err := run(*kubeconfig, *clusterResourceNamespace); err != nil {
		fmt.Fprintf(os.Stderr, "cert-manager controller: %v\n", err)
		os.Exit(1)
	}
}

// callerMakesClockAndMetrics fills ContextOptions.Clock and ContextOptions.Metrics in the
// releases that have them: there the caller supplies both (pkg/controller/context.go at v1.16.5),
// and a control loop dereferences the metrics on its first item; later releases make them in
// NewContextFactory and have no such fields (the same file at v1.20.3). One main serves both
// because the fields are set by name.
func callerMakesClockAndMetrics(options *controllerpkg.ContextOptions, log logr.Logger) {
	fields := reflect.ValueOf(options).Elem()
	if field := fields.FieldByName("Clock"); field.IsValid() {
		field.Set(reflect.ValueOf(clock.RealClock{}))
	}

	if field := fields.FieldByName("Metrics"); field.IsValid() {
		field.Set(reflect.ValueOf(metrics.New(log, clock.RealClock{})))
	}
}

// builtFrom is the cert-manager module's version in this binary's build information.
func builtFrom() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}

	for _, module := range info.Deps {
		if module.Path == "github.com/cert-manager/cert-manager" {
			return module.Version
		}
	}

	return "unknown"
}

func run(kubeconfig, clusterResourceNamespace string) error {
	logf.InitLogs()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	ctx = logf.NewContext(ctx, logf.Log, "controller")
	log := logf.FromContext(ctx)

	options := controllerpkg.ContextOptions{
		Kubeconfig:         kubeconfig,
		KubernetesAPIQPS:   kubernetesAPIQPS,
		KubernetesAPIBurst: kubernetesAPIBurst,
		IssuerOptions:      controllerpkg.IssuerOptions{ClusterResourceNamespace: clusterResourceNamespace},
		// Upstream's default: a Certificate owns nothing, so deleting one keeps its Secret.
		CertificateOptions: controllerpkg.CertificateOptions{EnableOwnerRef: false},
	}
	callerMakesClockAndMetrics(&options, log)

	factory, err := controllerpkg.NewContextFactory(ctx, options)
	if err != nil {
		return err
	}

	// Constructing a controller registers the informers it watches; they must all be
	// registered before the shared factories start.
	names := make([]string, 0, len(controllerpkg.Known()))
	for name := range controllerpkg.Known() {
		names = append(names, name)
	}

	sort.Strings(names)

	loops := make([]controllerpkg.Interface, 0, len(names))

	for _, name := range names {
		loop, err := controllerpkg.Known()[name](factory)
		if err != nil {
			return fmt.Errorf("constructing controller %s: %w", name, err)
		}

		loops = append(loops, loop)
	}

	shared, err := factory.Build()
	if err != nil {
		return err
	}

	shared.KubeSharedInformerFactory.Start(ctx.Done())
	shared.SharedInformerFactory.Start(ctx.Done())
	shared.HTTP01ResourceMetadataInformersFactory.Start(ctx.Done())

	log.Info("starting controllers", "version", builtFrom(), "controllers", names)

	failed := make(chan error, len(loops))

	var running sync.WaitGroup

	for i, loop := range loops {
		running.Add(1)

		go func() {
			defer running.Done()

			if err := loop.Run(workersPerController, ctx); err != nil {
				failed <- fmt.Errorf("controller %s: %w", names[i], err)
			}
		}()
	}

	// A control loop that fails ends the process, as upstream's does, so the workstation
	// services see it exit and start it again.
	select {
	case err = <-failed:
		stop()
	case <-ctx.Done():
	}

	running.Wait()

	return err
}
