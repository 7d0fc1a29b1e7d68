package api

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/ddbgo/ddb/internal/cluster"
	"github.com/ddbgo/ddb/internal/replication"
	"github.com/ddbgo/ddb/internal/store"
)

// Transport carries the engine's calls to other nodes (replication.PeerCaller):
// signed JSON requests over kept-alive connections.
type Transport struct {
	client *http.Client
	auth   *cluster.Auth
	node   string

	fmu      sync.Mutex
	forwards map[string]*forwardQueue // leader URL -> writes forwarded to it
}

// NewTransport returns a transport that signs as node. tlsConfig may be nil.
func NewTransport(auth *cluster.Auth, node string, tlsConfig *tls.Config) *Transport {
	dialer := &net.Dialer{Timeout: time.Second, KeepAlive: 30 * time.Second}
	tr := &http.Transport{
		DialContext:         dialer.DialContext,
		MaxIdleConns:        256,
		MaxIdleConnsPerHost: 128,
		IdleConnTimeout:     90 * time.Second,
		TLSClientConfig:     tlsConfig,
		TLSHandshakeTimeout: 5 * time.Second,
	}
	return &Transport{client: &http.Client{Transport: tr}, auth: auth, node: node}
}

// peerError is a peer's non-200 answer.
type peerError struct {
	status int
	msg    string
}

func (e *peerError) Error() string { return fmt.Sprintf("peer answered %d: %s", e.status, e.msg) }

func (t *Transport) post(ctx context.Context, url string, body []byte, out any) error {
	resp, _, err := t.send(ctx, url, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxPeerBody))
	if err != nil {
		return err
	}
	return json.Unmarshal(b, out)
}

// send makes a signed POST of body to url; an answer other than 200 is a
// *peerError (its body read and closed). It returns the request too, whose
// signature keys what the answer may carry (cluster.Auth.CopyMAC).
func (t *Transport) send(ctx context.Context, url string, body []byte) (*http.Response, *http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return nil, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	if body[0] != '{' {
		req.Header.Set("Content-Type", "application/octet-stream")
	}
	t.auth.Sign(req, t.node, cluster.BodyHash(body))
	resp, err := t.client.Do(req)
	if err != nil {
		return nil, nil, err
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, maxPeerBody))
		var e struct{ Error string }
		json.Unmarshal(b, &e)
		if e.Error == "" {
			e.Error = string(b)
		}
		return nil, nil, &peerError{status: resp.StatusCode, msg: e.Error}
	}
	return resp, req, nil
}

func classifyForwardError(url string, err error) error {
	var pe *peerError
	if errors.As(err, &pe) {
		if pe.status == http.StatusServiceUnavailable || pe.status == http.StatusConflict {
			return &replication.UnavailableError{Reason: fmt.Sprintf("the node at %s cannot take writes: %s", url, pe.msg)}
		}
		return fmt.Errorf("the leader at %s refused the forwarded write: %w", url, err)
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" || errors.Is(err, syscall.ECONNREFUSED) {
		return &replication.UnavailableError{Reason: fmt.Sprintf("the leader at %s cannot be reached: %v", url, err)}
	}
	return &replication.UnknownOutcomeError{Reason: fmt.Sprintf("the leader at %s did not answer: %v", url, err)}
}

// RaftJoin implements replication.PeerCaller: 409 is a refusal.
func (t *Transport) RaftJoin(ctx context.Context, url string, req *replication.JoinRequest) (*replication.JoinResponse, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	var resp replication.JoinResponse
	err = t.post(ctx, url+"/_ddb/join", body, &resp)
	var pe *peerError
	if errors.As(err, &pe) && (pe.status == http.StatusConflict || pe.status == http.StatusBadRequest) {
		return nil, &replication.JoinRefusedError{Reason: pe.msg}
	}
	if errors.As(err, &pe) && pe.status == http.StatusForbidden {
		return nil, fmt.Errorf("%w (%s)", replication.ErrPeerAuth, pe.msg)
	}
	return &resp, err
}

// RemoteApplied implements replication.PeerCaller.
func (t *Transport) RemoteApplied(ctx context.Context, url string, index uint64) (uint64, error) {
	body, _ := json.Marshal(map[string]uint64{"index": index})
	var out struct {
		Applied uint64 `json:"applied"`
	}
	err := t.post(ctx, url+"/_ddb/applied", body, &out)
	return out.Applied, err
}

// RemoteDigest implements replication.PeerCaller.
func (t *Transport) RemoteDigest(ctx context.Context, url string, index uint64) (*store.Digest, error) {
	body, _ := json.Marshal(map[string]uint64{"index": index})
	var d store.Digest
	if err := t.post(ctx, url+"/_ddb/digest", body, &d); err != nil {
		return nil, err
	}
	return &d, nil
}

// FetchCopy implements replication.PeerCaller: the copy of its database the
// node at url (the leader) answers with, written to a new file in dir and
// checked against its signed SHA-256 as it arrives. The caller removes the
// file.
func (t *Transport) FetchCopy(ctx context.Context, url, dir string) (path string, index uint64, err error) {
	resp, req, err := t.send(ctx, url+copyPath, []byte("{}"))
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	sum := resp.Header.Get(headerCopySHA256)
	index, err = strconv.ParseUint(resp.Header.Get(headerCopyIndex), 10, 64)
	if err != nil {
		return "", 0, fmt.Errorf("the copy's index: %w", err)
	}
	if !hmac.Equal([]byte(resp.Header.Get(headerCopyMAC)), []byte(t.auth.CopyMAC(req, index, sum))) {
		return "", 0, errors.New("the copy is not authenticated by the cluster secret (wrong secret, or altered on the way)")
	}
	if path, err = cluster.ReceiveFile(resp.Body, dir, "repair-*.db", 0, sum); err != nil {
		return "", 0, fmt.Errorf("the copy: %w", err)
	}
	return path, index, nil
}

// Instance implements replication.PeerCaller: the token /livez reports.
func (t *Transport) Instance(ctx context.Context, url string) string {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+"/livez", nil)
	if err != nil {
		return ""
	}
	resp, err := t.client.Do(req)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	var out struct {
		Instance string `json:"instance"`
	}
	if resp.StatusCode != http.StatusOK || json.NewDecoder(io.LimitReader(resp.Body, 4096)).Decode(&out) != nil || out.Instance == "" {
		return "live" // a node answers, but says nothing of itself
	}
	return out.Instance
}

// PeerStatus asks the node at url for its Raft status (for the console).
func (t *Transport) PeerStatus(ctx context.Context, url string) (replication.Status, error) {
	var st replication.Status
	return st, t.post(ctx, url+"/_ddb/status", []byte("{}"), &st)
}

// Client is the HTTP client the transport sends with (kept-alive
// connections, the node's TLS settings).
func (t *Transport) Client() *http.Client { return t.client }
