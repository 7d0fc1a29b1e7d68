package peer

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"time"

	pb "go.etcd.io/raft/v3/raftpb"

	"github.com/ddbgo/ddb/internal/cluster"
)

// Headers of a snapshot request. In version 3 the request carries the Raft
// message (base64) and the database's length; its SHA-256 (hex) comes
// after the body, in a trailer, with a MAC over it and the snapshot's
// index keyed by the request's signature (cluster.Auth.CopyMAC): the
// sender reads its database once, hashing it as it sends it. Before
// version 3, the SHA-256 came first, in a header the signature covered
// (the sender read the database twice); a node still takes that form, and
// sends it to a node of an earlier version. Either way the signature is
// checked before the body is read, and the body against its hash as it
// arrives. A transfer may take as long as it needs: only its start is
// within the signature's time window.
const (
	headerRaftMessage    = "X-Ddb-Raft-Message"
	headerSnapshotSHA256 = "X-Ddb-Snapshot-Sha256"
	headerSnapshotSize   = "X-Ddb-Snapshot-Size"
	headerSnapshotMAC    = "X-Ddb-Snapshot-Mac"
)

// snapshotTrailerVersion is the first version whose snapshots carry their
// hash in a trailer.
const snapshotTrailerVersion = 3

func snapshotSigned(msg []byte, sum string) []byte { // what a snapshot request's signature covers (before version 3)
	return append(append([]byte(nil), msg...), sum...)
}

func snapshotSignedSize(msg []byte, size int64) []byte { // what it covers in version 3
	return fmt.Appendf(append([]byte(nil), msg...), "\nsize %d", size)
}

// sendSnapshot streams the node's database (its file held still, or a
// copy) to m.To with the message describing it, then tells Raft whether
// it arrived.
func (t *RaftTransport) sendSnapshot(m pb.Message) {
	t.mu.Lock()
	node, dir := t.node, t.snapDir
	t.mu.Unlock()
	defer func() {
		t.mu.Lock()
		delete(t.sending, m.To)
		t.mu.Unlock()
	}()
	err := t.streamSnapshot(node, dir, m)
	if err != nil {
		t.log.Warn("snapshot not sent", "to", cluster.CommandLineID(m.To), "err", err)
	}
	node.ReportSnapshot(m.To, err == nil)
}

func (t *RaftTransport) streamSnapshot(node RaftNode, dir string, m pb.Message) error {
	url := t.Peer(m.To)
	if url == "" {
		return fmt.Errorf("node %d: %w", m.To, errNoAddress)
	}
	ctx, cancel := context.WithTimeout(context.Background(), t.c.timing.SnapshotTransfer)
	defer cancel()
	// The transfer ends with the transport: it holds the leader's database
	// file still, which a clean stop waits for.
	go func() {
		select {
		case <-t.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	src, out, err := node.SnapshotSource(ctx, m, dir)
	if err != nil {
		return fmt.Errorf("copy the database: %w", err)
	}
	defer src.Close()
	msg, err := out.Marshal()
	if err != nil {
		return err
	}
	return t.postSnapshot(ctx, url, src, msg, out.Snapshot.Metadata.Index, m.To)
}

// postSnapshot sends src with its message.
func (t *RaftTransport) postSnapshot(ctx context.Context, url string, src cluster.SnapshotSource, msg []byte, index, to uint64) (err error) {
	size := src.Size()
	op := t.c.progress.Start("snapshot-send", fmt.Sprintf("to node %d (index %d)", cluster.CommandLineID(to), index), "bytes", size)
	defer func() { op.End(err) }()
	t.log.Info("sending a snapshot", "to", cluster.CommandLineID(to), "index", index, "bytes", size)
	var sum string // the hash sent first, to a node of an earlier version
	_, resp, err := t.c.do(url+SnapshotPath, func(v int) (*http.Request, error) {
		op.Set(0)
		if v >= snapshotTrailerVersion {
			h := sha256.New()
			body := &hashedBody{r: io.TeeReader(op.Reader(src.NewReader()), h)}
			req, err := t.c.newRequest(ctx, url+SnapshotPath, v, body, snapshotSignedSize(msg, size))
			if err != nil {
				return nil, err
			}
			req.ContentLength = -1 // (chunked: a trailer follows)
			req.Header.Set("Content-Type", "application/octet-stream")
			req.Header.Set(headerRaftMessage, base64.StdEncoding.EncodeToString(msg))
			req.Header.Set(headerSnapshotSize, strconv.FormatInt(size, 10))
			req.Trailer = http.Header{headerSnapshotSHA256: nil, headerSnapshotMAC: nil}
			body.end = func() {
				sum := hex.EncodeToString(h.Sum(nil))
				req.Trailer.Set(headerSnapshotSHA256, sum)
				req.Trailer.Set(headerSnapshotMAC, t.c.auth.CopyMAC(req, index, sum))
			}
			return req, nil
		}
		if sum == "" {
			var err error
			if sum, err = cluster.HashSource(src); err != nil {
				return nil, err
			}
		}
		req, err := t.c.newRequest(ctx, url+SnapshotPath, v, io.NopCloser(op.Reader(src.NewReader())), snapshotSigned(msg, sum))
		if err != nil {
			return nil, err
		}
		req.ContentLength = size
		req.Header.Set("Content-Type", "application/octet-stream")
		req.Header.Set(headerRaftMessage, base64.StdEncoding.EncodeToString(msg))
		req.Header.Set(headerSnapshotSHA256, sum)
		return req, nil
	})
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("%s answered %s: %s", url, resp.Status, bytes.TrimSpace(b))
	}
	return nil
}

// hashedBody is a request body that calls end once read to its end, before
// it says so (the HTTP client sends the request's trailer then).
type hashedBody struct {
	r   io.Reader
	end func()
}

func (b *hashedBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err == io.EOF && b.end != nil {
		b.end()
		b.end = nil
	}
	return n, err
}

func (b *hashedBody) Close() error { return nil }

// snapshotHandler serves SnapshotPath: it checks the signature over the
// message and the body's length (or hash) before reading the body,
// receives the body into a file in dir (at most maxBytes), checks it
// against its hash, and hands the message to the node, which installs the
// copy.
func (t *RaftTransport) snapshotHandler(node func() RaftNode, dir string, maxBytes int64) http.HandlerFunc {
	covered := func(r *http.Request) ([]byte, error) {
		msg, err := base64.StdEncoding.DecodeString(r.Header.Get(headerRaftMessage))
		if err != nil {
			return nil, errors.New("a snapshot request needs its message header")
		}
		if sum := r.Header.Get(headerSnapshotSHA256); sum != "" {
			if len(sum) != 64 {
				return nil, errors.New("a snapshot's hash header is a SHA-256 in hex")
			}
			return snapshotSigned(msg, sum), nil
		}
		size, err := strconv.ParseInt(r.Header.Get(headerSnapshotSize), 10, 64)
		if err != nil || size < 0 {
			return nil, errors.New("a snapshot request needs its message header and its hash or length header")
		}
		return snapshotSignedSize(msg, size), nil
	}
	return Serve(t.c.auth, Endpoint{Covered: covered, Refused: t.refused("refused a snapshot")}, func(w http.ResponseWriter, r *http.Request, _ []byte, _ int) {
		msg, _ := base64.StdEncoding.DecodeString(r.Header.Get(headerRaftMessage))
		signedSum := r.Header.Get(headerSnapshotSHA256)
		size := r.ContentLength
		if signedSum == "" {
			size, _ = strconv.ParseInt(r.Header.Get(headerSnapshotSize), 10, 64)
		}
		if size > maxBytes {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("snapshot of %d bytes is over this node's limit of %d", size, maxBytes))
			return
		}
		var m pb.Message
		if err := m.Unmarshal(msg); err != nil || m.Type != pb.MsgSnap || m.Snapshot == nil {
			writeError(w, http.StatusBadRequest, "the message is not a snapshot")
			return
		}
		n := node()
		if n == nil {
			writeError(w, http.StatusServiceUnavailable, "this node's consensus is not running")
			return
		}
		index := m.Snapshot.Metadata.Index
		op := t.c.progress.Start("snapshot-receive", fmt.Sprintf("from %s (index %d)", r.RemoteAddr, index), "bytes", size)
		// The server's timeouts bound a request's whole body and its
		// answer (a minute or so): a 10 GB snapshot outlasts them. Its
		// sender is authenticated by now; it has SnapshotTransfer, and is
		// cut off only when its bytes stop for SnapshotIdle.
		body := newIdleReader(r.Body, http.NewResponseController(w), t.c.timing.SnapshotIdle, t.c.timing.SnapshotTransfer)
		path, sum, got, err := cluster.ReceiveHashing(op.Reader(body), dir, "raft-snapshot-*.db", maxBytes)
		if err == nil {
			switch {
			case got != size:
				err = fmt.Errorf("%d bytes arrived, not %d", got, size)
			case signedSum != "" && sum != signedSum:
				err = errors.New("it does not match its signed SHA-256")
			case signedSum == "" && r.Trailer.Get(headerSnapshotSHA256) != sum:
				err = errors.New("it does not match the SHA-256 sent after it")
			case signedSum == "" && !hmac.Equal([]byte(r.Trailer.Get(headerSnapshotMAC)), []byte(t.c.auth.CopyMAC(r, index, sum))):
				err = errors.New("its SHA-256 was not sent by a node of this cluster (its MAC is wrong)")
			}
			if err != nil {
				os.Remove(path)
			}
		}
		op.End(err)
		if err != nil {
			err = fmt.Errorf("the snapshot: %w", err)
			t.log.Warn("snapshot not installed", "from", r.RemoteAddr, "err", err)
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
		if err := n.StepSnapshot(r.Context(), m, path); err != nil {
			writeError(w, http.StatusServiceUnavailable, err.Error())
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
}

// idleReader reads a long request body, moving the connection's read
// deadline forward as bytes arrive, so that a body that keeps arriving is
// read to its end (up to the transfer's bound) and one that stops for idle
// is cut off. It also moves the answer's write deadline to the transfer's
// end.
type idleReader struct {
	r    io.Reader
	rc   *http.ResponseController
	idle time.Duration
	end  time.Time
	next time.Time // when the deadline is moved next
}

func newIdleReader(r io.Reader, rc *http.ResponseController, idle, bound time.Duration) *idleReader {
	end := time.Now().Add(bound)
	rc.SetWriteDeadline(end)
	return &idleReader{r: r, rc: rc, idle: idle, end: end}
}

func (d *idleReader) Read(p []byte) (int, error) {
	if now := time.Now(); !now.Before(d.next) {
		deadline := now.Add(d.idle)
		if deadline.After(d.end) {
			deadline = d.end
		}
		d.rc.SetReadDeadline(deadline)
		d.next = now.Add(d.idle / 4) // moved at most four times an idle period
	}
	return d.r.Read(p)
}
