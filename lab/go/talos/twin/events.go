package main

import (
	"context"
	"fmt"
	"log"
	"sync"
	"time"

	"github.com/rs/xid"
	"github.com/siderolabs/talos/pkg/machinery/api/common"
	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/resources/runtime"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// eventCapacity is how many events a machine keeps; the oldest go first. Like Talos's, the
// buffer is in memory, so a reboot starts it empty (v1alpha1_controller.go: NewEvents(1000, 10)).
const eventCapacity = 1000

// event is one entry of the stream: an xid (time-ordered), the call that caused it (its actor
// ID, empty for the machine's own changes) and what happened
// (internal/app/machined/pkg/runtime/events.go, Event).
type event struct {
	id      xid.ID
	actorID string
	payload proto.Message
}

// toMachineEvent is the event as the API sends it: the payload as an Any whose type URL is
// `talos/runtime/<proto name>`, which is what talosctl decodes by (events.go, NewEvent and
// ToMachineEvent); the empty "hello" event has no payload and no type URL.
func (e event) toMachineEvent() (*machine.Event, error) {
	var (
		typeURL string
		value   []byte
	)

	if e.payload != nil {
		typeURL = fmt.Sprintf("talos/runtime/%s", e.payload.ProtoReflect().Descriptor().FullName())

		var err error
		if value, err = proto.Marshal(e.payload); err != nil {
			return nil, err
		}
	}

	return &machine.Event{Data: &anypb.Any{TypeUrl: typeURL, Value: value}, Id: e.id.String(), ActorId: e.actorID}, nil
}

// eventBus is one boot's event stream: everything published is kept (up to eventCapacity) and
// handed to every watcher, each from where it asked to start
// (internal/app/machined/pkg/runtime/v1alpha1/v1alpha1_events.go).
type eventBus struct {
	mu sync.Mutex
	// events[i] is the event numbered first+i.
	events []event
	first  int
	// published is closed and replaced on each publish, waking every watcher.
	published chan struct{}
	// closed ends every watch: the machine is going down.
	closed   bool
	watchers sync.WaitGroup
}

func newEventBus() *eventBus {
	return &eventBus{published: make(chan struct{})}
}

func (b *eventBus) publish(payload proto.Message, actorID string) {
	b.mu.Lock()
	defer b.mu.Unlock()

	b.events = append(b.events, event{id: xid.New(), actorID: actorID, payload: payload})

	if overflow := len(b.events) - eventCapacity; overflow > 0 {
		b.events = b.events[overflow:]
		b.first += overflow
	}

	close(b.published)
	b.published = make(chan struct{})
}

// start is the number of the first event a watch with these options gets: by default the
// next one published; TailEvents the last N (-1: all kept), TailId those after that event,
// TailSeconds those of the last seconds (v1alpha1_events.go, Watch).
func (b *eventBus) start(req *machine.EventsRequest) int {
	next := b.first + len(b.events)

	after := func(keep func(event) bool) int {
		for index, kept := range b.events {
			if keep(kept) {
				return b.first + index
			}
		}

		return next
	}

	switch {
	case req.TailEvents < 0:
		return b.first
	case req.TailEvents > 0:
		return max(next-int(req.TailEvents), b.first)
	case req.TailId != "":
		tail, err := xid.FromString(req.TailId)
		if err != nil {
			return next
		}

		return after(func(kept event) bool { return kept.id.Compare(tail) > 0 })
	case req.TailSeconds > 0:
		since := time.Now().Add(-time.Duration(req.TailSeconds) * time.Second)

		return after(func(kept event) bool { return kept.id.Time().After(since) })
	}

	return next
}

// watch sends `send` the events the request asks for, as they come, until the client goes,
// the machine goes down (the stream then ends, and talosctl's tracker reconnects with the
// whole buffer of the next boot), or a send fails. The first message is the empty hello event
// talosctl waits for (v1alpha1_server.go, Events and sendEmptyEvent).
func (b *eventBus) watch(ctx context.Context, req *machine.EventsRequest, send func(*machine.Event) error) error {
	if req.TailId != "" {
		if _, err := xid.FromString(req.TailId); err != nil {
			return fmt.Errorf("error parsing tail_id: %w", err)
		}
	}

	hello, err := event{id: xid.New(), actorID: req.WithActorId}.toMachineEvent()
	if err != nil {
		return err
	}

	if err = send(hello); err != nil {
		return err
	}

	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()

		return nil
	}

	b.watchers.Add(1)
	defer b.watchers.Done()

	position := b.start(req)
	b.mu.Unlock()

	for {
		b.mu.Lock()
		position = max(position, b.first)
		pending := append([]event(nil), b.events[position-b.first:]...)
		position += len(pending)
		published, closed := b.published, b.closed
		b.mu.Unlock()

		for _, next := range pending {
			if req.WithActorId != "" && next.actorID != req.WithActorId {
				continue
			}

			message, err := next.toMachineEvent()
			if err != nil {
				return err
			}

			if err = send(message); err != nil {
				return err
			}
		}

		if closed {
			return nil
		}

		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-published:
		}
	}
}

// close ends every watch once it has sent what was published, and waits (a second at most)
// for them: a machine about to go down flushes its last events (a reset's stopAllServices
// task, which `talosctl reset --wait` waits for) before its API stops.
func (b *eventBus) close() {
	b.mu.Lock()
	b.closed = true
	close(b.published)
	b.published = make(chan struct{})
	b.mu.Unlock()

	waitAtMost(&b.watchers, time.Second)
}

// Events streams the machine's events (v1alpha1_server.go, Events).
func (c *configured) Events(req *machine.EventsRequest, srv machine.MachineService_EventsServer) error {
	return c.events.watch(srv.Context(), req, srv.Send)
}

// phase and task: a sequence is phases run in order, each a list of named tasks
// (internal/app/machined/pkg/runtime/v1alpha1/v1alpha1_sequencer.go); the names are Talos's,
// since clients react to them (talosctl's tracker ends a reset's wait on stopAllServices).
type phase struct {
	name  string
	tasks []task
}

type task struct {
	name string
	run  func() error
}

// noop is a task of Talos's sequence that has nothing to do on a twin (no dbus, no mounts).
func noop(name string) task {
	return task{name: name, run: func() error { return nil }}
}

// runSequence runs a sequence's phases and publishes what Talos's controller publishes around
// them, all under the caller's actor ID: the sequence's, each phase's and each task's START and
// STOP; a sequence that fails ends with a NOOP event carrying a FATAL error
// (v1alpha1_controller.go, Run, run, runPhase and runTask).
func (c *configured) runSequence(sequence, actorID string, phases []phase) error {
	log.Printf("%s sequence: %d phase(s), actor %s", sequence, len(phases), actorID)

	c.events.publish(&machine.SequenceEvent{Sequence: sequence, Action: machine.SequenceEvent_START}, actorID)

	if stage, ok := sequenceStages[sequence]; ok {
		c.setStage(stage)
	}

	if err := c.runPhases(actorID, phases); err != nil {
		log.Printf("%s sequence failed: %v", sequence, err)
		c.events.publish(&machine.SequenceEvent{
			Sequence: sequence,
			Action:   machine.SequenceEvent_NOOP,
			Error:    &common.Error{Code: common.Code_FATAL, Message: fmt.Sprintf("sequence failed: %s", err)},
		}, actorID)

		return err
	}

	c.events.publish(&machine.SequenceEvent{Sequence: sequence, Action: machine.SequenceEvent_STOP}, actorID)

	if sequence == "boot" {
		c.setStage(runtime.MachineStageRunning)
	}

	return nil
}

// runAfterAnswer runs a sequence an API call asked for once its answer (with the actor ID) is
// out: Talos starts the sequence asynchronously, and the twin leaves the answer half a second to
// reach the client before the machine may go down (v1alpha1_server.go, Reboot and Reset).
func (c *configured) runAfterAnswer(sequence, actorID string, phases []phase) {
	go func() {
		time.Sleep(500 * time.Millisecond)
		c.runSequence(sequence, actorID, phases) //nolint:errcheck // logged and published as an event
	}()
}

func (c *configured) runPhases(actorID string, phases []phase) error {
	for _, current := range phases {
		c.events.publish(&machine.PhaseEvent{Phase: current.name, Action: machine.PhaseEvent_START}, actorID)

		for _, step := range current.tasks {
			c.events.publish(&machine.TaskEvent{Task: step.name, Action: machine.TaskEvent_START}, actorID)

			err := step.run()

			c.events.publish(&machine.TaskEvent{Task: step.name, Action: machine.TaskEvent_STOP}, actorID)

			if err != nil {
				return fmt.Errorf("task %s: %w", step.name, err)
			}
		}

		c.events.publish(&machine.PhaseEvent{Phase: current.name, Action: machine.PhaseEvent_STOP}, actorID)
	}

	return nil
}
