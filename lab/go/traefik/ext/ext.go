// Package ext is the extension point of Traefik's dynamic configuration: Traefik inlines these
// types into its HTTP configuration and its routers (pkg/config/dynamic/http_config.go), so a
// build can add fields there. The box adds none: both are empty, as in Traefik's release.
package ext

// HTTP extends dynamic.HTTP.
type HTTP struct{}

// Router extends dynamic.Router.
type Router struct{}
