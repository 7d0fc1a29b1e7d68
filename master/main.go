// Command master runs the master node: it listens on -port, keeps
// slave0.db in -dir, sequences every write into the replication log and
// ships it to the slaves at -port+1 ... -port+<num_slaves>.
//
//	go run ./master [flags] <num_slaves>
package main

import (
	"os"

	"github.com/ddbgo/ddb/internal/cluster"
	"github.com/ddbgo/ddb/internal/node"
)

func main() { os.Exit(node.Main(cluster.Master, os.Args[1:])) }
