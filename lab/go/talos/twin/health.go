package main

// What `talosctl health` reads. It runs on the node (`--server`, the default): the node runs
// Talos's own checks (pkg/cluster/check: etcd, apid, memory and disk sizes, diagnostics,
// kubelet, boot sequence, then Kubernetes: nodes, static pods, control plane, kube-proxy,
// CoreDNS, schedulable) against every node of the lists it is given, through its own apid, and
// streams their progress (internal/app/machined/internal/server/v1alpha1/v1alpha1_cluster.go).
// Every node then answers what the checks ask of it: its services, its memory, its
// EPHEMERAL volume, its diagnostics, its static pods, its boot stage.

import (
	"context"
	"fmt"
	"strings"

	"github.com/siderolabs/gen/xslices"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/siderolabs/talos/pkg/cluster"
	"github.com/siderolabs/talos/pkg/cluster/check"
	"github.com/siderolabs/talos/pkg/conditions"
	clusterapi "github.com/siderolabs/talos/pkg/machinery/api/cluster"
	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/client"
	configmachine "github.com/siderolabs/talos/pkg/machinery/config/machine"
)

// health serves the ClusterService (only HealthCheck).
type health struct {
	clusterapi.UnimplementedClusterServiceServer

	// The machine's own apid, on its unix socket (Talos's LocalClientProvider).
	apidSocket string
}

// localClients is a Talos client of this machine's apid, which forwards to the nodes named.
type localClients struct {
	socket string
	client *client.Client
}

func (l *localClients) Client(endpoints ...string) (*client.Client, error) {
	if len(endpoints) > 0 {
		return nil, fmt.Errorf("custom endpoints are not supported here")
	}

	if l.client != nil {
		return l.client, nil
	}

	var err error

	l.client, err = client.New(context.Background(), client.WithUnixSocket(l.socket),
		client.WithGRPCDialOptions(grpc.WithTransportCredentials(insecure.NewCredentials())))

	return l.client, err
}

func (l *localClients) Close() error {
	if l.client == nil {
		return nil
	}

	return l.client.Close()
}

// nodeLists is the cluster as the caller described it (talosctl's --control-plane-nodes and
// --worker-nodes).
type nodeLists struct {
	byType map[configmachine.Type][]cluster.NodeInfo
}

func (n *nodeLists) Nodes() []cluster.NodeInfo {
	return append(append([]cluster.NodeInfo{}, n.byType[configmachine.TypeControlPlane]...), n.byType[configmachine.TypeWorker]...)
}

func (n *nodeLists) NodesByType(t configmachine.Type) []cluster.NodeInfo { return n.byType[t] }

// HealthCheck waits for Talos's default checks, reporting each condition as it waits.
func (h *health) HealthCheck(in *clusterapi.HealthCheckRequest, srv clusterapi.ClusterService_HealthCheckServer) error {
	info := in.GetClusterInfo()
	if len(info.GetControlPlaneNodes()) == 0 {
		// Talos would discover the members; the twin needs the lists talos-ha always passes.
		return status.Error(codes.InvalidArgument, "pass --control-plane-nodes and --worker-nodes (the twin does not discover members)")
	}

	controlPlanes, err := cluster.IPsToNodeInfos(info.GetControlPlaneNodes())
	if err != nil {
		return err
	}

	workers, err := cluster.IPsToNodeInfos(info.GetWorkerNodes())
	if err != nil {
		return err
	}

	clients := &localClients{socket: h.apidSocket}
	defer clients.Close() //nolint:errcheck

	kubernetes := &cluster.KubernetesClient{ClientProvider: clients, ForceEndpoint: info.GetForceEndpoint()}
	defer kubernetes.K8sClose() //nolint:errcheck

	ctx, cancel := context.WithTimeout(srv.Context(), in.GetWaitTimeout().AsDuration())
	defer cancel()

	state := struct {
		cluster.ClientProvider
		cluster.K8sProvider
		cluster.Info
	}{clients, kubernetes, &nodeLists{byType: map[configmachine.Type][]cluster.NodeInfo{
		configmachine.TypeControlPlane: controlPlanes, configmachine.TypeWorker: workers,
	}}}

	addresses := xslices.Map(state.Nodes(), func(node cluster.NodeInfo) string { return node.InternalIP.String() })
	if err = srv.Send(&clusterapi.HealthCheckProgress{Message: fmt.Sprintf("discovered nodes: %q", addresses)}); err != nil {
		return err
	}

	return check.Wait(ctx, &state, append(check.DefaultClusterChecks(), check.ExtraClusterChecks()...), &progress{srv: srv})
}

type progress struct {
	srv  clusterapi.ClusterService_HealthCheckServer
	last string
}

func (p *progress) Update(condition conditions.Condition) {
	line := strings.TrimSpace(fmt.Sprintf("waiting for %s", condition))
	if line != p.last {
		p.srv.Send(&clusterapi.HealthCheckProgress{Message: line}) //nolint:errcheck
		p.last = line
	}
}

// serviceState is one row of `talosctl services`.
func serviceState(id string, running, healthy bool, message string) *machine.ServiceInfo {
	state := "Running"
	if !running {
		state = "Preparing"
	}

	return &machine.ServiceInfo{
		Id:     id,
		State:  state,
		Events: &machine.ServiceEvents{Events: []*machine.ServiceEvent{{Msg: message, State: state, Ts: timestamppb.Now()}}},
		Health: &machine.ServiceHealth{Healthy: healthy, LastMessage: message, LastChange: timestamppb.Now()},
	}
}

// ServiceList reports the machine's services as machined does (v1alpha1_server.go,
// ServiceList): apid, machined and trustd run; etcd is healthy when its member answers as a
// voting member; the kubelet is healthy once it runs its pods.
func (c *configured) ServiceList(ctx context.Context, _ *emptypb.Empty) (*machine.ServiceListResponse, error) {
	services := []*machine.ServiceInfo{
		serviceState("apid", true, true, "Health check successful"),
		serviceState("machined", true, true, "Health check successful"),
	}

	if c.etcd != nil {
		services = append(services, serviceState("trustd", true, true, "Health check successful"))

		running := c.etcd.running()
		healthy := running && c.etcd.voting(ctx)

		var etcdState *machine.ServiceInfo

		switch failure := c.etcd.failed(); {
		case !running && failure != "":
			etcdState = serviceState("etcd", false, false, failure)
			etcdState.State = "Failed"
		case !running:
			etcdState = serviceState("etcd", false, false, "Waiting for bootstrap or for the cluster to be joined")
		case !healthy:
			etcdState = serviceState("etcd", true, false, "etcd is not a healthy voting member yet")
		default:
			etcdState = serviceState("etcd", true, true, "Health check successful")
		}

		services = append(services, etcdState)
	}

	kubeletReady := c.services.kubelet.ready()
	message := "Health check successful"

	if !kubeletReady {
		message = "Waiting for its credentials and its Node"
	}

	services = append(services, serviceState("kubelet", true, kubeletReady, message))

	return &machine.ServiceListResponse{Messages: []*machine.ServiceList{{Services: services}}}, nil
}

// Memory reports the machine's memory (the hardware file's), in KiB as /proc/meminfo does.
func (c *configured) Memory(context.Context, *emptypb.Empty) (*machine.MemoryResponse, error) {
	total := c.hardware.Memory / 1024

	return &machine.MemoryResponse{Messages: []*machine.Memory{{
		Meminfo: &machine.MemInfo{Memtotal: total, Memfree: total / 2, Memavailable: total / 2},
	}}}, nil
}
