package replication

import (
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/ddbgo/ddb/internal/errkind"
	"github.com/ddbgo/ddb/internal/store"
)

// Every kind a leader can answer a forward with comes back as the same
// error, field for field, wrapped or not; every kind has a name that
// parses back to it.
func TestEveryKindCrossesAForward(t *testing.T) {
	errs := []error{
		&store.ForbiddenError{Reason: "no"},
		&store.SchemaDeniedError{Statement: "CREATE TABLE t(x)"},
		&store.SQLError{Err: errors.New("UNIQUE constraint failed: t.id")},
		&store.ParamError{Msg: "p"},
		&store.ResultTooLargeError{What: "more than 5 rows"},
		&store.StepBudgetError{Steps: 100_000_000},
		&store.RequestIDReusedError{ID: "k1", Index: 17},
		&store.EntryTooLargeError{Bytes: 40 << 20, Load: true},
		&store.EntryTooLargeError{Bytes: 40 << 20},
		&store.LoadInterruptedError{ID: "abc"},
		&AckTimeoutError{Index: 42, Level: "all", After: 5 * time.Second},
		&WaitTimeoutError{Want: 9, Have: 7, After: 2 * time.Second},
		&UnknownOutcomeError{Reason: "no answer came"},
		&UnavailableError{Reason: "leadership changed"},
	}
	seen := map[errkind.Kind]bool{}
	for _, err := range errs {
		k, _ := errkind.Of(err)
		seen[k] = true
		back := FromWireError(ToWireError(fmt.Errorf("apply: %w", err)), 5*time.Second)
		if !reflect.DeepEqual(back, err) && back.Error() != err.Error() {
			t.Errorf("%T: came back as %#v", err, back)
		}
		if bk, _ := errkind.Of(back); bk != k {
			t.Errorf("%T: kind %s came back as %s", err, k, bk)
		}
	}
	for k := range codecs {
		if !seen[k] {
			t.Errorf("kind %s has a codec but no case here", k)
		}
	}
	for _, k := range errkind.All() {
		if back, ok := errkind.Parse(k.String()); !ok || back != k {
			t.Errorf("kind %s does not parse back (%v %v)", k, back, ok)
		}
		if _, ok := codecs[k]; ok {
			continue
		}
		// A kind without a codec keeps its kind and message.
		back := FromWireError(ToWireError(errkind.New(k, "m")), 0)
		if bk, _ := errkind.Of(back); k != errkind.Internal && (bk != k || back.Error() != "m") {
			t.Errorf("%s: came back as %s %q", k, bk, back)
		}
	}
	// A sentinel keeps its wrappers' words; a kind only a newer node knows
	// keeps its message, as an internal error.
	if back := FromWireError(ToWireError(fmt.Errorf("node 2: %w", ErrUnavailable)), 0); back.Error() != (&UnavailableError{Reason: "node 2: no leader can be reached"}).Error() {
		t.Errorf("sentinel: %q", back)
	}
	back := FromWireError(&WireError{Kind: "from_the_future", Message: "m"}, 0)
	if k, _ := errkind.Of(back); k != errkind.Internal || back.Error() != `the leader answered an error of kind "from_the_future": m` {
		t.Errorf("unknown kind: %s %v", k, back)
	}
}
