package node

import (
	"context"
	"log/slog"
	"time"

	"github.com/ddbgo/ddb/internal/cluster"
	"github.com/ddbgo/ddb/internal/replication"
	"github.com/ddbgo/ddb/internal/store"
)

// setChangeStream sets the cluster's change stream as -changes-keep says
// (keep > 0: on, keeping that many log indexes; < 0: off), once this node
// runs: when a leader is known and this node has applied what the
// cluster had committed, it writes the setting through the log if the
// cluster's differs, and retries until it is written or the node stops.
func setChangeStream(repl replication.Replicator, st *store.Store, keep int64, log *slog.Logger, stop <-chan struct{}) {
	want := max(keep, 0)
	for wait := time.Duration(0); ; wait = min(2*wait+time.Second, 10*time.Second) {
		select {
		case <-stop:
			return
		case <-time.After(wait):
		}
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		err := func() error {
			if !repl.WaitLeader(ctx) {
				return replication.ErrUnavailable
			}
			index, err := repl.ReadIndex(ctx)
			if err != nil {
				return err
			}
			if err := repl.WaitApplied(ctx, index, 10*time.Second); err != nil {
				return err
			}
			cs, err := st.ChangeSetting(ctx)
			if err != nil {
				return err
			}
			if cs.On == (want > 0) && (want == 0 || cs.Keep == want) {
				return nil
			}
			out, err := repl.Write(ctx, &store.Request{SetChanges: true, ChangesKeep: want}, cluster.AckQuorum)
			if err == nil {
				err = out.Err
			}
			if err == nil {
				if want > 0 {
					log.Info("the change stream is on for the whole cluster", "keep", want, "from_index", out.Index+1)
				} else {
					log.Info("the change stream is off for the whole cluster", "index", out.Index)
				}
			}
			return err
		}()
		cancel()
		if err == nil {
			return
		}
		log.Warn("could not set the change stream (-changes-keep); retrying", "err", err)
	}
}
