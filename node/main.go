// Command node runs slave <slave_id>: it listens on -port+<slave_id>, keeps
// slave<slave_id>.db in -dir, applies the master's log and forwards writes
// to the master at -port.
//
//	go run ./node [flags] <slave_id> <num_slaves>
package main

import (
	"os"

	"github.com/ddbgo/ddb/internal/cluster"
	"github.com/ddbgo/ddb/internal/node"
)

func main() { os.Exit(node.Main(cluster.Slave, os.Args[1:])) }
