// Command master runs the master node: it listens on -port, keeps
// slave0.db in -dir, sequences every write into the replication log and
// ships it to the slaves at -port+1 ... -port+<num_slaves>.
//
//	go run ./master [flags] <num_slaves>
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"ddb/internal/cluster"
	"ddb/internal/node"
)

func main() {
	cfg, err := cluster.ParseArgs(cluster.Master, os.Args[1:], os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := node.Run(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "master:", err)
		os.Exit(1)
	}
}
