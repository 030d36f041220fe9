//go:build tools

// Package tools pins the command the lab builds from this module.
package tools

import _ "github.com/traefik/traefik/v3/cmd/traefik"
