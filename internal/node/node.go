// Package node assembles one node from its configuration: the store, the
// replication engine, the HTTP server, and a clean shutdown.
package node

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/ddbgo/ddb/internal/api"
	"github.com/ddbgo/ddb/internal/changefeed"
	"github.com/ddbgo/ddb/internal/cluster"
	"github.com/ddbgo/ddb/internal/consensus"
	"github.com/ddbgo/ddb/internal/faults"
	"github.com/ddbgo/ddb/internal/peer"
	"github.com/ddbgo/ddb/internal/progress"
	"github.com/ddbgo/ddb/internal/store"
)

// Node is a running master or slave.
type Node struct {
	Config *cluster.Config
	Store  *store.Store
	eng    *consensus.Engine
	server *http.Server
	api    *api.Server
	ln     net.Listener
	done   chan error
	logger *slog.Logger
	stop   chan struct{} // closed at Shutdown: background work ends
}

// Start opens the node's database and starts serving. The caller stops it
// with Shutdown.
func Start(cfg *cluster.Config, logOut io.Writer) (*Node, error) {
	cfg.Defaults()
	if logOut == nil {
		logOut = os.Stderr
	}
	logger, err := newLogger(cfg, logOut)
	if err != nil {
		return nil, err
	}
	secret, secretFrom, err := cluster.ResolveSecret(cfg.Secret, cfg.Dir)
	if err != nil {
		return nil, err
	}
	tlsServer, tlsClient, err := tlsConfigs(cfg)
	if err != nil {
		return nil, err
	}
	var users *api.Users
	if cfg.AuthFile != "" {
		if users, err = api.LoadUsers(cfg.AuthFile); err != nil {
			return nil, err
		}
	}
	if faults.Enabled && cfg.InjectBug != "" {
		logger.Warn("deliberate defect switched on: this node breaks its guarantees", "defect", cfg.InjectBug)
	}
	storeBug := cfg.InjectBug
	if cfg.Role == cluster.Master && (storeBug == string(faults.SkipEntry) || storeBug == string(faults.PartialApply)) {
		storeBug = "" // defects of the slaves' apply: the master applies right, and they differ from it
	}
	st, err := store.Open(store.Options{Path: cfg.DBPath(), InjectBug: storeBug, DigestRate: max(int64(cfg.CheckRate), 0) << 20})
	if err != nil {
		return nil, err
	}
	if err := cfg.ResetWorkDir(); err != nil {
		st.Close()
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.ListenAddr())
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("listen on %s: %w (is another node using this port?)", cfg.ListenAddr(), err)
	}
	if cfg.Port == 0 || cfg.Listen != "" {
		// Port 0 / explicit listen: report the real address.
		if cfg.Role == cluster.Slave && cfg.Listen != "" {
			cfg.Listen = ln.Addr().String()
		}
	}
	timing := cluster.DefaultTiming()
	timing.ReadWait = min(cfg.ReadTimeout, timing.ReadWait)
	track := progress.New(logger, 5*time.Second)
	tr := peer.NewClient(cluster.NewAuth(secret, nil), cfg.Name(), tlsClient, timing)
	tr.SetProgress(track)
	n := &Node{Config: cfg, Store: st, ln: ln, done: make(chan error, 1), logger: logger}
	engCfg := raftConfig(cfg, timing, tr, logger)
	n.eng, err = consensus.StartEngine(st, engCfg)
	if err != nil {
		ln.Close()
		st.Close()
		return nil, err
	}
	handler := api.NewServer(cfg, st, n.eng, n.eng, tr, users)
	n.api = handler
	handler.SetLogger(logger)
	handler.SetStatus("consistency", func() any { return n.eng.Consistency() })
	handler.SetProgress(track)
	handler.SetStatus("progress", func() any { return track.UnderWay() })
	handler.SetStatus("changes", func() any {
		cs, err := st.ChangeSetting(context.Background())
		if err != nil {
			return map[string]any{"error": err.Error()}
		}
		return map[string]any{"on": cs.On, "keep": cs.Keep, "oldest": cs.Oldest}
	})
	n.stop = make(chan struct{})
	go track.Run(n.stop)
	if cfg.BackupURL != "" {
		go offsiteLoop(cfg, n.eng, st, logger, n.stop, track)
	}
	if cfg.BackupDir != "" {
		go backupLoop(st, cfg.BackupDir, cfg.BackupInterval, cfg.BackupKeep, logger, n.stop, track)
	}
	if cfg.ChangesKeep != 0 {
		go setChangeStream(n.eng, st, cfg.ChangesKeep, logger, n.stop)
	}
	if cfg.ChangesWebhook != "" {
		hookTransport := http.DefaultTransport.(*http.Transport).Clone()
		hookTransport.TLSClientConfig = tlsClient
		hook := &changefeed.Webhook{URL: cfg.ChangesWebhook, ServiceID: cfg.ChangesServiceID, NodeID: changefeed.NodeID(cfg.ID),
			Store: st, Repl: n.eng, Log: logger, Client: &http.Client{Timeout: 10 * time.Second, Transport: hookTransport}}
		go hook.Run(n.stop)
	}
	if cfg.Restore != "" {
		rs := &restoreState{}
		handler.SetStatus("restore", rs.Status)
		go restoreWhenLeading(n.eng, st, cfg.Restore, cfg.RestoreIndex, cfg.WorkDir(), logger, n.stop, rs, track)
	}
	n.server = &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       60 * time.Second,
		WriteTimeout:      cfg.QueryTimeout + cfg.AckTimeout + cfg.ReadTimeout + 10*time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		TLSConfig:         tlsServer,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	if cfg.Pprof != "" {
		go func() {
			mux := http.NewServeMux()
			mux.HandleFunc("/debug/pprof/", pprof.Index)
			mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
			mux.HandleFunc("/debug/pprof/trace", pprof.Trace) // an execution trace: where a slow request waited
			mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
			logger.Error("profiles server stopped", "addr", cfg.Pprof, "err", http.ListenAndServe(cfg.Pprof, mux))
		}()
	}
	go func() {
		var err error
		if tlsServer != nil {
			err = n.server.ServeTLS(ln, "", "")
		} else {
			err = n.server.Serve(ln)
		}
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		n.done <- err
	}()
	peers := engCfg.Peers
	var peerURLs []string
	for _, id := range slices.Sorted(maps.Keys(peers)) {
		if id != cluster.RaftID(cfg.ID) {
			peerURLs = append(peerURLs, fmt.Sprintf("%d=%s", cluster.CommandLineID(id), peers[id]))
		}
	}
	logger.Info("serving", "role", string(cfg.Role), "id", cfg.ID, "url", cfg.URL(), "listen", ln.Addr().String(), "database", st.Path(),
		"users", onOff(users != nil), "tls", onOff(tlsServer != nil), "secret", secretFrom, "peers", strings.Join(peerURLs, ","), "applied_index", st.Applied())
	if !listensOnLoopback(ln.Addr()) && users == nil {
		logger.Warn("this node listens beyond loopback without a users file: anyone who can reach "+ln.Addr().String()+" can read and change everything, the schema included. Give -auth a users file (docs/SECURITY.md), or listen on loopback only (-host localhost, the default)", "listen", ln.Addr().String())
	}
	return n, nil
}

// raftConfig places the node in the Raft group: the master is node 1
// and the preferred leader, slave i is node i+1; the master and the first
// four slaves vote. Every node knows the URLs the command line gives it
// (all of them with the port arithmetic; with explicit addresses, the
// master's list) and learns the others' when it announces itself.
func raftConfig(cfg *cluster.Config, timing cluster.Timing, tr *peer.Client, logger *slog.Logger) consensus.EngineConfig {
	master := cluster.RaftID(0)
	peers := map[uint64]string{master: cfg.MasterAddr()}
	if cfg.Role == cluster.Master || cfg.MasterURL == "" || len(cfg.SlaveURLs) > 0 {
		for i := 1; i <= cfg.NumSlaves; i++ {
			peers[cluster.RaftID(i)] = cfg.SlaveURL(i)
		}
	}
	var voters []uint64
	for id := range min(cfg.NumSlaves+1, 5) {
		voters = append(voters, cluster.RaftID(id))
	}
	return consensus.EngineConfig{
		ID: cluster.RaftID(cfg.ID), URL: cfg.URL(), Peers: peers, Voters: voters, Preferred: master,
		AckTimeout: cfg.AckTimeout, Timing: timing,
		Limits: api.Limits(cfg),
		Dir:    cfg.WorkDir(), LogKeep: cfg.LogKeep, LogKeepBytes: cfg.LogKeepBytes, InjectBug: cfg.InjectBug,
		Peer: tr, Log: logger,
		CheckInterval: cfg.CheckInterval, NoRepair: cfg.CheckRepair == "off",
	}
}

// Addr is the address the node listens on.
func (n *Node) Addr() net.Addr { return n.ln.Addr() }

// Done delivers the server's exit error.
func (n *Node) Done() <-chan error { return n.done }

// Shutdown stops accepting requests, lets in-flight ones finish (up to
// ctx), stops replication and closes the database.
func (n *Node) Shutdown(ctx context.Context) error {
	close(n.stop)
	n.api.Close()
	err := n.server.Shutdown(ctx)
	n.eng.Close()
	if cerr := n.Store.Close(); cerr != nil && err == nil {
		err = cerr
	}
	n.logger.Info("stopped")
	return err
}

// Run starts a node and serves until ctx ends, then shuts down cleanly.
func Run(ctx context.Context, cfg *cluster.Config) error {
	n, err := Start(cfg, os.Stderr)
	if err != nil {
		return err
	}
	fatal := n.eng.Fatal()
	var ferr error
	select {
	case <-ctx.Done():
	case err := <-n.done:
		if err != nil {
			return err
		}
	case ferr = <-fatal:
	}
	sctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	if err := n.Shutdown(sctx); err != nil && ferr == nil {
		return err
	}
	return ferr
}

// newLogger is the node's logger: -log-format text or json on out, at
// -log-level, every record naming the node.
func newLogger(cfg *cluster.Config, out io.Writer) (*slog.Logger, error) {
	level, err := cfg.SlogLevel()
	if err != nil {
		return nil, err
	}
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler = slog.NewTextHandler(out, opts)
	if cfg.LogFormat == "json" {
		h = slog.NewJSONHandler(out, opts)
	}
	return slog.New(h).With("node", cfg.Name()), nil
}

// hashPassword reads a password (one line) and prints its bcrypt hash,
// for the users file.
func hashPassword(in io.Reader, out io.Writer) int {
	line, err := bufio.NewReader(in).ReadString('\n')
	pw := strings.TrimRight(line, "\r\n")
	if pw == "" {
		fmt.Fprintln(os.Stderr, "hash-password: type the password on standard input (one line); nothing was read", err)
		return 2
	}
	h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.DefaultCost)
	if err != nil {
		fmt.Fprintln(os.Stderr, "hash-password:", err)
		return 1
	}
	fmt.Fprintln(out, string(h))
	return 0
}

func tlsConfigs(cfg *cluster.Config) (server, client *tls.Config, err error) {
	if cfg.TLSCert == "" && cfg.TLSKey == "" && cfg.TLSCA == "" {
		return nil, nil, nil
	}
	if cfg.TLSCert == "" || cfg.TLSKey == "" {
		return nil, nil, fmt.Errorf("-tls-cert and -tls-key go together")
	}
	cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
	if err != nil {
		return nil, nil, fmt.Errorf("load TLS key pair: %w", err)
	}
	server = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	client = &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.TLSCA != "" {
		pem, err := os.ReadFile(cfg.TLSCA)
		if err != nil {
			return nil, nil, fmt.Errorf("read -tls-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, nil, fmt.Errorf("-tls-ca %s holds no PEM certificate", cfg.TLSCA)
		}
		client.RootCAs = pool
	}
	return server, client, nil
}

// Main is a node binary's whole main: parse the arguments for role, run
// until SIGINT or SIGTERM, and return the exit code.
func Main(role cluster.Role, args []string) int {
	if len(args) == 1 && (args[0] == "-hash-password" || args[0] == "--hash-password") {
		return hashPassword(os.Stdin, os.Stdout)
	}
	cfg, err := cluster.ParseArgs(role, args, os.Stdout)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := Run(ctx, cfg); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", cfg.Name(), err)
		return 1
	}
	return 0
}

// onOff is a start-up line's word for a setting.
func onOff(on bool) string {
	if on {
		return "on"
	}
	return "off"
}

// listensOnLoopback says whether addr (the node's listener) takes
// connections from this machine only.
func listensOnLoopback(addr net.Addr) bool {
	tcp, ok := addr.(*net.TCPAddr)
	return ok && tcp.IP.IsLoopback()
}
