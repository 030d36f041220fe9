package main

// Discovery, as Talos's cluster controllers do it
// (internal/app/machined/pkg/controllers/cluster/):
//
//   - node_identity.go: the `Identities` "local" of the `cluster` namespace, a random node ID
//     made at the first boot and kept on STATE (node-identity.yaml), so it survives reboots and
//     is new after STATE is wiped;
//   - local_affiliate.go: the machine's own `Affiliates` (its node ID, hostname, node name, type,
//     "Talos (<tag>)", addresses, and the API server's port on a control plane);
//   - config.go and discovery_service.go: with `cluster.discovery.enabled` and the service
//     registry on, the affiliate is sent to the discovery service at the registry's endpoint,
//     encrypted with `cluster.secret` under `cluster.id`, and every other machine's comes back
//     (raw `service/<id>` affiliates, merged by node ID: affiliate_merge.go);
//   - member.go: one `Members` per affiliate, named by its node name: what `talosctl get
//     members` lists and what the health check discovers the cluster from.
//
// The Kubernetes registry (Node annotations) is not modelled; the seed disables it.

import (
	"context"
	"crypto/aes"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"log"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/siderolabs/discovery-api/api/v1alpha1/client/pb"
	discoveryclient "github.com/siderolabs/discovery-client/pkg/client"
	"github.com/siderolabs/gen/xslices"
	"github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/config/machine"
	"github.com/siderolabs/talos/pkg/machinery/constants"
	"github.com/siderolabs/talos/pkg/machinery/resources/cluster"
	"github.com/siderolabs/talos/pkg/machinery/version"
	"go.uber.org/zap"
	"gopkg.in/yaml.v3"
)

// nodeIdentity reads the machine's node ID from STATE, or makes one (node_identity.go: 32
// random bytes, base62 there; hex here, which nothing reads back as bytes).
func nodeIdentity(stateDir string) (string, error) {
	file := filepath.Join(stateDir, constants.NodeIdentityFilename)

	var stored struct {
		NodeID string `yaml:"nodeId"`
	}

	if raw, err := os.ReadFile(file); err == nil && yaml.Unmarshal(raw, &stored) == nil && stored.NodeID != "" {
		return stored.NodeID, nil
	}

	buf := make([]byte, constants.DefaultNodeIdentitySize)
	if _, err := rand.Read(buf); err != nil {
		return "", err
	}

	stored.NodeID = fmt.Sprintf("%x", buf)

	raw, err := yaml.Marshal(stored)
	if err != nil {
		return "", err
	}

	return stored.NodeID, os.WriteFile(file, raw, 0o600)
}

// localAffiliate is this machine as local_affiliate.go describes it.
func localAffiliate(provider config.Provider, nodeID, name string, address netip.Addr) *cluster.AffiliateSpec {
	spec := &cluster.AffiliateSpec{
		NodeID:          nodeID,
		Hostname:        name,
		Nodename:        name,
		MachineType:     provider.Machine().Type(),
		OperatingSystem: fmt.Sprintf("%s (%s)", version.Name, version.Tag),
		Addresses:       []netip.Addr{address},
	}

	if provider.Machine().Type().IsControlPlane() {
		spec.ControlPlane = &cluster.ControlPlane{APIServerPort: provider.Cluster().LocalAPIServerPort()}
	}

	return spec
}

// discoverer keeps a machine's discovery resources from its own affiliate and the discovered ones.
type discoverer struct {
	resources state.State
	local     *cluster.AffiliateSpec
}

// publishDiscovery records the identity and the local affiliate and member, then (with the
// service registry on) runs the discovery client until ctx ends.
func publishDiscovery(ctx context.Context, resources state.State, provider config.Provider, stateDir, name string, address netip.Addr) error {
	nodeID, err := nodeIdentity(stateDir)
	if err != nil {
		return fmt.Errorf("node identity: %w", err)
	}

	identity := cluster.NewIdentity(cluster.NamespaceName, cluster.LocalIdentity)
	identity.TypedSpec().NodeID = nodeID

	if err = putResource(ctx, resources, identity); err != nil {
		return err
	}

	d := &discoverer{resources: resources, local: localAffiliate(provider, nodeID, name, address)}

	discoveryConfig := provider.Cluster().Discovery()
	if !discoveryConfig.Enabled() {
		return nil
	}

	if err = d.sync(ctx, nil); err != nil {
		return err
	}

	if discoveryConfig.Registries().Service().Enabled() {
		go d.runService(ctx, provider)
	}

	return nil
}

// serviceOptions are the discovery client's settings from the config (config.go).
func serviceOptions(provider config.Provider, nodeID string) (discoveryclient.Options, error) {
	endpoint, err := url.ParseRequestURI(provider.Cluster().Discovery().Registries().Service().Endpoint())
	if err != nil {
		return discoveryclient.Options{}, fmt.Errorf("cluster.discovery.registries.service.endpoint: %w", err)
	}

	port := endpoint.Port()
	if port == "" {
		port = "443"
		if endpoint.Scheme == "http" {
			port = "80"
		}
	}

	key, err := base64.StdEncoding.DecodeString(provider.Cluster().Secret())
	if err != nil {
		return discoveryclient.Options{}, fmt.Errorf("cluster.secret: %w", err)
	}

	cipherBlock, err := aes.NewCipher(key)
	if err != nil {
		return discoveryclient.Options{}, fmt.Errorf("cluster.secret: %w", err)
	}

	return discoveryclient.Options{
		Cipher:        cipherBlock,
		Endpoint:      net.JoinHostPort(endpoint.Hostname(), port),
		ClusterID:     provider.Cluster().ID(),
		AffiliateID:   nodeID,
		TTL:           30 * time.Minute,
		Insecure:      endpoint.Scheme == "http",
		ClientVersion: version.Tag,
	}, nil
}

// runService publishes the local affiliate to the discovery service and mirrors the others'.
func (d *discoverer) runService(ctx context.Context, provider config.Provider) {
	options, err := serviceOptions(provider, d.local.NodeID)
	if err != nil {
		log.Printf("discovery: %v", err)

		return
	}

	client, err := discoveryclient.NewClient(options)
	if err != nil {
		log.Printf("discovery: %v", err)

		return
	}

	if err = client.SetLocalData(&discoveryclient.Affiliate{Affiliate: pbAffiliate(d.local)}, nil); err != nil {
		log.Printf("discovery: %v", err)

		return
	}

	notify := make(chan struct{}, 1)

	go func() {
		if err := client.Run(ctx, discoveryLogger(), notify); err != nil && ctx.Err() == nil {
			log.Printf("discovery: the client stopped: %v", err)
		}
	}()

	for {
		select {
		case <-ctx.Done():
			return
		case <-notify:
		}

		if err := d.sync(ctx, client.GetAffiliates()); err != nil {
			log.Printf("discovery: %v", err)
		}
	}
}

// pbAffiliate is the affiliate as the discovery service carries it.
func pbAffiliate(spec *cluster.AffiliateSpec) *pb.Affiliate {
	affiliate := &pb.Affiliate{
		NodeId:          spec.NodeID,
		Hostname:        spec.Hostname,
		Nodename:        spec.Nodename,
		MachineType:     spec.MachineType.String(),
		OperatingSystem: spec.OperatingSystem,
		Addresses:       xslices.Map(spec.Addresses, func(address netip.Addr) []byte { return address.AsSlice() }),
	}

	if spec.ControlPlane != nil {
		affiliate.ControlPlane = &pb.ControlPlane{ApiServerPort: uint32(spec.ControlPlane.APIServerPort)}
	}

	return affiliate
}

// specAffiliate is an affiliate the service returned, as a resource spec.
func specAffiliate(affiliate *pb.Affiliate) *cluster.AffiliateSpec {
	machineType, err := machine.ParseType(affiliate.MachineType)
	if err != nil {
		machineType = machine.TypeUnknown
	}

	spec := &cluster.AffiliateSpec{
		NodeID:          affiliate.NodeId,
		Hostname:        affiliate.Hostname,
		Nodename:        affiliate.Nodename,
		MachineType:     machineType,
		OperatingSystem: affiliate.OperatingSystem,
	}

	for _, raw := range affiliate.Addresses {
		if address, ok := netip.AddrFromSlice(raw); ok {
			spec.Addresses = append(spec.Addresses, address)
		}
	}

	if affiliate.ControlPlane != nil {
		spec.ControlPlane = &cluster.ControlPlane{APIServerPort: int(affiliate.ControlPlane.ApiServerPort)}
	}

	return spec
}

// sync makes the affiliates and members what the local affiliate and the discovered ones say:
// each discovered one raw (`cluster-raw`, "service/<node ID>"), every one merged (`cluster`, by
// node ID), and a Member per node name; the ones gone are removed.
func (d *discoverer) sync(ctx context.Context, discovered []*discoveryclient.Affiliate) error {
	var published []resource.Resource

	merged := []*cluster.AffiliateSpec{d.local}

	for _, other := range discovered {
		spec := specAffiliate(other.Affiliate)
		merged = append(merged, spec)

		raw := cluster.NewAffiliate(cluster.RawNamespaceName, "service/"+spec.NodeID)
		*raw.TypedSpec() = *spec
		published = append(published, raw)
	}

	for _, spec := range merged {
		affiliate := cluster.NewAffiliate(cluster.NamespaceName, spec.NodeID)
		*affiliate.TypedSpec() = *spec
		published = append(published, affiliate)

		if spec.Nodename == "" {
			continue
		}

		member := cluster.NewMember(cluster.NamespaceName, spec.Nodename)
		*member.TypedSpec() = cluster.MemberSpec{
			NodeID: spec.NodeID, Addresses: spec.Addresses, Hostname: spec.Hostname, MachineType: spec.MachineType,
			OperatingSystem: spec.OperatingSystem, ControlPlane: spec.ControlPlane,
		}
		published = append(published, member)
	}

	kept := map[string]bool{}

	for _, res := range published {
		if err := putResource(ctx, d.resources, res); err != nil {
			return err
		}

		kept[resource.String(res)] = true
	}

	for _, kind := range []resource.Metadata{
		resource.NewMetadata(cluster.RawNamespaceName, cluster.AffiliateType, "", resource.VersionUndefined),
		resource.NewMetadata(cluster.NamespaceName, cluster.AffiliateType, "", resource.VersionUndefined),
		resource.NewMetadata(cluster.NamespaceName, cluster.MemberType, "", resource.VersionUndefined),
	} {
		list, err := d.resources.List(ctx, kind)
		if err != nil {
			return err
		}

		for _, res := range list.Items {
			if kept[resource.String(res)] {
				continue
			}

			if err = d.resources.Destroy(ctx, res.Metadata()); err != nil && !state.IsNotFoundError(err) {
				return err
			}
		}
	}

	return nil
}

// discoveryLogger writes the discovery client's warnings and errors (a service it cannot reach)
// to the twin's log.
func discoveryLogger() *zap.Logger {
	config := zap.NewProductionConfig()
	config.Level = zap.NewAtomicLevelAt(zap.WarnLevel)
	config.Encoding = "console"
	config.OutputPaths = []string{"stderr"}

	logger, err := config.Build()
	if err != nil {
		return zap.NewNop()
	}

	return logger.Named("discovery")
}
