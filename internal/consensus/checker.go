package consensus

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/ddbgo/ddb/internal/cluster"
	"github.com/ddbgo/ddb/internal/replication"
	"github.com/ddbgo/ddb/internal/store"
)

// The consistency checker compares replicas while the cluster runs. Every
// CheckInterval (when writes were applied since the last check) the leader
// logs a check entry; at that entry every node computes a digest of its
// database as of exactly that index (store.Digest, in the background, on a
// read connection). Each follower then compares its digest with the
// leader's, and the leader with every other node's. A difference is
// reported at once: a loud log line naming the node, the tables and the
// first differing key range, the /status "consistency" object, a metric
// and the console. A follower that finds itself diverged stops serving
// (503 with the reason, see Serving) and, unless EngineConfig.NoRepair,
// repairs itself: it keeps a copy of its diverged database beside it
// (<database>.diverged, for inspection), then replaces its data with a
// copy of the leader's database (see repair).

// digestWait is how long a node waits for another's digest (that node may
// be behind, or still computing it: at -check-rate's default of 64 MB a
// second, a database of a few GB).
const digestWait = 3 * time.Minute

// checker holds the checks' state.
type checker struct {
	mu        sync.Mutex
	st        replication.ConsistencyStatus
	diverged  bool // this node's own data differs from the leader's
	last      uint64
	repairing bool      // a repair runs (see repair)
	digested  time.Time // when this node's digest of the latest check was done
}

// Consistency is the state of the consistency checks, as this node knows
// it (the leader knows every node's).
func (e *Engine) Consistency() replication.ConsistencyStatus {
	e.check.mu.Lock()
	defer e.check.mu.Unlock()
	st := e.check.st
	if st.State == "" {
		st.State = "none"
	}
	st.DivergedNodes = append([]int{}, st.DivergedNodes...)
	return st
}

// proposeChecks logs a check entry every interval on the leader, when
// entries were applied since the last one, and when the leader has
// compared the last check it logged (a large database's digests may take
// longer than the interval: checks do not pile up, each holding a read
// connection on every node), or gave up waiting for it.
func (e *Engine) proposeChecks(interval time.Duration) {
	defer e.wg.Done()
	t := time.NewTicker(interval)
	defer t.Stop()
	var last uint64
	var proposedAt time.Time
	for {
		select {
		case <-e.stop:
			return
		case <-t.C:
		}
		if !e.IsLeader() || e.st.Applied() <= last {
			continue
		}
		e.check.mu.Lock()
		pending := last > 0 && (e.check.last < last || e.check.st.State == "checking")
		digested, compared := e.check.digested, e.check.st.CheckedAt
		e.check.mu.Unlock()
		if !checkDue(time.Now(), proposedAt, digested, compared, pending) {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), e.cfg.AckTimeout)
		out, err := e.rep.Write(ctx, &store.Request{Check: true})
		cancel()
		if err == nil {
			last, proposedAt = out.Index, time.Now()
		}
	}
}

// checkRest is how many times as long as the leader's last digest took
// (from the check's proposal) the leader waits after comparing it before
// it logs the next: a check reads every node's whole database, and holds
// back its WAL while it reads (SQLite starts the WAL afresh only once no
// reader needs it). On a 10 GB database under a heavy write load, checks
// every 30 s ran back to back: the fill took 3 m 55 s instead of 1 m 39 s
// without checks, and the WAL beside every node's file grew to 5 GB. With
// the rest, digests run at most a third of the time. (A follower slow to
// send its digest delays the compare, not the rest.)
const checkRest = 2

// checkDue says whether the leader logs the next check at now: the last
// one, logged at proposedAt, has been compared (not pending; compared is
// when the leader compared its latest, digested when its own digest of it
// was done) and rested after, or was given up (pending for 2×digestWait).
func checkDue(now, proposedAt, digested, compared time.Time, pending bool) bool {
	if pending {
		return now.Sub(proposedAt) >= 2*digestWait
	}
	if proposedAt.IsZero() || digested.Before(proposedAt) || compared.Before(digested) {
		return true
	}
	return now.Sub(compared) >= checkRest*digested.Sub(proposedAt)
}

// onDigest compares the digest this node computed with the others' (on a
// goroutine of its own: fetching them may wait).
func (e *Engine) onDigest(d *store.Digest) {
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		e.compare(d)
	}()
}

func (e *Engine) compare(d *store.Digest) {
	e.check.mu.Lock()
	if d.Index <= e.check.last {
		e.check.mu.Unlock()
		return
	}
	e.check.last = d.Index
	e.check.digested = time.Now()
	e.check.st.State, e.check.st.CheckedIndex = "checking", d.Index
	e.check.mu.Unlock()
	self := cluster.CommandLineID(e.cfg.ID)
	var diverged []int
	var details, unknown []string
	ctx, cancel := e.untilStop(context.WithTimeout(context.Background(), digestWait))
	defer cancel()
	lead := e.lead()
	if d.Err != "" {
		unknown = append(unknown, fmt.Sprintf("this node could not compute its digest: %s", d.Err))
	} else if lead == e.cfg.ID {
		st := e.rep.Node().Status()
		var ids []uint64
		for id := range st.Config.Voters.IDs() {
			ids = append(ids, id)
		}
		for id := range st.Config.Learners {
			ids = append(ids, id)
		}
		sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
		for _, id := range ids {
			if id == e.cfg.ID {
				continue
			}
			theirs, err := e.remoteDigest(ctx, id, d.Index)
			switch {
			case err != nil:
				unknown = append(unknown, fmt.Sprintf("node %d: %v", cluster.CommandLineID(id), err))
			case theirs.Err != "":
				unknown = append(unknown, fmt.Sprintf("node %d could not compute its digest: %s", cluster.CommandLineID(id), theirs.Err))
			default:
				if diff := d.Differences(theirs); diff != "" {
					diverged = append(diverged, cluster.CommandLineID(id))
					details = append(details, fmt.Sprintf("node %d: %s", cluster.CommandLineID(id), diff))
				}
			}
		}
	} else if lead != 0 {
		theirs, err := e.remoteDigest(ctx, lead, d.Index)
		switch {
		case err != nil:
			unknown = append(unknown, fmt.Sprintf("the leader (node %d): %v", cluster.CommandLineID(lead), err))
		case theirs.Err != "":
			unknown = append(unknown, fmt.Sprintf("the leader could not compute its digest: %s", theirs.Err))
		default:
			if diff := theirs.Differences(d); diff != "" {
				diverged = append(diverged, self)
				details = append(details, fmt.Sprintf("node %d (this node) differs from the leader: %s", self, diff))
			}
		}
	} else {
		unknown = append(unknown, "no leader to compare with")
	}
	e.check.mu.Lock()
	defer e.check.mu.Unlock()
	if d.Index != e.check.last {
		return // a newer check took over
	}
	st := &e.check.st
	st.Checks++
	st.CheckedAt = time.Now()
	st.DivergedNodes = diverged
	st.Detail = strings.Join(append(details, unknown...), "; ")
	st.State = "ok"
	if len(diverged) > 0 {
		st.State = "diverged"
		for _, n := range diverged {
			e.cfg.Log.Error("CONSISTENCY CHECK FAILED: a replica's data differs from the leader's", "index", d.Index, "diverged_node", n, "detail", st.Detail)
		}
	}
	if lead != e.cfg.ID && d.Err == "" && len(unknown) == 0 && d.Index > st.RepairedIndex {
		// A follower knows its own state for sure only from the leader's
		// digest (and a digest taken before its last repair says nothing
		// of its data now).
		e.check.diverged = len(diverged) > 0
		if e.check.diverged && !e.cfg.NoRepair && !e.check.repairing {
			e.check.repairing = true
			e.wg.Add(1)
			go e.repair(d.Index)
		}
	}
	if e.check.repairing {
		st.State = "repairing"
	}
}

// repair replaces this node's data, which the check at index found
// different from the leader's, with a copy of the leader's database. It
// keeps the diverged data beside the database first (<database>.diverged,
// the last one only), then asks the leader for a copy until one installs:
// a copy behind what this node has applied is asked for again. The node
// serves nothing meanwhile; once the copy is in place it serves again, and
// the next check confirms it.
func (e *Engine) repair(index uint64) {
	defer e.wg.Done()
	done := false
	defer func() {
		e.check.mu.Lock()
		e.check.repairing = false
		if !done && e.check.st.State == "repairing" {
			e.check.st.State = "diverged"
		}
		e.check.mu.Unlock()
	}()
	ctx, cancel := e.untilStop(context.WithCancel(context.Background()))
	defer cancel()
	e.cfg.Log.Warn("repairing this node: its data differs from the leader's; it keeps its diverged database beside it and copies the leader's", "index", index, "kept", e.st.Path()+".diverged")
	if path, _, err := e.st.Snapshot(ctx, e.cfg.Dir); err != nil {
		e.cfg.Log.Warn("the diverged database could not be kept", "err", err)
	} else if err := os.Rename(path, e.st.Path()+".diverged"); err != nil {
		os.Remove(path)
		e.cfg.Log.Warn("the diverged database could not be kept", "err", err)
	}
	wait := 200 * time.Millisecond
	for try := 1; ; try++ {
		var err error
		lead := e.lead()
		switch {
		case lead == 0:
			err = errors.New("no leader is known")
		case lead == e.cfg.ID:
			err = errors.New("this node leads now")
		default:
			var path string
			var at uint64
			if path, _, err = e.cfg.Calls.FetchCopy(ctx, e.tr.Peer(lead), e.cfg.Dir); err == nil {
				at, err = e.st.InstallCopy(path)
			}
			if err == nil {
				done = true
				e.check.mu.Lock()
				e.check.diverged = false
				e.check.st.Repairs++
				e.check.st.RepairedIndex = at
				e.check.st.Detail = fmt.Sprintf("this node's data was replaced with a copy of the leader's database at index %d (after the check at index %d found it different); the next check confirms it", at, index)
				e.check.mu.Unlock()
				e.rep.wake()
				e.cfg.Log.Info("repaired: this node's data is now a copy of the leader's", "index", at, "tries", try)
				return
			}
		}
		if ctx.Err() != nil {
			return
		}
		if try%10 == 1 {
			e.cfg.Log.Warn("the repair did not succeed yet; this node tries again", "try", try, "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Second)
	}
}

// untilStop makes ctx end when the engine stops, too.
func (e *Engine) untilStop(ctx context.Context, cancel context.CancelFunc) (context.Context, context.CancelFunc) {
	go func() {
		select {
		case <-e.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// remoteDigest asks the node id for its digest as of index.
func (e *Engine) remoteDigest(ctx context.Context, id, index uint64) (*store.Digest, error) {
	url := e.tr.Peer(id)
	if url == "" {
		return nil, fmt.Errorf("no known URL")
	}
	return e.cfg.Calls.RemoteDigest(ctx, url, index)
}

// divergedError is Serving's answer on a follower whose data the last
// consistency check found different from the leader's.
type divergedError struct {
	index     uint64
	detail    string
	repairing bool
}

func (e divergedError) Error() string {
	if e.repairing {
		return fmt.Sprintf("this node's data differs from the leader's (consistency check at index %d: %s); it serves nothing until it has replaced its data with a copy of the leader's, which it is doing now", e.index, e.detail)
	}
	return fmt.Sprintf("this node's data differs from the leader's (consistency check at index %d: %s); it serves nothing until it is repaired: it runs with -check-repair off, so stop it, move its database files away, and start it again to copy the leader's", e.index, e.detail)
}

// divergence is Serving's answer while the last check found this node's
// data different from the leader's (nil otherwise).
func (e *Engine) divergence() error {
	e.check.mu.Lock()
	defer e.check.mu.Unlock()
	if !e.check.diverged {
		return nil
	}
	return divergedError{index: e.check.st.CheckedIndex, detail: e.check.st.Detail, repairing: e.check.repairing}
}
