package main

// What `talosctl health` reads. It runs on the node (`--server`, the default): the node runs
// Talos's own checks (pkg/cluster/check: etcd, apid, memory and disk sizes, diagnostics,
// kubelet, boot sequence, then Kubernetes: nodes, static pods, control plane, kube-proxy,
// CoreDNS, schedulable) against every node of the cluster, through its own apid, and streams
// their progress (internal/app/machined/internal/server/v1alpha1/v1alpha1_cluster.go). The
// cluster is the lists the caller gives, else the discovered members (discovery.go), else the
// Kubernetes Nodes.
// Every node then answers what the checks ask of it: its services, its memory, its
// EPHEMERAL volume, its diagnostics, its static pods, its boot stage.

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/siderolabs/gen/xslices"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/siderolabs/talos/pkg/cluster"
	"github.com/siderolabs/talos/pkg/cluster/check"
	"github.com/siderolabs/talos/pkg/conditions"
	clusterapi "github.com/siderolabs/talos/pkg/machinery/api/cluster"
	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/client"
	configmachine "github.com/siderolabs/talos/pkg/machinery/config/machine"
	"github.com/siderolabs/talos/pkg/machinery/constants"
	clusterres "github.com/siderolabs/talos/pkg/machinery/resources/cluster"
)

// health serves the ClusterService (only HealthCheck).
type health struct {
	clusterapi.UnimplementedClusterServiceServer

	// The machine's own apid, on its unix socket (Talos's LocalClientProvider).
	apidSocket string
	// The machine's resources, where the discovered members are.
	resources state.State
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

	clients := &localClients{socket: h.apidSocket}
	defer clients.Close() //nolint:errcheck

	kubernetes := &cluster.KubernetesClient{ClientProvider: clients, ForceEndpoint: info.GetForceEndpoint()}
	defer kubernetes.K8sClose() //nolint:errcheck

	ctx, cancel := context.WithTimeout(srv.Context(), in.GetWaitTimeout().AsDuration())
	defer cancel()

	nodes, err := h.clusterNodes(ctx, info, kubernetes)
	if err != nil {
		return err
	}

	state := struct {
		cluster.ClientProvider
		cluster.K8sProvider
		cluster.Info
	}{clients, kubernetes, nodes}

	addresses := xslices.Map(state.Nodes(), func(node cluster.NodeInfo) string { return node.InternalIP.String() })
	if err = srv.Send(&clusterapi.HealthCheckProgress{Message: fmt.Sprintf("discovered nodes: %q", addresses)}); err != nil {
		return err
	}

	return check.Wait(ctx, &state, append(check.DefaultClusterChecks(), check.ExtraClusterChecks()...), &progress{srv: srv})
}

// clusterNodes is the cluster to check, found as Talos finds it (v1alpha1_cluster.go,
// buildClusterInfo): the lists given, else the discovered members, else the Kubernetes Nodes.
func (h *health) clusterNodes(ctx context.Context, info *clusterapi.ClusterInfo, kubernetes *cluster.KubernetesClient) (cluster.Info, error) {
	if len(info.GetControlPlaneNodes()) > 0 || len(info.GetWorkerNodes()) > 0 {
		controlPlanes, err := cluster.IPsToNodeInfos(info.GetControlPlaneNodes())
		if err != nil {
			return nil, err
		}

		workers, err := cluster.IPsToNodeInfos(info.GetWorkerNodes())
		if err != nil {
			return nil, err
		}

		return &nodeLists{byType: map[configmachine.Type][]cluster.NodeInfo{
			configmachine.TypeControlPlane: controlPlanes, configmachine.TypeWorker: workers,
		}}, nil
	}

	members, err := safe.StateListAll[*clusterres.Member](ctx, h.resources)
	if err == nil && members.Len() > 0 {
		return check.NewDiscoveredClusterInfo(slices.Collect(members.All()))
	}

	client, err := kubernetes.K8sClient(ctx)
	if err != nil {
		return nil, err
	}

	nodes, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}

	byType := map[configmachine.Type][]cluster.NodeInfo{}

	for _, node := range nodes.Items {
		var internal []netip.Addr

		for _, address := range node.Status.Addresses {
			if parsed, err := netip.ParseAddr(address.Address); err == nil && address.Type == corev1.NodeInternalIP {
				internal = append(internal, parsed)
			}
		}

		if len(internal) == 0 {
			return nil, fmt.Errorf("node %s has no internal address", node.Name)
		}

		kind := configmachine.TypeWorker
		if _, ok := node.Labels[constants.LabelNodeRoleControlPlane]; ok {
			kind = configmachine.TypeControlPlane
		}

		byType[kind] = append(byType[kind], cluster.NodeInfo{InternalIP: internal[0], IPs: internal})
	}

	return &nodeLists{byType: byType}, nil
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
