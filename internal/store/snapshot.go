package store

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/ddbgo/ddb/internal/sqlite"
)

// Snapshot writes a consistent copy of the database (without the log's
// entries, which the copy's applied index makes unnecessary) to a new
// temporary file in dir. It runs on a read connection, so writes go on
// meanwhile. The caller removes the file.
func (s *Store) Snapshot(ctx context.Context, dir string) (path string, index uint64, err error) {
	r, err := s.getReader(ctx)
	if err != nil {
		return "", 0, err
	}
	defer s.putReader(r)
	f, err := os.CreateTemp(dir, "snapshot-*.db")
	if err != nil {
		return "", 0, err
	}
	path = f.Name()
	f.Close()
	defer func() {
		if err != nil {
			os.Remove(path)
		}
	}()
	// No journal: the copy is discarded on any failure, and a journal's
	// header would draw from SQLite's process-wide generator, which the
	// writer pins while it runs entries.
	dst, err := openConn(path, url.Values{"_journal_mode": {"OFF"}, "_synchronous": {"OFF"}})
	if err != nil {
		return "", 0, err
	}
	defer dst.Close()
	r.auth.reset(policyReplica)
	if err := dst.Backup(r.c); err != nil {
		return "", 0, fmt.Errorf("copy database: %w", err)
	}
	// Not the consensus log and this node's own Raft state (its term and
	// vote): only where the copy stands in the log stays (see
	// RaftPosition). No VACUUM: it may renumber the rowids of tables
	// without an INTEGER PRIMARY KEY, and the copy must be row for row.
	if err := dst.ExecScript("DROP TABLE IF EXISTS _ddb_raft_log; DELETE FROM _ddb_raft_state WHERE key NOT IN ('conf_state', 'applied_term', 'rejoining')"); err != nil {
		return "", 0, fmt.Errorf("compact snapshot: %w", err)
	}
	index, err = appliedOf(dst)
	return path, index, err
}

func appliedOf(c *sqlite.Conn) (uint64, error) {
	row, err := c.QueryRow("SELECT value FROM _ddb_meta WHERE key='applied'")
	if err != nil {
		return 0, fmt.Errorf("read snapshot index: %w", err)
	}
	if row == nil {
		return 0, fmt.Errorf("snapshot has no applied index")
	}
	v, ok := row[0].(int64)
	if !ok {
		return 0, fmt.Errorf("snapshot applied index is %T", row[0])
	}
	return uint64(v), nil
}

// removeCopy removes a snapshot copy; it is in WAL mode, so reading it
// leaves its -wal and -shm beside it.
func removeCopy(path string) {
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		os.Remove(p)
	}
}

// install replaces the database's content with the snapshot file at path,
// after prepare (if set) has adjusted the copy, and returns its applied
// index. The copy becomes the database in one step: renamed over its file
// (swapIn), or else written in by one transaction. With notBehind,
// a copy that stands before what the database has applied is refused
// (ErrCopyBehind), and nothing changes.
func (s *Store) install(path string, prepare func(c *sqlite.Conn, index uint64) error, notBehind bool) (uint64, error) {
	// The file keeps its own id (see checkFile), not the snapshot's. It
	// is written into the copy before the copy is installed, so that the
	// installing transaction carries it: a process killed right after the
	// install must not leave a WAL that claims another file's id.
	s.wmu.Lock()
	if s.w == nil {
		s.wmu.Unlock()
		return 0, ErrClosed
	}
	s.wconn.auth.reset(policyReplica)
	own, err := s.w.QueryRow("SELECT value FROM _ddb_meta WHERE key = 'file_id'")
	s.wmu.Unlock()
	if err != nil {
		return 0, err
	}
	c, err := openConn(path, url.Values{"_journal_mode": {"OFF"}, "_synchronous": {"OFF"}})
	if err != nil {
		return 0, fmt.Errorf("open snapshot: %w", err)
	}
	index, err := appliedOf(c)
	if err == nil && prepare != nil {
		err = prepare(c, index)
	}
	if err == nil {
		err = c.ExecScript(schemaSQL + raftSchemaSQL)
	}
	if err == nil && own != nil {
		err = c.Exec("INSERT OR REPLACE INTO _ddb_meta(key, value) VALUES ('file_id', ?)", own[0])
	}
	c.Close()
	if err != nil {
		return 0, fmt.Errorf("prepare snapshot: %w", err)
	}
	src, err := openConn(path, url.Values{"mode": {"ro"}})
	if err != nil {
		return 0, fmt.Errorf("open snapshot: %w", err)
	}
	// No quick check of every page: the copy is the leader's file (or its
	// copy of it) byte for byte, checked against the SHA-256 the leader
	// signed as it arrived, so it could only find damage the leader's own
	// file holds, which the leader's reads meet as well; and it took two
	// minutes of a 10 GB catch-up here (the copy is not in memory by then).
	// What the install needs of it is checked: a whole file, its schema,
	// where it stands.
	err = fileWhole(src, path)
	if err == nil {
		index, err = appliedOf(src)
	}
	src.Close()
	if err != nil {
		return 0, fmt.Errorf("open snapshot: %w", err)
	}
	// Written without a sync (received, then prepared without a journal):
	// on disk before it is the database.
	if err := syncPath(path); err != nil {
		return 0, fmt.Errorf("install snapshot: %w", err)
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.w == nil {
		return 0, ErrClosed
	}
	if notBehind && index < s.applied.Load() {
		return 0, fmt.Errorf("%w (the copy is at index %d, this database at %d)", ErrCopyBehind, index, s.applied.Load())
	}
	// The change stream's triggers are made again for the copy's schema,
	// under the copy's setting of the stream.
	if err := s.dropCaptureTriggers(); err != nil {
		return 0, fmt.Errorf("install snapshot: %w", err)
	}
	swapped, err := s.swapIn(path)
	if err != nil {
		return 0, fmt.Errorf("install snapshot: %w", err)
	}
	if !swapped {
		src, err := openConn(path, url.Values{"mode": {"ro"}})
		if err != nil {
			return 0, fmt.Errorf("open snapshot: %w", err)
		}
		s.wconn.auth.reset(policyReplica)
		sqlite.LockPRNG() // the copy's WAL writes may salt a new WAL header
		err = s.w.Backup(src)
		sqlite.UnlockPRNG()
		src.Close()
		if err != nil {
			return 0, fmt.Errorf("install snapshot: %w", err)
		}
	}
	if err := s.loadChangeSetting(); err != nil {
		return 0, fmt.Errorf("install snapshot: %w", err)
	}
	if afterInstall != nil {
		afterInstall()
	}
	s.schemaGen.Add(1) // the whole schema may have changed
	s.termRecorded = 0 // the copy's own
	s.vtabsKnown = false
	s.applied.Store(index)
	s.visible.Store(index)
	return index, nil
}

// fileWhole checks that the database c has open at path is whole: as
// long as its pages say, with a schema that reads.
func fileWhole(c *sqlite.Conn, path string) error {
	want, err := pagesBytes(c)
	if err != nil {
		return err
	}
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if fi.Size() != want {
		return fmt.Errorf("the file holds %d bytes, its pages %d", fi.Size(), want)
	}
	_, err = c.All("SELECT type, name, sql FROM sqlite_schema")
	return err
}

// pagesBytes is how many bytes the pages of c's database take.
func pagesBytes(c *sqlite.Conn) (int64, error) {
	pages, err := c.QueryRow("PRAGMA page_count")
	if err != nil {
		return 0, err
	}
	size, err := c.QueryRow("PRAGMA page_size")
	if err != nil {
		return 0, err
	}
	return pages[0].(int64) * size[0].(int64), nil
}

// RaftPosition is where a copy of the database stands in the consensus
// log: its applied index, that entry's term, the configuration the log
// had reached there (encoded), and the record of nodes being added back
// (the consensus package's, encoded; nil: none).
type RaftPosition struct {
	Index, Term uint64
	Conf        []byte
	Rejoining   []byte
}

// positionOf reads, on c, the consensus keys that say where the data
// stands (all but the applied index).
func positionOf(c *sqlite.Conn, p *RaftPosition) error {
	rows, err := c.All("SELECT key, value FROM _ddb_raft_state WHERE key IN ('applied_term', 'conf_state', 'rejoining')")
	if err != nil {
		return err
	}
	for _, r := range rows {
		switch r[0] {
		case "applied_term":
			v, _ := r[1].(int64)
			p.Term = uint64(v)
		case "conf_state":
			p.Conf, _ = r[1].([]byte)
		case "rejoining":
			p.Rejoining, _ = r[1].([]byte)
		}
	}
	return nil
}

// SnapshotPosition reads where the snapshot file at path stands.
func SnapshotPosition(path string) (RaftPosition, error) {
	var p RaftPosition
	c, err := openConn(path, url.Values{"mode": {"ro"}})
	if err != nil {
		return p, err
	}
	defer c.Close()
	return positionOn(c)
}

// positionOn reads, on c, where its database stands in the log (a read
// transaction begun on c is at that index from then on).
func positionOn(c *sqlite.Conn) (RaftPosition, error) {
	var p RaftPosition
	var err error
	if p.Index, err = appliedOf(c); err != nil {
		return p, err
	}
	if err := positionOf(c, &p); err != nil {
		return p, err
	}
	if p.Index > 0 && p.Term == 0 {
		return p, fmt.Errorf("snapshot at index %d records no Raft term", p.Index)
	}
	return p, nil
}

// InstallRaftSnapshot makes the snapshot file at path (received from the
// leader) this node's database, then starts the log file after the
// snapshot's position with hardState (this node's own term and vote, and
// a commit index at least the snapshot's). The snapshot must stand at
// index and term. The file is consumed. A crash between the two leaves a
// database ahead of its log, which the node's start mends (ResetRaftLog).
func (s *Store) InstallRaftSnapshot(path string, index, term uint64, hardState []byte) error {
	defer removeCopy(path)
	pos, err := SnapshotPosition(path)
	if err != nil {
		return err
	}
	if pos.Index != index || pos.Term != term {
		return fmt.Errorf("the snapshot stands at index %d, term %d, not at %d, %d", pos.Index, pos.Term, index, term)
	}
	if _, err := s.installOwn(path, false); err != nil {
		return err
	}
	return s.ResetRaftLog(index, term, hardState)
}

// installOwn installs the copy at path, keeping this node's own keys (its
// identity and its log file's).
func (s *Store) installOwn(path string, notBehind bool) (uint64, error) {
	own, err := s.nodeKeys()
	if err != nil {
		return 0, err
	}
	return s.install(path, func(c *sqlite.Conn, _ uint64) error {
		for _, q := range own {
			if err := c.Exec(q.sql, q.args...); err != nil {
				return fmt.Errorf("prepare snapshot: %w", err)
			}
		}
		return nil
	}, notBehind)
}

// ErrCopyBehind: a copy of the leader's database stands before what this
// database has applied; a newer copy is needed.
var ErrCopyBehind = errors.New("the copy stands before what this database has applied")

// InstallCopy makes a copy of the leader's database (received whole and
// verified) this node's database, in one step, while the node runs:
// a node whose data a consistency check found different from the leader's
// repairs itself so. Only the data changes: the consensus log file is
// this node's, and the entries after the copy's index apply from it as
// they commit (those up to it are skipped). A copy behind what the
// database has applied is refused (ErrCopyBehind). The file is consumed;
// the copy's index is returned.
func (s *Store) InstallCopy(path string) (uint64, error) {
	defer removeCopy(path)
	pos, err := SnapshotPosition(path)
	if err != nil {
		return 0, err
	}
	if pos.Index == 0 {
		return 0, errors.New("the copy holds no applied index")
	}
	return s.installOwn(path, true)
}

// Checkpoint copies the WAL back into the database file (PASSIVE mode: it
// never blocks readers or the writer).
func (s *Store) Checkpoint() error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.w == nil {
		return ErrClosed
	}
	return s.w.Checkpoint(0)
}

// nodeKeys are the statements that keep, in a copy about to replace the
// database, what is this node's own and not the data's: the consensus
// node it belongs to, and the id tying it to its log file.
func (s *Store) nodeKeys() ([]stmt, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.w == nil {
		return nil, ErrClosed
	}
	s.wconn.auth.reset(policyReplica)
	rows, err := s.w.All("SELECT key, value FROM _ddb_raft_state WHERE key IN ('node_id', 'log_id')")
	if err != nil {
		return nil, err
	}
	// (A copy an earlier version made may still hold a log table, emptied:
	// it goes, or the next start would take it for a log to move.)
	out := []stmt{{raftSchemaSQL, nil}, {"DROP TABLE IF EXISTS _ddb_raft_log", nil},
		{"DELETE FROM _ddb_raft_state WHERE key IN ('hard_state', 'snap_index', 'snap_term', 'node_id', 'log_id')", nil}}
	for _, kv := range rows {
		out = append(out, setRaftState(kv[0].(string), kv[1]))
	}
	return out, nil
}

// afterInstall, when set (by tests), runs right after a snapshot is
// installed: the moment a kill would leave the files as they are.
var afterInstall func()

// swapWait is how long swapIn waits for the reads under way to end.
var swapWait = 10 * time.Second

// swapIn makes the file at path (a copy install has prepared, checked and
// synced) the database by renaming it over the database file, and reports
// whether it did. Copying the copy's pages in through the writer, as one
// transaction, writes the database twice more (into the WAL, then back
// into the file) and held the node for 5 minutes 48 seconds for a 10 GB
// copy here; a rename costs nothing.
//
// Every connection closes first: the reads under way end (a consistency
// check's digest stops), later ones wait for the new connections. The
// writer's checkpoint empties its WAL, and a WAL or index left beside the
// file is removed, so none is replayed into the copy. It does not swap,
// and changes nothing, when the copy lies on another file system than the
// database (a rename cannot cross it) or a read holds its
// connection past swapWait (a dump sent to a slow client, a copy for a
// follower): then the caller copies the pages in, which reads do not
// hinder. The caller holds wmu.
//
// A crash before the rename leaves the database as it was; after it, the
// copy, with no WAL beside it. A failure once the connections are closed
// leaves the store closed (ErrClosed everywhere): the node stops, and
// starts on whichever file stands.
func (s *Store) swapIn(path string) (bool, error) {
	if !sameFileSystem(filepath.Dir(path), filepath.Dir(s.path)) {
		return false, nil
	}
	// The copy was made private (os.CreateTemp); the database keeps the
	// permissions it had.
	if fi, err := os.Stat(s.path); err != nil {
		return false, err
	} else if err := os.Chmod(path, fi.Mode().Perm()); err != nil {
		return false, err
	}
	s.stopDigests.Add(1) // a digest under way stops at its next rows
	var held []*conn
	deadline := time.NewTimer(swapWait)
	defer deadline.Stop()
	for len(held) < s.nreaders {
		select {
		case r := <-s.readers:
			held = append(held, r)
		case <-deadline.C:
			for _, r := range held {
				s.readers <- r
			}
			return false, nil
		}
	}
	var errs []error
	for _, r := range held {
		errs = append(errs, r.c.Close())
	}
	s.nreaders = 0
	sqlite.LockPRNG() // a TRUNCATE checkpoint salts the next WAL header (see Close)
	errs = append(errs, s.w.Checkpoint(3))
	sqlite.UnlockPRNG()
	s.clock.StopCounting()
	errs = append(errs, s.w.Close())
	s.w, s.wconn = nil, nil
	for _, p := range []string{s.path + "-wal", s.path + "-shm"} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return false, s.broken(fmt.Errorf("close the database to replace it: %w", err))
	}
	if err := os.Rename(path, s.path); err != nil {
		return false, s.broken(err)
	}
	if err := syncPath(filepath.Dir(s.path)); err != nil {
		return false, s.broken(err)
	}
	// The lock was on the file renamed over; it moves to the copy.
	lock, err := lockFile(s.path)
	if err != nil {
		return false, s.broken(err)
	}
	if s.lock != nil {
		s.lock.Close()
	}
	s.lock = lock
	if err := s.openWriter(); err != nil {
		return false, s.broken(err)
	}
	if err := s.openReaders(cap(s.readers)); err != nil {
		return false, s.broken(err)
	}
	return true, nil
}

// broken closes the store after a failure that left it without its
// connections, and returns err.
func (s *Store) broken(err error) error {
	s.closed.Store(true)
	return err
}

// syncPath flushes the file or directory at path to disk (a directory:
// the renames in it).
func syncPath(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
