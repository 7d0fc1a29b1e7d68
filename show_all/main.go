// Command show_all prints every replica's user tables from slave0.db ...
// slave<n-1>.db in the current directory (read-only, safe while the nodes
// run) and ends with a verdict: identical, or which tables and rows differ.
//
//	go run show_all/main.go <num_databases>     # num_databases = slaves + 1
package main

import (
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/ddbgo/ddb/internal/inspect"
)

func main() {
	dir := flag.String("dir", ".", "directory holding slave<i>.db")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: go run show_all/main.go [-dir DIR] <num_databases>   (num_databases = slaves + 1)")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	n, err := strconv.Atoi(flag.Arg(0))
	if err != nil || n < 1 {
		fmt.Fprintf(os.Stderr, "%q is not a number of databases (slaves + 1)\n", flag.Arg(0))
		os.Exit(2)
	}
	var dbs []*inspect.Database
	failed := false
	for i := 0; i < n; i++ {
		path := filepath.Join(*dir, fmt.Sprintf("slave%d.db", i))
		role := "master"
		if i > 0 {
			role = fmt.Sprintf("slave %d", i)
		}
		if _, err := os.Stat(path); err != nil {
			fmt.Printf("=== %s (%s): not found\n\n", path, role)
			failed = true
			continue
		}
		d, err := inspect.Load(path)
		if err != nil {
			fmt.Printf("=== %s (%s): %v\n\n", path, role, err)
			failed = true
			continue
		}
		fmt.Printf("=== %s (%s), log index %d\n", path, role, d.Applied)
		if len(d.Tables) == 0 {
			fmt.Println("(no tables)")
		}
		for _, t := range d.Tables {
			printTable(t)
		}
		fmt.Println()
		dbs = append(dbs, d)
	}
	diffs := inspect.Compare(dbs, 20)
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
		os.Exit(1)
	}
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
		return strings.ReplaceAll(x, "\n", "\\n")
	default:
		return fmt.Sprint(x)
	}
}

func printTable(t *inspect.Table) {
	fmt.Printf("--- %s (%d rows)\n", t.Name, len(t.Rows))
	width := make([]int, len(t.Columns))
	cells := make([][]string, len(t.Rows))
	for i, c := range t.Columns {
		width[i] = utf8.RuneCountInString(c)
	}
	for r, row := range t.Rows {
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
}
