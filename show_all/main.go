// Command show_all prints every replica's user tables from slave0.db ...
// slave<n-1>.db in the current directory (read-only, safe while the nodes
// run) and ends with a verdict: identical, or which tables and rows differ,
// side by side. Each table carries a checksum of its rows.
//
//	go run show_all/main.go <num_databases>     # num_databases = slaves + 1
//	go run show_all/main.go -json 3             # the same, as JSON
//	go run show_all/main.go -http http://host1:8080,http://host2:8081
//	                                            # ask live nodes, on any hosts
package main

import (
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/ddbgo/ddb/internal/inspect"
	"github.com/ddbgo/ddb/internal/rlog"
)

type source struct {
	name  string // file path or node URL
	role  string
	db    *inspect.Database
	err   error
	index uint64
}

func main() {
	dir := flag.String("dir", ".", "directory holding slave<i>.db")
	asJSON := flag.Bool("json", false, "print the databases, checksums and verdict as JSON")
	nodes := flag.String("http", "", "comma-separated URLs of live nodes to ask (a consistent copy of each, from GET /db/backup) instead of reading files; credentials may be in the URLs")
	summary := flag.Bool("summary", false, "print each database's log index, tables, rows and checksum, and the verdict, without the rows")
	limit := flag.Int("limit", 0, "print at most this many rows of each table (0: every row)")
	flag.Usage = func() {
		name := commandName()
		fmt.Fprintf(os.Stderr, "usage: %s [-dir DIR] [-json|-summary] [-limit N] <num_databases>   (num_databases = slaves + 1)\n", name)
		fmt.Fprintf(os.Stderr, "       %s [-json|-summary] [-limit N] -http URL,URL,...\n", name)
		flag.PrintDefaults()
	}
	flag.Parse()
	var srcs []*source
	switch {
	case *nodes != "" && flag.NArg() == 0:
		srcs = fromNodes(strings.Split(*nodes, ","))
	case *nodes == "" && flag.NArg() == 1:
		n, err := strconv.Atoi(flag.Arg(0))
		if err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "%q is not a number of databases (slaves + 1)\n", flag.Arg(0))
			os.Exit(2)
		}
		srcs = fromFiles(*dir, n)
	default:
		flag.Usage()
		os.Exit(2)
	}
	var dbs []*inspect.Database
	failed := false
	for _, s := range srcs {
		if s.err != nil {
			failed = true
		} else {
			dbs = append(dbs, s.db)
		}
	}
	diffs := inspect.Compare(dbs, 20)
	if *asJSON {
		os.Exit(printJSON(srcs, dbs, diffs, failed))
	}
	for _, s := range srcs {
		if s.err != nil {
			fmt.Printf("=== %s (%s): %v\n\n", s.name, s.role, s.err)
			continue
		}
		if *summary {
			fmt.Printf("=== %s (%s), log index %d: %d tables, %d rows, checksum %s\n", s.name, s.role, s.db.Applied, len(s.db.Tables), s.db.RowCount(), s.db.Checksum()[:16])
			continue
		}
		fmt.Printf("=== %s (%s), log index %d\n", s.name, s.role, s.db.Applied)
		if len(s.db.Tables) == 0 {
			fmt.Println("(no tables)")
		}
		for _, t := range s.db.Tables {
			printTable(t, *limit)
		}
		fmt.Println()
	}
	switch {
	case failed:
		fmt.Println("VERDICT: some databases could not be read (see above)")
		os.Exit(1)
	case len(diffs) == 0:
		rows := 0
		if len(dbs) > 0 {
			rows = dbs[0].RowCount()
		}
		fmt.Printf("VERDICT: all %d databases are identical (%d tables, %d rows)\n", len(dbs), len(dbs[0].Tables), rows)
	default:
		fmt.Println("VERDICT: the databases differ:")
		for _, d := range diffs {
			fmt.Println("  " + d)
		}
		for _, d := range dbs[1:] {
			rows, more := inspect.RowDiffs(dbs[0], d, 10)
			for _, r := range rows {
				printSideBySide(os.Stdout, r)
			}
			if more > 0 {
				fmt.Printf("(%d more differing rows between %s and %s)\n", more, dbs[0].Path, d.Path)
			}
		}
		if indexesDiffer(dbs) {
			fmt.Println("Note: the databases are at different log indexes; writes still replicating differ too.")
		}
		os.Exit(1)
	}
}

func fromFiles(dir string, n int) []*source {
	var out []*source
	for i := 0; i < n; i++ {
		s := &source{name: filepath.Join(dir, fmt.Sprintf("slave%d.db", i)), role: "master"}
		if i > 0 {
			s.role = fmt.Sprintf("slave %d", i)
		}
		if _, err := os.Stat(s.name); err != nil {
			s.err = fmt.Errorf("not found")
		} else {
			s.db, s.err = inspect.Load(s.name)
		}
		out = append(out, s)
	}
	return out
}

// fromNodes asks each node for a consistent copy of its database (GET
// /db/backup, taken without stopping writes) and reads it. It first waits
// (up to 5 s) for the nodes to report the same applied index, so that
// replication in flight is not taken for a difference.
func fromNodes(urls []string) []*source {
	client := &http.Client{Timeout: 2 * time.Minute}
	for i := range urls {
		urls[i] = strings.TrimRight(strings.TrimSpace(urls[i]), "/")
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		seen := map[uint64]bool{}
		for _, u := range urls {
			seen[appliedOf(client, u)] = true
		}
		if len(seen) == 1 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	tmp, err := os.MkdirTemp("", "show_all-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer os.RemoveAll(tmp)
	var out []*source
	for i, u := range urls {
		s := &source{name: redact(u), role: "node"}
		path := filepath.Join(tmp, fmt.Sprintf("node%d.db", i))
		if s.err = fetch(client, u+"/db/backup", path); s.err == nil {
			s.db, s.err = inspect.Load(path)
			if s.err == nil {
				s.db.Path = s.name
			}
		}
		out = append(out, s)
	}
	return out
}

func appliedOf(c *http.Client, base string) uint64 {
	resp, err := c.Get(base + "/status")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	var st struct {
		Applied uint64 `json:"applied_index"`
	}
	json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&st)
	return st.Applied
}

func fetch(c *http.Client, url, path string) error {
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// redact hides a URL's password.
func redact(u string) string {
	if p, err := url.Parse(u); err == nil {
		return p.Redacted()
	}
	return u
}

func indexesDiffer(dbs []*inspect.Database) bool {
	for _, d := range dbs[1:] {
		if d.Applied != dbs[0].Applied {
			return true
		}
	}
	return false
}

func printJSON(srcs []*source, dbs []*inspect.Database, diffs []string, failed bool) int {
	type table struct {
		Name     string   `json:"name"`
		Columns  []string `json:"columns"`
		Rows     [][]any  `json:"rows"`
		Checksum string   `json:"checksum"`
	}
	type database struct {
		Source   string  `json:"source"`
		Role     string  `json:"role"`
		Error    string  `json:"error,omitempty"`
		Applied  uint64  `json:"applied_index"`
		Checksum string  `json:"checksum,omitempty"`
		Tables   []table `json:"tables"`
	}
	type rowDiff struct {
		Table   string   `json:"table"`
		Key     string   `json:"key"`
		Columns []string `json:"columns"`
		A       string   `json:"a_source"`
		AValues []any    `json:"a"`
		B       string   `json:"b_source"`
		BValues []any    `json:"b"`
	}
	out := struct {
		Databases   []database `json:"databases"`
		Identical   bool       `json:"identical"`
		Differences []string   `json:"differences"`
		Rows        []rowDiff  `json:"differing_rows,omitempty"`
	}{Identical: !failed && len(diffs) == 0, Differences: diffs}
	if out.Differences == nil {
		out.Differences = []string{}
	}
	for _, s := range srcs {
		d := database{Source: s.name, Role: s.role, Tables: []table{}}
		if s.err != nil {
			d.Error = s.err.Error()
		} else {
			d.Applied, d.Checksum = s.db.Applied, s.db.Checksum()
			for _, t := range s.db.Tables {
				d.Tables = append(d.Tables, table{Name: t.Name, Columns: t.Columns, Rows: jsonRows(t.Rows), Checksum: t.Checksum()})
			}
		}
		out.Databases = append(out.Databases, d)
	}
	if len(diffs) > 0 {
		for _, d := range dbs[1:] {
			rows, _ := inspect.RowDiffs(dbs[0], d, 10)
			for _, r := range rows {
				out.Rows = append(out.Rows, rowDiff{Table: r.Table, Key: r.Key, Columns: r.Columns, A: r.PathA, AValues: jsonRow(r.A), B: r.PathB, BValues: jsonRow(r.B)})
			}
		}
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	enc.Encode(out)
	if out.Identical {
		return 0
	}
	return 1
}

// jsonRows gives values in their exact types: integers as numbers, reals
// as {"r": x}, text as strings, BLOBs as {"b": base64}, NULL as null.
func jsonRows(rows [][]any) [][]any {
	out := make([][]any, len(rows))
	for i, r := range rows {
		out[i] = jsonRow(r)
	}
	return out
}

func jsonRow(row []any) []any {
	if row == nil {
		return nil
	}
	out := make([]any, len(row))
	for i, v := range row {
		b, _ := rlog.EncodeValue(v)
		out[i] = json.RawMessage(b)
	}
	return out
}

func show(v any) string {
	switch x := v.(type) {
	case nil:
		return "NULL"
	case []byte:
		if len(x) > 16 {
			return "x'" + hex.EncodeToString(x[:16]) + "...'"
		}
		return "x'" + hex.EncodeToString(x) + "'"
	case string:
		for _, r := range x {
			if !unicode.IsPrint(r) && r != ' ' {
				return strconv.Quote(x) // a NUL, a control character: shown, not swallowed
			}
		}
		return x
	default:
		return fmt.Sprint(x)
	}
}

// sqliteType names a value's SQLite storage class.
func sqliteType(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case int64:
		return "integer"
	case float64:
		return "real"
	case string:
		return "text"
	default:
		return "blob"
	}
}

// printSideBySide shows one differing row: a column a line, each
// database's value beside the other's.
func printSideBySide(w io.Writer, r inspect.RowDiff) {
	fmt.Fprintf(w, "\ntable %s, row %s:\n", r.Table, r.Key)
	cols := append([]string{""}, r.Columns...)
	left := []string{r.PathA}
	right := []string{r.PathB}
	differ := []bool{false}
	for i := range r.Columns {
		l, rt := cell(r.A, i), cell(r.B, i)
		d := r.A == nil || r.B == nil || !inspect.SameValue(r.A[i], r.B[i])
		if d && l == rt && r.A != nil && r.B != nil {
			// Values that print alike but are not alike (1 and '1', 1
			// and 1.0): their types tell them apart.
			l += " (" + sqliteType(r.A[i]) + ")"
			rt += " (" + sqliteType(r.B[i]) + ")"
		}
		left, right, differ = append(left, l), append(right, rt), append(differ, d)
	}
	w0, w1 := 0, 0
	for i := range cols {
		w0 = max(w0, utf8.RuneCountInString(cols[i]))
		w1 = max(w1, utf8.RuneCountInString(left[i]))
	}
	for i := range cols {
		mark := " "
		if differ[i] {
			mark = "≠"
		}
		fmt.Fprintln(w, strings.TrimRight(fmt.Sprintf("  %s %s | %s %s", pad(cols[i], w0), pad(left[i], w1), right[i], mark), " "))
	}
}

func cell(row []any, i int) string {
	if row == nil {
		return "(missing)"
	}
	s := show(row[i])
	if utf8.RuneCountInString(s) > 40 {
		s = string([]rune(s)[:37]) + "..."
	}
	return s
}

func pad(s string, w int) string { return s + strings.Repeat(" ", w-utf8.RuneCountInString(s)) }

// commandName is how the user ran this program, for the usage line.
func commandName() string {
	if strings.Contains(os.Args[0], "go-build") {
		return "go run show_all/main.go"
	}
	return filepath.Base(os.Args[0])
}

func printTable(t *inspect.Table, limit int) {
	fmt.Printf("--- %s (%d rows, checksum %s)\n", t.Name, len(t.Rows), t.Checksum()[:16])
	rows := t.Rows
	if limit > 0 && len(rows) > limit {
		rows = rows[:limit]
	}
	width := make([]int, len(t.Columns))
	cells := make([][]string, len(rows))
	for i, c := range t.Columns {
		width[i] = utf8.RuneCountInString(c)
	}
	for r, row := range rows {
		cells[r] = make([]string, len(row))
		for i, v := range row {
			s := show(v)
			if utf8.RuneCountInString(s) > 60 {
				s = string([]rune(s)[:57]) + "..."
			}
			cells[r][i] = s
			if w := utf8.RuneCountInString(s); w > width[i] {
				width[i] = w
			}
		}
	}
	line := func(vals []string) {
		parts := make([]string, len(vals))
		for i, v := range vals {
			parts[i] = v + strings.Repeat(" ", width[i]-utf8.RuneCountInString(v))
		}
		fmt.Println(strings.TrimRight(strings.Join(parts, " | "), " "))
	}
	line(t.Columns)
	seps := make([]string, len(width))
	for i, w := range width {
		seps[i] = strings.Repeat("-", w)
	}
	fmt.Println(strings.Join(seps, "-+-"))
	for _, c := range cells {
		line(c)
	}
	if len(rows) < len(t.Rows) {
		fmt.Printf("(%d more rows: -limit 0 prints them all)\n", len(t.Rows)-len(rows))
	}
}
