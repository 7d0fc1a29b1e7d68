package cluster

import (
	"io"
	"reflect"
	"testing"
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
