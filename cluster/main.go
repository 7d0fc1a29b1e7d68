// Command cluster runs a whole local cluster in the foreground: a master
// and <num_slaves> slaves, each with its own database file in -dir and its
// own port (-port, -port+1, ...). It prints every node's URL and stops them
// all cleanly on Ctrl-C.
//
//	go run ./cluster [flags] <num_slaves>
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/ddbgo/ddb/internal/cluster"
	"github.com/ddbgo/ddb/internal/node"
)

func main() {
	base, err := cluster.ParseClusterArgs(os.Args[1:], os.Stdout)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var nodes []*node.Node
	shutdown := func() {
		sctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		for i := len(nodes) - 1; i >= 0; i-- {
			nodes[i].Shutdown(sctx)
		}
	}
	for id := 0; id <= base.NumSlaves; id++ {
		cfg := *base
		if id > 0 {
			cfg.Role, cfg.ID = cluster.Slave, id
		}
		n, err := node.Start(&cfg, os.Stderr)
		if err != nil {
			fmt.Fprintf(os.Stderr, "start %s: %v\n", cfg.Name(), err)
			shutdown()
			os.Exit(1)
		}
		nodes = append(nodes, n)
	}
	fmt.Println("cluster running; Ctrl-C stops every node")
	for _, n := range nodes {
		fmt.Printf("  %-7s %s   (database %s)\n", n.Config.Name(), n.Config.URL(), n.Store.Path())
	}
	select {
	case <-ctx.Done():
	case err := <-firstDone(nodes):
		fmt.Fprintln(os.Stderr, "a node stopped:", err)
	}
	fmt.Println("stopping...")
	shutdown()
}

func firstDone(nodes []*node.Node) <-chan error {
	ch := make(chan error, len(nodes))
	for _, n := range nodes {
		go func(n *node.Node) { ch <- <-n.Done() }(n)
	}
	return ch
}
