package main

// A service is one program the machine runs and watches, as Talos's service runner does
// (internal/app/machined/pkg/system/runner/process/process.go for machined's own services,
// the kubelet for static pods): started with its arguments, its output in a log file, and
// started again when it exits, until the machine stops it. The twin knows each child by the
// handle it started it with and waits on it as its parent: it never looks a process up.

import (
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// restartDelay is how long a service that exited waits before it runs again (Talos's
// restart runner waits 5 s; the twin is quicker).
const restartDelay = 2 * time.Second

type service struct {
	name    string
	binary  string
	args    []string
	logFile string

	mu       sync.Mutex
	process  *exec.Cmd
	stopping bool
	// exited is closed when the running process has been waited for.
	exited chan struct{}
}

func newService(name, binary, logDir string, args []string) *service {
	return &service{name: name, binary: binary, args: args, logFile: filepath.Join(logDir, name+".log")}
}

// start runs the service (a running one is left alone) and keeps it running.
func (s *service) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()

	if s.process != nil {
		return nil
	}

	s.stopping = false

	return s.spawnLocked()
}

func (s *service) spawnLocked() error {
	logFile, err := os.OpenFile(s.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}

	cmd := exec.Command(s.binary, s.args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Should the twin itself be killed, its services die with it (as a machine's do when it
	// loses power), rather than live on holding the node's ports.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}

	if err = cmd.Start(); err != nil {
		logFile.Close() //nolint:errcheck

		return fmt.Errorf("starting %s: %w", s.name, err)
	}

	exited := make(chan struct{})
	s.process, s.exited = cmd, exited
	log.Printf("%s started (pid %d)", s.name, cmd.Process.Pid)

	go func() {
		err := cmd.Wait()
		logFile.Close() //nolint:errcheck
		log.Printf("%s exited: %v", s.name, err)

		s.mu.Lock()
		s.process = nil
		stopping := s.stopping
		s.mu.Unlock()
		close(exited)

		if stopping {
			return
		}

		time.Sleep(restartDelay)

		s.mu.Lock()
		defer s.mu.Unlock()

		if s.process == nil && !s.stopping {
			if err := s.spawnLocked(); err != nil {
				log.Printf("%v", err)
			}
		}
	}()

	return nil
}

func (s *service) running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()

	return s.process != nil
}

// stopGrace is how long a service may take to exit after SIGTERM before it is killed: Talos's
// runner default (internal/app/machined/pkg/system/runner/runner.go, DefaultOptions), which
// etcd's service keeps. etcd needs it: on SIGTERM it first closes its client servers (up to its
// request timeout, 7 s by default) and only then hands its leadership to a peer
// (etcdserver/server.go, Stop); killed before that, its peers elect a leader the slow way.
const stopGrace = 10 * time.Second

// stop ends the service for good (until start): SIGTERM, then SIGKILL after stopGrace.
func (s *service) stop() {
	s.mu.Lock()
	s.stopping = true
	process, exited := s.process, s.exited
	s.mu.Unlock()

	if process == nil {
		return
	}

	_ = process.Process.Signal(syscall.SIGTERM) //nolint:errcheck

	select {
	case <-exited:
	case <-time.After(stopGrace):
		_ = process.Process.Kill() //nolint:errcheck
		<-exited
	}
}
