package sqlite

import (
	"path/filepath"
	"strings"
	"testing"
)

// The handle SQLite reports for a new connection is the driver's own, and
// the self-test would refuse a handle that is not.
func TestTheHandleIsTheDriversConnectionAndTheSelfTestWouldNotice(t *testing.T) {
	dir := t.TempDir()
	a, err := Open(filepath.Join(dir, "a.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := Open(filepath.Join(dir, "b.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if a.db == b.db || a.db == nil {
		t.Fatal("two connections share a handle")
	}
	if _, err := a.Driver.Exec("CREATE TABLE only_in_a (x)", nil); err != nil {
		t.Fatal(err)
	}
	if err := a.Exec("INSERT INTO only_in_a VALUES (1)"); err != nil {
		t.Fatalf("the driver's table is not seen through the handle: %v", err)
	}
	if err := selfTest(a); err != nil {
		t.Fatalf("self-test of a good connection: %v", err)
	}
	// A connection whose handle is another connection's: what reading the
	// wrong field of the driver would give.
	wrong := &Conn{db: b.db, Driver: a.Driver}
	if err := selfTest(wrong); err == nil || !strings.Contains(err.Error(), "not the driver's connection") {
		t.Fatalf("self-test with another connection's handle: %v", err)
	}
}
