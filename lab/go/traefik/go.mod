// Wrapper module that builds Traefik's binary (github.com/traefik/traefik/v3/cmd/traefik) for
// the box. Traefik's own go.mod has replace lines (its forks of go-http-auth and mux, and its
// dynamic/ext module as a local path, which the module zip leaves out) that `go install`
// refuses; they are repeated here, with dynamic/ext pointed at ./ext.
// For another Traefik release: change the require below, copy the fork replaces from that
// release's go.mod, and let `go build -mod=mod` (as the lab builds it) add what go.sum lacks.
module talos-ha/lab/traefik

go 1.26.0

require (
	github.com/traefik/traefik/dynamic/ext v0.0.0-00010101000000-000000000000
	github.com/traefik/traefik/v3 v3.7.9
)

// Traefik's dynamic-configuration extension point: a module of its own in Traefik's
// repository (pkg/config/dynamic/ext), outside the release's module zip.
replace github.com/traefik/traefik/dynamic/ext => ./ext

// Containous forks, as Traefik v3.7.9's go.mod replaces them.
replace (
	github.com/abbot/go-http-auth => github.com/containous/go-http-auth v0.4.1-0.20200324110947-a37a7636d23e
	github.com/gorilla/mux => github.com/containous/mux v0.0.0-20250523120546-41b6ec3aed59
)
