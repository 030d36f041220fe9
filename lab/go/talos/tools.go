//go:build tools

// Package tools pins the command this module builds: talosctl.
package tools

import _ "github.com/siderolabs/talos/cmd/talosctl"
