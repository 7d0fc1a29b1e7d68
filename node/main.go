// Command node runs slave <slave_id>: it listens on -port+<slave_id>, keeps
// slave<slave_id>.db in -dir, applies the master's log and forwards writes
// to the master at -port.
//
//	go run ./node [flags] <slave_id> <num_slaves>
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
	cfg, err := cluster.ParseArgs(cluster.Slave, os.Args[1:], os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := node.Run(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "node:", err)
		os.Exit(1)
	}
}
