package api

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"
)

func usersFile(t *testing.T, body string) (*Users, error) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "users.json")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return LoadUsers(path)
}

// The users file behaves as rqlite's does, so its users can reuse theirs.
func TestUsersFileFollowsRqlitesRules(t *testing.T) {
	hash, _ := bcrypt.GenerateFromPassword([]byte("pw-admin"), bcrypt.MinCost)
	u, err := usersFile(t, `[
	  {"username": "admin", "password": "`+string(hash)+`", "perms": ["all"]},
	  {"username": "app", "password": "pw-app", "perms": ["execute", "query", "backup", "load", "ready", "leader-ops"]},
	  {"username": "*", "perms": ["status", "ready"]}
	]`)
	if err != nil {
		t.Fatal(err)
	}
	check := func(user, pass, perm string) (int, string) {
		r := httptest.NewRequest("GET", "/status", nil)
		if user != "" {
			r.SetBasicAuth(user, pass)
		}
		w := httptest.NewRecorder()
		_, status, _ := u.check(w, r, perm)
		return status, w.Header().Get("WWW-Authenticate")
	}
	for _, c := range []struct {
		user, pass, perm string
		status           int
	}{
		{"", "", PermStatus, 0},          // everyone may
		{"app", "pw-app", PermStatus, 0}, // and so may an authenticated user without it
		{"app", "pw-app", PermBackup, 0}, // rqlite's own permission names
		{"app", "pw-app", PermLeaderOps, 0},
		{"app", "pw-app", PermRemove, http.StatusForbidden},
		{"", "", PermQuery, http.StatusUnauthorized}, // anonymous, not covered: credentials may be
		{"app", "wrong", PermQuery, http.StatusUnauthorized},
		{"nobody", "x", PermStatus, http.StatusUnauthorized},
		{"admin", "pw-admin", PermRemove, 0},
	} {
		status, challenge := check(c.user, c.pass, c.perm)
		if status != c.status {
			t.Errorf("%s/%s needing %q: %d, want %d", c.user, c.pass, c.perm, status, c.status)
		}
		if (status == http.StatusUnauthorized) != (challenge != "") {
			t.Errorf("%s needing %q: %d with WWW-Authenticate %q", c.user, c.perm, status, challenge)
		}
	}
	// An rqlite users file never names "schema": execute changes the
	// schema on rqlite's API, as with rqlite. Naming it anywhere guards it.
	if !u.SchemaOnRqlite(map[string]bool{PermExecute: true}) {
		t.Error("an rqlite users file: execute may change the schema on rqlite's API")
	}
	guarded, err := usersFile(t, `[{"username": "a", "password": "p", "perms": ["execute", "schema"]}, {"username": "b", "password": "p", "perms": ["execute"]}]`)
	if err != nil {
		t.Fatal(err)
	}
	if guarded.SchemaOnRqlite(map[string]bool{PermExecute: true}) || !guarded.SchemaOnRqlite(map[string]bool{PermSchema: true}) {
		t.Error("a file that names schema guards schema changes on rqlite's API too")
	}
	// A password that looks like a bcrypt hash but is not one is refused
	// at startup (the user could never log in).
	for _, bad := range []string{"$2a$10$...bcrypt hash...", "$2b$04$short", "$2y$"} {
		if _, err := usersFile(t, `[{"username": "x", "password": "`+bad+`", "perms": ["all"]}]`); err == nil || !strings.Contains(err.Error(), "hash-password") {
			t.Errorf("password %q: %v", bad, err)
		}
	}
}
