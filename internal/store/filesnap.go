package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"
)

// A FileSnapshot is the database file itself, held still at one applied
// index while it is read: a follower is sent the leader's file as it
// stands, not a copy of it. Copying 10 GB through SQLite's backup API and
// reading the copy again for its hash took the leader a minute here; the
// file is read as it lies (twice: once for its hash, once to send it).
//
// How it holds still: every commit is first written into the database
// file (a checkpoint, with the writer held so that none comes between),
// then a read transaction begins. With nothing left in the WAL, SQLite
// has that read ignore the WAL (it takes the WAL's read lock 0), and a
// checkpoint cannot copy a page into the file while any read holds that
// lock: the writer goes on, its commits stay in the WAL until the read
// ends. The file's size and time of change are compared at the end of
// each read as well, so that a change nothing accounted for (an outside
// process) fails the transfer instead of sending a torn file.
//
// A consistency check's digest under way holds the WAL (its read began
// before), so it is stopped; the next check digests again.
type FileSnapshot struct {
	s     *Store
	r     *conn // the read holding the file (nil: a copy)
	f     *os.File
	size  int64
	mtime time.Time
	gen   uint64
	copy  string // the copy's path, when this is one
	Pos   RaftPosition
}

// SnapshotToSend returns the database to send a follower: its file held
// still, or, when that cannot be (reads hold the WAL for longer than
// fileSnapshotWait), a copy written in dir, as Snapshot writes it.
func (s *Store) SnapshotToSend(ctx context.Context, dir string) (*FileSnapshot, error) {
	fs, err := s.OpenFileSnapshot(ctx)
	if err == nil || errors.Is(err, ErrClosed) || ctx.Err() != nil {
		return fs, err
	}
	path, _, err := s.Snapshot(ctx, dir)
	if err != nil {
		return nil, err
	}
	fs = &FileSnapshot{s: s, copy: path, gen: s.stopDigests.Load()}
	if fs.Pos, err = SnapshotPosition(path); err == nil {
		fs.f, err = os.Open(path)
	}
	var fi os.FileInfo
	if err == nil {
		fi, err = fs.f.Stat()
	}
	if err != nil {
		if fs.f != nil {
			fs.f.Close()
		}
		removeCopy(path)
		return nil, err
	}
	fs.size, fs.mtime = fi.Size(), fi.ModTime()
	return fs, nil
}

// fileSnapshotWait is how long OpenFileSnapshot tries to empty the WAL
// into the file (reads that began before hold it) before it gives up.
var fileSnapshotWait = 10 * time.Second

// errFileMoved: the database file changed while a FileSnapshot was read.
var errFileMoved = errors.New("the database file changed while it was read")

// OpenFileSnapshot holds the database file still at the index applied now
// and returns it; Close lets it go (until then the WAL grows with every
// write). It fails when the WAL could not be emptied within a few seconds
// (the caller then copies the database instead).
func (s *Store) OpenFileSnapshot(ctx context.Context) (*FileSnapshot, error) {
	if s.lock == nil {
		return nil, errors.New("the database file is not held by this store")
	}
	r, err := s.getReader(ctx)
	if err != nil {
		return nil, err
	}
	fs := &FileSnapshot{s: s, r: r, f: s.lock, gen: s.stopDigests.Load()}
	if err := fs.hold(ctx); err != nil {
		s.putReader(r)
		return nil, err
	}
	return fs, nil
}

// hold empties the WAL into the file and begins fs's read transaction,
// with the writer held between the two.
func (fs *FileSnapshot) hold(ctx context.Context) error {
	s := fs.s
	deadline := time.Now().Add(fileSnapshotWait)
	for try := 0; ; try++ {
		// Most of the WAL is copied while writes go on; what they add
		// meanwhile, with the writer held.
		if try == 0 {
			if err := s.Checkpoint(); err != nil {
				return err
			}
		}
		held, err := fs.holdNow()
		if held || err != nil {
			return err
		}
		// A read that began before holds a part of the WAL: a digest
		// stops at its next rows, other reads end by themselves.
		s.yieldDigests.Add(1)
		if time.Now().After(deadline) {
			return fmt.Errorf("the WAL could not be emptied into the database file within %v: reads hold it", fileSnapshotWait)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// holdNow checkpoints with the writer held and, when that left every
// commit in the file, begins the read transaction (at that index).
func (fs *FileSnapshot) holdNow() (bool, error) {
	s := fs.s
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.w == nil {
		return false, ErrClosed
	}
	frames, copied, err := s.w.CheckpointFrames(0)
	if err != nil {
		return false, err
	}
	if frames != copied {
		return false, nil
	}
	c := fs.r.c
	fs.r.auth.reset(policyReplica)
	if err := c.Exec("BEGIN"); err != nil {
		return false, err
	}
	err = func() error {
		var err error
		if fs.Pos, err = positionOn(c); err != nil { // begins the read
			return err
		}
		if fs.size, err = pagesBytes(c); err != nil {
			return err
		}
		fi, err := fs.f.Stat()
		if err != nil {
			return err
		}
		if fi.Size() < fs.size {
			return fmt.Errorf("the database file holds %d bytes, not the %d of its pages", fi.Size(), fs.size)
		}
		fs.mtime = fi.ModTime()
		return nil
	}()
	if err != nil {
		c.Exec("ROLLBACK")
		return false, err
	}
	return true, nil
}

// Index is the applied index the file holds.
func (fs *FileSnapshot) Index() uint64 { return fs.Pos.Index }

// Size is the file's length, in bytes.
func (fs *FileSnapshot) Size() int64 { return fs.size }

// NewReader reads the file from its start. It fails, rather than end,
// when the file changed meanwhile or the store is closing or replacing
// its database (a transfer stops).
func (fs *FileSnapshot) NewReader() io.Reader {
	return &fileSnapshotReader{fs: fs, r: io.NewSectionReader(fs.f, 0, fs.size)}
}

type fileSnapshotReader struct {
	fs *FileSnapshot
	r  *io.SectionReader
}

func (r *fileSnapshotReader) Read(p []byte) (int, error) {
	if r.fs.s.stopDigests.Load() != r.fs.gen {
		return 0, errors.New("the database is closing or being replaced")
	}
	n, err := r.r.Read(p)
	if err == io.EOF {
		if err := r.fs.unchanged(); err != nil {
			return n, err
		}
	}
	return n, err
}

func (fs *FileSnapshot) unchanged() error {
	fi, err := fs.f.Stat()
	if err != nil {
		return err
	}
	if fi.Size() < fs.size || !fi.ModTime().Equal(fs.mtime) {
		return errFileMoved
	}
	return nil
}

// WriteFile writes the file into a new file in dir and returns its path
// (the caller removes it).
func (fs *FileSnapshot) WriteFile(dir string) (path string, err error) {
	f, err := os.CreateTemp(dir, "snapshot-*.db")
	if err != nil {
		return "", err
	}
	path = f.Name()
	_, err = io.Copy(f, fs.NewReader())
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return "", err
	}
	return path, nil
}

// Close ends the read, so the file may change again (or removes the copy).
func (fs *FileSnapshot) Close() {
	if fs.copy != "" {
		fs.f.Close()
		removeCopy(fs.copy)
		fs.copy = ""
	}
	if fs.r != nil {
		fs.r.c.Exec("ROLLBACK")
		fs.s.putReader(fs.r)
		fs.r = nil
	}
}
