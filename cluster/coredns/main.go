// CoreDNS for the local cluster (scripts/cluster, docs/cluster.md): the cluster's DNS for pods, run as
// a process in the node's network namespace. Only the plugins its Corefile uses are linked in (the
// upstream binary links about sixty, most of them clients of cloud DNS services that cannot be reached
// from here); the directive order stays upstream's (dnsserver.Directives).
package main

import (
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

func main() {
	coremain.Run()
}
