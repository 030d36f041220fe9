package main

// What a control plane deploys into the cluster once its API answers
// (internal/app/machined/pkg/controllers/k8s/manifest.go lists them, manifest_apply.go
// applies them): the kubelets' bootstrap token and the RBAC that lets a kubelet holding it ask
// for, get and renew its client certificate, kube-proxy, CoreDNS and Flannel (addons.go), then
// the config's inline manifests. Every control
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

	"github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/constants"
)

// bootstrapManifests are the token and the three bindings (k8stemplates/csr.go and talos.go).
func bootstrapManifests(provider config.Provider) string {
	token := provider.Cluster().Token()

	binding := func(name, role string, groups ...string) string {
		text := fmt.Sprintf("apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: %s\n"+
			"roleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: %s\nsubjects:\n", name, role)
		for _, group := range groups {
			text += fmt.Sprintf("- apiGroup: rbac.authorization.k8s.io\n  kind: Group\n  name: %s\n", group)
		}

		return text
	}

	return fmt.Sprintf("apiVersion: v1\nkind: Secret\nmetadata:\n  name: bootstrap-token-%s\n  namespace: kube-system\n"+
		"type: bootstrap.kubernetes.io/token\nstringData:\n  token-id: %s\n  token-secret: %s\n"+
		"  usage-bootstrap-authentication: \"true\"\n  auth-extra-groups: system:bootstrappers:nodes\n",
		token.ID(), token.ID(), token.Secret()) +
		"---\n" + binding("system-bootstrap-node-bootstrapper", "system:node-bootstrapper", "system:bootstrappers:nodes", "system:nodes") +
		"---\n" + binding("system-bootstrap-approve-node-client-csr", "system:certificates.k8s.io:certificatesigningrequests:nodeclient", "system:bootstrappers:nodes") +
		"---\n" + binding("system-bootstrap-node-renewal", "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient", "system:nodes")
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
	addons, err := addonManifests(k.config)
	if err != nil {
		return err
	}

	documents := append([]string{bootstrapManifests(k.config), kwokStandIn}, addons...)
	for _, manifest := range k.config.Cluster().InlineManifests() {
		documents = append(documents, manifest.Contents())
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

	// A malformed object is reported and skipped; the rest stay applied (as Talos does).
	for _, err := range malformed {
		log.Printf("manifests: %v", err)
	}

	return nil
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
