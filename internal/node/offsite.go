package node

import (
	"context"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/ddbgo/ddb/internal/cluster"
	"github.com/ddbgo/ddb/internal/offsite"
	"github.com/ddbgo/ddb/internal/progress"
	"github.com/ddbgo/ddb/internal/replication"
	"github.com/ddbgo/ddb/internal/store"
)

// offsiteLoop uploads a backup of the database to the object store at
// cfg.BackupURL every cfg.BackupInterval, while this node leads (or
// always, with -backup-by this), keeping the newest cfg.BackupKeep: one
// cluster uploads one copy. A backup whose content has not changed since
// the last one is skipped. A failed upload (the store unreachable, wrong
// credentials, a missing bucket) is logged and tried again at the next
// interval; what was uploaded before stays.
func offsiteLoop(cfg *cluster.Config, repl replication.Replicator, st *store.Store, log *slog.Logger, stop <-chan struct{}, track *progress.Tracker) {
	t := time.NewTicker(cfg.BackupInterval)
	defer t.Stop()
	_, shown, _ := cluster.ParseBackupURL(cfg.BackupURL)
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		if cfg.BackupBy != "this" && !repl.IsLeader() {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 6*time.Hour)
		done := make(chan struct{})
		go func() {
			select {
			case <-stop:
				cancel()
			case <-done:
			}
		}()
		m, skipped, err := uploadOnce(ctx, cfg, st, track)
		close(done)
		cancel()
		switch {
		case err != nil:
			log.Error("backup to object storage failed; it is tried again at the next interval, and earlier backups are kept", "url", shown, "err", err)
		case skipped:
			log.Info("backup skipped: nothing changed since the last one", "url", shown, "index", m.Index)
		default:
			log.Info("backup uploaded", "url", shown, "index", m.Index, "bytes", m.Bytes, "sha256", m.SHA256)
		}
	}
}

// uploadOnce takes one backup and uploads it, unless the newest backup
// there has the same content (skipped), then prunes the oldest.
func uploadOnce(ctx context.Context, cfg *cluster.Config, st *store.Store, track *progress.Tracker) (offsite.Manifest, bool, error) {
	target, err := offsite.Open(ctx, cfg.BackupURL)
	if err != nil {
		return offsite.Manifest{}, false, err
	}
	defer target.Close()
	list, err := target.List(ctx)
	if err != nil {
		return offsite.Manifest{}, false, err
	}
	tmp, index, err := st.Snapshot(ctx, cfg.WorkDir())
	if err != nil {
		return offsite.Manifest{}, false, err
	}
	defer os.Remove(tmp)
	if err := store.Standalone(tmp); err != nil {
		return offsite.Manifest{}, false, err
	}
	if err := verify(tmp); err != nil {
		return offsite.Manifest{}, false, err
	}
	content, err := store.ContentDigest(tmp)
	if err != nil {
		return offsite.Manifest{}, false, err
	}
	m := offsite.Manifest{Index: index, Content: content, Node: cfg.Name()}
	if n := len(list); n > 0 && (list[n-1].Content == content || list[n-1].Index == index) {
		return list[n-1], true, nil
	}
	fi, err := os.Stat(tmp)
	if err != nil {
		return m, false, err
	}
	op := track.Start("backup", target.String(), "bytes", fi.Size())
	m, err = target.Upload(ctx, tmp, m, func(r io.Reader) io.Reader { return op.Reader(r) })
	op.End(err)
	if err != nil {
		return m, false, err
	}
	if _, err := target.Prune(ctx, cfg.BackupKeep); err != nil {
		return m, false, err
	}
	return m, false, nil
}
