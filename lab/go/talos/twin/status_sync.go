package main

// A kubelet never gives up on a pod's status. Its status manager keeps what it wants each pod's
// status to be and, besides sending every change at once, compares all of them with the API
// every 10 s and sends again whatever the API does not have (kubelet pkg/kubelet/status/
// status_manager.go: syncPeriod, syncBatch(all)). A status update that failed while the control
// plane was losing a member is sent again on the next pass.
//
// kwok, the stand-in for the kubelet's container side, does not: it plays a pod's stage when a
// watch event brings the pod, and when the status patch fails with an error it does not count as
// transient, it drops the job (kwok v0.8.0 pkg/kwok/controllers/pod_controller.go playStage,
// utils.go shouldRetry: only connection refused, timeouts, 503 and 429 are retried). "etcdserver:
// request timed out", the 500 an API server answers while etcd elects a new leader after its
// leader's machine lost power, is not among them: the pod stays Pending on a Ready node for good,
// since nothing sends another event about it (issue 24 saw MetalLB's speakers stuck at 3/6).
//
// So the twin's kubelet keeps the status manager's promise for kwok: every 10 s it lists its
// Node's pods, and a pod still waiting for kwok (Pending, or Running and not Ready, and not
// being deleted) on two passes in a row, unchanged between them, means a dropped job. kwok is
// then restarted: it lists its Node's pods afresh and plays each one's stage again.

import (
	"context"
	"log"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
)

// statusSyncPeriod is the kubelet status manager's syncPeriod.
const statusSyncPeriod = 10 * time.Second

// syncStatuses runs until ctx ends; see the file's comment.
func (k *kubelet) syncStatuses(ctx context.Context) {
	// Pods seen waiting on the last pass, by UID, with their resourceVersion then.
	waiting := map[string]string{}

	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(statusSyncPeriod):
		}

		now, err := k.podsWaitingForRuntime(ctx)
		if err != nil {
			continue // the API is away: the next pass asks again
		}

		var dropped []string

		for uid, pod := range now {
			if version, seen := waiting[uid]; seen && version == pod.ResourceVersion {
				dropped = append(dropped, pod.Namespace+"/"+pod.Name)
			}
		}

		waiting = map[string]string{}
		for uid, pod := range now {
			waiting[uid] = pod.ResourceVersion
		}

		if len(dropped) == 0 || !k.ready() {
			continue
		}

		log.Printf("kubelet: %d pod(s) waited %s for the runtime stand-in with no change (%v): "+
			"restarting kwok, which plays their stages again", len(dropped), statusSyncPeriod, dropped)
		k.stopRuntime()

		if err := k.startRuntime(ctx); err != nil {
			log.Printf("kubelet: restarting the runtime stand-in: %v", err)
		}

		waiting = map[string]string{}
	}
}

// podsWaitingForRuntime: this Node's pods that kwok has yet to make run and Ready, by UID.
func (k *kubelet) podsWaitingForRuntime(ctx context.Context) (map[string]*corev1.Pod, error) {
	client, err := k.client()
	if err != nil {
		return nil, err
	}

	list, err := client.CoreV1().Pods("").List(ctx, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("spec.nodeName", k.hostname).String(),
	})
	if err != nil {
		return nil, err
	}

	pods := map[string]*corev1.Pod{}

	for i := range list.Items {
		pod := &list.Items[i]
		if pod.DeletionTimestamp == nil && waitsForRuntime(pod) {
			pods[string(pod.UID)] = pod
		}
	}

	return pods, nil
}

// waitsForRuntime: Pending, or Running without being Ready (the two states kwok's pod-ready and
// the lab's pod-ready-again stages move on at once).
func waitsForRuntime(pod *corev1.Pod) bool {
	switch pod.Status.Phase {
	case corev1.PodPending:
		return true
	case corev1.PodRunning:
		for _, condition := range pod.Status.Conditions {
			if condition.Type == corev1.PodReady {
				return condition.Status != corev1.ConditionTrue
			}
		}

		return true
	default:
		return false
	}
}
