package main

import (
	"strings"
	"unicode"
)

// statements gathers input lines into whole commands: a dot command is a
// line of its own (at the start of a statement), and SQL runs once a line
// ends a statement with ; outside quotes and comments (a trigger's body
// holds ;s: it ends with END;). A dot command, or the end of the input,
// also ends a statement left without its ;.
type statements struct {
	buf strings.Builder
}

// add takes one line and returns the commands it completes, in order.
func (s *statements) add(line string) []string {
	if !s.open() {
		if t := strings.TrimSpace(line); strings.HasPrefix(t, ".") {
			return []string{t}
		}
	} else if t := strings.TrimSpace(line); strings.HasPrefix(t, ".") {
		return append(s.flush(), t)
	}
	if s.buf.Len() > 0 {
		s.buf.WriteByte('\n')
	}
	s.buf.WriteString(line)
	done, rest := splitStatements(s.buf.String())
	s.buf.Reset()
	s.buf.WriteString(rest)
	return done
}

// open says whether a statement is under way (lines without its end).
func (s *statements) open() bool { return strings.TrimSpace(stripComments(s.buf.String())) != "" }

// flush returns the statement under way, if any, as it is.
func (s *statements) flush() []string {
	text := strings.TrimSpace(s.buf.String())
	s.buf.Reset()
	if strings.TrimSpace(stripComments(text)) == "" {
		return nil
	}
	return []string{text}
}

// splitStatements cuts text at each ; that ends a statement, and returns
// the whole statements (without their ;) and what is left.
func splitStatements(text string) (done []string, rest string) {
	start := 0
	for i := 0; i < len(text); i++ {
		switch c := text[i]; c {
		case '\'', '"', '`':
			j := strings.IndexByte(text[i+1:], c)
			if j < 0 {
				return done, text[start:] // an open quote: more lines to come
			}
			i += j + 1
		case '[':
			j := strings.IndexByte(text[i+1:], ']')
			if j < 0 {
				return done, text[start:]
			}
			i += j + 1
		case '-':
			if i+1 < len(text) && text[i+1] == '-' {
				j := strings.IndexByte(text[i:], '\n')
				if j < 0 {
					i = len(text)
				} else {
					i += j
				}
			}
		case '/':
			if i+1 < len(text) && text[i+1] == '*' {
				j := strings.Index(text[i+2:], "*/")
				if j < 0 {
					return done, text[start:]
				}
				i += j + 3
			}
		case ';':
			stmt := text[start:i]
			if isTrigger(stmt) && !endsTrigger(stmt) {
				continue // a ; inside the trigger's body
			}
			if t := strings.TrimSpace(stmt); strings.TrimSpace(stripComments(t)) != "" {
				done = append(done, t)
			}
			start = i + 1
		}
	}
	return done, strings.TrimLeft(text[start:], " \t\r\n")
}

// words are the first n words of sql, upper-cased, comments aside.
func words(sql string, n int) []string {
	f := strings.Fields(strings.ToUpper(stripComments(sql)))
	return f[:min(n, len(f))]
}

// isTrigger says whether sql creates a trigger.
func isTrigger(sql string) bool {
	w := words(sql, 3)
	if len(w) < 2 || w[0] != "CREATE" {
		return false
	}
	if w[1] == "TEMP" || w[1] == "TEMPORARY" {
		return len(w) > 2 && w[2] == "TRIGGER"
	}
	return w[1] == "TRIGGER"
}

// endsWithEnd says whether sql's last word is END.
// endsTrigger says whether sql, a trigger up to a ;, ends its body: its
// last word is END, and the END begins a statement of its own (it follows
// a ;), as SQLite's own test (sqlite3_complete) has it; the END of a CASE
// inside the body does not end it.
func endsTrigger(sql string) bool {
	t := strings.TrimRightFunc(stripComments(sql), unicode.IsSpace)
	if len(t) < 3 || !strings.EqualFold(t[len(t)-3:], "END") || len(t) > 3 && isWordByte(t[len(t)-4]) {
		return false
	}
	return strings.HasSuffix(strings.TrimRightFunc(t[:len(t)-3], unicode.IsSpace), ";")
}

func isWordByte(b byte) bool {
	return b == '_' || b >= '0' && b <= '9' || b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= 0x80
}

// stripComments removes -- and /* */ comments outside quotes.
func stripComments(text string) string {
	var b strings.Builder
	for i := 0; i < len(text); i++ {
		c := text[i]
		switch {
		case c == '\'' || c == '"' || c == '`':
			j := strings.IndexByte(text[i+1:], c)
			if j < 0 {
				b.WriteString(text[i:])
				return b.String()
			}
			b.WriteString(text[i : i+j+2])
			i += j + 1
		case c == '-' && i+1 < len(text) && text[i+1] == '-':
			j := strings.IndexByte(text[i:], '\n')
			if j < 0 {
				return b.String()
			}
			i += j - 1
		case c == '/' && i+1 < len(text) && text[i+1] == '*':
			j := strings.Index(text[i+2:], "*/")
			if j < 0 {
				return b.String()
			}
			b.WriteByte(' ')
			i += j + 3
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}
