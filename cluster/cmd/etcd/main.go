// Command etcd is etcd's own server entry point, built from the module proxy: Debian's etcd-server is
// older than the minimum Kubernetes 1.34 supports.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
