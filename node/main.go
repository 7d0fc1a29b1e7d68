// Command node runs slave <slave_id>: it listens on -port+<slave_id> (on
// loopback unless -host or -listen says otherwise), keeps
// slave<slave_id>.db in -dir, and takes part in the cluster's Raft group
// with the master at -port: it applies the replicated log, serves reads,
// passes writes on to whichever node leads, and may be elected leader
// itself when the master is down.
//
//	go run ./node [flags] <slave_id> <num_slaves>
package main

import (
	"os"

	"github.com/ddbgo/ddb/internal/cluster"
	"github.com/ddbgo/ddb/internal/node"
)

func main() { os.Exit(node.Main(cluster.Slave, os.Args[1:])) }
