package main

// What a configured machine runs besides its API, started from its config when it boots and
// stopped as a whole when it goes down (reboot, shutdown):
//
//   - every machine: KubePrism and its kubelet's side (credentials, its Node, kwok for its pods);
//   - a control plane also: its etcd member, then kube-apiserver, kube-controller-manager and
//     kube-scheduler, the VIP election, and the manifests Talos deploys.

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/cosi-project/runtime/pkg/state"
	"github.com/siderolabs/go-loadbalancer/controlplane"
	"golang.org/x/sys/unix"
	"k8s.io/apimachinery/pkg/util/uuid"

	"github.com/siderolabs/talos/pkg/machinery/config"
)

type services struct {
	ctx    context.Context //nolint:containedctx // the machine's life: what follow runs within
	cancel context.CancelFunc
	// The VIP elections run until the kubelet lifecycle is torn down, which comes first in a
	// shutdown (see endCampaigns).
	endElections context.CancelFunc
	campaigns    sync.WaitGroup
	kubePrism    *controlplane.LoadBalancer
	etcd         *etcdMember
	controlPlane *controlPlane
	kubelet      *kubelet
	stopOnce     sync.Once
}

// hostname is the machine's name from its config (its address when it has none), the name of
// its etcd member and its Node.
func hostname(provider config.Provider, address string) string {
	if named := provider.NetworkHostnameConfig(); named != nil && named.Hostname() != "" {
		return named.Hostname()
	}

	return address
}

func startServices(parent context.Context, provider config.Provider, node nodeFlags, resources state.State) (*services, error) {
	ctx, cancel := context.WithCancel(parent)
	running := &services{ctx: ctx, cancel: cancel}

	var err error

	if running.kubePrism, err = startKubePrism(provider, node.controlPlanes); err != nil {
		cancel()

		return nil, err
	}

	// The machine takes its name (it runs in a UTS namespace of its own, so this names this
	// machine only): the API server's identity lease and the etcd member are named after it.
	name := hostname(provider, node.address)
	if err = unix.Sethostname([]byte(name)); err != nil {
		cancel()

		return nil, fmt.Errorf("setting the hostname %s: %w", name, err)
	}
	kubelet := &kubelet{
		bootID: string(uuid.NewUUID()),
		config: provider, address: node.address, hostname: name, dir: filepath.Join(node.stateDir, "kubelet"),
		kwokBinary: node.kwok, kwokConfig: node.kwokConfig, resources: resources, image: provider.Machine().Kubelet().Image(),
	}
	running.kubelet = kubelet

	if err = os.MkdirAll(kubelet.dir, 0o700); err != nil {
		cancel()

		return nil, err
	}

	if provider.Machine().Type().IsControlPlane() {
		if running.etcd, err = newEtcdMember(provider, node.etcd, node.address, name, node.stateDir, node.controlPlanes); err != nil {
			cancel()

			return nil, err
		}

		if running.controlPlane, err = newControlPlane(provider, node.images, node.address, node.stateDir); err != nil {
			cancel()

			return nil, err
		}

		kubelet.controlPlane = running.controlPlane

		running.etcd.run(ctx)

		go running.controlPlane.run(ctx, running.etcd)
		go deployManifests(ctx, kubelet, running.etcd)

		elections, endElections := context.WithCancel(ctx)
		running.endElections = endElections

		for _, shared := range provider.NetworkVirtualIPConfigs() {
			election := &vip{
				address: shared.VIP(), hostname: name, etcd: running.etcd, resources: resources, link: cabledLink(node.hardware),
			}

			running.campaigns.Go(func() { election.run(elections) })
		}
	}

	go kubelet.run(ctx)

	return running, nil
}

// follow brings a control plane's static pods in line with a config applied without a reboot,
// as Talos's controllers do: the components' config resources are rendered again at once (a
// changed one gets a new version), the static pods whose image or flags changed are replaced,
// and once each new one answers, their mirror pods follow (carrying that version). The kubelet
// follows first (configured.follow, applyconfig.go).
func (s *services) follow(provider config.Provider) {
	if s.controlPlane == nil {
		return
	}

	// The config resources move at once, as Talos's controllers render them from the config;
	// the static pods once replaced, their mirror pods once the new processes answer.
	if _, err := publishConfigs(s.ctx, s.kubelet.resources, provider, s.controlPlane.address); err != nil {
		log.Printf("following the applied config: %v", err)
	}

	replaced, err := s.controlPlane.reconcile(provider)
	if err != nil {
		log.Printf("following the applied config: %v", err)

		return
	}

	if _, err = s.controlPlane.publish(s.ctx, s.kubelet.resources, provider); err != nil {
		log.Printf("following the applied config: %v", err)
	}

	for _, pod := range replaced {
		s.kubelet.waitReady(s.ctx, pod)
	}

	for s.ctx.Err() == nil {
		if err = s.kubelet.syncStaticPods(s.ctx, provider); err == nil {
			return
		}

		log.Printf("kubelet: static pods: %v", err)
		time.Sleep(3 * time.Second)
	}
}

// kubeletLifecycleTimeout is how long Talos waits for the kubelet lifecycle's finalizers
// (the VIP elections') before it shuts the kubelet down anyway.
const kubeletLifecycleTimeout = 30 * time.Second

// tearDownKubeletLifecycle is the first step of Talos's shutdown and reboot, before any pod
// stops (v1alpha1_sequencer_tasks.go, stopAndRemoveAllPods: waitForKubeletLifecycleFinalizers).
// The VIP election holds a finalizer on the KubeletLifecycle resource and leaves its campaign
// when that resource is torn down (network/operator/vip.go): the holder resigns and releases
// the address while its etcd and API server still run, so the VIP moves at the start of a
// reboot, not after the kubelet's graceful shutdown. Talos waits at most 30 s for it.
func (s *services) tearDownKubeletLifecycle() {
	if s.endElections == nil {
		return
	}

	s.endElections()

	if !waitAtMost(&s.campaigns, kubeletLifecycleTimeout) {
		log.Printf("the VIP election did not end within %s", kubeletLifecycleTimeout)
	}
}

// waitAtMost waits for `group` to finish, for `limit` at most; false when it did not.
func waitAtMost(group *sync.WaitGroup, limit time.Duration) bool {
	done := make(chan struct{})

	go func() {
		group.Wait()
		close(done)
	}()

	select {
	case <-done:
		return true
	case <-time.After(limit):
		return false
	}
}

// stop: the VIP elections end first (tearDownKubeletLifecycle; at once when a reboot already
// did it), then the control plane goes, then etcd, then KubePrism.
func (s *services) stop() {
	s.stopOnce.Do(func() {
		s.tearDownKubeletLifecycle()
		s.cancel()

		s.kubelet.stopRuntime()

		if s.controlPlane != nil {
			s.controlPlane.stop()
		}

		if s.etcd != nil {
			s.etcd.stop()
		}

		if s.kubePrism != nil {
			s.kubePrism.Shutdown() //nolint:errcheck
		}
	})
}
