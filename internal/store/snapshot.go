package store

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"os"

	"ddb/internal/sqlite"
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
	// The log's entries are not needed (the copy's applied index says
	// where it stands). No VACUUM: it may renumber the rowids of tables
	// without an INTEGER PRIMARY KEY, and the copy must be row for row.
	if err := dst.ExecScript("DELETE FROM _ddb_log"); err != nil {
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

// Restore replaces the database's whole content with the snapshot read
// from r (as written by Snapshot), and returns the snapshot's applied
// index. Readers see the old content until the copy is done, then the new.
func (s *Store) Restore(r io.Reader, dir string) (uint64, error) {
	f, err := os.CreateTemp(dir, "restore-*.db")
	if err != nil {
		return 0, err
	}
	path := f.Name()
	defer func() {
		// The copy is in WAL mode: reading it leaves its -wal and -shm.
		for _, p := range []string{path, path + "-wal", path + "-shm"} {
			os.Remove(p)
		}
	}()
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return 0, fmt.Errorf("receive snapshot: %w", err)
	}
	if err := f.Close(); err != nil {
		return 0, err
	}
	src, err := openConn(path, url.Values{"mode": {"ro"}})
	if err != nil {
		return 0, fmt.Errorf("open snapshot: %w", err)
	}
	defer src.Close()
	row, err := src.QueryRow("PRAGMA quick_check")
	if err != nil || row == nil || row[0] != "ok" {
		return 0, fmt.Errorf("snapshot failed its integrity check: %v %v", row, err)
	}
	index, err := appliedOf(src)
	if err != nil {
		return 0, err
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.w == nil {
		return 0, ErrClosed
	}
	s.wconn.auth.reset(policyReplica)
	// The file keeps its own id (see checkFile), not the snapshot's.
	own, err := s.w.QueryRow("SELECT value FROM _ddb_meta WHERE key = 'file_id'")
	if err != nil {
		return 0, err
	}
	sqlite.LockPRNG() // the copy's WAL writes may salt a new WAL header
	err = s.w.Backup(src)
	sqlite.UnlockPRNG()
	if err != nil {
		return 0, fmt.Errorf("install snapshot: %w", err)
	}
	if err := s.w.ExecScript(schemaSQL); err != nil {
		return 0, err
	}
	if own != nil {
		if err := s.w.Exec("INSERT OR REPLACE INTO _ddb_meta(key, value) VALUES ('file_id', ?)", own[0]); err != nil {
			return 0, err
		}
	}
	s.schemaGen.Add(1) // the whole schema may have changed
	s.applied.Store(index)
	s.visible.Store(index)
	s.logStart.Store(index + 1)
	return index, nil
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
