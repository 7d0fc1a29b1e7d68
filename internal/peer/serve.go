package peer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/ddbgo/ddb/internal/cluster"
	"github.com/ddbgo/ddb/internal/errkind"
	"github.com/ddbgo/ddb/internal/progress"
	"github.com/ddbgo/ddb/internal/replication"
	"github.com/ddbgo/ddb/internal/store"
)

// maxBody bounds a peer request or answer read into memory (forwards,
// joins).
const maxBody = 256 << 20

// Headers of a repair's copy: its applied index, its SHA-256 (hex), and
// their MAC (cluster.Auth.CopyMAC), which the requester checks.
const (
	headerCopyIndex  = "X-Ddb-Copy-Index"
	headerCopySHA256 = "X-Ddb-Copy-Sha256"
	headerCopyMAC    = "X-Ddb-Copy-Mac"
)

// indexBody is the body of a question about an index.
type indexBody struct {
	Index uint64 `json:"index"`
}

// Local is what the endpoints other than Raft's need of this node.
type Local struct {
	Auth  *cluster.Auth
	Admin replication.Admin      // forwarded writes, joins, status
	Repl  replication.Replicator // ack=all waits, leadership
	Store *store.Store           // digests, copies
	// Dir is where a copy of the database is written before it is sent.
	Dir string
	// ForwardTimeout bounds a forwarded write; AckTimeout is how long
	// ack=all waits for this node to apply an index; DefaultAck is the
	// level of a forwarded write that names none this node knows.
	ForwardTimeout, AckTimeout time.Duration
	DefaultAck                 cluster.Ack
	// Refused is told of every request refused for its signature (nil:
	// nobody).
	Refused func(r *http.Request, err error)
	// Progress lists the long operations under way here (nil: none).
	Progress func() []progress.Status
}

// NodeStatus is a node's status as another node's console asks for it:
// its Raft status, and its long operations under way.
type NodeStatus struct {
	replication.Status
	Progress []progress.Status `json:"progress,omitempty"`
}

// Handlers are the node-to-node endpoints other than Raft's (which the
// engine serves: RaftTransport.Handlers), by path.
func Handlers(l Local) map[string]http.Handler {
	serve := func(h Handler) http.Handler {
		return Serve(l.Auth, Endpoint{MaxBody: maxBody, Refused: l.Refused}, h)
	}
	return map[string]http.Handler{
		ForwardPath:      serve(l.forward),
		ForwardBatchPath: serve(l.forwardBatch),
		JoinPath:         serve(l.join),
		AppliedPath:      serve(l.applied),
		DigestPath:       serve(l.digest),
		CopyPath:         serve(l.copy),
		StatusPath:       serve(l.status),
	}
}

// writeJSON answers 200 with v.
func writeJSON(w http.ResponseWriter, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.Write(b)
}

// writeError answers {"error": msg} with status.
func writeError(w http.ResponseWriter, status int, msg string) {
	b, _ := json.Marshal(struct {
		Error string `json:"error"`
	}{msg})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

// ack is a forwarded write's level: one this node does not know becomes
// its default.
func (l *Local) ack(req *replication.ForwardRequest) {
	if !cluster.ValidAck(req.Ack) {
		req.Ack = l.DefaultAck
	}
}

func (l *Local) forward(w http.ResponseWriter, r *http.Request, body []byte, _ int) {
	var req replication.ForwardRequest
	if err := json.Unmarshal(body, &req); err != nil {
		writeError(w, http.StatusBadRequest, "bad forward: "+err.Error())
		return
	}
	l.ack(&req)
	ctx, cancel := context.WithTimeout(r.Context(), l.ForwardTimeout)
	defer cancel()
	writeJSON(w, l.Admin.HandleForward(ctx, &req))
}

// forwardBatch runs a batch of forwarded writes (on the leader), all at
// once, so that they are proposed together, and answers each in order.
func (l *Local) forwardBatch(w http.ResponseWriter, r *http.Request, body []byte, _ int) {
	var reqs []*replication.ForwardRequest
	if err := json.Unmarshal(body, &reqs); err != nil {
		writeError(w, http.StatusBadRequest, "bad forward batch: "+err.Error())
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), l.ForwardTimeout)
	defer cancel()
	out := make([]*replication.ForwardResponse, len(reqs))
	var wg sync.WaitGroup
	for i, req := range reqs {
		if req == nil {
			out[i] = &replication.ForwardResponse{Error: &replication.WireError{Kind: errkind.Param.String(), Message: "empty forwarded write"}}
			continue
		}
		l.ack(req)
		wg.Go(func() { out[i] = l.Admin.HandleForward(ctx, req) })
	}
	wg.Wait()
	writeJSON(w, out)
}

func (l *Local) join(w http.ResponseWriter, r *http.Request, body []byte, _ int) {
	var req replication.JoinRequest
	if err := json.Unmarshal(body, &req); err != nil {
		writeError(w, http.StatusBadRequest, "bad join: "+err.Error())
		return
	}
	resp, err := l.Admin.HandleJoin(r.Context(), &req)
	if err != nil {
		var refused *replication.JoinRefusedError
		if errors.As(err, &refused) {
			writeError(w, http.StatusConflict, refused.Reason)
			return
		}
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	writeJSON(w, resp)
}

// index reads a peer's {"index": N}; a body that is not one is answered
// 400 here (ok false).
func index(w http.ResponseWriter, body []byte) (uint64, bool) {
	var req indexBody
	if err := json.Unmarshal(body, &req); err != nil {
		writeError(w, http.StatusBadRequest, "bad request: "+err.Error())
		return 0, false
	}
	return req.Index, true
}

// applied answers the leader's question for ack=all: has this node
// applied {"index": N}? It waits up to AckTimeout.
func (l *Local) applied(w http.ResponseWriter, r *http.Request, body []byte, _ int) {
	index, ok := index(w, body)
	if !ok {
		return
	}
	if err := l.Repl.WaitApplied(r.Context(), index, l.AckTimeout); err != nil {
		writeError(w, http.StatusGatewayTimeout, err.Error())
		return
	}
	writeJSON(w, map[string]uint64{"applied": l.Store.Applied()})
}

// digest answers another node's request for this node's digest as of an
// index (a consistency check), once this node has applied the index and
// computed it (within the request's deadline: 504 past it).
func (l *Local) digest(w http.ResponseWriter, r *http.Request, body []byte, _ int) {
	index, ok := index(w, body)
	if !ok {
		return
	}
	for {
		if d, ok := l.Store.DigestAt(index); ok {
			writeJSON(w, d)
			return
		}
		if !l.Store.DigestExpected(index) {
			// Past it without a digest: this node installed a snapshot
			// over the index, or restarted meanwhile.
			writeError(w, http.StatusNotFound, fmt.Sprintf("this node has no digest as of index %d (it is at %d, and did not apply that entry itself: it installed a snapshot over it, or restarted)", index, l.Store.Applied()))
			return
		}
		select {
		case <-r.Context().Done():
			writeError(w, http.StatusGatewayTimeout, fmt.Sprintf("no digest as of index %d yet (this node is at %d)", index, l.Store.Applied()))
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// copy answers with a copy of the leader's database: a follower whose
// data a consistency check found different from the leader's replaces
// its own with it (consensus: repair).
func (l *Local) copy(w http.ResponseWriter, r *http.Request, _ []byte, _ int) {
	if !l.Repl.IsLeader() {
		writeError(w, http.StatusServiceUnavailable, "this node does not lead: ask the leader for its copy")
		return
	}
	// The database file held still (or a copy, as for a snapshot): read
	// once for its hash, which the answer's headers carry, then sent.
	src, err := l.Store.SnapshotToSend(r.Context(), l.Dir)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "copy the database: "+err.Error())
		return
	}
	defer src.Close()
	sum, err := cluster.HashSource(src)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	index := src.Index()
	http.NewResponseController(w).SetWriteDeadline(time.Now().Add(cluster.DefaultTiming().SnapshotTransfer))
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(src.Size(), 10))
	w.Header().Set(headerCopyIndex, strconv.FormatUint(index, 10))
	w.Header().Set(headerCopySHA256, sum)
	w.Header().Set(headerCopyMAC, l.Auth.CopyMAC(r, index, sum))
	io.Copy(w, src.NewReader())
}

// status answers another node's console with this node's status.
func (l *Local) status(w http.ResponseWriter, _ *http.Request, _ []byte, _ int) {
	st := NodeStatus{Status: l.Admin.Status()}
	if l.Progress != nil {
		st.Progress = l.Progress()
	}
	writeJSON(w, st)
}
