package main

// KubePrism: every configured machine runs a small TCP load balancer on 127.0.0.1 (port 7445
// by default) in front of every API server it knows, so its own components (the kubelet, and
// on control planes the controller manager and the scheduler) reach the API even while the
// VIP moves or is not up yet. The twin runs Talos's own balancer package, with the upstreams
// Talos gives it: the cluster endpoint, the local API server on a control plane, and each
// control plane's address (internal/app/machined/pkg/controllers/k8s/kubeprism.go and
// kubeprism_endpoints.go; Talos learns the control planes through discovery, the twin from
// the lab's list, the same stand-in as etcd's peers).

import (
	"net"
	"strconv"

	"github.com/siderolabs/go-loadbalancer/controlplane"
	"go.uber.org/zap"

	"github.com/siderolabs/talos/pkg/machinery/config"
)

// startKubePrism starts the balancer when the config enables it (else the components use the
// local API server directly: localEndpoint).
func startKubePrism(provider config.Provider, controlPlanes []string) (*controlplane.LoadBalancer, error) {
	kubePrism := provider.Machine().Features().KubePrism()
	if kubePrism == nil || !kubePrism.Enabled() {
		return nil, nil
	}

	balancer, err := controlplane.NewLoadBalancer("127.0.0.1", kubePrism.Port(), zap.NewNop())
	if err != nil {
		return nil, err
	}

	upstreams := make(chan []string, 1)
	if err = balancer.Start(upstreams); err != nil {
		return nil, err
	}

	port := strconv.Itoa(provider.Cluster().LocalAPIServerPort())
	endpoint := provider.Cluster().Endpoint()
	list := []string{net.JoinHostPort(endpoint.Hostname(), endpoint.Port())}

	if provider.Machine().Type().IsControlPlane() {
		list = append(list, net.JoinHostPort("localhost", port))
	}

	for _, address := range controlPlanes {
		list = append(list, net.JoinHostPort(address, port))
	}

	upstreams <- list

	return balancer, nil
}
