package store

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"math"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ddbgo/ddb/internal/sqlite"
)

// A consistency check: at a log entry marked as a check (rlog.Write.Check),
// every node ends its transaction, and computes a digest of its database
// as of exactly that index, on a read connection whose snapshot it takes
// before the next entry commits. The nodes then compare their digests (see
// package consensus). The digest covers what clients can read and what a
// replica must hold alike: the schema (without root page numbers, which
// say where a table lies in the file), and every table's rows with their
// rowids, shadow tables of virtual tables included; the project's own
// tables (each node's own Raft state) are left out.

// TableDigest is one table's part of a Digest. The rows of an ordinary
// or WITHOUT ROWID table are digested in chunks of consecutive keys (its
// Sum is of the chunks'), so two digests that differ say where: the first
// chunk that differs is the first differing key range.
type TableDigest struct {
	Name   string        `json:"name"`
	Rows   int64         `json:"rows"`
	Sum    string        `json:"sum"`
	Chunks []ChunkDigest `json:"chunks,omitempty"`
}

// ChunkDigest is the digest of consecutive rows of a table: the keys of
// its first and last rows (a rowid, or a WITHOUT ROWID table's primary
// key, as SQL literals), their number, and a sum of their values.
type ChunkDigest struct {
	First string `json:"first"`
	Last  string `json:"last"`
	Rows  int64  `json:"rows"`
	Sum   string `json:"sum"`
}

// A chunk holds chunkRows rows, and doubles once a table has more than
// maxChunks of them (pairs merge: the digest of a large table stays small).
const (
	chunkRows = 256
	maxChunks = 512
)

// firstDifference says where two digests of a table first differ: the key
// range of the first chunk that differs ("" when none does).
func firstDifference(a, b []ChunkDigest) string {
	for i := 0; i < max(len(a), len(b)); i++ {
		switch {
		case i >= len(a):
			return fmt.Sprintf("first difference: rows with keys %s..%s on one side only", b[i].First, b[i].Last)
		case i >= len(b):
			return fmt.Sprintf("first difference: rows with keys %s..%s on one side only", a[i].First, a[i].Last)
		case a[i] != b[i]:
			if a[i].First == b[i].First && a[i].Last == b[i].Last {
				return fmt.Sprintf("first difference: keys %s..%s", a[i].First, a[i].Last)
			}
			return fmt.Sprintf("first difference: keys %s..%s against %s..%s", a[i].First, a[i].Last, b[i].First, b[i].Last)
		}
	}
	return ""
}

// Digest is a database's content as of one log index.
type Digest struct {
	Index  uint64        `json:"index"`
	At     time.Time     `json:"at"`
	Sum    string        `json:"sum"` // of the schema and every table
	Schema string        `json:"schema"`
	Tables []TableDigest `json:"tables"`
	Err    string        `json:"error,omitempty"` // the digest could not be computed
}

// Differences says how d and o differ ("" when they do not): the schema,
// then each table that is missing on one side or differs, with its row
// counts.
func (d *Digest) Differences(o *Digest) string {
	if d.Sum == o.Sum {
		return ""
	}
	var out []string
	if d.Schema != o.Schema {
		out = append(out, "the schema differs")
	}
	theirs := map[string]TableDigest{}
	for _, t := range o.Tables {
		theirs[t.Name] = t
	}
	for _, t := range d.Tables {
		u, ok := theirs[t.Name]
		delete(theirs, t.Name)
		switch {
		case !ok:
			out = append(out, fmt.Sprintf("table %s is missing on one side", t.Name))
		case u.Sum != t.Sum:
			what := fmt.Sprintf("table %s differs (%d rows against %d)", t.Name, t.Rows, u.Rows)
			if where := firstDifference(t.Chunks, u.Chunks); where != "" {
				what += ", " + where
			}
			out = append(out, what)
		}
	}
	for name := range theirs {
		out = append(out, fmt.Sprintf("table %s is missing on one side", name))
	}
	if len(out) == 0 {
		out = append(out, "the digests differ")
	}
	return strings.Join(out, "; ")
}

// digests keeps the newest digests this node computed, and knows which it
// is computing.
type digests struct {
	mu      sync.Mutex
	byIdx   map[uint64]*Digest
	order   []uint64
	pending map[uint64]bool
	notify  func(*Digest)
}

// markPending records that a digest as of index is on its way (before the
// index counts as applied: see DigestExpected).
func (d *digests) markPending(index uint64) {
	d.mu.Lock()
	if d.pending == nil {
		d.pending = map[uint64]bool{}
	}
	d.pending[index] = true
	d.mu.Unlock()
}

const keepDigests = 8

func (d *digests) put(dg *Digest) {
	d.mu.Lock()
	if d.byIdx == nil {
		d.byIdx = map[uint64]*Digest{}
	}
	d.byIdx[dg.Index] = dg
	delete(d.pending, dg.Index)
	d.order = append(d.order, dg.Index)
	for len(d.order) > keepDigests {
		delete(d.byIdx, d.order[0])
		d.order = d.order[1:]
	}
	notify := d.notify
	d.mu.Unlock()
	if notify != nil {
		notify(dg)
	}
}

// DigestAt is this node's digest as of index, once computed.
func (s *Store) DigestAt(index uint64) (*Digest, bool) {
	s.digests.mu.Lock()
	defer s.digests.mu.Unlock()
	d, ok := s.digests.byIdx[index]
	return d, ok
}

// DigestExpected reports whether this node will have a digest as of
// index: it has it, is computing it, or has not yet applied index. A node
// that applied index without taking a digest there (it installed a
// snapshot or a copy over it, or restarted meanwhile) never will, and the
// node asking for it need not wait.
func (s *Store) DigestExpected(index uint64) bool {
	s.digests.mu.Lock()
	_, have := s.digests.byIdx[index]
	pending := s.digests.pending[index]
	s.digests.mu.Unlock()
	return have || pending || s.applied.Load() < index
}

// OnDigest sets the function told of each digest this node computes (on
// the goroutine that computed it).
func (s *Store) OnDigest(f func(*Digest)) {
	s.digests.mu.Lock()
	s.digests.notify = f
	s.digests.mu.Unlock()
}

// startDigest takes a read snapshot as of index, which the writer has just
// committed (writer goroutine, before the next entry commits), and
// computes the digest on it in the background.
func (s *Store) startDigest(index uint64) {
	fail := func(err error) {
		s.digests.put(&Digest{Index: index, At: time.Now(), Err: err.Error()})
	}
	r, err := s.getReader(context.Background())
	if err != nil {
		fail(err)
		return
	}
	r.auth.reset(policyReplica)
	if err := r.c.Exec("BEGIN"); err != nil {
		s.putReader(r)
		fail(err)
		return
	}
	// The first read takes the snapshot; it must be the index's.
	row, err := r.c.QueryRow("SELECT value FROM _ddb_meta WHERE key = 'applied'")
	if err == nil {
		if v, _ := row[0].(int64); uint64(v) != index {
			err = fmt.Errorf("the snapshot is at index %d, not %d", v, index)
		}
	}
	if err != nil {
		r.c.Exec("ROLLBACK")
		s.putReader(r)
		fail(err)
		return
	}
	p := newPacer(s.digestRate)
	gen, yield := s.stopDigests.Load(), s.yieldDigests.Load()
	p.stop = func() bool { return s.stopDigests.Load() != gen || s.yieldDigests.Load() != yield }
	go func() {
		d, err := digestOn(r.c, index, p)
		r.c.Exec("ROLLBACK")
		s.putReader(r)
		if err != nil {
			fail(err)
			return
		}
		s.digests.put(d)
	}()
}

// pacer spreads a digest over time: it reads at most rate bytes of rows a
// second (0: as fast as it can), so a large database's digest takes a
// share of a core over seconds rather than all of it at once.
type pacer struct {
	rate  int64
	start time.Time
	bytes int64
	now   func() time.Time
	sleep func(time.Duration)
	// stop, if set, says the digest is to stop: the database it reads was
	// replaced or is closing (both wait for its connection).
	stop func() bool
}

func (p *pacer) stopped() bool { return p.stop != nil && p.stop() }

// errDigestStopped: the database was replaced or closed while its digest
// was taken, or a FileSnapshot needed the WAL the digest held.
var errDigestStopped = errors.New("the digest was stopped: the database was replaced or closed, or its file was held still to be sent to a follower")

func newPacer(rate int64) *pacer {
	return &pacer{rate: rate, start: time.Now(), now: time.Now, sleep: time.Sleep}
}

// wait sleeps until the bytes read so far are due at the rate, or the
// digest is to stop (it looks every pacerLook).
func (p *pacer) wait() {
	if p.rate <= 0 {
		return
	}
	due := p.start.Add(time.Duration(float64(p.bytes) / float64(p.rate) * float64(time.Second)))
	for d := due.Sub(p.now()); d > 0 && !p.stopped(); d = due.Sub(p.now()) {
		p.sleep(min(d, pacerLook))
	}
}

const pacerLook = 100 * time.Millisecond

// valueBytes is about what v takes in a row.
func valueBytes(v any) int64 {
	switch x := v.(type) {
	case string:
		return int64(len(x)) + 1
	case []byte:
		return int64(len(x)) + 1
	}
	return 8
}

// digestOn computes the digest of the database c reads, at p's pace.
func digestOn(c *sqlite.Conn, index uint64, p *pacer) (*Digest, error) {
	d := &Digest{Index: index, At: time.Now()}
	all := sha256.New()
	// (SQLite's own objects are left out: what they are follows from the
	// rest, and sqlite_sequence stays once made, empty after its last
	// AUTOINCREMENT table is dropped. Their rows count below.)
	objs, err := c.All("SELECT type, name, tbl_name, sql FROM sqlite_schema WHERE name NOT LIKE '\\_ddb\\_%' ESCAPE '\\' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY type, name")
	if err != nil {
		return nil, fmt.Errorf("read the schema: %w", err)
	}
	h := sha256.New()
	for _, o := range objs {
		for _, v := range o {
			hashValue(h, v)
		}
	}
	d.Schema = hex.EncodeToString(h.Sum(nil))
	all.Write([]byte(d.Schema))
	tables, err := c.All("SELECT s.name, t.wr FROM sqlite_schema s JOIN pragma_table_list t ON t.name = s.name AND t.schema = 'main' " +
		"WHERE s.type = 'table' AND s.rootpage != 0 AND (s.name NOT LIKE '\\_ddb\\_%' ESCAPE '\\' OR s.name = '_ddb_changes') ORDER BY s.name")
	if err != nil {
		return nil, fmt.Errorf("list the tables: %w", err)
	}
	// The change stream's table is compared too: every node stores the
	// same changes for the same index (see changes.go).
	for _, t := range tables {
		if p.stopped() {
			return nil, errDigestStopped
		}
		name, _ := t[0].(string)
		wr, _ := t[1].(int64)
		td, err := digestTable(c, name, wr == 1, p)
		if err != nil {
			return nil, fmt.Errorf("read table %s: %w", name, err)
		}
		if td.Rows == 0 && strings.HasPrefix(name, "sqlite_") {
			// SQLite's own table without rows of the user's (it stays
			// once made: sqlite_sequence after its last AUTOINCREMENT
			// table is dropped) is as good as none.
			continue
		}
		d.Tables = append(d.Tables, td)
		all.Write([]byte(name))
		all.Write([]byte{0})
		all.Write([]byte(td.Sum))
	}
	d.Sum = hex.EncodeToString(all.Sum(nil))
	return d, nil
}

// digestTable digests one table's rows, in key order, at p's pace.
func digestTable(c *sqlite.Conn, name string, withoutRowid bool, p *pacer) (TableDigest, error) {
	td := TableDigest{Name: name}
	quoted := quoteIdent(name)
	// SQLite's own tables (sqlite_sequence, sqlite_stat1) also hold rows of
	// the project's tables, which are left out, and the rowids of their
	// rows depend on those: their rows are compared without rowid, in the
	// order of their content, and in no chunks.
	if strings.HasPrefix(name, "sqlite_") {
		return digestOwnTable(c, td, quoted, p)
	}
	// Each row starts with its key: the rowid, or the primary key's
	// columns (a WITHOUT ROWID table is read in primary key order).
	keyCols := 1
	q := "SELECT rowid, * FROM " + quoted + " ORDER BY rowid"
	if withoutRowid {
		pk, err := c.All("SELECT name FROM pragma_table_info(?) WHERE pk > 0 ORDER BY pk", name)
		if err != nil || len(pk) == 0 {
			return td, fmt.Errorf("read its primary key: %v", err)
		}
		var cols []string
		for _, r := range pk {
			n, _ := r[0].(string)
			cols = append(cols, quoteIdent(n))
		}
		keyCols = len(cols)
		q = "SELECT " + strings.Join(cols, ", ") + ", * FROM " + quoted
	}
	st, err := c.Prepare(q)
	if err != nil {
		return td, err
	}
	defer st.Close()
	size := int64(chunkRows)
	var cur ChunkDigest
	var lastKey []any // the chunk's last key, written out once it ends
	h := sha256.New()
	flush := func() {
		cur.Last = keyLiteral(lastKey)
		cur.Sum = hex.EncodeToString(h.Sum(nil)[:8])
		td.Chunks = append(td.Chunks, cur)
		cur = ChunkDigest{}
		h.Reset()
		if len(td.Chunks) > maxChunks {
			td.Chunks = mergeChunks(td.Chunks)
			size *= 2
		}
	}
	err = eachRow(st, func(row []any) {
		if p.stopped() {
			c.Interrupt() // the next step fails
		}
		if cur.Rows == 0 {
			cur.First = keyLiteral(row[:keyCols])
		}
		lastKey = append(lastKey[:0], row[:keyCols]...) // (Row's values are copies)
		for _, v := range row {
			hashValue(h, v)
			p.bytes += valueBytes(v)
		}
		cur.Rows++
		td.Rows++
		if cur.Rows == size {
			flush()
			p.wait()
		}
	})
	if err != nil {
		return td, err
	}
	if cur.Rows > 0 {
		flush()
	}
	sum := sha256.New()
	for _, ch := range td.Chunks {
		sum.Write([]byte(ch.Sum))
	}
	td.Sum = hex.EncodeToString(sum.Sum(nil))
	return td, nil
}

// eachRow steps st to its end, giving f each row (the same slice each
// time, valid until f returns).
func eachRow(st *sqlite.Stmt, f func(row []any)) error {
	var row []any
	for {
		more, err := st.Step()
		if err != nil || !more {
			return err
		}
		row = st.Row(row[:0])
		f(row)
	}
}

// mergeChunks halves a list of chunks: each pair becomes one.
func mergeChunks(cs []ChunkDigest) []ChunkDigest {
	out := cs[:0]
	for i := 0; i < len(cs); i += 2 {
		if i+1 == len(cs) {
			out = append(out, cs[i])
			break
		}
		h := sha256.New()
		h.Write([]byte(cs[i].Sum))
		h.Write([]byte(cs[i+1].Sum))
		out = append(out, ChunkDigest{First: cs[i].First, Last: cs[i+1].Last, Rows: cs[i].Rows + cs[i+1].Rows, Sum: hex.EncodeToString(h.Sum(nil)[:8])})
	}
	return out
}

// digestOwnTable digests one of SQLite's own tables by its rows' content.
func digestOwnTable(c *sqlite.Conn, td TableDigest, quoted string, p *pacer) (TableDigest, error) {
	st, err := c.Prepare("SELECT * FROM " + quoted)
	if err != nil {
		return td, err
	}
	defer st.Close()
	var sorted []string
	err = eachRow(st, func(row []any) {
		if p.stopped() {
			c.Interrupt() // the next step fails
		}
		if n, _ := row[0].(string); isInternal(n) {
			return
		}
		rh := sha256.New()
		for _, v := range row {
			hashValue(rh, v)
			p.bytes += valueBytes(v)
		}
		sorted = append(sorted, string(rh.Sum(nil)))
		td.Rows++
	})
	if err != nil {
		return td, err
	}
	slices.Sort(sorted)
	h := sha256.New()
	for _, r := range sorted {
		h.Write([]byte(r))
	}
	td.Sum = hex.EncodeToString(h.Sum(nil))
	return td, nil
}

// keyLiteral writes a row's key as SQL literals (long text and blobs cut
// short).
func keyLiteral(vals []any) string {
	parts := make([]string, len(vals))
	for i, v := range vals {
		switch x := v.(type) {
		case nil:
			parts[i] = "NULL"
		case int64:
			parts[i] = strconv.FormatInt(x, 10)
		case float64:
			parts[i] = strconv.FormatFloat(x, 'g', -1, 64)
		case string:
			if len(x) > 40 {
				x = x[:40] + "..."
			}
			parts[i] = "'" + strings.ReplaceAll(x, "'", "''") + "'"
		case []byte:
			if len(x) > 20 {
				parts[i] = fmt.Sprintf("x'%x'...", x[:20])
			} else {
				parts[i] = fmt.Sprintf("x'%x'", x)
			}
		}
	}
	if len(parts) == 1 {
		return parts[0]
	}
	return "(" + strings.Join(parts, ", ") + ")"
}

// hashValue adds one value to h, its type included.
func hashValue(h hash.Hash, v any) {
	var b [9]byte
	switch x := v.(type) {
	case nil:
		h.Write([]byte{0})
	case int64:
		b[0] = 1
		binary.BigEndian.PutUint64(b[1:], uint64(x))
		h.Write(b[:])
	case float64:
		b[0] = 2
		binary.BigEndian.PutUint64(b[1:], math.Float64bits(x))
		h.Write(b[:])
	case string:
		b[0] = 3
		binary.BigEndian.PutUint64(b[1:], uint64(len(x)))
		h.Write(b[:])
		h.Write([]byte(x))
	case []byte:
		b[0] = 4
		binary.BigEndian.PutUint64(b[1:], uint64(len(x)))
		h.Write(b[:])
		h.Write(x)
	default:
		fmt.Fprintf(h, "%T:%v", v, v)
	}
}

// ContentDigest is a digest of the content of the database file at path
// (its schema and rows, as a consistency check's): two files with the same
// content have the same, whatever their layout and their applied index.
func ContentDigest(path string) (string, error) {
	c, err := sqlite.Open(path, url.Values{"mode": {"ro"}})
	if err != nil {
		return "", err
	}
	defer c.Close()
	d, err := digestOn(c, 0, newPacer(0))
	if err != nil {
		return "", err
	}
	return d.Sum, nil
}
