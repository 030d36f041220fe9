package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/resource/meta"
	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/siderolabs/talos/pkg/grpc/middleware/authz"
	"github.com/siderolabs/talos/pkg/machinery/role"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// accessPolicy is what the resource API lets a client do, configured or in maintenance mode
// (internal/app/resources/access.go, AccessPolicy): read, never write ("write access is not
// allowed": machined's controllers own every resource); only types that have a definition;
// sensitive ones (the machine config) only with the os:admin role, which a client on the LAN
// in maintenance mode never has. Talos also refuses namespaces it does not know; the twin keeps
// no Namespace resources, so that check is left out.
func accessPolicy(st state.State) state.FilteringRule {
	return func(ctx context.Context, access state.Access) error {
		if !access.Verb.Readonly() {
			return status.Error(codes.PermissionDenied, "write access is not allowed")
		}

		definition := resource.NewMetadata(meta.NamespaceName, meta.ResourceDefinitionType, strings.ToLower(access.ResourceType), resource.VersionUndefined)

		found, err := safe.StateGet[*meta.ResourceDefinition](ctx, st, definition)
		if err != nil {
			if state.IsNotFoundError(err) {
				return status.Error(codes.PermissionDenied, fmt.Sprintf("resource type %q is not supported", access.ResourceType))
			}

			return err
		}

		if found.TypedSpec().Sensitivity == meta.Sensitive && !authz.GetRoles(ctx).Includes(role.Admin) {
			return authz.ErrNotAuthorized
		}

		return nil
	}
}
