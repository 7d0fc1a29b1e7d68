package api

import (
	"encoding/json"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/ddbgo/ddb/internal/cluster"

	"github.com/ddbgo/ddb/internal/rlog"
)

// decodeFast decodes, in one pass and without reflection, the shape
// nearly every request has: one flat JSON object of known fields with
// plain values — "command", "query", "params" (an array or object of
// scalars), "ack", "consistency", "format", "min_index", "is_master",
// "is_replicated". It returns nil for anything else: "queries", unknown
// or repeated fields, strings with escapes, nested parameters, invalid or
// unusual JSON, values that fail validation. The full decoder then
// decides, so every error and every rare shape has one implementation,
// and a fuzz test holds the two decoders to the same answers.
func decodeFast(body []byte, defaultAck cluster.Ack) *Request {
	s := scanner{b: body}
	s.ws()
	if !s.eat('{') {
		return nil
	}
	r := &Request{Ack: defaultAck, Consistency: ConsistencyLocal, Format: FormatObjects}
	var seen uint16
	var query string
	var hasQuery bool
	var st rlog.Statement
	s.ws()
	if !s.eat('}') {
		for {
			s.ws()
			key, ok := s.str()
			if !ok {
				return nil
			}
			s.ws()
			if !s.eat(':') {
				return nil
			}
			s.ws()
			bit, ok := fastFields[key]
			if !ok || seen&bit != 0 {
				return nil
			}
			seen |= bit
			if s.null() {
				if bit == fieldCommand {
					return nil
				}
			} else {
				switch bit {
				case fieldCommand, fieldQuery, fieldAck, fieldConsistency, fieldFormat, fieldRequestID:
					v, ok := s.str()
					if !ok {
						return nil
					}
					var err error
					switch bit {
					case fieldCommand:
						err = r.setCommand(v)
					case fieldQuery:
						query, hasQuery = v, true
					case fieldAck:
						err = r.setAck(v)
					case fieldConsistency:
						err = r.setConsistency(v)
					case fieldFormat:
						err = r.setFormat(v)
					case fieldRequestID:
						err = r.setRequestID(v)
					}
					if err != nil {
						return nil
					}
				case fieldIsMaster, fieldIsReplicated:
					v, ok := s.boolean()
					if !ok {
						return nil
					}
					if bit == fieldIsReplicated {
						r.IsReplicated = v
					}
				case fieldMinIndex:
					start := s.i
					if !s.number() {
						return nil
					}
					n, err := strconv.ParseUint(string(s.b[start:s.i]), 10, 64)
					if err != nil {
						return nil
					}
					r.MinIndex = n
				case fieldParams:
					if !s.params(&st) {
						return nil
					}
				}
			}
			s.ws()
			if s.eat('}') {
				break
			}
			if !s.eat(',') {
				return nil
			}
		}
	}
	s.ws()
	if s.i != len(s.b) || seen&fieldCommand == 0 || !hasQuery || strings.TrimSpace(query) == "" {
		return nil
	}
	st.SQL = query
	r.Stmts = []rlog.Statement{st}
	return r
}

const (
	fieldCommand uint16 = 1 << iota
	fieldQuery
	fieldParams
	fieldAck
	fieldConsistency
	fieldFormat
	fieldMinIndex
	fieldIsMaster
	fieldIsReplicated
	fieldRequestID
)

var fastFields = map[string]uint16{
	"command": fieldCommand, "query": fieldQuery, "params": fieldParams, "ack": fieldAck,
	"consistency": fieldConsistency, "format": fieldFormat, "min_index": fieldMinIndex,
	"is_master": fieldIsMaster, "is_replicated": fieldIsReplicated, "request_id": fieldRequestID,
}

// scanner reads JSON tokens from b at i; every method reports false for
// anything it does not handle, leaving the decision to the full decoder.
type scanner struct {
	b []byte
	i int
}

func (s *scanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

func (s *scanner) eat(c byte) bool {
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

func (s *scanner) lit(word string) bool {
	if len(s.b)-s.i >= len(word) && string(s.b[s.i:s.i+len(word)]) == word {
		s.i += len(word)
		return true
	}
	return false
}

func (s *scanner) null() bool { return s.lit("null") }

func (s *scanner) boolean() (bool, bool) {
	if s.lit("true") {
		return true, true
	}
	if s.lit("false") {
		return false, true
	}
	return false, false
}

// str reads a string without escapes or control characters, in valid UTF-8.
func (s *scanner) str() (string, bool) {
	if !s.eat('"') {
		return "", false
	}
	start, ascii := s.i, true
	for s.i < len(s.b) {
		c := s.b[s.i]
		switch {
		case c == '"':
			v := s.b[start:s.i]
			s.i++
			if !ascii && !utf8.Valid(v) {
				return "", false
			}
			return string(v), true
		case c == '\\' || c < 0x20:
			return "", false
		case c >= 0x80:
			ascii = false
		}
		s.i++
	}
	return "", false
}

// number reads a number in JSON's grammar.
func (s *scanner) number() bool {
	digits := func() int {
		n := 0
		for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
			s.i++
			n++
		}
		return n
	}
	s.eat('-')
	switch {
	case s.eat('0'):
	case s.i < len(s.b) && s.b[s.i] >= '1' && s.b[s.i] <= '9':
		digits()
	default:
		return false
	}
	if s.eat('.') && digits() == 0 {
		return false
	}
	if s.eat('e') || s.eat('E') {
		if !s.eat('+') {
			s.eat('-')
		}
		if digits() == 0 {
			return false
		}
	}
	return true
}

// scalar reads a parameter value and converts it as the full decoder does.
func (s *scanner) scalar() (any, bool) {
	if s.i >= len(s.b) {
		return nil, false
	}
	switch c := s.b[s.i]; {
	case c == '"':
		v, ok := s.str()
		return v, ok
	case c == 'n':
		return nil, s.null()
	case c == 't' || c == 'f':
		b, ok := s.boolean()
		if !ok {
			return nil, false
		}
		v, err := paramValue(b)
		return v, err == nil
	default:
		start := s.i
		if !s.number() {
			return nil, false
		}
		v, err := paramValue(json.Number(s.b[start:s.i]))
		return v, err == nil
	}
}

// params reads an array or object of scalars into st.
func (s *scanner) params(st *rlog.Statement) bool {
	switch {
	case s.eat('['):
		s.ws()
		if s.eat(']') {
			return true
		}
		for {
			s.ws()
			v, ok := s.scalar()
			if !ok {
				return false
			}
			st.Pos = append(st.Pos, v)
			s.ws()
			if s.eat(']') {
				return true
			}
			if !s.eat(',') {
				return false
			}
		}
	case s.eat('{'):
		st.Named = map[string]any{}
		s.ws()
		if s.eat('}') {
			return true
		}
		for {
			s.ws()
			k, ok := s.str()
			if !ok {
				return false
			}
			if _, dup := st.Named[k]; dup {
				return false
			}
			s.ws()
			if !s.eat(':') {
				return false
			}
			s.ws()
			v, ok := s.scalar()
			if !ok {
				return false
			}
			st.Named[k] = v
			s.ws()
			if s.eat('}') {
				return true
			}
			if !s.eat(',') {
				return false
			}
		}
	}
	return false
}
