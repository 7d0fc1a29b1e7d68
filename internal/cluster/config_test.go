package cluster

import (
	"io"
	"reflect"
	"testing"
	"time"
)

// The flags' defaults and Defaults are the same values (one place holds
// them).
func TestFlagDefaultsAreTheDefaults(t *testing.T) {
	for _, role := range []Role{Master, Slave} {
		args := []string{"2"}
		if role == Slave {
			args = []string{"1", "2"}
		}
		parsed, err := ParseArgs(role, args, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		byHand := Config{Role: role, ID: parsed.ID, NumSlaves: parsed.NumSlaves, Secret: parsed.Secret, InjectBug: parsed.InjectBug}
		byHand.Defaults()
		if !reflect.DeepEqual(*parsed, byHand) {
			t.Errorf("%s: flags give\n%+v\nDefaults gives\n%+v", role, *parsed, byHand)
		}
	}
}

// -check-interval 0 turns the consistency checks off (Defaults, which
// fills zero fields, leaves it off).
func TestCheckIntervalZeroIsOff(t *testing.T) {
	c, err := ParseArgs(Master, []string{"-check-interval", "0", "2"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.CheckInterval > 0 {
		t.Fatalf("-check-interval 0 gives %v", c.CheckInterval)
	}
	if c, _ := ParseArgs(Master, []string{"2"}, io.Discard); c.CheckInterval != 30*time.Second {
		t.Fatalf("the default is %v", c.CheckInterval)
	}
}
