package cluster

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ddbgo/ddb/internal/faults"
)

// Role is what a node is in the cluster.
type Role string

// The two roles.
const (
	Master Role = "master"
	Slave  Role = "slave"
)

// Ack is a write's acknowledgement level.
type Ack string

// The acknowledgement levels. AckMaster is the original protocol's name,
// kept: under Raft it means quorum.
const (
	AckMaster Ack = "master"
	AckQuorum Ack = "quorum"
	AckAll    Ack = "all"
)

// ValidAck reports whether s is an acknowledgement level.
func ValidAck(s Ack) bool { return s == AckMaster || s == AckQuorum || s == AckAll }

// Config is everything one node needs to run. Build it with ParseArgs or by
// hand (tests run several nodes in one process this way).
type Config struct {
	Role      Role
	ID        int // 0 for the master, 1.. for slaves
	NumSlaves int
	Host      string // host name the nodes use to reach each other
	Port      int    // base port
	Dir       string // data directory
	Secret    string // cluster secret ("" = resolve with ResolveSecret)
	Ack       Ack    // default ack level

	SlaveURLs []string // master: explicit slave URLs (override the port arithmetic)
	MasterURL string   // slave: explicit master URL
	Listen    string   // explicit listen address (host:port)
	Advertise string   // the URL the other nodes reach this one at
	// AllowHosts are host names, beyond the ones the node knows itself by
	// (KnownHosts), that requests may name in their Host header.
	AllowHosts []string

	AckTimeout     time.Duration // how long a write waits for its ack level
	ReadTimeout    time.Duration // how long min_index / strong reads wait
	QueryTimeout   time.Duration // a statement's deadline
	MaxBodyBytes   int64
	BodyTimeout    time.Duration // how long a client may take to send its body
	MaxResultRows  int
	MaxResultBytes int
	MaxConcurrent  int // client requests served at once; beyond: 503
	LogKeep        uint64
	LogKeepBytes   uint64 // the data of those entries, at most
	AuthFile       string // optional users file
	TLSCert        string
	TLSKey         string
	TLSCA          string
	Pprof          string // address to serve Go profiles on ("" = off)
	BackupDir      string // periodic backups go here ("" = none)
	// BackupURL is an object store periodic backups go to ("" = none):
	// s3://, gs://, azblob:// or file:// (package offsite); BackupBy says
	// who takes them: "leader" (the node that leads at the time) or
	// "this" (this node, whatever its role).
	BackupURL      string
	BackupBy       string
	BackupInterval time.Duration // between periodic backups
	// CheckInterval is how often the leader logs a consistency check (the
	// replicas then compare digests of their databases); negative: never
	// (the flag's 0).
	CheckInterval time.Duration
	// CheckRepair is what a follower a check finds diverged does: "auto"
	// (replace its data with a copy of the leader's) or "off" (stop
	// serving until repaired by hand).
	CheckRepair string
	// CheckRate is how fast a node reads its database for a check's
	// digest, in MB of rows a second; negative: as fast as it can (the
	// flag's 0).
	CheckRate  int
	BackupKeep int // periodic backups kept
	// ChangesKeep sets the cluster's change stream once the node runs: on,
	// keeping the row changes of this many log indexes (> 0), or off
	// (< 0); 0 leaves the setting the cluster has.
	ChangesKeep int64
	// ChangesWebhook is the URL the change stream is pushed to while this
	// node leads ("" = none), with ChangesServiceID in each envelope.
	ChangesWebhook   string
	ChangesServiceID string
	Restore          string // master: a backup (file or object-store URL) a fresh cluster starts from
	RestoreIndex     uint64 // with a URL: the backup at this index (0: the newest)
	LogLevel         string // debug, info, warn, error
	LogFormat        string // text or json

	// InjectBug switches on a deliberate defect, from $DDB_INJECT_BUG, in
	// builds with the ddb_faults tag only (package faults). It
	// exists only so the fault-injection suite can prove that each of its
	// checkers catches a broken guarantee; never set it otherwise.
	InjectBug string
}

// SlogLevel is -log-level as a slog level.
func (c *Config) SlogLevel() (slog.Level, error) {
	switch c.LogLevel {
	case "debug":
		return slog.LevelDebug, nil
	case "", "info":
		return slog.LevelInfo, nil
	case "warn":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("-log-level must be debug, info, warn or error, not %q", c.LogLevel)
}

// defaults holds every setting's default value, in one place: the flags
// show and take them, and Defaults fills them into a Config built by hand.
var defaults = Config{
	Host: "localhost", Port: 8080, Dir: ".",
	Ack: AckQuorum, AckTimeout: 5 * time.Second, ReadTimeout: 5 * time.Second, QueryTimeout: 30 * time.Second,
	MaxBodyBytes: 16 << 20, BodyTimeout: 10 * time.Second,
	MaxResultRows: 1_000_000, MaxResultBytes: 256 << 20, MaxConcurrent: 1024,
	LogKeep: 200_000, LogKeepBytes: 32 << 20,
	LogLevel: "info", LogFormat: "text",
	BackupInterval: time.Hour, BackupKeep: 24, BackupBy: "leader",
	CheckInterval: 30 * time.Second, CheckRepair: "auto", CheckRate: 64,
}

// Default is a copy of the default settings.
func Default() Config { return defaults }

// Defaults fills zero fields from the defaults.
func (c *Config) Defaults() {
	fill := func(v any, d any) {
		switch p := v.(type) {
		case *string:
			if *p == "" {
				*p = d.(string)
			}
		case *int:
			if *p == 0 {
				*p = d.(int)
			}
		case *int64:
			if *p == 0 {
				*p = d.(int64)
			}
		case *uint64:
			if *p == 0 {
				*p = d.(uint64)
			}
		case *time.Duration:
			if *p == 0 {
				*p = d.(time.Duration)
			}
		case *Ack:
			if *p == "" {
				*p = d.(Ack)
			}
		}
	}
	d := defaults
	fill(&c.Host, d.Host)
	fill(&c.Port, d.Port)
	fill(&c.Dir, d.Dir)
	fill(&c.Ack, d.Ack)
	fill(&c.AckTimeout, d.AckTimeout)
	fill(&c.ReadTimeout, d.ReadTimeout)
	fill(&c.QueryTimeout, d.QueryTimeout)
	fill(&c.MaxBodyBytes, d.MaxBodyBytes)
	fill(&c.BodyTimeout, d.BodyTimeout)
	fill(&c.MaxResultRows, d.MaxResultRows)
	fill(&c.MaxResultBytes, d.MaxResultBytes)
	fill(&c.MaxConcurrent, d.MaxConcurrent)
	fill(&c.LogKeep, d.LogKeep)
	fill(&c.LogKeepBytes, d.LogKeepBytes)
	fill(&c.LogLevel, d.LogLevel)
	fill(&c.LogFormat, d.LogFormat)
	fill(&c.BackupInterval, d.BackupInterval)
	fill(&c.BackupKeep, d.BackupKeep)
	fill(&c.BackupBy, d.BackupBy)
	fill(&c.CheckInterval, d.CheckInterval)
	fill(&c.CheckRepair, d.CheckRepair)
	fill(&c.CheckRate, d.CheckRate)
}

func (c *Config) scheme() string {
	if c.TLSCert != "" {
		return "https"
	}
	return "http"
}

// URL is this node's own URL, as the other nodes reach it.
func (c *Config) URL() string {
	if c.Advertise != "" {
		return strings.TrimRight(c.Advertise, "/")
	}
	if c.Listen != "" {
		host, port, err := net.SplitHostPort(c.Listen)
		if err == nil {
			if host == "" || host == "0.0.0.0" || host == "::" {
				host = c.Host
			}
			return fmt.Sprintf("%s://%s", c.scheme(), net.JoinHostPort(host, port))
		}
	}
	if c.Role == Master {
		return c.MasterAddr()
	}
	return c.SlaveURL(c.ID)
}

// MasterAddr is the master's URL.
func (c *Config) MasterAddr() string {
	if c.MasterURL != "" {
		return strings.TrimRight(c.MasterURL, "/")
	}
	return fmt.Sprintf("%s://%s", c.scheme(), net.JoinHostPort(c.Host, strconv.Itoa(c.Port)))
}

// SlaveURL is slave i's URL (explicit -slaves first, then the arithmetic).
func (c *Config) SlaveURL(i int) string {
	if i >= 1 && i <= len(c.SlaveURLs) {
		return strings.TrimRight(c.SlaveURLs[i-1], "/")
	}
	return fmt.Sprintf("%s://%s", c.scheme(), net.JoinHostPort(c.Host, strconv.Itoa(c.Port+i)))
}

// ListenAddr is the address this node's HTTP server binds: -listen, else
// the port arithmetic's port on loopback when -host is a loopback name
// (the default, localhost), and on every interface otherwise.
func (c *Config) ListenAddr() string {
	if c.Listen != "" {
		return c.Listen
	}
	port := c.Port
	if c.Role != Master {
		port += c.ID
	}
	if IsLoopbackHost(c.Host) {
		host := c.Host
		if strings.EqualFold(host, "localhost") {
			host = "127.0.0.1"
		}
		return net.JoinHostPort(host, strconv.Itoa(port))
	}
	return ":" + strconv.Itoa(port)
}

// IsLoopbackHost says whether host (a name or an address, without a
// port) is this machine's loopback: localhost (or a name under it), or an
// address in 127.0.0.0/8 or ::1.
func IsLoopbackHost(host string) bool {
	host = HostName(host)
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// HostName is host (without a port) as names are compared: lower case,
// without brackets around an IPv6 address, without a final dot.
func HostName(host string) string {
	return strings.ToLower(strings.TrimSuffix(strings.Trim(strings.TrimSpace(host), "[]"), "."))
}

// KnownHosts are the host names a request's Host header may name (besides
// any IP address): the loopback names, -host, the hosts of -listen,
// -advertise and this node's URL, and -allow-hosts. A browser sends
// another name only when a page of another site reached this node through
// DNS rebinding.
func (c *Config) KnownHosts() []string {
	hosts := []string{"localhost", c.Host}
	for _, u := range []string{c.Advertise, c.URL()} {
		if parsed, err := url.Parse(u); err == nil && parsed.Hostname() != "" {
			hosts = append(hosts, parsed.Hostname())
		}
	}
	if h, _, err := net.SplitHostPort(c.Listen); err == nil && h != "" {
		hosts = append(hosts, h)
	}
	hosts = append(hosts, c.AllowHosts...)
	out := hosts[:0]
	for _, h := range hosts {
		h = HostName(h)
		if h != "" && !slices.Contains(out, h) {
			out = append(out, h)
		}
	}
	return out
}

// DBPath is the node's database file: slave<id>.db in Dir.
func (c *Config) DBPath() string { return filepath.Join(c.Dir, fmt.Sprintf("slave%d.db", c.ID)) }

// WorkDir holds the files the node makes on the way to something else: a
// snapshot or a repair's copy while it arrives, a copy while it is checked
// or sent, a load's body and plan, a backup before its upload. It is
// slave<id>.db-tmp in Dir, one per node (the nodes of a local cluster share
// Dir), and on the database's file system, so that a finished copy is
// renamed into place. Nothing in it outlives the node's run:
// ResetWorkDir empties it at every start.
func (c *Config) WorkDir() string { return filepath.Join(c.Dir, fmt.Sprintf("slave%d.db-tmp", c.ID)) }

// ResetWorkDir empties the node's WorkDir (creating it if need be), so
// that what a node killed mid-way left there (a partial snapshot of the
// database's size, a load's staged body) does not stay. The caller holds
// the database's lock, so no other process of this node uses the files.
func (c *Config) ResetWorkDir() error {
	dir := c.WorkDir()
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("empty the work directory %s: %w", dir, err)
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		return fmt.Errorf("create the work directory: %w", err)
	}
	return nil
}

// Name identifies the node in logs and peer headers.
func (c *Config) Name() string {
	if c.Role == Master {
		return "master"
	}
	return fmt.Sprintf("slave%d", c.ID)
}

// SecretFile is where a local cluster keeps its generated secret.
const SecretFile = "ddb-cluster.secret"

// ResolveSecret returns the secret to use, and where it came from (for
// the start-up line): the configured one, else $DDB_CLUSTER_SECRET, else
// the secret file in Dir, created by the first node that needs it. Nodes
// sharing one Dir thus agree with no setup.
func ResolveSecret(configured, dir string) (secret, source string, err error) {
	if configured != "" {
		return configured, "-secret", nil
	}
	if env := os.Getenv("DDB_CLUSTER_SECRET"); env != "" {
		return env, "DDB_CLUSTER_SECRET", nil
	}
	path := filepath.Join(dir, SecretFile)
	created := false
	for attempt := 0; attempt < 50; attempt++ {
		if b, err := os.ReadFile(path); err == nil {
			if s := strings.TrimSpace(string(b)); s != "" {
				if created {
					return s, "created " + path, nil
				}
				return s, "file " + path, nil
			}
		} else if !errors.Is(err, os.ErrNotExist) {
			return "", "", fmt.Errorf("read cluster secret %s: %w", path, err)
		}
		// Write the candidate to a temporary file, then hard-link it into
		// place: the link fails if another node won the race, and a reader
		// never sees a half-written file.
		var raw [32]byte
		if _, err := io.ReadFull(rand.Reader, raw[:]); err != nil {
			return "", "", err
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return "", "", err
		}
		tmp, err := os.CreateTemp(dir, ".secret-*")
		if err != nil {
			return "", "", fmt.Errorf("create cluster secret in %s: %w", dir, err)
		}
		tmp.WriteString(hex.EncodeToString(raw[:]) + "\n")
		tmp.Chmod(0o600)
		tmp.Sync()
		tmp.Close()
		err = os.Link(tmp.Name(), path)
		os.Remove(tmp.Name())
		if err != nil && !errors.Is(err, os.ErrExist) {
			return "", "", fmt.Errorf("create cluster secret %s: %w", path, err)
		}
		created = err == nil
	}
	return "", "", fmt.Errorf("cluster secret %s stays empty", path)
}

// ParseArgs parses a binary's flags and positional arguments. For the
// master the positional arguments are <num_slaves>; for a slave
// <slave_id> <num_slaves>. Flags may come before or after them.
func ParseArgs(role Role, args []string, stderr io.Writer) (*Config, error) {
	return parseArgs(role, "", args, stderr)
}

// ParseClusterArgs parses the cluster command's arguments: the master's
// flags and <num_slaves>, with its own usage line.
func ParseClusterArgs(args []string, stderr io.Writer) (*Config, error) {
	return parseArgs(Master, "usage: cluster [flags] <num_slaves>   (a master and <num_slaves> slaves in one process, on -port, -port+1, ...; Ctrl-C stops them all)", args, stderr)
}

func parseArgs(role Role, usageLine string, args []string, stderr io.Writer) (*Config, error) {
	c := &Config{Role: role}
	fs := flag.NewFlagSet(string(role), flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&c.Port, "port", defaults.Port, "base port: the master listens on it, slave i on port+i")
	fs.StringVar(&c.Host, "host", defaults.Host, "host name the nodes use to reach each other")
	fs.StringVar(&c.Dir, "dir", defaults.Dir, "data directory for slave<i>.db and the cluster secret")
	fs.StringVar(&c.Secret, "secret", "", "cluster secret for node-to-node requests (default $DDB_CLUSTER_SECRET, else a file in -dir)")
	fs.StringVar((*string)(&c.Ack), "ack", string(defaults.Ack), "default write acknowledgement: quorum (a majority logged it and the leader applied it), all (every voter applied it), or master (the same as quorum: the original's name for it)")
	fs.DurationVar(&c.AckTimeout, "ack-timeout", defaults.AckTimeout, "how long a write waits for its acknowledgement level before 504")
	fs.DurationVar(&c.ReadTimeout, "read-timeout", defaults.ReadTimeout, "how long min_index and strong reads wait before 504")
	fs.DurationVar(&c.QueryTimeout, "query-timeout", defaults.QueryTimeout, "deadline of one request's SQL; SQLite is interrupted when it passes (a write: a budget of 100 million SQLite instructions a second of it, the same on every node)")
	fs.Int64Var(&c.MaxBodyBytes, "max-body", defaults.MaxBodyBytes, "largest request body in bytes (413 beyond)")
	fs.DurationVar(&c.BodyTimeout, "body-timeout", defaults.BodyTimeout, "how long a client may take to send its request body (408 beyond); slow senders are cut off")
	fs.IntVar(&c.MaxResultRows, "max-rows", defaults.MaxResultRows, "most rows one query may return")
	fs.IntVar(&c.MaxResultBytes, "max-result-bytes", defaults.MaxResultBytes, "most bytes of values one query may return")
	fs.IntVar(&c.MaxConcurrent, "max-concurrent", defaults.MaxConcurrent, "client requests served at once (503 with Retry-After beyond)")
	fs.Uint64Var(&c.LogKeep, "log-keep", defaults.LogKeep, "applied log entries each node keeps for followers that fall behind; one further behind gets a snapshot of the database instead")
	fs.Uint64Var(&c.LogKeepBytes, "log-keep-bytes", defaults.LogKeepBytes, "the most data those kept entries hold, in bytes: older ones are dropped sooner when they are large (a load's), since a snapshot then costs less than replaying them")
	fs.StringVar(&c.AuthFile, "auth", "", "users file (JSON: username, password, perms); without it anyone may use the API")
	fs.StringVar(&c.TLSCert, "tls-cert", "", "TLS certificate for the HTTP API and peer traffic")
	fs.StringVar(&c.TLSKey, "tls-key", "", "TLS private key")
	fs.StringVar(&c.TLSCA, "tls-ca", "", "CA certificate that peers' certificates are verified against")
	fs.StringVar(&c.LogLevel, "log-level", defaults.LogLevel, "log level: debug (also every request, with its status and duration), info, warn or error")
	fs.StringVar(&c.LogFormat, "log-format", defaults.LogFormat, "log format: text (key=value) or json (one object a line)")
	fs.StringVar(&c.Pprof, "pprof", "", "serve Go profiles (/debug/pprof/) on this address, e.g. localhost:6060; off by default")
	fs.StringVar(&c.BackupDir, "backup-dir", "", "write a consistent backup of this node's database to this directory every -backup-interval (each verified before older ones are deleted); off by default")
	fs.StringVar(&c.BackupURL, "backup-url", "", "upload a consistent backup every -backup-interval to object storage: s3://bucket/prefix?region=R[&endpoint=URL&use_path_style=true] (any S3-compatible store), gs://bucket/prefix, azblob://container/prefix or file:///dir; credentials come from the store's usual environment variables and files, never from flags. Unchanged backups are skipped; -backup-keep are kept")
	fs.StringVar(&c.BackupBy, "backup-by", "leader", "who uploads to -backup-url: leader (whichever node leads at the time, so one cluster uploads one copy) or this (this node, whatever its role)")
	fs.DurationVar(&c.BackupInterval, "backup-interval", defaults.BackupInterval, "time between backups to -backup-dir and -backup-url")
	fs.IntVar(&c.BackupKeep, "backup-keep", defaults.BackupKeep, "backups kept in -backup-dir and at -backup-url (the oldest go first)")
	var changes string
	fs.StringVar(&changes, "changes-keep", "", "turn the cluster's change stream (GET /db/changes) on, keeping the row changes of this many log indexes, or turn it off with \"off\"; set through the log, for every node, once this node runs (default: leave the cluster's setting as it is)")
	fs.StringVar(&c.ChangesWebhook, "changes-webhook", "", "POST the change stream to this URL while this node leads (rqlite's CDC JSON; at least once, in index order); give every node the same")
	fs.StringVar(&c.ChangesServiceID, "changes-service-id", "", "service_id in every change webhook envelope")
	fs.IntVar(&c.CheckRate, "check-rate", defaults.CheckRate, "how fast a node reads its database for a consistency check's digest, in MB of rows a second, so that a large database's check takes a share of a core over seconds rather than all of it at once (0: as fast as it can)")
	fs.StringVar(&c.CheckRepair, "check-repair", defaults.CheckRepair, "what a follower whose data a consistency check finds different from the leader's does: auto (keep its diverged database as <database>.diverged and replace its data with a copy of the leader's) or off (serve nothing until repaired by hand)")
	fs.DurationVar(&c.CheckInterval, "check-interval", defaults.CheckInterval, "how often the leader starts a consistency check, when writes were applied since the last one: every node takes a digest of its database as of one log index, and the replicas compare them (0: never)")
	var slaves string
	if role == Master {
		fs.StringVar(&c.Restore, "restore", "", "start a fresh cluster from this backup: a file (a SQLite file or SQL dump), or an object-storage URL as -backup-url takes, whose newest backup (or -restore-index's) is downloaded and its SHA-256 checked; once the master leads and if the database holds no table yet, the backup is loaded through the log, so every node gets it")
		fs.Uint64Var(&c.RestoreIndex, "restore-index", 0, "with -restore URL: the backup at this log index instead of the newest")
		fs.StringVar(&slaves, "slaves", "", "comma-separated slave URLs (instead of http://host:port+i)")
	} else {
		fs.StringVar(&slaves, "slaves", "", "comma-separated URLs of the slaves as this slave reaches them (default: http://host:port+i with the port arithmetic, else learned from the master)")
		fs.StringVar(&c.MasterURL, "master", "", "the master's URL (instead of http://host:port)")
	}
	fs.StringVar(&c.Listen, "listen", "", "address to listen on, host:port (default: the port arithmetic's port, on loopback when -host is localhost or another loopback name, else on every interface)")
	fs.StringVar(&c.Advertise, "advertise", "", "URL the other nodes reach this node at (default: from -listen, else -host and the port)")
	var allow string
	fs.StringVar(&allow, "allow-hosts", "", "comma-separated host names requests may name in their Host header, besides this node's own (loopback names, -host, -listen, -advertise) and IP addresses; any other is refused with 403 (a defence against DNS rebinding)")
	want := 1
	usage := "usage: master [flags] <num_slaves>\n       master -hash-password   (reads a password, prints its bcrypt hash for the users file)"
	if role == Slave {
		want = 2
		usage = "usage: node [flags] <slave_id> <num_slaves>\n       node -hash-password   (reads a password, prints its bcrypt hash for the users file)"
	}
	if usageLine != "" {
		usage = usageLine
	}
	// The flag package's own messages are replaced: -h prints the usage
	// and every flag (ErrHelp, for the caller to exit 0); a bad flag is
	// one error with the usage line, not the whole list twice.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	// Accept flags after the positional arguments too.
	var pos []string
	rest := args
	for {
		if err := fs.Parse(rest); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fmt.Fprintln(stderr, usage)
				fmt.Fprintln(stderr, "\nflags:")
				fs.SetOutput(stderr)
				fs.PrintDefaults()
				return nil, flag.ErrHelp
			}
			return nil, fmt.Errorf("%v\n%s\n(-h lists every flag)", err, usage)
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	if len(pos) != want {
		return nil, fmt.Errorf("%d arguments given, %d wanted\n%s\n(-h lists every flag)", len(pos), want, usage)
	}
	nums := make([]int, len(pos))
	for i, p := range pos {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 {
			return nil, fmt.Errorf("%q is not a whole number; %s", p, usage)
		}
		nums[i] = n
	}
	if role == Master {
		c.NumSlaves = nums[0]
	} else {
		c.ID, c.NumSlaves = nums[0], nums[1]
		if c.ID < 1 {
			return nil, fmt.Errorf("slave ids start at 1 (slave 0 is the master's database)")
		}
	}
	if allow != "" {
		for _, h := range strings.Split(allow, ",") {
			if h = strings.TrimSpace(h); h != "" {
				c.AllowHosts = append(c.AllowHosts, h)
			}
		}
	}
	if c.Port < 1 || c.Port > 65535 {
		return nil, fmt.Errorf("-port must be between 1 and 65535, not %d", c.Port)
	}
	if last := c.Port + max(c.NumSlaves, c.ID); last > 65535 {
		return nil, fmt.Errorf("-port %d leaves no port for slave %d (%d is over 65535)", c.Port, max(c.NumSlaves, c.ID), last)
	}
	if c.Listen != "" {
		if _, port, err := net.SplitHostPort(c.Listen); err != nil {
			return nil, fmt.Errorf("-listen must be host:port (e.g. 0.0.0.0:8081 or 127.0.0.1:8081), not %q: %v", c.Listen, err)
		} else if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
			return nil, fmt.Errorf("-listen %q: the port must be between 0 and 65535", c.Listen)
		}
	}
	for _, u := range []struct{ flag, url string }{{"-advertise", c.Advertise}, {"-master", c.MasterURL}} {
		if u.url == "" {
			continue
		}
		if parsed, err := url.Parse(u.url); err != nil || (parsed.Scheme != "http" && parsed.Scheme != "https") || parsed.Host == "" {
			return nil, fmt.Errorf("%s must be a URL such as http://10.0.0.2:8081, not %q", u.flag, u.url)
		}
	}
	if slaves != "" {
		c.SlaveURLs = strings.Split(slaves, ",")
		if c.NumSlaves < len(c.SlaveURLs) {
			c.NumSlaves = len(c.SlaveURLs)
		}
	}
	if _, err := c.SlogLevel(); err != nil {
		return nil, err
	}
	if c.BackupDir != "" && (c.BackupInterval <= 0 || c.BackupKeep < 1) {
		return nil, fmt.Errorf("-backup-interval must be positive and -backup-keep at least 1")
	}
	if c.ChangesWebhook != "" {
		u, err := url.Parse(c.ChangesWebhook)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("-changes-webhook must be an http:// or https:// URL")
		}
	}
	switch changes {
	case "":
	case "off":
		c.ChangesKeep = -1
	default:
		n, err := strconv.ParseInt(changes, 10, 64)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("-changes-keep must be a number of log indexes (1 or more) or \"off\", not %q", changes)
		}
		c.ChangesKeep = n
	}
	if c.BackupURL != "" {
		if _, _, err := ParseBackupURL(c.BackupURL); err != nil {
			return nil, fmt.Errorf("-backup-url: %w", err)
		}
		if c.BackupInterval <= 0 || c.BackupKeep < 1 {
			return nil, fmt.Errorf("-backup-interval must be positive and -backup-keep at least 1")
		}
	}
	if c.BackupBy != "leader" && c.BackupBy != "this" {
		return nil, fmt.Errorf("-backup-by must be leader or this, not %q", c.BackupBy)
	}
	switch {
	case c.Restore != "" && IsBackupURL(c.Restore):
		if _, _, err := ParseBackupURL(c.Restore); err != nil {
			return nil, fmt.Errorf("-restore: %w", err)
		}
	case c.Restore != "":
		if _, err := os.Stat(c.Restore); err != nil {
			return nil, fmt.Errorf("-restore: %w", err)
		}
		if c.RestoreIndex != 0 {
			return nil, errors.New("-restore-index goes with a -restore URL (a backup in object storage), not a file")
		}
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		return nil, fmt.Errorf("-log-format must be text or json, not %q", c.LogFormat)
	}
	if c.CheckRepair != "auto" && c.CheckRepair != "off" {
		return nil, fmt.Errorf("-check-repair must be auto or off, not %q", c.CheckRepair)
	}
	if !ValidAck(c.Ack) {
		return nil, fmt.Errorf("-ack must be master, quorum or all, not %q", c.Ack)
	}
	c.InjectBug = faults.FromEnv()
	if c.CheckInterval == 0 {
		c.CheckInterval = -1 // -check-interval 0: never (Defaults fills a zero)
	}
	if c.CheckRate < 0 {
		return nil, fmt.Errorf("-check-rate must be 0 or more MB a second, not %d", c.CheckRate)
	}
	if c.CheckRate == 0 {
		c.CheckRate = -1 // -check-rate 0: as fast as it can (Defaults fills a zero)
	}
	c.Defaults()
	return c, nil
}

// RaftID is the Raft id of the node the command line calls id (0: the
// master, i: slave i): Raft reserves 0 for "no node". Every conversion from
// a command-line id goes through here.
func RaftID(id int) uint64 { return uint64(id) + 1 }

// CommandLineID is the command line's id of the node with Raft id id (0:
// the master, i: slave i), the inverse of RaftID: every id a user reads
// (logs, errors, /status) goes through here.
func CommandLineID(id uint64) int { return int(id) - 1 }
