package main

// What a control plane deploys into the cluster once its API answers
// (internal/app/machined/pkg/controllers/k8s/manifest.go lists them, manifest_apply.go
// applies them): the kubelets' bootstrap token and the RBAC that lets a kubelet holding it ask
// for, get and renew its client certificate, kube-proxy, CoreDNS and Flannel (addons.go), then
// the config's inline manifests. Each is also a Manifest resource, which is what
// `talosctl upgrade-k8s` reads and applies again. Every control
// plane tries, one at a time under an etcd lock; an object that exists is left as it is
// (Talos creates, it never updates: changing an inline manifest later changes nothing in the
// cluster).

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"sort"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/restmapper"

	"go.etcd.io/etcd/client/v3/concurrency"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"

	"github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/constants"
	"github.com/siderolabs/talos/pkg/machinery/resources/k8s"
)

// renderedManifest is one of Talos's Manifest resources: its ID (the order of apply: Talos
// applies them sorted by it) and its objects as YAML documents.
type renderedManifest struct {
	id        string
	documents string
}

// talosManifests are the Manifests a control plane renders from its config
// (controllers/k8s/manifest.go, render, with Talos's IDs) and the inline manifests as
// `99-<name>` (extra_manifest.go: an inline manifest's priority is 99). `talosctl upgrade-k8s`
// lists them and applies each object that differs, so an upgrade re-applies them all.
func talosManifests(provider config.Provider) ([]renderedManifest, error) {
	bootstrap, err := bootstrapManifests(provider)
	if err != nil {
		return nil, err
	}

	addons, err := addonManifests(provider)
	if err != nil {
		return nil, err
	}

	manifests := append(bootstrap,
		renderedManifest{"11-kube-config-in-cluster", kubeconfigInCluster(localEndpoint(provider))},
		renderedManifest{"11-talos-node-rbac-template", talosNodesRBAC},
	)
	manifests = append(manifests, addons...)

	for _, inline := range provider.Cluster().InlineManifests() {
		manifests = append(manifests, renderedManifest{"99-" + inline.Name(), inline.Contents()})
	}

	sort.SliceStable(manifests, func(i, j int) bool { return manifests[i].id < manifests[j].id })

	return manifests, nil
}

// bootstrapManifests are the token and the three bindings (k8stemplates/kubelet.go, csr.go and
// talos.go). The token's Secret is a typed object marshalled as Talos builds it: a token ID
// such as "9929e5" written into YAML by hand reads back as a number, and the API server refuses
// the Secret (the interrupted-install rehearsal met one).
func bootstrapManifests(provider config.Provider) ([]renderedManifest, error) {
	token := provider.Cluster().Token()

	secret, err := sigsyaml.Marshal(&corev1.Secret{
		TypeMeta:   metav1.TypeMeta{Kind: "Secret", APIVersion: "v1"},
		ObjectMeta: metav1.ObjectMeta{Name: "bootstrap-token-" + token.ID(), Namespace: "kube-system"},
		Type:       corev1.SecretType("bootstrap.kubernetes.io/token"),
		StringData: map[string]string{
			"token-id":                       token.ID(),
			"token-secret":                   token.Secret(),
			"usage-bootstrap-authentication": "true",
			"auth-extra-groups":              "system:bootstrappers:nodes",
		},
	})
	if err != nil {
		return nil, err
	}

	binding := func(name, role string, groups ...string) string {
		text := fmt.Sprintf("apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: %s\n"+
			"roleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: %s\nsubjects:\n", name, role)
		for _, group := range groups {
			text += fmt.Sprintf("- apiGroup: rbac.authorization.k8s.io\n  kind: Group\n  name: %s\n", group)
		}

		return text
	}

	return []renderedManifest{
		{"00-kubelet-bootstrapping-token", string(secret)},
		{"01-csr-node-bootstrap", binding("system-bootstrap-node-bootstrapper", "system:node-bootstrapper", "system:bootstrappers:nodes", "system:nodes")},
		{"01-csr-approver-role-binding", binding("system-bootstrap-approve-node-client-csr", "system:certificates.k8s.io:certificatesigningrequests:nodeclient", "system:bootstrappers:nodes")},
		{"01-csr-renewal-role-binding", binding("system-bootstrap-node-renewal", "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient", "system:nodes")},
	}, nil
}

// talosNodesRBAC lets the nodes read EndpointSlices, where Talos finds the API servers'
// endpoints (k8stemplates/talos.go).
const talosNodesRBAC = `apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: system:talos-nodes
  labels: {kubernetes.io/bootstrapping: rbac-defaults}
rules:
- {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [get, list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: system:talos-nodes
  labels: {kubernetes.io/bootstrapping: rbac-defaults}
  annotations: {rbac.authorization.kubernetes.io/autoupdate: "true"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: system:talos-nodes}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: Group, name: system:nodes}]
`

// publishManifests records the Manifests as resources (controlplane namespace), each changed
// only when its objects do, and removes those the config no longer renders, as Talos's
// ManifestController does whenever the config changes.
func publishManifests(ctx context.Context, resources state.State, provider config.Provider) error {
	manifests, err := talosManifests(provider)
	if err != nil {
		return err
	}

	rendered := map[string]bool{}

	for _, manifest := range manifests {
		objects, err := parseObjects(manifest.documents)
		if err != nil {
			return fmt.Errorf("manifest %s: %w", manifest.id, err)
		}

		res := k8s.NewManifest(k8s.ControlPlaneNamespaceName, manifest.id)
		for _, object := range objects {
			res.TypedSpec().Items = append(res.TypedSpec().Items, k8s.SingleManifest{Object: object.Object})
		}

		if err = putResource(ctx, resources, res); err != nil {
			return err
		}

		rendered[manifest.id] = true
	}

	published, err := safe.StateListAll[*k8s.Manifest](ctx, resources)
	if err != nil {
		return err
	}

	for res := range published.All() {
		if !rendered[res.Metadata().ID()] {
			if err = resources.Destroy(ctx, res.Metadata()); err != nil {
				return err
			}
		}
	}

	return nil
}

// kwokStandIn is not Talos's: it lets each node's kwok (the stand-in for its kubelet's
// containers, kubelet.go), which runs with that kubelet's credentials, list and update what a
// kubelet's container side touches. The Node authorizer limits a kubelet to its own Node and
// pods; kwok watches them through cluster-wide lists, so RBAC grants the lists too. Only the
// box's clusters carry it.
const kwokStandIn = `apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: talos-ha-lab:kwok-node-stand-in
rules:
- apiGroups: [""]
  resources: [nodes, nodes/status, pods, pods/status]
  verbs: [get, list, watch, update, patch, delete]
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [get, list, watch, create, update, patch]
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create, patch, update]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: talos-ha-lab:kwok-node-stand-in
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: talos-ha-lab:kwok-node-stand-in
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: Group
  name: system:nodes
`

// deployManifests applies the bootstrap manifests and the inline manifests until it succeeds
// once, then stops (the machine's next boot tries again, and finds everything there).
func deployManifests(ctx context.Context, k *kubelet, etcd *etcdMember) {
	for ctx.Err() == nil {
		err := deployOnce(ctx, k, etcd)
		if err == nil {
			log.Printf("manifests: bootstrap and inline manifests are in the cluster")

			return
		}

		log.Printf("manifests: %v", err)
		time.Sleep(3 * time.Second)
	}
}

func deployOnce(ctx context.Context, k *kubelet, etcd *etcdMember) error {
	manifests, err := talosManifests(k.config)
	if err != nil {
		return err
	}

	documents := []string{kwokStandIn}
	for _, manifest := range manifests {
		documents = append(documents, manifest.documents)
	}

	var objects []*unstructured.Unstructured

	for _, document := range documents {
		parsed, err := parseObjects(document)
		if err != nil {
			return err
		}

		objects = append(objects, parsed...)
	}

	// Namespaces first, then CRDs, then the rest in their order (manifest_apply.go).
	rank := func(object *unstructured.Unstructured) int {
		switch object.GetKind() {
		case "Namespace":
			return 0
		case "CustomResourceDefinition":
			return 1
		default:
			return 2
		}
	}
	sort.SliceStable(objects, func(i, j int) bool { return rank(objects[i]) < rank(objects[j]) })

	restConfig, err := k.admin()
	if err != nil {
		return err
	}

	discoveryClient, err := discovery.NewDiscoveryClientForConfig(restConfig)
	if err != nil {
		return err
	}

	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(discoveryClient))

	dyn, err := dynamic.NewForConfig(restConfig)
	if err != nil {
		return err
	}

	client, err := etcd.localClient()
	if err != nil {
		return err
	}
	defer client.Close() //nolint:errcheck

	session, err := concurrency.NewSession(client)
	if err != nil {
		return err
	}
	defer session.Close() //nolint:errcheck

	mutex := concurrency.NewMutex(session, constants.EtcdTalosManifestApplyMutex)
	if err = mutex.Lock(ctx); err != nil {
		return err
	}
	defer mutex.Unlock(context.Background()) //nolint:errcheck

	var malformed []error

	for _, object := range objects {
		gvk := object.GroupVersionKind()
		name := fmt.Sprintf("%s %s", gvk.Kind, object.GetName())

		mapping, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			if meta.IsNoMatchError(err) {
				malformed = append(malformed, fmt.Errorf("%s: %w", name, err))

				continue
			}

			return fmt.Errorf("%s: %w", name, err)
		}

		resource := dyn.Resource(mapping.Resource)

		var target dynamic.ResourceInterface = resource

		if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
			if object.GetNamespace() == "" {
				object.SetNamespace(metav1.NamespaceDefault)
			}

			target = resource.Namespace(object.GetNamespace())
		}

		if _, err = target.Get(ctx, object.GetName(), metav1.GetOptions{}); err == nil {
			continue
		} else if !apierrors.IsNotFound(err) {
			return fmt.Errorf("%s: %w", name, err)
		}

		if _, err = target.Create(ctx, object, metav1.CreateOptions{FieldManager: "talos"}); err != nil {
			switch {
			case apierrors.IsAlreadyExists(err):
			case apierrors.IsInvalid(err), apierrors.IsBadRequest(err), apierrors.IsMethodNotSupported(err):
				malformed = append(malformed, fmt.Errorf("%s: %w", name, err))
			default:
				return fmt.Errorf("%s: %w", name, err)
			}
		}
	}

	// A malformed object does not stop the others, but the pass fails and is tried again, as
	// Talos's controller returns the errors it gathered and is run again (manifest_apply.go).
	return errors.Join(malformed...)
}

// parseObjects splits a multi-document YAML into objects (empty documents skipped).
func parseObjects(text string) ([]*unstructured.Unstructured, error) {
	decoder := yaml.NewYAMLOrJSONDecoder(bytes.NewBufferString(text), 4096)

	var objects []*unstructured.Unstructured

	for {
		var object map[string]any

		err := decoder.Decode(&object)
		if errors.Is(err, io.EOF) {
			return objects, nil
		}

		if err != nil {
			return nil, err
		}

		if len(object) > 0 {
			objects = append(objects, &unstructured.Unstructured{Object: object})
		}
	}
}
