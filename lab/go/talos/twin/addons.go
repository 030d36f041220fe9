package main

// What Talos deploys into a new cluster besides the bootstrap RBAC: kube-proxy, CoreDNS and
// Flannel, each unless the config turns it off (internal/app/machined/pkg/controllers/k8s/
// manifest.go chooses them; k8stemplates/kube-proxy.go, coredns.go and flannel.go hold their
// objects, here written again with the settings that matter: names, labels, images (Talos's
// own pkg/images for Flannel's), the Service address, the pod network, the tolerations that
// put them on every node). Their pods are kwok fakes like every pod of the box; `talosctl
// health` waits for them to be Ready.

import (
	"fmt"
	"strings"

	"github.com/siderolabs/talos/pkg/images"
	"github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/constants"
)

// addonManifests are the Manifests of the add-ons the config leaves on, with Talos's IDs
// (manifest.go, render).
func addonManifests(provider config.Provider) ([]renderedManifest, error) {
	cluster := provider.Cluster()

	var manifests []renderedManifest

	if cluster.CoreDNS().Enabled() {
		addresses, err := cluster.Network().DNSServiceIPs()
		if err != nil {
			return nil, fmt.Errorf("cluster.network.serviceSubnets: %w", err)
		}

		if len(addresses) == 0 {
			return nil, fmt.Errorf("cluster.network.serviceSubnets: no address for the DNS Service")
		}

		manifests = append(manifests,
			renderedManifest{"11-core-dns", coreDNS(cluster.CoreDNS().Image(), cluster.Network().DNSDomain())},
			renderedManifest{"11-core-dns-svc", coreDNSService(addresses[0].String())},
		)
	}

	if cluster.Network().CNI().Name() == constants.FlannelCNI {
		manifests = append(manifests, renderedManifest{"05-flannel", flannel(images.List(provider).Flannel, strings.Join(cluster.Network().PodCIDRs(), ","))})
	}

	if cluster.Proxy().Enabled() {
		manifests = append(manifests, renderedManifest{"10-kube-proxy", kubeProxy(cluster.Proxy().Image(), cluster.Proxy().Mode())})
	}

	return manifests, nil
}

// binding is a ClusterRoleBinding of a kube-system ServiceAccount to a ClusterRole.
func binding(name, role, account string) string {
	return fmt.Sprintf(`apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: %s}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: %s}
subjects: [{kind: ServiceAccount, name: %s, namespace: kube-system}]
`, name, role, account)
}

func serviceAccount(name string) string {
	return fmt.Sprintf("apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: %s, namespace: kube-system}\n", name)
}

// kubeProxy: on every node, reaching the API through the node's local endpoint with its
// ServiceAccount (the kubeconfig-in-cluster ConfigMap, kubeconfigInCluster).
func kubeProxy(image, mode string) string {
	if mode == "" {
		mode = "iptables"
	}

	return serviceAccount("kube-proxy") + "---\n" + binding("kube-proxy", "system:node-proxier", "kube-proxy") + "---\n" +
		fmt.Sprintf(`apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: kube-proxy
  namespace: kube-system
  labels: {k8s-app: kube-proxy, tier: node}
spec:
  selector: {matchLabels: {k8s-app: kube-proxy, tier: node}}
  updateStrategy: {type: RollingUpdate, rollingUpdate: {maxUnavailable: 1}}
  template:
    metadata: {labels: {k8s-app: kube-proxy, tier: node}}
    spec:
      hostNetwork: true
      priorityClassName: system-cluster-critical
      serviceAccountName: kube-proxy
      tolerations: [{operator: Exists, effect: NoSchedule}, {operator: Exists, effect: NoExecute}]
      containers:
      - name: kube-proxy
        image: %s
        command: [/usr/local/bin/kube-proxy, --proxy-mode=%s, --kubeconfig=/etc/kubernetes/kubeconfig, --hostname-override=$(NODE_NAME)]
        env: [{name: NODE_NAME, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}]
        securityContext: {privileged: true}
        volumeMounts: [{name: kubeconfig, mountPath: /etc/kubernetes, readOnly: true}]
      volumes: [{name: kubeconfig, configMap: {name: kubeconfig-in-cluster}}]
`, image, mode)
}

// kubeconfigInCluster is the kubeconfig kube-proxy reads: the node's local API endpoint with
// the pod's ServiceAccount (Talos renders it whether or not kube-proxy runs).
func kubeconfigInCluster(endpoint string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: ConfigMap
metadata: {name: kubeconfig-in-cluster, namespace: kube-system}
data:
  kubeconfig: |
    apiVersion: v1
    kind: Config
    clusters: [{name: local, cluster: {server: %s, certificate-authority: /var/run/secrets/kubernetes.io/serviceaccount/ca.crt}}]
    users: [{name: service-account, user: {tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token}}]
    contexts: [{name: local, context: {cluster: local, user: service-account}}]
    current-context: local
`, endpoint)
}

// coreDNS: two replicas, allowed on control planes (its Service is coreDNSService).
func coreDNS(image, domain string) string {
	return serviceAccount("coredns") + "---\n" + `apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
- {apiGroups: [""], resources: [endpoints, services, pods, namespaces], verbs: [list, watch]}
- {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [list, watch]}
---
` + binding("system:coredns", "system:coredns", "coredns") + "---\n" + fmt.Sprintf(`apiVersion: v1
kind: ConfigMap
metadata: {name: coredns, namespace: kube-system}
data:
  Corefile: |
    .:53 {
        errors
        health { lameduck 5s }
        ready
        log . { class error }
        prometheus :9153
        kubernetes %s in-addr.arpa ip6.arpa { pods insecure fallthrough in-addr.arpa ip6.arpa ttl 30 }
        forward . /etc/resolv.conf { max_concurrent 1000 }
        cache 30
        loop
        reload
        loadbalance
    }
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: coredns
  namespace: kube-system
  labels: {k8s-app: kube-dns, kubernetes.io/name: CoreDNS}
spec:
  replicas: 2
  selector: {matchLabels: {k8s-app: kube-dns}}
  strategy: {type: RollingUpdate, rollingUpdate: {maxUnavailable: 1}}
  template:
    metadata: {labels: {k8s-app: kube-dns}}
    spec:
      serviceAccountName: coredns
      priorityClassName: system-cluster-critical
      dnsPolicy: Default
      nodeSelector: {kubernetes.io/os: linux}
      tolerations:
      - {key: node-role.kubernetes.io/control-plane, operator: Exists, effect: NoSchedule}
      - {key: node.cloudprovider.kubernetes.io/uninitialized, operator: Exists, effect: NoSchedule}
      affinity:
        podAntiAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
          - weight: 100
            podAffinityTerm: {topologyKey: kubernetes.io/hostname, labelSelector: {matchExpressions: [{key: k8s-app, operator: In, values: [kube-dns]}]}}
      containers:
      - name: coredns
        image: %s
        args: [-conf, /etc/coredns/Corefile]
        ports: [{name: dns, containerPort: 53, protocol: UDP}, {name: dns-tcp, containerPort: 53, protocol: TCP}, {name: metrics, containerPort: 9153, protocol: TCP}]
        volumeMounts: [{name: config-volume, mountPath: /etc/coredns, readOnly: true}]
      volumes: [{name: config-volume, configMap: {name: coredns, items: [{key: Corefile, path: Corefile}]}}]
`, domain, image)
}

// coreDNSService: CoreDNS behind the cluster's DNS address.
func coreDNSService(address string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {k8s-app: kube-dns, kubernetes.io/cluster-service: "true", kubernetes.io/name: CoreDNS}
spec:
  clusterIP: %s
  selector: {k8s-app: kube-dns}
  ports:
  - {name: dns, port: 53, protocol: UDP, targetPort: 53}
  - {name: dns-tcp, port: 53, protocol: TCP, targetPort: 53}
  - {name: metrics, port: 9153, protocol: TCP, targetPort: 9153}
`, address)
}

// flannel: on every node, with the pod network the nodes' ranges come from (VXLAN on 4789).
func flannel(image, podNetwork string) string {
	return serviceAccount("flannel") + "---\n" + `apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: flannel}
rules:
- {apiGroups: [""], resources: [pods], verbs: [get]}
- {apiGroups: [""], resources: [nodes], verbs: [get, list, watch]}
- {apiGroups: [""], resources: [nodes/status], verbs: [patch]}
---
` + binding("flannel", "flannel", "flannel") + "---\n" + fmt.Sprintf(`apiVersion: v1
kind: ConfigMap
metadata:
  name: kube-flannel-cfg
  namespace: kube-system
  labels: {k8s-app: flannel, tier: node}
data:
  net-conf.json: |-
    {"Network": "%s", "Backend": {"Type": "vxlan", "Port": 4789}}
---
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: kube-flannel
  namespace: kube-system
  labels: {k8s-app: flannel, tier: node}
spec:
  selector: {matchLabels: {k8s-app: flannel, tier: node}}
  template:
    metadata: {labels: {k8s-app: flannel, tier: node}}
    spec:
      hostNetwork: true
      priorityClassName: system-node-critical
      serviceAccountName: flannel
      tolerations: [{operator: Exists, effect: NoSchedule}, {operator: Exists, effect: NoExecute}]
      containers:
      - name: kube-flannel
        image: %s
        args: [--ip-masq, --kube-subnet-mgr]
        env: [{name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}, {name: POD_NAMESPACE, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}]
        securityContext: {privileged: true}
        volumeMounts: [{name: flannel-cfg, mountPath: /etc/kube-flannel/}]
      volumes: [{name: flannel-cfg, configMap: {name: kube-flannel-cfg}}]
`, podNetwork, image)
}
