package consensus

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/ddbgo/ddb/internal/cluster"
	"github.com/ddbgo/ddb/internal/store"
	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"
)

// Snapshots: a copy of the leader's database replaces a follower's that
// is behind the kept log; the log is compacted behind what is applied.

// install makes the snapshot Raft restored from (its data: the path of a
// copy of the leader's database, received whole and verified) this node's
// database, with this node's own term and vote, in one transaction.
func (n *Node) install(snap pb.Snapshot, hard pb.HardState) error {
	path := string(snap.Data)
	if path == "" {
		return errors.New("the snapshot carries no database")
	}
	if v, ok := n.receiving.Load(path); ok {
		f := v.(*snapshotFile)
		close(f.started)
		defer close(f.done)
	}
	if raft.IsEmptyHardState(hard) {
		hard = n.storage.HardState()
	}
	if hard.Commit < snap.Metadata.Index {
		hard.Commit = snap.Metadata.Index
	}
	hb, err := hard.Marshal()
	if err != nil {
		return err
	}
	if err := n.storage.st.InstallRaftSnapshot(path, snap.Metadata.Index, snap.Metadata.Term, hb); err != nil {
		return err
	}
	n.storage.installed(snap.Metadata, hard)
	n.changed = true // the configuration is the snapshot's: RecentStatus follows at once
	if err := n.loadRejoining(context.Background()); err != nil {
		return err
	}
	n.applied.Store(snap.Metadata.Index)
	n.handed = snap.Metadata.Index
	n.signalApplied()
	n.installed.Add(1)
	n.cfg.Log.Info("installed a snapshot of the leader's database", "index", snap.Metadata.Index)
	if n.cfg.Installed != nil {
		n.cfg.Installed(snap.Metadata.Index)
	}
	return nil
}

// compact drops applied entries beyond the LogKeep the log keeps, and
// beyond the LogKeepBytes of data, in steps of an eighth of either (each
// delete stays short).
func (n *Node) compact() error {
	keep, keepBytes := n.cfg.LogKeep, n.cfg.LogKeepBytes
	applied := n.applied.Load()
	first, _ := n.storage.FirstIndex()
	upTo := first - 1
	if keep > 0 && applied+1 >= first+keep+keep/8+1 {
		upTo = applied - keep
	}
	if keepBytes > 0 {
		if bytes, to := n.storage.keptBehind(applied, keepBytes); bytes > keepBytes+keepBytes/8 {
			upTo = max(upTo, to)
		}
	}
	if upTo < first {
		return nil
	}
	// The data commits without an fsync: it must be durable before the
	// log drops what would apply it again (a checkpoint syncs the WAL
	// before it copies it back).
	if err := n.storage.st.Checkpoint(); err != nil {
		return err
	}
	return n.storage.Compact(upTo)
}

// SnapshotSource turns Raft's request to send a snapshot into one that
// carries this node's database as it stands now (its file held still, or
// a copy written in dir; the caller closes it): the message then
// describes the database's own position in the log, which is at or after
// the compacted position Raft asked for, and is what the follower
// restores to.
func (n *Node) SnapshotSource(ctx context.Context, m pb.Message, dir string) (cluster.SnapshotSource, pb.Message, error) {
	src, out, err := n.snapshotFile(ctx, m, dir)
	if err != nil {
		return nil, m, err
	}
	return src, out, nil
}

// snapshotConfWait bounds how long snapshotFile waits for the database to
// apply the configuration that adds the node it is for.
const snapshotConfWait = 10 * time.Second

// snapshotFile is SnapshotSource's database. Raft asks for a snapshot for
// a node as soon as it applies the configuration change that adds it,
// which the applier may not yet have committed to the database: a copy
// taken then names a configuration without the node, which Raft on the
// node refuses to restore ("not in the ConfState"), after the whole
// transfer, and the leader sends another (minutes each for a large
// database). It waits for the database to apply the change instead.
func (n *Node) snapshotFile(ctx context.Context, m pb.Message, dir string) (*store.FileSnapshot, pb.Message, error) {
	deadline := time.Now().Add(snapshotConfWait)
	for {
		sig := *n.appliedSig.Load()
		src, err := n.storage.st.SnapshotToSend(ctx, dir)
		if err != nil {
			return nil, m, err
		}
		var cs pb.ConfState
		if err := cs.Unmarshal(src.Pos.Conf); err != nil {
			src.Close()
			return nil, m, err
		}
		if confHolds(cs, m.To) {
			m.Snapshot = &pb.Snapshot{Metadata: pb.SnapshotMetadata{Index: src.Pos.Index, Term: src.Pos.Term, ConfState: cs}}
			return src, m, nil
		}
		src.Close()
		err = fmt.Errorf("the database, at index %d, has not yet applied the configuration that adds node %d", src.Pos.Index, cluster.CommandLineID(m.To))
		if n.stepped || time.Now().After(deadline) {
			return nil, m, err
		}
		select {
		case <-sig: // the applier moved on
		case <-time.After(time.Until(deadline)):
		case <-ctx.Done():
			return nil, m, ctx.Err()
		case <-n.done:
			return nil, m, ErrStopped
		}
	}
}

// confHolds says whether configuration cs has node id (as a voter or a
// learner, in either half of a joint configuration).
func confHolds(cs pb.ConfState, id uint64) bool {
	for _, ids := range [][]uint64{cs.Voters, cs.Learners, cs.VotersOutgoing, cs.LearnersNext} {
		if slices.Contains(ids, id) {
			return true
		}
	}
	return false
}

// SnapshotToSend is SnapshotSource written into a new file in dir (which
// the caller sends and removes).
func (n *Node) SnapshotToSend(ctx context.Context, m pb.Message, dir string) (path string, out pb.Message, err error) {
	src, out, err := n.snapshotFile(ctx, m, dir)
	if err != nil {
		return "", m, err
	}
	defer src.Close()
	path, err = src.WriteFile(dir)
	return path, out, err
}

// snapshotFile follows a received snapshot file from Step to its install.
type snapshotFile struct{ started, done chan struct{} }

// StepSnapshot hands Raft a snapshot message whose database was received
// whole into the file at path. The file is removed once installed, or
// after two minutes if Raft ignored the message (the node had caught up
// otherwise meanwhile).
func (n *Node) StepSnapshot(ctx context.Context, m pb.Message, path string) error {
	f := &snapshotFile{started: make(chan struct{}), done: make(chan struct{})}
	n.receiving.Store(path, f)
	m.Snapshot.Data = []byte(path)
	n.contact(m)
	var err error
	if !n.do(ctx, func(rn *raft.RawNode) { err = rn.Step(m) }) {
		err = cmp.Or(ctx.Err(), ErrStopped)
	}
	if err != nil {
		n.receiving.Delete(path)
		removeFile(path)
		return err
	}
	go func() {
		defer n.receiving.Delete(path)
		defer removeFile(path)
		select {
		case <-f.started:
		case <-time.After(2 * time.Minute):
			return
		case <-n.done:
			return
		}
		select {
		case <-f.done:
		case <-n.done:
		}
	}()
	return nil
}

func removeFile(path string) {
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		os.Remove(p)
	}
}

// InstallingSnapshot reports whether a snapshot received from the leader
// is being installed: the node runs no Raft step meanwhile (a copy of
// several GB takes a minute or more to install).
func (n *Node) InstallingSnapshot() bool {
	installing := false
	n.receiving.Range(func(_, v any) bool {
		f := v.(*snapshotFile)
		select {
		case <-f.started:
			select {
			case <-f.done:
			default:
				installing = true
			}
		default:
		}
		return !installing
	})
	return installing
}

// SnapshotsInstalled counts the snapshots this node installed since it
// started.
func (n *Node) SnapshotsInstalled() uint64 { return n.installed.Load() }

// ReportSnapshot tells Raft whether a snapshot reached follower id.
func (n *Node) ReportSnapshot(id uint64, ok bool) {
	st := raft.SnapshotFinish
	if !ok {
		st = raft.SnapshotFailure
	}
	n.do(context.Background(), func(rn *raft.RawNode) { rn.ReportSnapshot(id, st) })
}
