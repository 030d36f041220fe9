package main

// The machine's API certificate. A control plane's config holds the OS CA's key (machine.ca),
// so it signs its own; a worker's holds only the CA's certificate, so it asks a control plane's
// trustd (port 50001) to sign its request, proving itself with the machine token
// (machine.token). Talos: internal/app/machined/pkg/controllers/secrets/api.go (generateWorker,
// through pkg/grpc/gen's RemoteGenerator, used here as it is) and internal/app/trustd
// (reg.go, Certificate: server-auth certificates only, any organization removed).

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"log"
	"net"
	"strconv"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	talosx509 "github.com/siderolabs/crypto/x509"

	"github.com/siderolabs/talos/pkg/grpc/gen"
	"github.com/siderolabs/talos/pkg/grpc/middleware/auth/basic"
	"github.com/siderolabs/talos/pkg/machinery/api/security"
	"github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/constants"
)

// apiTLS is the API's TLS: a server certificate from the OS CA for the node's address, and
// client certificates required from the accepted OS CAs.
func apiTLS(ctx context.Context, provider config.Provider, address string, controlPlanes []string) (*tls.Config, error) {
	osSecurity := provider.Machine().Security()
	accepted := append(osSecurity.AcceptedCAs(), &talosx509.PEMEncodedCertificate{Crt: osSecurity.IssuingCA().Crt})

	var (
		certificate tls.Certificate
		err         error
	)

	if len(osSecurity.IssuingCA().Key) > 0 {
		certificate, err = signOwnCertificate(provider, address)
	} else {
		certificate, err = certificateFromTrustd(ctx, provider, address, controlPlanes, accepted)
	}

	if err != nil {
		return nil, err
	}

	clients := x509.NewCertPool()
	for _, ca := range accepted {
		clients.AppendCertsFromPEM(ca.Crt)
	}

	return &tls.Config{
		Certificates: []tls.Certificate{certificate},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    clients,
		MinVersion:   tls.VersionTLS13,
	}, nil
}

func signOwnCertificate(provider config.Provider, address string) (tls.Certificate, error) {
	ca, err := talosx509.NewCertificateAuthorityFromCertificateAndKey(provider.Machine().Security().IssuingCA())
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("machine.ca: %w", err)
	}

	keyPair, err := talosx509.NewKeyPair(ca,
		talosx509.IPAddresses([]net.IP{net.ParseIP(address)}),
		talosx509.CommonName(address),
		talosx509.ExtKeyUsage([]x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}),
		talosx509.NotAfter(time.Now().Add(24*time.Hour)),
	)
	if err != nil {
		return tls.Certificate{}, err
	}

	return *keyPair.Certificate, nil
}

// certificateFromTrustd asks the control planes until one signs (a worker configured before
// any control plane waits for one, as on Talos).
func certificateFromTrustd(ctx context.Context, provider config.Provider, address string, controlPlanes []string,
	accepted []*talosx509.PEMEncodedCertificate,
) (tls.Certificate, error) {
	template, err := accepted[len(accepted)-1].GetCert()
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("machine.ca: %w", err)
	}

	request, identity, err := talosx509.NewCSRAndIdentityFromCA(template,
		talosx509.IPAddresses([]net.IP{net.ParseIP(address)}), talosx509.CommonName(address))
	if err != nil {
		return tls.Certificate{}, err
	}

	generator, err := gen.NewRemoteGenerator(provider.Machine().Security().Token(), controlPlanes, accepted)
	if err != nil {
		return tls.Certificate{}, err
	}
	defer generator.Close() //nolint:errcheck

	for {
		_, identity.Crt, err = generator.IdentityContext(ctx, request)
		if err == nil {
			return tls.X509KeyPair(identity.Crt, identity.Key)
		}

		if ctx.Err() != nil {
			return tls.Certificate{}, ctx.Err()
		}

		log.Printf("trustd: no control plane signed the API certificate yet: %v", err)
	}
}

// trustd signs workers' API certificate requests (control planes only).
type trustd struct {
	security.UnimplementedSecurityServiceServer

	provider config.Provider
}

// serveTrustd listens on the node's address, port 50001, until the machine goes down.
func serveTrustd(provider config.Provider, address string, serverTLS *tls.Config) (*grpc.Server, error) {
	listener, err := net.Listen("tcp", net.JoinHostPort(address, strconv.Itoa(constants.TrustdPort)))
	if err != nil {
		return nil, err
	}

	token := basic.NewTokenCredentials(provider.Machine().Security().Token())
	server := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: serverTLS.Certificates, MinVersion: tls.VersionTLS13})),
		grpc.UnaryInterceptor(token.UnaryInterceptor()),
	)
	security.RegisterSecurityServiceServer(server, &trustd{provider: provider})

	go server.Serve(listener) //nolint:errcheck

	return server, nil
}

// Certificate signs a server-auth certificate for a worker that knows the machine token.
func (t *trustd) Certificate(_ context.Context, in *security.CertificateRequest) (*security.CertificateResponse, error) {
	block, _ := pem.Decode(in.Csr)
	if block == nil {
		return nil, status.Error(codes.InvalidArgument, "failed to decode CSR")
	}

	if _, err := x509.ParseCertificateRequest(block.Bytes); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "failed to parse CSR: %s", err)
	}

	issuing := t.provider.Machine().Security().IssuingCA()

	signed, err := talosx509.NewCertificateFromCSRBytes(issuing.Crt, issuing.Key, in.Csr,
		talosx509.KeyUsage(x509.KeyUsageDigitalSignature),
		talosx509.ExtKeyUsage([]x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}),
		talosx509.OverrideSubject(func(subject *pkix.Name) { subject.Organization = nil }),
	)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "failed to sign CSR: %s", err)
	}

	var cas [][]byte
	for _, ca := range t.provider.Machine().Security().AcceptedCAs() {
		cas = append(cas, ca.Crt)
	}

	cas = append(cas, issuing.Crt)

	return &security.CertificateResponse{Ca: bytes.Join(cas, nil), Crt: signed.X509CertificatePEM}, nil
}
