package store

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/ddbgo/ddb/internal/rlog"
)

// FuzzClassify: whatever SQL text arrives, classification never panics,
// and a statement it calls a read really changes nothing when run on the
// read path, while anything forbidden is refused on the write path too.
func FuzzClassify(f *testing.F) {
	for _, c := range classifierCorpus {
		f.Add(c.sql)
	}
	s, err := Open(Options{Path: filepath.Join(f.TempDir(), "fuzz.db")})
	if err != nil {
		f.Fatal(err)
	}
	defer s.Close()
	s.CommitBatch([]*Request{{Stmts: stmts("CREATE TABLE users (id INTEGER PRIMARY KEY, username TEXT UNIQUE, email TEXT)"), AllowSchema: true},
		{Stmts: stmts("INSERT INTO users VALUES (1, 'a', 'b')")}}, time.Now)
	f.Fuzz(func(t *testing.T, sql string) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		before := s.Applied()
		kind, err := s.Classify(ctx, []rlog.Statement{{SQL: sql}})
		var fe *ForbiddenError
		if err == nil && kind == KindRead {
			if _, err := s.Read(ctx, []rlog.Statement{{SQL: sql}}, Limits{MaxRows: 1000, MaxBytes: 1 << 20}); err != nil {
				var nr *NotReadError
				if errors.As(err, &nr) {
					t.Fatalf("%q classified as a read but the read path refused it as a %v", sql, nr.Kind)
				}
			}
			if s.Applied() != before {
				t.Fatalf("%q: a read changed the applied index", sql)
			}
		}
		if errors.As(err, &fe) {
			out := s.CommitBatch([]*Request{{Stmts: []rlog.Statement{{SQL: sql}}, AllowSchema: true}}, time.Now)
			if out[0].Err == nil {
				t.Fatalf("%q is forbidden to classify but the writer ran it", sql)
			}
		}
	})
}
