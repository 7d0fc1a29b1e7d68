package peer

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"

	pb "go.etcd.io/raft/v3/raftpb"

	"github.com/ddbgo/ddb/internal/cluster"
)

// Headers of a snapshot request: the Raft message (base64) and the
// SHA-256 of the database copy that is the body (hex). The signature
// covers both, so the receiver checks who sent the request before it
// reads the body, and checks the body against the signed hash as it
// arrives. A transfer may take as long as it needs: only its start is
// within the signature's time window.
const (
	headerRaftMessage    = "X-Ddb-Raft-Message"
	headerSnapshotSHA256 = "X-Ddb-Snapshot-Sha256"
)

func snapshotSigned(msg []byte, sum string) []byte { // what a snapshot request's signature covers
	return append(append([]byte(nil), msg...), sum...)
}

// sendSnapshot copies the node's database and streams it to m.To with
// the message describing it, then tells Raft whether it arrived.
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
	path, out, err := node.SnapshotToSend(ctx, m, dir)
	if err != nil {
		return fmt.Errorf("copy the database: %w", err)
	}
	defer func() {
		for _, p := range []string{path, path + "-wal", path + "-shm"} {
			os.Remove(p)
		}
	}()
	msg, err := out.Marshal()
	if err != nil {
		return err
	}
	return t.postSnapshot(ctx, url, path, msg, out.Snapshot.Metadata.Index, m.To)
}

// postSnapshot sends the copy at path with its message.
func (t *RaftTransport) postSnapshot(ctx context.Context, url, path string, msg []byte, index, to uint64) (err error) {
	f, size, sum, err := cluster.OpenHashed(path)
	if err != nil {
		return err
	}
	f.Close() // (each request reads the file from its start)
	op := t.c.progress.Start("snapshot-send", fmt.Sprintf("to node %d (index %d)", cluster.CommandLineID(to), index), "bytes", size)
	defer func() { op.End(err) }()
	t.log.Info("sending a snapshot", "to", cluster.CommandLineID(to), "index", index, "bytes", size)
	_, resp, err := t.c.do(url+SnapshotPath, func(v int) (*http.Request, error) {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		op.Set(0)
		req, err := t.c.newRequest(ctx, url+SnapshotPath, v, readCloser{op.Reader(f), f}, snapshotSigned(msg, sum))
		if err != nil {
			f.Close()
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

// readCloser reads through r and closes c (a file read through a counter),
// so that the HTTP client closes the file once the request is sent.
type readCloser struct {
	io.Reader
	c io.Closer
}

func (r readCloser) Close() error { return r.c.Close() }

// snapshotHandler serves SnapshotPath: it checks the signature over the
// message and the body's hash before reading the body, receives the body
// into a file in dir (at most maxBytes), checks it against the signed
// hash, and hands the message to the node, which installs the copy.
func (t *RaftTransport) snapshotHandler(node func() RaftNode, dir string, maxBytes int64) http.HandlerFunc {
	covered := func(r *http.Request) ([]byte, error) {
		msg, err := base64.StdEncoding.DecodeString(r.Header.Get(headerRaftMessage))
		sum := r.Header.Get(headerSnapshotSHA256)
		if err != nil || len(sum) != 64 {
			return nil, errors.New("a snapshot request needs its message and hash headers")
		}
		return snapshotSigned(msg, sum), nil
	}
	return Serve(t.c.auth, Endpoint{Covered: covered, Refused: t.refused("refused a snapshot")}, func(w http.ResponseWriter, r *http.Request, _ []byte, _ int) {
		msg, _ := base64.StdEncoding.DecodeString(r.Header.Get(headerRaftMessage))
		sum := r.Header.Get(headerSnapshotSHA256)
		if r.ContentLength > maxBytes {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("snapshot of %d bytes is over this node's limit of %d", r.ContentLength, maxBytes))
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
		op := t.c.progress.Start("snapshot-receive", fmt.Sprintf("from %s (index %d)", r.RemoteAddr, m.Snapshot.Metadata.Index), "bytes", r.ContentLength)
		path, err := cluster.ReceiveFile(op.Reader(r.Body), dir, "raft-snapshot-*.db", maxBytes, sum)
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
