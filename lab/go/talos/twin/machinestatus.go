package main

import (
	"context"
	"fmt"
	"log"
	"slices"
	"strings"
	"time"

	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/resources/runtime"
	"github.com/siderolabs/talos/pkg/machinery/resources/v1alpha1"
	corev1 "k8s.io/api/core/v1"
)

// sequenceStages is the stage a sequence's start puts the machine in
// (internal/app/machined/pkg/controllers/runtime/machine_status.go, watchEvents); the
// successful end of `boot` makes it running.
var sequenceStages = map[string]runtime.MachineStage{
	"boot":   runtime.MachineStageBooting,
	"reboot": runtime.MachineStageRebooting,
	"reset":  runtime.MachineStageResetting,
	// machine_status.go: both upgrades are "upgrading" from their start.
	"upgrade":      runtime.MachineStageUpgrading,
	"stageUpgrade": runtime.MachineStageUpgrading,
}

// setStage records the machine's stage; readiness is computed only while booting or running
// (getReadinessChecks), so any other stage is not ready.
func (c *configured) setStage(stage runtime.MachineStage) {
	c.updateMachineStatus(func(status *runtime.MachineStatusSpec) {
		status.Stage = stage

		if stage != runtime.MachineStageBooting && stage != runtime.MachineStageRunning {
			status.Status = runtime.MachineStatusStatus{Ready: false}
		}
	})
}

// updateMachineStatus changes the MachineStatus resource and, when it changed, publishes a
// MachineStatusEvent with no actor (controllers/runtime/machine_status_publisher.go):
// `talosctl reboot --wait` ends on the event that says running and ready.
func (c *configured) updateMachineStatus(change func(*runtime.MachineStatusSpec)) {
	ctx := context.Background()

	current, err := safe.StateGetByID[*runtime.MachineStatus](ctx, c.resources, runtime.MachineStatusID)
	if err != nil {
		log.Printf("machine status: %v", err)

		return
	}

	before := *current.TypedSpec()
	before.Status.UnmetConditions = slices.Clone(before.Status.UnmetConditions)

	updated := current.DeepCopy().(*runtime.MachineStatus) //nolint:forcetypeassert
	change(updated.TypedSpec())

	if updated.TypedSpec().Stage == before.Stage && updated.TypedSpec().Status.Ready == before.Status.Ready &&
		slices.Equal(updated.TypedSpec().Status.UnmetConditions, before.Status.UnmetConditions) {
		return
	}

	if err = c.resources.Update(ctx, updated); err != nil {
		log.Printf("machine status: %v", err)

		return
	}

	spec := updated.TypedSpec()
	unmet := make([]*machine.MachineStatusEvent_MachineStatus_UnmetCondition, 0, len(spec.Status.UnmetConditions))

	for _, condition := range spec.Status.UnmetConditions {
		unmet = append(unmet, &machine.MachineStatusEvent_MachineStatus_UnmetCondition{Name: condition.Name, Reason: condition.Reason})
	}

	c.events.publish(&machine.MachineStatusEvent{
		Stage:  machine.MachineStatusEvent_MachineStage(spec.Stage),
		Status: &machine.MachineStatusEvent_MachineStatus{Ready: spec.Status.Ready, UnmetConditions: unmet},
	}, "")
}

// watchReadiness keeps the machine's Service resources and its readiness current until the
// machine goes down: Talos's MachineStatus controller re-evaluates on every change; the twin
// looks each second while something is unmet and every ten once all is (each look asks etcd and
// the API server, and a box runs six machines beside other boxes).
func (c *configured) watchReadiness(ctx context.Context) {
	for {
		ready := c.evaluate(ctx)

		wait := time.Second
		if ready {
			wait = 10 * time.Second
		}

		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// evaluate runs the readiness checks of a booting or running machine
// (machine_status.go, getReadinessChecks): `time` and `network` are met by construction in the
// box (the host's clock; addresses are taken before any service starts) and the static pods'
// statuses are written Running and Ready as they are mirrored (kubelet.go), so what can be unmet
// is `services` (apid, machined, kubelet; etcd and trustd too on a control plane: each running
// and healthy) and `nodeReady` (the Node's Ready condition in the API).
func (c *configured) evaluate(ctx context.Context) bool {
	c.syncServices(ctx)
	c.syncEtcdMember(ctx)

	stage, err := safe.StateGetByID[*runtime.MachineStatus](ctx, c.resources, runtime.MachineStatusID)
	if err != nil {
		return false
	}

	if current := stage.TypedSpec().Stage; current != runtime.MachineStageBooting && current != runtime.MachineStageRunning {
		return false
	}

	var unmet []runtime.UnmetCondition

	if problems := c.servicesProblems(ctx); problems != "" {
		unmet = append(unmet, runtime.UnmetCondition{Name: "services", Reason: problems})
	}

	if problem := c.nodeReadyProblem(ctx); problem != "" {
		unmet = append(unmet, runtime.UnmetCondition{Name: "nodeReady", Reason: problem})
	}

	c.updateMachineStatus(func(status *runtime.MachineStatusSpec) {
		status.Status = runtime.MachineStatusStatus{Ready: len(unmet) == 0, UnmetConditions: unmet}
	})

	if len(unmet) == 0 && stage.TypedSpec().Stage == runtime.MachineStageRunning && !c.settled.Swap(true) {
		c.runningAndReady(ctx)
	}

	return len(unmet) == 0
}

// syncServices mirrors the service states (health.go, ServiceList) into `Services` resources as
// machined does: created or updated while a service runs, destroyed otherwise, with a
// ServiceStateEvent on each change (controllers/v1alpha1/service.go).
func (c *configured) syncServices(ctx context.Context) {
	listed, err := c.ServiceList(ctx, nil)
	if err != nil {
		return
	}

	for _, info := range listed.GetMessages()[0].GetServices() {
		running := info.GetState() == "Running"
		healthy := info.GetHealth().GetHealthy()

		current, err := safe.StateGetByID[*v1alpha1.Service](ctx, c.resources, info.GetId())
		if err != nil && !state.IsNotFoundError(err) {
			continue
		}

		switch {
		case !running && current == nil:
			continue
		case !running:
			if err = c.resources.Destroy(ctx, current.Metadata()); err != nil {
				continue
			}
		case current != nil && current.TypedSpec().Running && current.TypedSpec().Healthy == healthy:
			continue
		case current == nil:
			service := v1alpha1.NewService(info.GetId())
			*service.TypedSpec() = v1alpha1.ServiceSpec{Running: true, Healthy: healthy}

			if err = c.resources.Create(ctx, service); err != nil {
				continue
			}
		default:
			updated := current.DeepCopy().(*v1alpha1.Service) //nolint:forcetypeassert
			*updated.TypedSpec() = v1alpha1.ServiceSpec{Running: true, Healthy: healthy}

			if err = c.resources.Update(ctx, updated); err != nil {
				continue
			}
		}

		action := machine.ServiceStateEvent_RUNNING
		if !running {
			action = machine.ServiceStateEvent_PREPARING
		}

		c.events.publish(&machine.ServiceStateEvent{
			Service: info.GetId(),
			Action:  action,
			Message: info.GetHealth().GetLastMessage(),
			Health:  info.GetHealth(),
		}, "")
	}
}

// servicesProblems is the `services` condition (machine_status.go, servicesCheck), read from
// the Services resources as Talos reads them.
func (c *configured) servicesProblems(ctx context.Context) string {
	required := []string{"apid", "machined", "kubelet"}
	if c.etcd != nil {
		required = append(required, "etcd", "trustd")
	}

	listed, err := safe.StateListAll[*v1alpha1.Service](ctx, c.resources)
	if err != nil {
		return err.Error()
	}

	var problems []string

	running := map[string]bool{}

	for service := range listed.All() {
		running[service.Metadata().ID()] = service.TypedSpec().Running

		if service.TypedSpec().Running && !service.TypedSpec().Unknown && !service.TypedSpec().Healthy {
			problems = append(problems, fmt.Sprintf("%s not healthy", service.Metadata().ID()))
		}
	}

	for _, id := range required {
		if !running[id] {
			problems = append(problems, fmt.Sprintf("%s not running", id))
		}
	}

	return strings.Join(problems, ", ")
}

// nodeReadyProblem is the `nodeReady` condition (machine_status.go, nodeReadyCheck): the
// machine's Node, as the API has it, Ready.
func (c *configured) nodeReadyProblem(ctx context.Context) string {
	asked, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()

	_, node, err := c.services.kubelet.ownNode(asked)
	if err != nil {
		return fmt.Sprintf("node %q status is not available yet", c.services.kubelet.hostname)
	}

	for _, condition := range node.Status.Conditions {
		if condition.Type == corev1.NodeReady && condition.Status == corev1.ConditionTrue {
			return ""
		}
	}

	return fmt.Sprintf("node %q is not ready", node.Name)
}
