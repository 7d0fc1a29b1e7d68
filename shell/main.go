// Command shell is a SQL shell for people at a terminal, like sqlite3's or
// rqlite's: line editing and history (kept in ~/.ddb_history), results as
// aligned tables, and dot commands. It talks to several nodes and fails
// over between them (package client).
//
//	go run ./shell                                   # localhost:8080-8082
//	go run ./shell -nodes http://db1:8080,http://db2:8081 -u admin:secret -ca ca.pem
//	echo 'SELECT 1;' | go run ./shell                # piped: no prompt, exit 1 on an error
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unicode/utf8"

	"golang.org/x/term"

	"github.com/ddbgo/ddb/client"
)

const help = `.tables              list the tables
.schema [TABLE]      show CREATE statements
.nodes               the nodes, their roles and reachability
.status              this cluster's leader, term and indexes
.backup FILE         save a consistent copy of the database to FILE
.restore FILE        replace the whole database with FILE (a SQLite file or SQL dump), on every node
.timer on|off        show how long each statement takes
.help                this text
.quit                leave (also .exit, or Ctrl-D)
Anything else is SQL: a statement runs once a line ends it with ; (it may span
lines; a trigger's ends with END;). A dot command, or the end of the input,
also runs a statement left without its ;.`

type shell struct {
	c     *client.Client
	hc    *http.Client
	nodes []string
	user  string
	pass  string
	out   io.Writer
	timer bool
	// meter shows a progress line for long transfers (at a terminal; nil
	// in piped mode, whose output stays the results alone).
	meter func(what string, total int64) *meter
}

func main() {
	nodes := flag.String("nodes", "http://localhost:8080,http://localhost:8081,http://localhost:8082", "comma-separated node URLs; the shell fails over between them")
	creds := flag.String("u", "", "credentials user:password (a users file is in force)")
	caFile := flag.String("ca", "", "CA certificate to verify https nodes with")
	insecure := flag.Bool("insecure", false, "do not verify https nodes' certificates")
	strong := flag.Bool("strong", false, "strong reads: each query sees every write acknowledged before it")
	flag.Usage = func() {
		fmt.Fprint(flag.CommandLine.Output(), `usage: shell [flags]

A SQL shell for the cluster. At a terminal it has a prompt, line editing and
history (~/.ddb_history); with input from a pipe or a file it runs the input
without a prompt and exits 1 if any statement or command failed:

  echo 'SELECT 1;' | shell -nodes http://db1:8080

Commands:
`+help+`

Flags:
`)
		flag.PrintDefaults()
	}
	flag.Parse()

	tlsConfig := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: *insecure}
	if *caFile != "" {
		pem, err := os.ReadFile(*caFile)
		if err != nil {
			fatal(err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			fatal(fmt.Errorf("%s holds no PEM certificate", *caFile))
		}
		tlsConfig.RootCAs = pool
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = tlsConfig
	s := &shell{hc: &http.Client{Transport: tr, Timeout: 5 * time.Minute}, out: os.Stdout}
	opts := []client.Option{client.WithHTTPClient(s.hc)}
	if *creds != "" {
		u, p, ok := strings.Cut(*creds, ":")
		if !ok {
			fatal(errors.New("-u takes user:password"))
		}
		s.user, s.pass = u, p
		opts = append(opts, client.WithBasicAuth(u, p))
	}
	c, err := client.New(strings.Split(*nodes, ","), opts...)
	if err != nil {
		fatal(err)
	}
	if *strong {
		c = c.With(client.Strong())
	}
	s.c, s.nodes = c, c.Endpoints()

	if term.IsTerminal(int(os.Stdin.Fd())) {
		os.Exit(s.interactive())
	}
	os.Exit(s.piped(os.Stdin))
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "shell:", err)
	os.Exit(2)
}

// interactive reads lines with editing and history from the terminal.
func (s *shell) interactive() int {
	old, err := term.MakeRaw(int(os.Stdin.Fd()))
	if err != nil {
		fatal(err)
	}
	defer term.Restore(int(os.Stdin.Fd()), old)
	t := term.NewTerminal(struct {
		io.Reader
		io.Writer
	}{os.Stdin, os.Stdout}, "ddb> ")
	t.History = loadHistory()
	if w, h, err := term.GetSize(int(os.Stdin.Fd())); err == nil {
		t.SetSize(w, h)
	}
	s.out = crlf{t}
	s.meter = func(what string, total int64) *meter { return newMeter(s.out, what, total) }
	fmt.Fprintf(s.out, "Connected to %s. .help lists the commands.\n", strings.Join(s.nodes, ", "))
	var pending statements
	for {
		line, err := t.ReadLine()
		if err != nil { // Ctrl-D
			for _, stmt := range pending.flush() {
				s.run(stmt)
			}
			return 0
		}
		for _, cmd := range pending.add(line) {
			if quit := s.run(cmd); quit {
				return 0
			}
		}
		if pending.open() {
			t.SetPrompt("   ...> ")
		} else {
			t.SetPrompt("ddb> ")
		}
	}
}

// piped reads commands from a pipe or file: no prompt, and the exit
// status says whether every command succeeded.
func (s *shell) piped(in io.Reader) int {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	failed := false
	var pending statements
	quit := false
	for !quit && sc.Scan() {
		for _, cmd := range pending.add(sc.Text()) {
			if quit = s.runChecked(cmd, &failed); quit {
				break
			}
		}
	}
	if !quit {
		for _, stmt := range pending.flush() {
			s.runChecked(stmt, &failed)
		}
	}
	if failed {
		return 1
	}
	return 0
}

func (s *shell) runChecked(line string, failed *bool) bool {
	quit, err := s.exec(line)
	if err != nil {
		fmt.Fprintln(s.out, "Error:", err)
		*failed = true
	}
	return quit
}

func (s *shell) run(line string) bool {
	quit, err := s.exec(line)
	if err != nil {
		fmt.Fprintln(s.out, "Error:", err)
	}
	return quit
}

// exec runs one line: a dot command or a statement.
func (s *shell) exec(line string) (quit bool, err error) {
	line = strings.TrimSpace(line)
	if strings.TrimSpace(stripComments(line)) == "" {
		return false, nil
	}
	ctx := context.Background()
	if strings.HasPrefix(line, ".") {
		cmd, arg, _ := strings.Cut(line, " ")
		arg = strings.TrimSpace(arg)
		switch strings.ToLower(cmd) {
		case ".quit", ".exit":
			return true, nil
		case ".help":
			fmt.Fprintln(s.out, help)
		case ".tables":
			return false, s.query(ctx, `SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE '\_ddb\_%' ESCAPE '\' AND name NOT LIKE 'sqlite\_%' ESCAPE '\' ORDER BY name`)
		case ".schema":
			q := `SELECT sql FROM sqlite_schema WHERE sql IS NOT NULL AND name NOT LIKE '\_ddb\_%' ESCAPE '\' AND name NOT LIKE 'sqlite\_%' ESCAPE '\'`
			if arg != "" {
				rows, err := s.c.Query(ctx, q+" AND tbl_name = ? ORDER BY rowid", arg)
				if err != nil {
					return false, err
				}
				if len(rows.Values) == 0 {
					return false, fmt.Errorf("no such table: %s (.tables lists them)", arg)
				}
				printTable(s.out, rows)
				return false, nil
			}
			return false, s.query(ctx, q+" ORDER BY rowid")
		case ".timer":
			switch arg {
			case "on":
				s.timer = true
			case "off":
				s.timer = false
			default:
				return false, errors.New(".timer on|off")
			}
		case ".nodes":
			return false, s.nodesCmd()
		case ".status":
			return false, s.statusCmd()
		case ".backup":
			if arg == "" {
				return false, errors.New(".backup FILE")
			}
			return false, s.backup(arg)
		case ".restore":
			if arg == "" {
				return false, errors.New(".restore FILE")
			}
			return false, s.restore(arg)
		default:
			return false, fmt.Errorf("unknown command %s (.help lists them)", cmd)
		}
		return false, nil
	}
	stmt := strings.TrimSuffix(line, ";")
	if isRead(stripComments(stmt)) {
		return false, s.query(ctx, stmt)
	}
	start := time.Now()
	r, err := s.c.Exec(ctx, stmt)
	if err != nil {
		return false, err
	}
	fmt.Fprintf(s.out, "%d row(s) affected (log index %d)\n", r.RowsAffected, r.Index)
	s.showTime(start)
	return false, nil
}

// isRead: the statement returns rows (a query, or a write with RETURNING).
func isRead(sql string) bool {
	f := strings.Fields(strings.ToUpper(sql))
	if len(f) == 0 {
		return false
	}
	switch f[0] {
	case "SELECT", "WITH", "VALUES", "EXPLAIN", "PRAGMA":
		return true
	}
	for _, w := range f {
		if w == "RETURNING" {
			return true
		}
	}
	return false
}

func (s *shell) query(ctx context.Context, sql string, args ...any) error {
	start := time.Now()
	rows, err := s.c.Query(ctx, sql, args...)
	if err != nil {
		return err
	}
	printTable(s.out, rows)
	s.showTime(start)
	return nil
}

func (s *shell) showTime(start time.Time) {
	if s.timer {
		fmt.Fprintf(s.out, "Run time: %v\n", time.Since(start).Round(time.Microsecond))
	}
}

// printTable writes rows as an aligned table.
func printTable(w io.Writer, rows *client.Rows) {
	cells := make([][]string, 0, len(rows.Values)+1)
	cells = append(cells, rows.Columns)
	for _, r := range rows.Values {
		line := make([]string, len(r))
		for i, v := range r {
			line[i] = show(v)
		}
		cells = append(cells, line)
	}
	width := make([]int, len(rows.Columns))
	for _, line := range cells {
		for i, c := range line {
			width[i] = max(width[i], utf8.RuneCountInString(c))
		}
	}
	sep := "+"
	for _, wd := range width {
		sep += strings.Repeat("-", wd+2) + "+"
	}
	fmt.Fprintln(w, sep)
	for i, line := range cells {
		var b strings.Builder
		b.WriteString("|")
		for j, c := range line {
			b.WriteString(" " + c + strings.Repeat(" ", width[j]-utf8.RuneCountInString(c)) + " |")
		}
		fmt.Fprintln(w, b.String())
		if i == 0 {
			fmt.Fprintln(w, sep)
		}
	}
	fmt.Fprintln(w, sep)
	fmt.Fprintf(w, "%d row(s)\n", len(rows.Values))
}

func show(v any) string {
	switch x := v.(type) {
	case nil:
		return "NULL"
	case []byte:
		return fmt.Sprintf("x'%X'", x)
	case float64:
		s := fmt.Sprint(x)
		if !strings.ContainsAny(s, ".eEI") {
			s += ".0"
		}
		return s
	case string:
		return strings.ReplaceAll(x, "\n", `\n`)
	}
	return fmt.Sprint(v)
}

// do sends an HTTP request to the first node that answers.
func (s *shell) do(method, path string, body []byte, contentType string) (*http.Response, error) {
	return s.doCounted(method, path, body, contentType, nil)
}

// doCounted is do, with the body's upload counted into m (nil: not).
func (s *shell) doCounted(method, path string, body []byte, contentType string, m *meter) (*http.Response, error) {
	var last error
	for _, n := range s.nodes {
		var rd io.Reader
		if body != nil {
			rd = m.reader(bytes.NewReader(body))
		}
		req, err := http.NewRequest(method, n+path, rd)
		if err != nil {
			return nil, err
		}
		if contentType != "" {
			req.Header.Set("Content-Type", contentType)
		}
		if s.user != "" {
			req.SetBasicAuth(s.user, s.pass)
		}
		resp, err := s.hc.Do(req)
		if err != nil {
			last = err
			continue
		}
		if resp.StatusCode == http.StatusServiceUnavailable {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			last = fmt.Errorf("%s: %s", n, strings.TrimSpace(string(b)))
			continue
		}
		return resp, nil
	}
	return nil, fmt.Errorf("no node answered: %v", last)
}

func answerError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var e struct{ Error string }
	if json.Unmarshal(b, &e) == nil && e.Error != "" {
		return fmt.Errorf("%s (HTTP %d)", e.Error, resp.StatusCode)
	}
	return fmt.Errorf("HTTP %d: %s", resp.StatusCode, strings.TrimSpace(string(b)))
}

func (s *shell) nodesCmd() error {
	resp, err := s.do(http.MethodGet, "/nodes?nonvoters&ver=2", nil, "")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return answerError(resp)
	}
	var out struct {
		Nodes []struct {
			ID        string `json:"id"`
			APIAddr   string `json:"api_addr"`
			Voter     bool   `json:"voter"`
			Reachable bool   `json:"reachable"`
			Leader    bool   `json:"leader"`
			Error     string `json:"error"`
		} `json:"nodes"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return err
	}
	rows := &client.Rows{Columns: []string{"id", "url", "leader", "voter", "reachable"}}
	for _, n := range out.Nodes {
		reach := "yes"
		if !n.Reachable {
			reach = "no: " + n.Error
		}
		rows.Values = append(rows.Values, []any{n.ID, n.APIAddr, yes(n.Leader), yes(n.Voter), reach})
	}
	printTable(s.out, rows)
	return nil
}

func yes(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func (s *shell) statusCmd() error {
	resp, err := s.do(http.MethodGet, "/status", nil, "")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return answerError(resp)
	}
	var st struct {
		ID   int    `json:"id"`
		URL  string `json:"url"`
		Role string `json:"role"`
		Raft struct {
			LeaderID  *int   `json:"leader_id"`
			LeaderURL string `json:"leader_url"`
			Term      uint64 `json:"term"`
			Commit    uint64 `json:"commit_index"`
			Applied   uint64 `json:"applied_index"`
		} `json:"raft"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return err
	}
	leader := "none known"
	if st.Raft.LeaderID != nil {
		leader = fmt.Sprintf("node %d (%s)", *st.Raft.LeaderID, st.Raft.LeaderURL)
	}
	fmt.Fprintf(s.out, "node %d (%s): %s\nleader: %s\nterm %d, commit index %d, applied index %d\n",
		st.ID, st.URL, st.Role, leader, st.Raft.Term, st.Raft.Commit, st.Raft.Applied)
	return nil
}

func (s *shell) backup(file string) error {
	resp, err := s.do(http.MethodGet, "/db/backup", nil, "")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return answerError(resp)
	}
	tmp := file + ".part"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	m := s.startMeter("backing up", resp.ContentLength)
	n, err := io.Copy(f, m.reader(resp.Body))
	m.done()
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, file)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	fmt.Fprintf(s.out, "backed up %d bytes at log index %s to %s\n", n, resp.Header.Get("X-Ddb-Index"), file)
	return nil
}

func (s *shell) restore(file string) error {
	b, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	m := s.startMeter("uploading "+file, int64(len(b)))
	resp, err := s.doCounted(http.MethodPost, "/db/load", b, "application/octet-stream", m)
	m.done()
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return answerError(resp)
	}
	fmt.Fprintf(s.out, "restored %s on every node (log index %s)\n", file, resp.Header.Get("X-Ddb-Index"))
	return nil
}

// crlf turns \n into \r\n for a terminal in raw mode.
type crlf struct{ w io.Writer }

func (c crlf) Write(p []byte) (int, error) {
	if _, err := c.w.Write(bytes.ReplaceAll(p, []byte("\n"), []byte("\r\n"))); err != nil {
		return 0, err
	}
	return len(p), nil
}

// fileHistory is the terminal's history, kept in ~/.ddb_history (the last
// 1000 lines).
type fileHistory struct {
	lines []string // oldest first
	path  string
}

func loadHistory() *fileHistory {
	h := &fileHistory{}
	home, err := os.UserHomeDir()
	if err != nil {
		return h
	}
	h.path = filepath.Join(home, ".ddb_history")
	if b, err := os.ReadFile(h.path); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if l != "" {
				h.lines = append(h.lines, l)
			}
		}
	}
	return h
}

func (h *fileHistory) Add(entry string) {
	if entry == "" || (len(h.lines) > 0 && h.lines[len(h.lines)-1] == entry) {
		return
	}
	h.lines = append(h.lines, entry)
	if len(h.lines) > 1000 {
		h.lines = h.lines[len(h.lines)-1000:]
	}
	if h.path != "" {
		os.WriteFile(h.path, []byte(strings.Join(h.lines, "\n")+"\n"), 0o600)
	}
}

func (h *fileHistory) Len() int { return len(h.lines) }

func (h *fileHistory) At(i int) string { return h.lines[len(h.lines)-1-i] }

// startMeter starts a progress line (nil when the shell is not at a
// terminal).
func (s *shell) startMeter(what string, total int64) *meter {
	if s.meter == nil {
		return nil
	}
	return s.meter(what, total)
}

// meter draws one progress line of a transfer, rewritten in place at
// most every quarter second: bytes so far, of how many, and the share.
type meter struct {
	w     io.Writer
	what  string
	total int64 // 0 or less: not known
	n     int64
	drawn time.Time
}

func newMeter(w io.Writer, what string, total int64) *meter {
	return &meter{w: w, what: what, total: total}
}

func (m *meter) reader(r io.Reader) io.Reader {
	if m == nil {
		return r
	}
	return meterReader{r: r, m: m}
}

type meterReader struct {
	r io.Reader
	m *meter
}

func (r meterReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	r.m.n += int64(n)
	if time.Since(r.m.drawn) >= 250*time.Millisecond {
		r.m.draw()
	}
	return n, err
}

func (m *meter) draw() {
	m.drawn = time.Now()
	line := fmt.Sprintf("%s: %s", m.what, megabytes(m.n))
	if m.total > 0 {
		line += fmt.Sprintf(" of %s (%d%%)", megabytes(m.total), 100*m.n/m.total)
	}
	fmt.Fprint(m.w, "\r"+line+"\x1b[K")
}

// done draws the line once more, finished, and ends it.
func (m *meter) done() {
	if m == nil {
		return
	}
	m.draw()
	fmt.Fprint(m.w, "\r\n")
}

func megabytes(n int64) string { return fmt.Sprintf("%.1f MB", float64(n)/(1<<20)) }
