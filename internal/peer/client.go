package peer

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
	neturl "net/url"
	"strconv"
	"sync"
	"time"

	"github.com/ddbgo/ddb/internal/cluster"
	"github.com/ddbgo/ddb/internal/progress"
	"github.com/ddbgo/ddb/internal/replication"
	"github.com/ddbgo/ddb/internal/store"
)

// Client is the one client of every node-to-node request: it signs as
// this node, over kept-alive connections. It carries the engine's calls
// to other nodes (replication.PeerCaller) and the Raft transport's.
type Client struct {
	http   *http.Client
	auth   *cluster.Auth
	name   string
	timing cluster.Timing

	fmu      sync.Mutex
	forwards map[string]*forwardQueue // leader URL -> writes forwarded to it

	vmu      sync.Mutex
	versions map[string]int // host -> the version it speaks, when earlier than Version

	progress *progress.Tracker // where snapshot transfers are reported (nil: nowhere)
}

// SetProgress sets where the client's long transfers (snapshots) are
// reported.
func (c *Client) SetProgress(t *progress.Tracker) { c.progress = t }

// NewClient returns a client that signs as name with auth. tlsConfig may
// be nil (plain HTTP).
func NewClient(auth *cluster.Auth, name string, tlsConfig *tls.Config, timing cluster.Timing) *Client {
	dialer := &net.Dialer{Timeout: timing.PeerDial, KeepAlive: 30 * time.Second}
	tr := &http.Transport{
		DialContext:         dialer.DialContext,
		MaxIdleConns:        256,
		MaxIdleConnsPerHost: 128,
		IdleConnTimeout:     90 * time.Second,
		TLSClientConfig:     tlsConfig,
		TLSHandshakeTimeout: 5 * time.Second,
	}
	return NewClientOver(&http.Client{Transport: tr}, auth, name, timing)
}

// NewClientOver returns a client that sends through hc (a test's client
// that trusts its servers' certificates, say).
func NewClientOver(hc *http.Client, auth *cluster.Auth, name string, timing cluster.Timing) *Client {
	if timing.PeerRequest <= 0 {
		timing = cluster.DefaultTiming()
	}
	return &Client{http: hc, auth: auth, name: name, timing: timing, versions: map[string]int{}}
}

// HTTP is the HTTP client the node's requests go through (kept-alive
// connections, the node's TLS settings), for the requests to other nodes
// that are not signed (a probe of /livez).
func (c *Client) HTTP() *http.Client { return c.http }

// Auth is the authentication the client signs with.
func (c *Client) Auth() *cluster.Auth { return c.auth }

// newRequest is a signed POST of body to url in version v of the
// envelope (see VersionFor); signed is what the signature covers.
func (c *Client) newRequest(ctx context.Context, url string, v int, body io.Reader, signed []byte) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, body)
	if err != nil {
		return nil, err
	}
	signAs(c.auth, req, c.name, cluster.BodyHash(signed), v)
	return req, nil
}

// VersionFor is the protocol version this node speaks to the node at
// url: its own, or an earlier one that node answered with (see learn).
func (c *Client) VersionFor(url string) int {
	u, err := neturl.Parse(url)
	if err != nil {
		return Version
	}
	c.vmu.Lock()
	defer c.vmu.Unlock()
	if v, ok := c.versions[u.Host]; ok {
		return v
	}
	return Version
}

// learn notes the version the answer to req states (the versions of a
// rolling upgrade: each node speaks to another in the earlier of their
// two versions). It reports whether req was refused by a node of an
// earlier version (a node of version 1 finds a later version's signature
// wrong, 403; a later one says 400): the caller sends it again, in the
// version now noted.
func (c *Client) learn(req *http.Request, resp *http.Response) (retry bool) {
	v, err := strconv.Atoi(resp.Header.Get(HeaderVersion))
	if err != nil || v < 1 {
		return false // an answer that does not say (not from an endpoint)
	}
	sent, _ := strconv.Atoi(req.Header.Get(HeaderVersion))
	c.vmu.Lock()
	defer c.vmu.Unlock()
	if v >= Version {
		delete(c.versions, req.URL.Host)
		return false
	}
	c.versions[req.URL.Host] = v
	return resp.StatusCode >= 400 && v < sent
}

// do sends the request build makes for the version of the envelope the
// node at url speaks (VersionFor). Refused by a node of an earlier
// version (see learn), it sends build's request once more, in that
// node's version: build encodes and signs for the version it is given.
func (c *Client) do(url string, build func(version int) (*http.Request, error)) (*http.Request, *http.Response, error) {
	for try := 0; ; try++ {
		req, err := build(c.VersionFor(url))
		if err != nil {
			return nil, nil, err
		}
		resp, err := c.http.Do(req)
		if err != nil {
			return nil, nil, err
		}
		if !c.learn(req, resp) || try > 0 {
			return req, resp, nil
		}
		resp.Body.Close()
	}
}

// peerError is a peer's answer other than the one expected.
type peerError struct {
	status int
	msg    string
}

func (e *peerError) Error() string { return fmt.Sprintf("peer answered %d: %s", e.status, e.msg) }

// answerError reads a refusal's message (a JSON error, or text).
func answerError(resp *http.Response) *peerError {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var e struct{ Error string }
	json.Unmarshal(b, &e)
	if e.Error == "" {
		e.Error = string(bytes.TrimSpace(b))
	}
	return &peerError{status: resp.StatusCode, msg: e.Error}
}

// send makes a signed POST of a JSON body to url; an answer other than
// 200 is a *peerError (its body read and closed). It returns the request
// too, whose signature keys what the answer may carry (cluster.Auth.CopyMAC).
func (c *Client) send(ctx context.Context, url string, body []byte) (*http.Response, *http.Request, error) {
	req, resp, err := c.do(url, func(v int) (*http.Request, error) {
		req, err := c.newRequest(ctx, url, v, bytes.NewReader(body), body)
		if err == nil {
			req.Header.Set("Content-Type", "application/json")
		}
		return req, err
	})
	if err != nil {
		return nil, nil, err
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return nil, nil, answerError(resp)
	}
	return resp, req, nil
}

// post sends body (JSON) to url and decodes the answer into out.
func (c *Client) post(ctx context.Context, url string, body []byte, out any) error {
	resp, _, err := c.send(ctx, url, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return err
	}
	return json.Unmarshal(b, out)
}

// RaftJoin implements replication.PeerCaller: 409 is a refusal.
func (c *Client) RaftJoin(ctx context.Context, url string, req *replication.JoinRequest) (*replication.JoinResponse, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	var resp replication.JoinResponse
	err = c.post(ctx, url+JoinPath, body, &resp)
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
func (c *Client) RemoteApplied(ctx context.Context, url string, index uint64) (uint64, error) {
	body, _ := json.Marshal(indexBody{Index: index})
	var out struct {
		Applied uint64 `json:"applied"`
	}
	err := c.post(ctx, url+AppliedPath, body, &out)
	return out.Applied, err
}

// RemoteDigest implements replication.PeerCaller.
func (c *Client) RemoteDigest(ctx context.Context, url string, index uint64) (*store.Digest, error) {
	body, _ := json.Marshal(indexBody{Index: index})
	var d store.Digest
	if err := c.post(ctx, url+DigestPath, body, &d); err != nil {
		return nil, err
	}
	return &d, nil
}

// FetchCopy implements replication.PeerCaller: the copy of its database the
// node at url (the leader) answers with, written to a new file in dir and
// checked against its signed SHA-256 as it arrives. The caller removes the
// file.
func (c *Client) FetchCopy(ctx context.Context, url, dir string) (path string, index uint64, err error) {
	resp, req, err := c.send(ctx, url+CopyPath, []byte("{}"))
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	sum := resp.Header.Get(headerCopySHA256)
	index, err = strconv.ParseUint(resp.Header.Get(headerCopyIndex), 10, 64)
	if err != nil {
		return "", 0, fmt.Errorf("the copy's index: %w", err)
	}
	if !hmac.Equal([]byte(resp.Header.Get(headerCopyMAC)), []byte(c.auth.CopyMAC(req, index, sum))) {
		return "", 0, errors.New("the copy is not authenticated by the cluster secret (wrong secret, or altered on the way)")
	}
	if path, err = cluster.ReceiveFile(resp.Body, dir, "repair-*.db", 0, sum); err != nil {
		return "", 0, fmt.Errorf("the copy: %w", err)
	}
	return path, index, nil
}

// Instance implements replication.PeerCaller: the token /livez reports.
func (c *Client) Instance(ctx context.Context, url string) string {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+"/livez", nil)
	if err != nil {
		return ""
	}
	resp, err := c.http.Do(req)
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

// Status asks the node at url for its status (for the console).
func (c *Client) Status(ctx context.Context, url string) (NodeStatus, error) {
	var st NodeStatus
	return st, c.post(ctx, url+StatusPath, []byte("{}"), &st)
}
