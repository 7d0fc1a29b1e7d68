// Command master runs the master, node 0: it listens on -port (on
// loopback unless -host or -listen says otherwise), keeps slave0.db in
// -dir, and with the slaves at -port+1 ... -port+<num_slaves> forms one
// Raft group. The master is the preferred leader: it orders every write
// into the replicated log while it is up and caught up; when it is down
// the slaves elect one of themselves, and it takes the lead back when it
// returns.
//
//	go run ./master [flags] <num_slaves>
package main

import (
	"os"

	"github.com/ddbgo/ddb/internal/cluster"
	"github.com/ddbgo/ddb/internal/node"
)

func main() { os.Exit(node.Main(cluster.Master, os.Args[1:])) }
