package consensus

import (
	"testing"
	"time"
)

// The leader logs the next check only once the last was compared and it
// has rested twice as long as its own digest of that check took (a check
// of a large database holds every node's WAL while it reads); a follower
// slow to send its digest does not lengthen the rest; a check never
// compared is given up after 2×digestWait; the first check, and one after
// an earlier check's compare, are due at once.
func TestChecksRestTwiceAsLongAsTheLastDigestTook(t *testing.T) {
	t0 := time.Date(2026, 12, 8, 0, 0, 0, 0, time.UTC)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	s := time.Second
	for _, c := range []struct {
		name                              string
		now, proposed, digested, compared time.Time
		pending, due                      bool
	}{
		{"the first check", at(0), time.Time{}, time.Time{}, time.Time{}, false, true},
		{"a 40 s digest, 30 s after the compare", at(70 * s), at(0), at(40 * s), at(40 * s), false, false},
		{"a 40 s digest, 79 s after", at(119 * s), at(0), at(40 * s), at(40 * s), false, false},
		{"a 40 s digest, 80 s after", at(120 * s), at(0), at(40 * s), at(40 * s), false, true},
		{"a 1 s digest compared 3 min later (a slow follower), 2 s after", at(182 * s), at(0), at(1 * s), at(180 * s), false, true},
		{"a 1 s digest, 1 s after", at(2 * s), at(0), at(1 * s), at(1 * s), false, false},
		{"the last digest was an earlier check's", at(s), at(0), at(-time.Minute), at(-time.Minute), false, true},
		{"pending for a minute", at(time.Minute), at(0), at(-time.Hour), at(-time.Hour), true, false},
		{"pending past 2×digestWait: given up", at(2 * digestWait), at(0), at(-time.Hour), at(-time.Hour), true, true},
	} {
		if got := checkDue(c.now, c.proposed, c.digested, c.compared, c.pending); got != c.due {
			t.Errorf("%s: due %v, want %v", c.name, got, c.due)
		}
	}
}
