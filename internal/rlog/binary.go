package rlog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
)

// binaryVersion starts a write encoded in binary. A body in JSON (as logs
// written before hold them) starts with '[', '{' or white space, never
// with this byte, so both decode.
const binaryVersion = 0x01

// The binary encoding of a Write:
//
//	0x01, flags (uvarint), request id (string), max rows and max bytes
//	(uvarints), max steps (uvarint, with flagSteps only), the load step
//	(with flagLoad only: its id (string), op and seq (uvarints)), the
//	number of statements (uvarint), then each statement:
//	its SQL (string), the number of positional values (uvarint) and the
//	values, the number of named values (uvarint) and each name (string)
//	with its value, names in order.
//
// A string is its length (uvarint) and its bytes. A value is a tag byte
// and its payload: NULL; an integer (varint); a real (its 8 IEEE bytes,
// big-endian); text or a blob (a string).
const (
	flagSchema = 1 << iota
	flagCollect
	flagEach
	flagAtomic
	flagReplace
	flagSteps     // a step budget follows the byte limit (bodies written before have none)
	flagLoad      // a load step follows
	flagCheck     // a consistency check: no statements (see Write.Check)
	flagChanges   // the change stream's setting follows (see Write.SetChanges)
	flagDelivered // the webhook's delivered index follows (see Write.ChangesDelivered)
)

const (
	tagNull = iota
	tagInt
	tagReal
	tagText
	tagBlob
)

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendValue(b []byte, v any) ([]byte, error) {
	switch x := v.(type) {
	case nil:
		return append(b, tagNull), nil
	case int64:
		return binary.AppendVarint(append(b, tagInt), x), nil
	case int:
		return binary.AppendVarint(append(b, tagInt), int64(x)), nil
	case bool:
		n := int64(0)
		if x {
			n = 1
		}
		return binary.AppendVarint(append(b, tagInt), n), nil
	case float64:
		if math.IsNaN(x) {
			return append(b, tagNull), nil // SQLite stores NaN as NULL
		}
		return binary.BigEndian.AppendUint64(append(b, tagReal), math.Float64bits(x)), nil
	case string:
		return appendString(append(b, tagText), x), nil
	case []byte:
		b = binary.AppendUvarint(append(b, tagBlob), uint64(len(x)))
		return append(b, x...), nil
	default:
		return nil, fmt.Errorf("cannot encode a value of type %T", v)
	}
}

// encodeBinary encodes w in the binary form.
func (w *Write) encodeBinary() ([]byte, error) {
	var flags uint64
	for _, f := range []struct {
		on  bool
		bit uint64
	}{{w.AllowSchema, flagSchema}, {w.Collect, flagCollect}, {w.Each, flagEach}, {w.Atomic, flagAtomic}, {w.Replace, flagReplace}, {w.MaxSteps > 0, flagSteps}, {w.Load != nil, flagLoad}, {w.Check, flagCheck}, {w.SetChanges, flagChanges}, {w.ChangesDelivered > 0, flagDelivered}} {
		if f.on {
			flags |= f.bit
		}
	}
	if w.MaxRows < 0 || w.MaxBytes < 0 || w.MaxSteps < 0 || w.ChangesKeep < 0 {
		return nil, errors.New("negative limit")
	}
	size := 16 + len(w.RequestID)
	for _, s := range w.Stmts {
		size += 8 + len(s.SQL) + 10*(len(s.Pos)+len(s.Named))
	}
	b := make([]byte, 0, size)
	b = append(b, binaryVersion)
	b = binary.AppendUvarint(b, flags)
	b = appendString(b, w.RequestID)
	b = binary.AppendUvarint(b, uint64(w.MaxRows))
	b = binary.AppendUvarint(b, uint64(w.MaxBytes))
	if w.MaxSteps > 0 {
		b = binary.AppendUvarint(b, uint64(w.MaxSteps))
	}
	if l := w.Load; l != nil {
		if l.Op < LoadStage || l.Op > LoadAbort || l.Seq < 0 {
			return nil, errors.New("invalid load step")
		}
		b = appendString(b, l.ID)
		b = binary.AppendUvarint(b, uint64(l.Op))
		b = binary.AppendUvarint(b, uint64(l.Seq))
	}
	if w.SetChanges {
		b = binary.AppendUvarint(b, uint64(w.ChangesKeep))
	}
	if w.ChangesDelivered > 0 {
		b = binary.AppendUvarint(b, w.ChangesDelivered)
	}
	b = binary.AppendUvarint(b, uint64(len(w.Stmts)))
	var err error
	for _, s := range w.Stmts {
		b = appendString(b, s.SQL)
		b = binary.AppendUvarint(b, uint64(len(s.Pos)))
		for _, v := range s.Pos {
			if b, err = appendValue(b, v); err != nil {
				return nil, err
			}
		}
		names := make([]string, 0, len(s.Named))
		for k := range s.Named {
			names = append(names, k)
		}
		slices.Sort(names)
		b = binary.AppendUvarint(b, uint64(len(names)))
		for _, k := range names {
			b = appendString(b, k)
			if b, err = appendValue(b, s.Named[k]); err != nil {
				return nil, err
			}
		}
	}
	return b, nil
}

// binReader reads the binary form; the first error sticks.
type binReader struct {
	b   []byte
	err error
}

var errShort = errors.New("decode entry body: truncated or malformed")

func (r *binReader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = errShort
		return 0
	}
	r.b = r.b[n:]
	return v
}

// count reads a number of items, each at least one byte long.
func (r *binReader) count() int {
	n := r.uvarint()
	if n > uint64(len(r.b)) {
		r.err = errShort
		return 0
	}
	return int(n)
}

func (r *binReader) bytes() []byte {
	n := r.uvarint()
	if r.err != nil || n > uint64(len(r.b)) {
		r.err = errShort
		return nil
	}
	out := r.b[:n:n]
	r.b = r.b[n:]
	return out
}

func (r *binReader) value() any {
	if r.err != nil || len(r.b) == 0 {
		r.err = errShort
		return nil
	}
	tag := r.b[0]
	r.b = r.b[1:]
	switch tag {
	case tagNull:
		return nil
	case tagInt:
		v, n := binary.Varint(r.b)
		if n <= 0 {
			r.err = errShort
			return nil
		}
		r.b = r.b[n:]
		return v
	case tagReal:
		if len(r.b) < 8 {
			r.err = errShort
			return nil
		}
		v := math.Float64frombits(binary.BigEndian.Uint64(r.b))
		r.b = r.b[8:]
		return v
	case tagText:
		return string(r.bytes())
	case tagBlob:
		return append([]byte{}, r.bytes()...) // an empty blob stays a blob, not NULL
	}
	r.err = fmt.Errorf("decode entry body: unknown value tag %d", tag)
	return nil
}

// decodeBinary reverses encodeBinary (body without its version byte).
func decodeBinary(body []byte) (Write, error) {
	r := &binReader{b: body}
	var w Write
	flags := r.uvarint()
	w.AllowSchema, w.Collect, w.Each = flags&flagSchema != 0, flags&flagCollect != 0, flags&flagEach != 0
	w.Atomic, w.Replace, w.Check = flags&flagAtomic != 0, flags&flagReplace != 0, flags&flagCheck != 0
	w.RequestID = string(r.bytes())
	maxRows, maxBytes := r.uvarint(), r.uvarint()
	if maxRows > math.MaxInt32 || maxBytes > math.MaxInt64/2 {
		return Write{}, errShort
	}
	w.MaxRows, w.MaxBytes = int(maxRows), int(maxBytes)
	if flags&flagSteps != 0 {
		steps := r.uvarint()
		if steps == 0 || steps > math.MaxInt64 {
			return Write{}, errShort
		}
		w.MaxSteps = int64(steps)
	}
	if flags&flagLoad != 0 {
		l := &LoadStep{ID: string(r.bytes())}
		op, seq := r.uvarint(), r.uvarint()
		if op < uint64(LoadStage) || op > uint64(LoadAbort) || seq > math.MaxInt64 {
			return Write{}, errShort
		}
		l.Op, l.Seq = LoadOp(op), int64(seq)
		w.Load = l
	}
	if flags&flagChanges != 0 {
		keep := r.uvarint()
		if keep > math.MaxInt64 {
			return Write{}, errShort
		}
		w.SetChanges, w.ChangesKeep = true, int64(keep)
	}
	if flags&flagDelivered != 0 {
		if w.ChangesDelivered = r.uvarint(); w.ChangesDelivered == 0 {
			return Write{}, errShort
		}
	}
	n := r.count()
	if r.err == nil && n > 0 {
		w.Stmts = make([]Statement, n)
	}
	for i := 0; i < n && r.err == nil; i++ {
		s := &w.Stmts[i]
		s.SQL = string(r.bytes())
		if np := r.count(); np > 0 {
			s.Pos = make([]any, np)
			for j := range s.Pos {
				s.Pos[j] = r.value()
			}
		}
		if nn := r.count(); nn > 0 {
			s.Named = make(map[string]any, nn)
			for range nn {
				k := string(r.bytes())
				s.Named[k] = r.value()
			}
		}
	}
	if r.err == nil && len(r.b) > 0 {
		r.err = errors.New("decode entry body: bytes after the last statement")
	}
	if r.err != nil {
		return Write{}, r.err
	}
	return w, nil
}

// AppendValue appends v in the binary encoding of a value (a tag byte and
// its payload), as entries hold parameters and the change stream holds
// row values.
func AppendValue(b []byte, v any) ([]byte, error) { return appendValue(b, v) }

// AppendString appends s as the binary encoding holds a string.
func AppendString(b []byte, s string) []byte { return appendString(b, s) }

// Reader reads what AppendValue and AppendString wrote, and uvarints;
// Err is the first failure (every later read returns a zero value).
type Reader struct{ r binReader }

// NewReader reads b.
func NewReader(b []byte) *Reader { return &Reader{binReader{b: b}} }

// Value reads one value.
func (r *Reader) Value() any { return r.r.value() }

// String reads one string.
func (r *Reader) String() string { return string(r.r.bytes()) }

// Uvarint reads one uvarint.
func (r *Reader) Uvarint() uint64 { return r.r.uvarint() }

// Byte reads one byte.
func (r *Reader) Byte() byte {
	if r.r.err != nil || len(r.r.b) == 0 {
		r.r.err = errShort
		return 0
	}
	c := r.r.b[0]
	r.r.b = r.r.b[1:]
	return c
}

// Len is how many bytes are left to read.
func (r *Reader) Len() int { return len(r.r.b) }

// Err is the first failure.
func (r *Reader) Err() error { return r.r.err }
