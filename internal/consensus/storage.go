// Package consensus runs etcd's Raft library (go.etcd.io/raft/v3) for a
// node: the log and Raft's state in a file of their own beside the
// database (store.SaveRaft), one goroutine that owns Raft and handles each
// Ready in the order Raft requires (save, send, hand committed entries
// over, Advance), and an applier that applies committed entries to the
// database off that loop, so that Raft never waits for SQL (DESIGN.md).
//
// Nodes talk through the Transport interface (HTTP in production, in
// memory in tests), and time passes through Tick, so the protocol is
// tested in-process and deterministically.
package consensus

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"

	"go.etcd.io/raft/v3"
	pb "go.etcd.io/raft/v3/raftpb"

	"github.com/ddbgo/ddb/internal/store"
)

// Storage is raft.Storage over a node's log file. It keeps the log in
// memory as well (Raft asks for terms and recent entries far more often
// than it appends), and writes through to the database: an entry is in
// memory only once it is durable. Of the entries' data it keeps the
// newest memLogBytes: older entries' data is read back from the file when
// Raft asks for it (a follower catching up), so a log of big entries (a
// load sends 4 MiB ones) costs disk, not memory.
type Storage struct {
	st *store.Store

	mu        sync.Mutex
	hard      pb.HardState
	conf      pb.ConfState
	snapIndex uint64
	snapTerm  uint64
	ents      []pb.Entry // the log after snapIndex, in order
	dataBytes int        // the Data ents hold
	// dropped: entries up to this index hold no Data here (it is in the
	// file); always the oldest ones.
	dropped uint64
	// cum[i] is the data of every entry up to ents[i] (held here or not),
	// counted from a start of no meaning; snapCum is the count at
	// snapIndex. Their differences are the log's bytes between indexes.
	cum     []uint64
	snapCum uint64
}

// memLogBytes bounds the entries' data a node keeps in memory.
const memLogBytes = 8 << 20

// keepWithinMemory drops the oldest entries' data until what is kept fits
// memLogBytes (the newest entry always keeps its own). Called with mu held.
func (s *Storage) keepWithinMemory() {
	s.dropped = max(s.dropped, s.snapIndex)
	for s.dataBytes > memLogBytes && s.dropped+1 < s.lastIndex() {
		e := &s.ents[s.dropped-s.snapIndex]
		s.dataBytes -= len(e.Data)
		e.Data = nil
		s.dropped++
	}
}

var _ raft.Storage = (*Storage)(nil)

// OpenStorage loads the log and Raft's state from the database.
func OpenStorage(ctx context.Context, st *store.Store) (*Storage, error) {
	rs, err := st.LoadRaftState(ctx)
	if err != nil {
		return nil, err
	}
	s := &Storage{st: st, snapIndex: rs.SnapIndex, snapTerm: rs.SnapTerm}
	if rs.HardState != nil {
		if err := s.hard.Unmarshal(rs.HardState); err != nil {
			return nil, err
		}
	}
	if rs.ConfState != nil {
		if err := s.conf.Unmarshal(rs.ConfState); err != nil {
			return nil, err
		}
	}
	last, err := st.RaftLastIndex(ctx)
	if err != nil {
		return nil, err
	}
	for next := s.snapIndex + 1; next <= last; {
		stored, err := st.RaftEntries(ctx, next, last+1, 8<<20)
		if err != nil {
			return nil, err
		}
		for _, e := range stored {
			s.ents = append(s.ents, raftEntry(e))
			s.dataBytes += len(e.Data)
			s.cum = append(s.cum, s.cumAt(s.lastIndex()-1)+uint64(len(e.Data)))
		}
		s.keepWithinMemory()
		next += uint64(len(stored))
	}
	return s, nil
}

// InitialState implements raft.Storage.
func (s *Storage) InitialState() (pb.HardState, pb.ConfState, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hard, s.conf, nil
}

// Entries implements raft.Storage.
func (s *Storage) Entries(lo, hi, maxSize uint64) ([]pb.Entry, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if lo <= s.snapIndex {
		return nil, raft.ErrCompacted
	}
	if hi > s.lastIndex()+1 || lo > hi {
		return nil, raft.ErrUnavailable
	}
	if lo <= s.dropped {
		return s.entriesFromFile(lo, hi, maxSize)
	}
	ents := s.ents[lo-s.snapIndex-1 : hi-s.snapIndex-1]
	var size uint64
	for i, e := range ents {
		size += uint64(e.Size())
		if i > 0 && maxSize > 0 && size > maxSize {
			ents = ents[:i]
			break
		}
	}
	out := make([]pb.Entry, len(ents))
	copy(out, ents)
	return out, nil
}

// raftEntry is an entry of the log file as Raft's type.
func raftEntry(e store.RaftEntry) pb.Entry {
	return pb.Entry{Index: e.Index, Term: e.Term, Type: pb.EntryType(e.Type), Data: e.Data}
}

// entriesFromFile is Entries for a range that starts among the entries
// whose data is only in the file. Called with mu held; it lets go of mu
// while it reads (Raft's loop asks for terms meanwhile), then checks the
// entries read against the log in memory, which may have been compacted
// or replaced in between.
func (s *Storage) entriesFromFile(lo, hi, maxSize uint64) ([]pb.Entry, error) {
	s.mu.Unlock()
	stored, err := s.st.RaftEntries(context.Background(), lo, hi, max(maxSize, 1))
	s.mu.Lock()
	if errors.Is(err, store.ErrRaftCompacted) || lo <= s.snapIndex {
		return nil, raft.ErrCompacted
	}
	if err != nil {
		return nil, err
	}
	out := make([]pb.Entry, 0, len(stored))
	for _, e := range stored {
		if e.Index > s.lastIndex() || s.ents[e.Index-s.snapIndex-1].Term != e.Term {
			break // replaced while the file was read: what is left is Raft's to ask again
		}
		out = append(out, raftEntry(e))
	}
	if len(out) == 0 {
		return nil, raft.ErrUnavailable
	}
	return out, nil
}

// Term implements raft.Storage.
func (s *Storage) Term(i uint64) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case i == s.snapIndex:
		return s.snapTerm, nil
	case i < s.snapIndex:
		return 0, raft.ErrCompacted
	case i > s.lastIndex():
		return 0, raft.ErrUnavailable
	}
	return s.ents[i-s.snapIndex-1].Term, nil
}

// LastIndex implements raft.Storage.
func (s *Storage) LastIndex() (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastIndex(), nil
}

func (s *Storage) lastIndex() uint64 { return s.snapIndex + uint64(len(s.ents)) }

// cumAt is cum at index i (snapIndex ≤ i ≤ lastIndex). Called with mu
// held.
func (s *Storage) cumAt(i uint64) uint64 {
	if i == s.snapIndex {
		return s.snapCum
	}
	return s.cum[i-s.snapIndex-1]
}

// keptBehind returns the log's data bytes from its first entry up to
// applied, and the index up to which the log may be compacted so that the
// entries after it, up to applied, hold no more than keepBytes of data (at
// most applied; the log's start when they already do).
func (s *Storage) keptBehind(applied, keepBytes uint64) (bytes, upTo uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	applied = min(applied, s.lastIndex())
	if applied <= s.snapIndex {
		return 0, s.snapIndex
	}
	end := s.cumAt(applied)
	bytes = end - s.snapCum
	// The first index after which at most keepBytes lie up to applied.
	j := sort.Search(int(applied-s.snapIndex)+1, func(j int) bool { return end-s.cumAt(s.snapIndex+uint64(j)) <= keepBytes })
	return bytes, s.snapIndex + uint64(j)
}

// FirstIndex implements raft.Storage.
func (s *Storage) FirstIndex() (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.snapIndex + 1, nil
}

// Snapshot implements raft.Storage: the position the log was compacted
// at. Its data is the database itself, which the transport copies when it
// sends a snapshot (and then describes the copy's own position instead;
// see peer.RaftTransport and MemNetwork).
func (s *Storage) Snapshot() (pb.Snapshot, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return pb.Snapshot{Metadata: pb.SnapshotMetadata{Index: s.snapIndex, Term: s.snapTerm, ConfState: s.conf}}, nil
}

// Compact drops the log's entries up to and including index (which this
// node has applied): a snapshot of the database replaces them.
func (s *Storage) Compact(index uint64) error {
	s.mu.Lock()
	if index <= s.snapIndex || index > s.lastIndex() {
		s.mu.Unlock()
		return nil
	}
	term := s.ents[index-s.snapIndex-1].Term
	s.mu.Unlock()
	if err := s.st.CompactRaft(index, term); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.ents[:index-s.snapIndex] {
		s.dataBytes -= len(e.Data)
	}
	s.snapCum = s.cum[index-s.snapIndex-1]
	s.ents = append([]pb.Entry(nil), s.ents[index-s.snapIndex:]...)
	s.cum = append([]uint64(nil), s.cum[index-s.snapIndex:]...)
	s.snapIndex, s.snapTerm = index, term
	s.dropped = max(s.dropped, index)
	return nil
}

// installed makes the in-memory state match a snapshot just installed in
// the database: the log starts after it, with its configuration.
func (s *Storage) installed(meta pb.SnapshotMetadata, hard pb.HardState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ents, s.dataBytes = nil, 0
	s.cum, s.snapCum = nil, 0
	s.snapIndex, s.snapTerm = meta.Index, meta.Term
	s.dropped = meta.Index
	s.conf = meta.ConfState
	s.hard = hard
}

// HardState is the last hard state made durable.
func (s *Storage) HardState() pb.HardState {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hard
}

// Save makes entries and the hard state durable (one transaction), then
// makes them visible to Raft.
func (s *Storage) Save(entries []pb.Entry, hard pb.HardState) error {
	save, err := s.encode(entries, hard)
	if err != nil {
		return err
	}
	if err := s.st.SaveRaft(save); err != nil {
		return err
	}
	return s.saved(entries, hard)
}

// encode turns entries and a hard state into what the database stores
// (a nil hard state when it did not change).
func (s *Storage) encode(entries []pb.Entry, hard pb.HardState) (store.RaftSave, error) {
	var save store.RaftSave
	s.mu.Lock()
	changed := !raft.IsEmptyHardState(hard) && !isHardStateEqual(hard, s.hard)
	s.mu.Unlock()
	if changed {
		var err error
		if save.HardState, err = hard.Marshal(); err != nil {
			return save, err
		}
	}
	save.Entries = make([]store.RaftEntry, len(entries))
	for i, e := range entries {
		save.Entries[i] = store.RaftEntry{Index: e.Index, Term: e.Term, Type: int(e.Type), Data: e.Data}
	}
	return save, nil
}

// saved makes entries and a hard state that are now durable visible to
// Raft.
func (s *Storage) saved(entries []pb.Entry, hard pb.HardState) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !raft.IsEmptyHardState(hard) {
		s.hard = hard
	}
	if len(entries) == 0 {
		return nil
	}
	first := entries[0].Index
	switch {
	case first <= s.snapIndex:
		return errors.New("raft: appending entries a snapshot already covers")
	case first > s.lastIndex()+1:
		return errors.New("raft: appending entries after a gap in the log")
	}
	for _, e := range s.ents[first-s.snapIndex-1:] {
		s.dataBytes -= len(e.Data)
	}
	s.ents = append(s.ents[:first-s.snapIndex-1], entries...)
	s.cum = s.cum[:first-s.snapIndex-1]
	for _, e := range entries {
		s.dataBytes += len(e.Data)
		s.cum = append(s.cum, s.cumAt(e.Index-1)+uint64(len(e.Data)))
	}
	// Entries replaced from first on hold their data here again.
	s.dropped = min(s.dropped, first-1)
	s.keepWithinMemory()
	return nil
}

// SetConfState records the configuration the applied log has reached;
// persist says whether to write it to the database here (a Replica writes
// it with the entry's change instead, in the same transaction).
func (s *Storage) SetConfState(cs pb.ConfState, persist bool) error {
	if persist {
		b, err := cs.Marshal()
		if err != nil {
			return err
		}
		if err := s.st.SetRaftConfState(b); err != nil {
			return err
		}
	}
	s.mu.Lock()
	s.conf = cs
	s.mu.Unlock()
	return nil
}

func isHardStateEqual(a, b pb.HardState) bool {
	return a.Term == b.Term && a.Vote == b.Vote && a.Commit == b.Commit
}

// mendLog makes the log file agree with where the data stands (applied):
// the database and the log are two files, and a crash while a snapshot is
// installed (the database first, then the log) leaves the data ahead of
// the log, or at an index the log holds in another term. The data is a
// committed state of the leader's, so the log then starts after it. Data
// behind the log's start cannot be brought up to date from it (the data
// file lost what it had applied): the node refuses to start.
func mendLog(ctx context.Context, st *store.Store, s *Storage, applied uint64) (*Storage, error) {
	hard, _, _ := s.InitialState()
	last, _ := s.LastIndex()
	if applied == 0 || raft.IsEmptyHardState(hard) && last == 0 {
		return s, nil // nothing applied, or no Raft state (see Engine)
	}
	if applied < s.snapIndex {
		return nil, fmt.Errorf("the database has applied index %d, but the consensus log (%s) starts after index %d: the data file lost what it had applied. Restore it from a healthy replica, or remove %s to join again as a node without Raft state", applied, store.RaftLogPath(st.Path()), s.snapIndex, store.RaftLogPath(st.Path()))
	}
	pos, err := st.DataPosition(ctx)
	if err != nil {
		return nil, err
	}
	if applied <= last {
		term, err := s.Term(applied)
		if err != nil || pos.Term == 0 || term == pos.Term {
			return s, nil
		}
	}
	if pos.Term == 0 {
		return nil, fmt.Errorf("the database has applied index %d, beyond the consensus log, and does not record that entry's term", applied)
	}
	hard.Commit = max(hard.Commit, applied)
	hb, err := hard.Marshal()
	if err != nil {
		return nil, err
	}
	if err := st.ResetRaftLog(applied, pos.Term, hb); err != nil {
		return nil, err
	}
	return OpenStorage(ctx, st)
}
