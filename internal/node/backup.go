package node

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/ddbgo/ddb/internal/cluster"
	"github.com/ddbgo/ddb/internal/progress"

	"github.com/ddbgo/ddb/internal/consensus"
	"github.com/ddbgo/ddb/internal/offsite"
	"github.com/ddbgo/ddb/internal/replication"
	"github.com/ddbgo/ddb/internal/rlog"
	"github.com/ddbgo/ddb/internal/sqlite"
	"github.com/ddbgo/ddb/internal/store"
)

// backupLoop writes a consistent backup of the database to dir every
// interval, until stop: backup-<time>-<index>.db, written under a
// temporary name, checked with SQLite's integrity check, then renamed;
// only then are the oldest beyond keep deleted. A backup whose content is
// the newest one's is not written.
func backupLoop(st *store.Store, dir string, interval time.Duration, keep int, log *slog.Logger, stop <-chan struct{}, track *progress.Tracker) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		op := track.Start("backup", dir, "steps", 4)
		path, skipped, err := backupOnce(st, dir, op)
		op.End(err)
		if err != nil {
			log.Error("backup failed; older backups are kept", "dir", dir, "err", err)
			continue
		}
		if skipped {
			log.Info("backup skipped: nothing changed since the last one", "file", path)
			continue
		}
		log.Info("backup written", "file", path)
		if err := prune(dir, keep); err != nil {
			log.Warn("could not delete old backups", "dir", dir, "err", err)
		}
	}
}

// backupOnce writes one verified backup into dir and returns its path; or
// the newest backup's, skipped, when that one has the same content.
func backupOnce(st *store.Store, dir string, op *progress.Op) (string, bool, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", false, err
	}
	tmp, index, err := st.Snapshot(context.Background(), dir)
	if err != nil {
		return "", false, err
	}
	defer os.Remove(tmp) // once renamed, nothing is left to remove
	op.Add(1)            // copied
	if err := store.Standalone(tmp); err != nil {
		return "", false, err
	}
	op.Add(1) // made standalone
	if err := verify(tmp); err != nil {
		return "", false, fmt.Errorf("the new backup fails its check: %w", err)
	}
	op.Add(1) // checked
	if newest := newestBackup(dir); newest != "" {
		a, err := store.ContentDigest(tmp)
		if err != nil {
			return "", false, err
		}
		if b, err := store.ContentDigest(newest); err == nil && a == b {
			return newest, true, nil
		}
	}
	op.Add(1) // compared with the newest
	if f, err := os.Open(tmp); err == nil {
		err = f.Sync()
		f.Close()
		if err != nil {
			return "", false, err
		}
	}
	name := fmt.Sprintf("backup-%s-%d.db", time.Now().UTC().Format("20060102T150405.000Z"), index)
	path := filepath.Join(dir, name)
	if err := os.Rename(tmp, path); err != nil {
		return "", false, err
	}
	if d, err := os.Open(dir); err == nil {
		d.Sync() // the rename is durable
		d.Close()
	}
	return path, false, nil
}

// verify runs SQLite's integrity check on a database file.
func verify(path string) error {
	c, err := sqlite.Open(path, url.Values{"mode": {"ro"}})
	if err != nil {
		return err
	}
	defer c.Close()
	row, err := c.QueryRow("PRAGMA integrity_check")
	if err != nil {
		return err
	}
	if row[0] != "ok" {
		return fmt.Errorf("integrity check: %v", row[0])
	}
	return nil
}

// newestBackup is the path of the newest backup in dir ("" if none).
func newestBackup(dir string) string {
	entries, _ := os.ReadDir(dir)
	newest := ""
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "backup-") && strings.HasSuffix(e.Name(), ".db") && e.Name() > newest {
			newest = e.Name()
		}
	}
	if newest == "" {
		return ""
	}
	return filepath.Join(dir, newest)
}

// prune deletes the oldest backups in dir beyond keep (names sort by time).
func prune(dir string, keep int) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	var backups []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "backup-") && strings.HasSuffix(e.Name(), ".db") {
			backups = append(backups, e.Name())
		}
	}
	sort.Strings(backups)
	for len(backups) > keep {
		if err := os.Remove(filepath.Join(dir, backups[0])); err != nil {
			return err
		}
		backups = backups[1:]
	}
	return nil
}

// RestoreStatus is what /status says of -restore (key "restore"): its
// file, its state ("waiting" for this node to lead, "loading", "restored",
// "skipped" when the database already held tables, "failed"), the index
// it was restored at, how many tries the load took, and why it failed.
type RestoreStatus struct {
	File  string `json:"file"`
	State string `json:"state"`
	Index uint64 `json:"index,omitempty"`
	Tries int    `json:"tries,omitempty"`
	Error string `json:"error,omitempty"`
}

// restoreState is a restore's RestoreStatus, safe to read while it runs.
type restoreState struct {
	mu sync.Mutex
	st RestoreStatus
}

func (r *restoreState) set(f func(*RestoreStatus)) {
	r.mu.Lock()
	f(&r.st)
	r.mu.Unlock()
}

// Status is the restore's state now.
func (r *restoreState) Status() any {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.st
}

// maxRestoreTries bounds the tries of a restore whose outcome stays
// unknown (the leader changes, or no majority answers, try after try).
const maxRestoreTries = 10

// restoreWhenLeading loads the backup file into a fresh cluster through
// the log, once this node leads, if the database holds no table yet (a
// restart with the flag still given changes nothing). A backup the
// cluster refuses fails at once; one whose load keeps ending with an
// unknown outcome fails after maxRestoreTries. Either way the log and
// /status (rs) say why.
func restoreWhenLeading(eng *consensus.Engine, st *store.Store, source string, index uint64, dir string, log *slog.Logger, stop <-chan struct{}, rs *restoreState, track *progress.Tracker) {
	file := source
	shown := source
	if cluster.IsBackupURL(source) {
		_, shown, _ = cluster.ParseBackupURL(source)
	}
	rs.set(func(s *RestoreStatus) { s.File, s.State = shown, "waiting" })
	fail := func(msg string, err error) {
		log.Error("restore: "+msg, "file", shown, "err", err)
		rs.set(func(s *RestoreStatus) { s.State, s.Error = "failed", msg+": "+err.Error() })
	}
	if cluster.IsBackupURL(source) {
		// The backup is downloaded once this node leads a cluster whose
		// database holds no table: a restart with the flag still given
		// downloads nothing.
		empty, ok := whenLeading(eng, st, stop)
		if !ok {
			return
		}
		if !empty {
			log.Info("restore: the database already holds tables; the backup is not loaded", "file", shown)
			rs.set(func(s *RestoreStatus) { s.State = "skipped" })
			return
		}
		rs.set(func(s *RestoreStatus) { s.State = "downloading" })
		path, m, err := fetchBackup(source, index, dir, stop, log, track)
		if err != nil {
			fail("the backup could not be downloaded; nothing restored", err)
			return
		}
		defer os.Remove(path)
		log.Info("restore: backup downloaded and its SHA-256 checked", "file", shown, "backup_index", m.Index, "bytes", m.Bytes, "sha256", m.SHA256)
		file = path
	}
	plan, err := store.PlanLoad(file, dir)
	if err != nil {
		fail("the backup cannot be loaded; nothing restored", err)
		return
	}
	defer plan.Close()
	// One id for every try: a try cut short by a change of leader is
	// taken up by the next, entry by entry.
	id := fmt.Sprintf("restore-%d", time.Now().UnixNano())
	for tries := 0; ; {
		empty, ok := whenLeading(eng, st, stop)
		if !ok {
			return
		}
		if !empty && tries == 0 {
			log.Info("restore: the database already holds tables; the backup is not loaded", "file", shown)
			rs.set(func(s *RestoreStatus) { s.State = "skipped" })
			return
		}
		tries++
		rs.set(func(s *RestoreStatus) { s.State, s.Tries = "loading", tries })
		ctx, cancel := context.WithTimeout(context.Background(), replication.LoadTimeout(plan.Bytes))
		op := track.Start("restore", shown, "chunks", int64(plan.Chunks())+1)
		out, err := replication.Load(ctx, eng, plan, id, true, cluster.AckQuorum, store.Limits{}, op)
		cancel()
		op.End(err)
		if err != nil && !replication.OutcomeUnknown(err) {
			fail("the backup was refused; nothing restored", err)
			return
		}
		if err != nil && tries >= maxRestoreTries {
			fail(fmt.Sprintf("gave up after %d tries whose outcome stayed unknown (the load may have been applied: check the tables; restart the node with -restore to try again)", tries), err)
			return
		}
		if err != nil {
			log.Warn("restore: the load did not go through yet; retrying", "try", tries, "err", err)
			continue
		}
		log.Info("restored from a backup", "file", shown, "index", out.Index)
		rs.set(func(s *RestoreStatus) { s.State, s.Index, s.Error = "restored", out.Index, "" })
		return
	}
}

// whenLeading waits, in steps of 100 ms, until this node leads and
// can say whether its database holds no table of the user's (empty); ok
// is false when the node stops first.
func whenLeading(eng *consensus.Engine, st *store.Store, stop <-chan struct{}) (empty, ok bool) {
	for {
		select {
		case <-stop:
			return false, false
		case <-time.After(100 * time.Millisecond):
		}
		if !eng.IsLeader() {
			continue
		}
		if empty, err := holdsNoTable(st); err == nil {
			return empty, true
		}
	}
}

// holdsNoTable reports whether the database holds no table of the user's.
func holdsNoTable(st *store.Store) (bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rows, err := st.Read(ctx, []rlog.Statement{{SQL: "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE '\\_ddb\\_%' ESCAPE '\\' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"}}, store.Limits{})
	if err != nil {
		return false, err
	}
	n, _ := rows[0].Rows[0][0].(int64)
	return n == 0, nil
}

// fetchBackup downloads the backup at index (0: the newest) from the
// object store at source into dir, checked against its manifest. Errors
// that may pass (the store unreachable) are retried for a while; a missing
// backup, bucket or permission, or a damaged backup, are not.
func fetchBackup(source string, index uint64, dir string, stop <-chan struct{}, log *slog.Logger, track *progress.Tracker) (string, offsite.Manifest, error) {
	var last error
	for try := 1; try <= 5; try++ {
		ctx, cancel := context.WithTimeout(context.Background(), 6*time.Hour)
		path, m, err := func() (string, offsite.Manifest, error) {
			t, err := offsite.Open(ctx, source)
			if err != nil {
				return "", offsite.Manifest{}, err
			}
			defer t.Close()
			op := track.Start("restore-download", t.String(), "bytes", 0)
			path, m, err := t.Fetch(ctx, index, dir, func(r io.Reader) io.Reader { return op.Reader(r) })
			op.End(err)
			return path, m, err
		}()
		cancel()
		if err == nil || offsite.Permanent(err) {
			return path, m, err
		}
		last = err
		log.Warn("restore: the download failed; retrying", "try", try, "err", err)
		select {
		case <-stop:
			return "", m, err
		case <-time.After(time.Duration(try) * 2 * time.Second):
		}
	}
	return "", offsite.Manifest{}, last
}
