//go:build tools

// Package tools pins the Kubernetes control-plane programs that the test world
// builds from source (see docs/kubernetes-test-world.md). Nothing imports it;
// `make k8s-bins` builds each main package listed here.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "sigs.k8s.io/kwok/cmd/kwok"
)
