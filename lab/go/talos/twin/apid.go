package main

// apid: the front door of a configured machine (internal/app/apid). It holds the API's mutual
// TLS on port 50000 and routes each call by its metadata, without knowing the call:
//
//   - no "node"/"nodes" metadata, or "proxyfrom" (a call another apid forwarded here): to this
//     machine's own services (machined, behind a unix socket);
//   - "node" (one target): straight to that machine's apid;
//   - "nodes" (talosctl -n a,b,…): to every named machine's apid at once, each answer tagged
//     with the node it came from and merged into one reply, an error from one node becoming
//     that node's entry instead of failing the call.
//
// So `talosctl -e <control plane> -n <worker>` reaches a worker through a control plane, as on
// Talos. Follows internal/app/apid/pkg/director/director.go (the routing) and
// internal/app/apid/pkg/backend/apid.go (forwarding and tagging); the proxying itself is
// siderolabs/grpc-proxy, as in Talos, and the local side Talos's pkg/grpc/proxy/backend.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/siderolabs/grpc-proxy/proxy"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	talosx509 "github.com/siderolabs/crypto/x509"

	"github.com/siderolabs/talos/pkg/grpc/middleware/authz"
	"github.com/siderolabs/talos/pkg/grpc/proxy/backend"
	"github.com/siderolabs/talos/pkg/machinery/api/common"
	"github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/constants"
)

type apid struct {
	self  string
	local proxy.Backend
	// How this machine dials other machines' apid: a client certificate from the OS CA.
	remoteTLS *tls.Config

	mu      sync.Mutex
	remotes map[string]*remoteAPID
}

// newAPID routes to machined at socket; on a control plane it can forward to other machines
// (a worker's config has no OS CA key to make itself a client certificate: it answers only
// for itself).
func newAPID(provider config.Provider, address, socket string) (*apid, error) {
	front := &apid{self: address, local: backend.NewLocal("machined", socket), remotes: map[string]*remoteAPID{}}

	issuing := provider.Machine().Security().IssuingCA()
	if len(issuing.Key) == 0 {
		return front, nil
	}

	ca, err := talosx509.NewCertificateAuthorityFromCertificateAndKey(issuing)
	if err != nil {
		return nil, fmt.Errorf("machine.ca: %w", err)
	}

	client, err := talosx509.NewKeyPair(ca,
		talosx509.CommonName(address),
		talosx509.Organization("os:impersonator"),
		talosx509.ExtKeyUsage([]x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}),
		talosx509.NotAfter(time.Now().Add(24*time.Hour)),
	)
	if err != nil {
		return nil, err
	}

	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(issuing.Crt)

	front.remoteTLS = &tls.Config{Certificates: []tls.Certificate{*client.Certificate}, RootCAs: roots, MinVersion: tls.VersionTLS13}

	return front, nil
}

// server is the front: every method goes through the director. With serverTLS it is the API's
// mutual TLS (port 50000): the caller's roles are its certificate's organizations (a forwarding
// apid's, os:impersonator, pass the caller's on in metadata); without, the local socket, whose
// callers are this machine's own and get every role (apid's main.go, authz.Injector).
func (a *apid) server(serverTLS *tls.Config) *grpc.Server {
	injector := &authz.Injector{Mode: authz.Disabled}
	options := []grpc.ServerOption{
		grpc.ForceServerCodecV2(proxy.Codec()),
		grpc.UnknownServiceHandler(proxy.TransparentHandler(a.director, proxy.WithStreamedDetector(streamed))),
	}

	if serverTLS != nil {
		injector.Mode = authz.Enabled
		options = append(options, grpc.Creds(credentials.NewTLS(serverTLS)))
	}

	return grpc.NewServer(append(options, grpc.StreamInterceptor(injector.StreamInterceptor()))...)
}

func (a *apid) director(ctx context.Context, method string) (proxy.Mode, []proxy.Backend, error) {
	md, _ := metadata.FromIncomingContext(ctx)

	if _, forwarded := md["proxyfrom"]; forwarded {
		return proxy.One2One, []proxy.Backend{a.local}, nil
	}

	nodes, many := md["nodes"]
	node, one := md["node"]

	switch {
	case many:
		// COSI calls do not merge: one node at a time (director.go).
		if strings.HasPrefix(method, "/cosi.") {
			if len(nodes) != 1 {
				return proxy.One2One, nil, status.Error(codes.InvalidArgument, "one-2-many proxying is not supported for COSI methods")
			}

			return a.single(nodes[0])
		}

		backends := make([]proxy.Backend, 0, len(nodes))

		for _, target := range nodes {
			remote, err := a.remote(target)
			if err != nil {
				return proxy.One2Many, nil, err
			}

			backends = append(backends, remote)
		}

		return proxy.One2Many, backends, nil
	case one:
		if len(node) != 1 {
			return proxy.One2One, nil, status.Error(codes.InvalidArgument, "node metadata must be single-valued")
		}

		return a.single(node[0])
	default:
		return proxy.One2One, []proxy.Backend{a.local}, nil
	}
}

func (a *apid) single(target string) (proxy.Mode, []proxy.Backend, error) {
	if target == a.self {
		return proxy.One2One, []proxy.Backend{a.local}, nil
	}

	remote, err := a.remote(target)

	return proxy.One2One, []proxy.Backend{remote}, err
}

func (a *apid) remote(target string) (*remoteAPID, error) {
	if net.ParseIP(target) == nil {
		return nil, status.Errorf(codes.InvalidArgument, "node %q is not an address", target)
	}

	if target != a.self && a.remoteTLS == nil {
		return nil, status.Error(codes.PermissionDenied, "this node cannot forward to other nodes (use a control plane as the endpoint)")
	}

	a.mu.Lock()
	defer a.mu.Unlock()

	if remote, ok := a.remotes[target]; ok {
		return remote, nil
	}

	remote := &remoteAPID{target: target, self: a.self, tls: a.remoteTLS}
	if target == a.self {
		// Its own entry in a merged answer still comes from its own machined, tagged.
		remote.local = a.local
	}

	a.remotes[target] = remote

	return remote, nil
}

// remoteAPID is another machine's apid (or this one's machined, for its own entry of a merged
// answer), tagging each answer with the node it came from.
type remoteAPID struct {
	target string
	self   string
	tls    *tls.Config
	local  proxy.Backend

	mu   sync.Mutex
	conn *grpc.ClientConn
}

func (r *remoteAPID) String() string { return r.target }

func (r *remoteAPID) GetConnection(ctx context.Context, method string) (context.Context, *grpc.ClientConn, error) {
	if r.local != nil {
		md, _ := metadata.FromIncomingContext(ctx)
		md = md.Copy()
		delete(md, "nodes")
		delete(md, "node")

		return r.local.GetConnection(metadata.NewIncomingContext(ctx, md), method)
	}

	md, _ := metadata.FromIncomingContext(ctx)
	md = md.Copy()
	authz.SetMetadata(md, authz.GetRoles(ctx))
	md.Set("proxyfrom", r.self)
	delete(md, ":authority")
	delete(md, "nodes")
	delete(md, "node")

	outCtx := metadata.NewOutgoingContext(ctx, md)

	r.mu.Lock()
	defer r.mu.Unlock()

	if r.conn != nil {
		return outCtx, r.conn, nil
	}

	var err error

	r.conn, err = grpc.NewClient(net.JoinHostPort(r.target, fmt.Sprint(constants.ApidPort)),
		grpc.WithTransportCredentials(credentials.NewTLS(r.tls)),
		grpc.WithDefaultCallOptions(grpc.ForceCodecV2(proxy.Codec())),
	)

	return outCtx, r.conn, err
}

// AppendInfo tags one answer with its node. Every Talos reply message has the node's
// common.Metadata as field 1 and every unary response is `repeated Reply messages = 1`, so
// adding a Metadata field to the (single) embedded reply is appending an encoded
// common.Empty to it and fixing the embedded message's length; a streamed message is a
// reply itself.
func (r *remoteAPID) AppendInfo(streaming bool, resp []byte) ([]byte, error) {
	tag, err := proto.Marshal(&common.Empty{Metadata: &common.Metadata{Hostname: r.target}})
	if err != nil || streaming {
		return append(resp, tag...), err
	}

	field, typ, n := protowire.ConsumeTag(resp)
	if n < 0 {
		return nil, protowire.ParseError(n)
	}

	if field != 1 || typ != protowire.BytesType {
		return nil, fmt.Errorf("unexpected message format: field %d type %d", field, typ)
	}

	reply, m := protowire.ConsumeBytes(resp[n:])
	if m < 0 {
		return nil, protowire.ParseError(m)
	}

	out := protowire.AppendTag(nil, 1, protowire.BytesType)
	out = protowire.AppendBytes(out, slices.Concat(reply, tag))

	return out, nil
}

// BuildError turns one node's failure into its entry of the merged answer (an Empty reply with
// the error in its metadata), so the other nodes' answers still arrive.
func (r *remoteAPID) BuildError(streaming bool, err error) ([]byte, error) {
	reply := &common.Empty{Metadata: &common.Metadata{Hostname: r.target, Error: err.Error(), Status: status.Convert(err).Proto()}}
	if streaming {
		return proto.Marshal(reply)
	}

	return proto.Marshal(&common.EmptyResponse{Messages: []*common.Empty{reply}})
}

// streamed says whether a method streams its answers, from the API's own descriptors.
func streamed(method string) bool {
	name := protoreflect.FullName(strings.ReplaceAll(strings.TrimPrefix(method, "/"), "/", "."))

	descriptor, err := protoregistry.GlobalFiles.FindDescriptorByName(name)
	if err != nil {
		return false
	}

	found, ok := descriptor.(protoreflect.MethodDescriptor)

	return ok && found.IsStreamingServer()
}
