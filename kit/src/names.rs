//! Names one stage creates and a later stage relies on. They live here, not in the stage
//! that creates them, because a stage crate depends on `kit` alone: stage 04 finds stage
//! 02's pool by this name without linking stage 02.

/// Stage 01's binary, the one stage that talks to Talos and bootstraps etcd.
pub const TALOS_BOOTSTRAP_STAGE: &str = "talos-bootstrap";

/// MetalLB's namespace (stage 02).
pub const METALLB_NAMESPACE: &str = "metallb-system";
/// The MetalLB pool of the fixed entry-point addresses (Traefik, Envoy Gateway): assigned
/// only to a Service that asks for one by address.
pub const ENTRYPOINT_POOL: &str = "talos-ha-entrypoints";
/// The MetalLB pool any other LoadBalancer Service draws from.
pub const GENERAL_POOL: &str = "talos-ha-pool";
/// The annotation a Service uses to ask MetalLB for a specific address.
pub const METALLB_IP_ANNOTATION: &str = "metallb.io/loadBalancerIPs";

/// Traefik's namespace (stage 04), where stage 05 also keeps the entry point's default
/// certificate.
pub const TRAEFIK_NAMESPACE: &str = "traefik";

/// cert-manager's namespace (stage 05), where the cluster CA's key pair is kept.
pub const CERT_MANAGER_NAMESPACE: &str = "cert-manager";
/// The ClusterIssuer backed by the cluster's private CA (stage 05); every later stage
/// asks it for its service's certificate.
pub const CA_ISSUER: &str = "talos-ha-ca";
/// The Secret (in cert-manager's namespace) holding the CA's key pair, which `CA_ISSUER`
/// signs with; stage 05's CA Certificate of the same name writes it.
pub const CA_SECRET: &str = "talos-ha-ca";

/// MetalLB's IPAddressPool type, for stages that read pools.
pub fn ip_address_pool() -> kube::discovery::ApiResource {
    kube::discovery::ApiResource {
        group: "metallb.io".into(),
        version: "v1beta1".into(),
        api_version: "metallb.io/v1beta1".into(),
        kind: "IPAddressPool".into(),
        plural: "ipaddresspools".into(),
    }
}

/// The Gateway of stage 08 that HTTPRoutes attach to, and its namespace (where Envoy
/// Gateway's controller runs).
pub const GATEWAY: &str = "talos-ha";
pub const GATEWAY_NAMESPACE: &str = "envoy-gateway-system";
/// The StorageClass of stage 06.
pub const STORAGE_CLASS: &str = "longhorn";

/// A Gateway API (v1) type: `Gateway`, `GatewayClass`, `HTTPRoute`.
pub fn gateway_api_resource(kind: &str, plural: &str) -> kube::discovery::ApiResource {
    kube::discovery::ApiResource {
        group: "gateway.networking.k8s.io".into(),
        version: "v1".into(),
        api_version: "gateway.networking.k8s.io/v1".into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}
