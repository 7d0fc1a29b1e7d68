// Package offsite keeps backups of the database in object storage (S3 or
// any S3-compatible store, Google Cloud Storage, Azure Blob Storage, or a
// directory), through gocloud.dev/blob, so that they outlive every node.
//
// A backup is two objects under the target's prefix: the database file,
// ddb-<index>.db, streamed as it is read, and beside it ddb-<index>.json,
// its manifest (the log index it holds, the SHA-256 and size of the
// file, a digest of its content), written only once the file is stored.
// A backup without its manifest does not exist: an upload cut short (a
// node killed, the store gone) leaves at most an object that nothing
// restores from, and that the next pruning deletes.
package offsite

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/aws/smithy-go"
	"gocloud.dev/blob"

	"github.com/ddbgo/ddb/internal/cluster"
	_ "gocloud.dev/blob/azureblob" // azblob://
	_ "gocloud.dev/blob/fileblob"  // file://
	_ "gocloud.dev/blob/gcsblob"   // gs://
	_ "gocloud.dev/blob/s3blob"    // s3://
	"gocloud.dev/gcerrors"
)

// Target is where backups go: a bucket, and a prefix in it.
type Target struct {
	bucket *blob.Bucket
	shown  string // the URL for logs and errors: no credentials
}

// Open opens the target at raw (see cluster.ParseBackupURL). Credentials come from the
// store's usual environment and files.
func Open(ctx context.Context, raw string) (*Target, error) {
	bu, shown, err := cluster.ParseBackupURL(raw)
	if err != nil {
		return nil, err
	}
	if strings.HasPrefix(bu, "file://") {
		dir := strings.TrimPrefix(bu, "file://")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("backup directory %s: %w", dir, err)
		}
	}
	b, err := blob.OpenBucket(ctx, bu)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", shown, err)
	}
	return &Target{bucket: b, shown: shown}, nil
}

// String is the target's URL, without credentials.
func (t *Target) String() string { return t.shown }

// Close releases the target.
func (t *Target) Close() error { return t.bucket.Close() }

// Manifest describes one backup.
type Manifest struct {
	Format int    `json:"format"`
	Index  uint64 `json:"index"`  // the log index the backup holds
	SHA256 string `json:"sha256"` // of the database file, hex
	Bytes  int64  `json:"bytes"`
	// Content is a digest of the database's content (its schema and
	// rows), which two backups of the same data share whatever their
	// index and their files' layout: a backup is skipped when it has not
	// changed since the last one.
	Content string    `json:"content"`
	Time    time.Time `json:"time"`
	Node    string    `json:"node"` // the node that took it
}

const manifestFormat = 1

func dataKey(index uint64) string     { return fmt.Sprintf("ddb-%020d.db", index) }
func manifestKey(index uint64) string { return fmt.Sprintf("ddb-%020d.json", index) }

// indexOf reads the index in a backup object's key.
func indexOf(key string) (uint64, string, bool) {
	base := path.Base(key)
	for _, ext := range []string{".db", ".json"} {
		if s, ok := strings.CutSuffix(base, ext); ok {
			if s, ok = strings.CutPrefix(s, "ddb-"); ok {
				n, err := strconv.ParseUint(s, 10, 64)
				return n, ext, err == nil
			}
		}
	}
	return 0, "", false
}

// List returns the target's backups, oldest first: those with a manifest.
func (t *Target) List(ctx context.Context) ([]Manifest, error) {
	var out []Manifest
	err := t.eachObject(ctx, func(key string, _ uint64, ext string) error {
		if ext != ".json" {
			return nil
		}
		b, err := t.bucket.ReadAll(ctx, key)
		if gcerrors.Code(err) == gcerrors.NotFound {
			return nil // deleted since it was listed (pruned by another node)
		}
		if err != nil {
			return t.explain("read "+key, err)
		}
		var m Manifest
		if err := json.Unmarshal(b, &m); err != nil || m.Format != manifestFormat || len(m.SHA256) != 64 {
			return nil // not one of ours, or damaged: not a backup
		}
		out = append(out, m)
		return nil
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(out, func(a, b Manifest) int { return compare(a.Index, b.Index) })
	return out, nil
}

func compare(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Upload stores the database file at path as the backup m describes (its
// Index, Content, Node), streaming it; it fills in the SHA-256 and size,
// and writes the manifest last. A failure leaves no manifest: no backup.
func (t *Target) Upload(ctx context.Context, path string, m Manifest, progress func(io.Reader) io.Reader) (Manifest, error) {
	f, err := os.Open(path)
	if err != nil {
		return m, err
	}
	defer f.Close()
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w, err := t.bucket.NewWriter(wctx, dataKey(m.Index), &blob.WriterOptions{ContentType: "application/vnd.sqlite3"})
	if err != nil {
		return m, t.explain("upload", err)
	}
	h := sha256.New()
	var r io.Reader = io.TeeReader(f, h)
	if progress != nil {
		r = progress(r)
	}
	n, err := io.Copy(w, r)
	if err != nil {
		cancel() // the upload is abandoned, not completed
		w.Close()
		return m, t.explain("upload "+dataKey(m.Index), err)
	}
	if err := w.Close(); err != nil {
		return m, t.explain("upload "+dataKey(m.Index), err)
	}
	m.Format, m.SHA256, m.Bytes = manifestFormat, hex.EncodeToString(h.Sum(nil)), n
	if m.Time.IsZero() {
		m.Time = time.Now().UTC()
	}
	b, _ := json.MarshalIndent(m, "", "  ")
	if err := t.bucket.WriteAll(ctx, manifestKey(m.Index), b, &blob.WriterOptions{ContentType: "application/json"}); err != nil {
		return m, t.explain("write the manifest of "+dataKey(m.Index), err)
	}
	return m, nil
}

// Prune keeps the newest keep backups and deletes the others, manifest
// first (a backup without one no longer counts); and objects of uploads
// cut short that are older than the newest backup.
func (t *Target) Prune(ctx context.Context, keep int) (deleted int, err error) {
	list, err := t.List(ctx)
	if err != nil {
		return 0, err
	}
	if len(list) == 0 {
		return 0, nil
	}
	kept := map[uint64]bool{}
	for i, m := range list {
		if i >= len(list)-keep {
			kept[m.Index] = true
			continue
		}
		if err := t.bucket.Delete(ctx, manifestKey(m.Index)); err != nil && gcerrors.Code(err) != gcerrors.NotFound {
			return deleted, t.explain("delete "+manifestKey(m.Index), err)
		}
		if err := t.bucket.Delete(ctx, dataKey(m.Index)); err != nil && gcerrors.Code(err) != gcerrors.NotFound {
			return deleted, t.explain("delete "+dataKey(m.Index), err)
		}
		deleted++
	}
	newest := list[len(list)-1].Index
	err = t.eachObject(ctx, func(key string, idx uint64, ext string) error {
		if ext == ".db" && idx < newest && !kept[idx] {
			if err := t.bucket.Delete(ctx, key); err != nil && gcerrors.Code(err) != gcerrors.NotFound {
				return t.explain("delete "+key, err)
			}
		}
		return nil
	})
	return deleted, err
}

// eachObject calls f with every backup object's key, index and extension.
func (t *Target) eachObject(ctx context.Context, f func(key string, index uint64, ext string) error) error {
	it := t.bucket.List(&blob.ListOptions{Prefix: "ddb-"})
	for {
		obj, err := it.Next(ctx)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return t.explain("list the backups", err)
		}
		if idx, ext, ok := indexOf(obj.Key); ok {
			if err := f(obj.Key, idx, ext); err != nil {
				return err
			}
		}
	}
}

// ErrNoBackup: the target holds no backup (or none at the index asked for).
var ErrNoBackup = errors.New("no backup there")

// Fetch downloads a backup into a new file in dir: the newest, or the one
// at index (0: the newest), verified against its manifest's SHA-256 and
// size. The caller removes the file.
func (t *Target) Fetch(ctx context.Context, index uint64, dir string, progress func(io.Reader) io.Reader) (string, Manifest, error) {
	list, err := t.List(ctx)
	if err != nil {
		return "", Manifest{}, err
	}
	var m Manifest
	switch {
	case len(list) == 0:
		return "", m, fmt.Errorf("%s: %w", t.shown, ErrNoBackup)
	case index == 0:
		m = list[len(list)-1]
	default:
		i := slices.IndexFunc(list, func(m Manifest) bool { return m.Index == index })
		if i < 0 {
			var have []string
			for _, m := range list {
				have = append(have, strconv.FormatUint(m.Index, 10))
			}
			return "", m, fmt.Errorf("%s: %w at index %d (it holds backups at %s)", t.shown, ErrNoBackup, index, strings.Join(have, ", "))
		}
		m = list[i]
	}
	r, err := t.bucket.NewReader(ctx, dataKey(m.Index), nil)
	if err != nil {
		return "", m, t.explain("read "+dataKey(m.Index), err)
	}
	defer r.Close()
	f, err := os.CreateTemp(dir, "restore-*.db")
	if err != nil {
		return "", m, err
	}
	h := sha256.New()
	var src io.Reader = r
	if progress != nil {
		src = progress(r)
	}
	n, err := io.Copy(io.MultiWriter(f, h), src)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && (n != m.Bytes || hex.EncodeToString(h.Sum(nil)) != m.SHA256) {
		err = &DamagedError{Msg: fmt.Sprintf("backup %s is damaged: %d bytes with SHA-256 %s, its manifest says %d bytes with %s", dataKey(m.Index), n, hex.EncodeToString(h.Sum(nil)), m.Bytes, m.SHA256)}
	}
	if err != nil {
		os.Remove(f.Name())
		return "", m, t.explain("download "+dataKey(m.Index), err)
	}
	return f.Name(), m, nil
}

// Permanent reports whether err will not pass by retrying: no backup
// there, access denied, a missing bucket, a damaged backup.
func Permanent(err error) bool {
	var d *DamagedError
	switch {
	case errors.Is(err, ErrNoBackup), errors.As(err, &d):
		return true
	}
	switch errorCode(err) {
	case gcerrors.PermissionDenied, gcerrors.NotFound, gcerrors.InvalidArgument:
		return true
	}
	return false
}

// errorCode is gcerrors.Code, with what the stores' own error codes say
// where gocloud.dev leaves it Unknown: S3's and Azure's refusals of a
// credential, and their missing buckets and containers.
func errorCode(err error) gcerrors.ErrorCode {
	code := gcerrors.Code(err)
	var store string
	var aws smithy.APIError
	var az *azcore.ResponseError
	switch {
	case errors.As(err, &aws):
		store = aws.ErrorCode()
	case errors.As(err, &az):
		store = az.ErrorCode
	}
	switch store {
	case "AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId", "InvalidToken", "ExpiredToken",
		"AuthorizationFailure", "AuthenticationFailed", "AuthorizationPermissionMismatch":
		return gcerrors.PermissionDenied
	case "NoSuchBucket", "ContainerNotFound":
		return gcerrors.NotFound
	}
	return code
}

// DamagedError: a backup's file does not match its manifest.
type DamagedError struct{ Msg string }

func (e *DamagedError) Error() string { return e.Msg }

// explain names the target and says what to check for the errors a user
// can mend: credentials, a bucket that does not exist.
func (t *Target) explain(what string, err error) error {
	switch errorCode(err) {
	case gcerrors.PermissionDenied:
		return fmt.Errorf("%s at %s: access denied: check the credentials (from the environment or the store's files) and that they may use this bucket: %w", what, t.shown, err)
	case gcerrors.NotFound:
		return fmt.Errorf("%s at %s: not found (does the bucket exist?): %w", what, t.shown, err)
	}
	return fmt.Errorf("%s at %s: %w", what, t.shown, err)
}
