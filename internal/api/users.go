package api

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"

	"golang.org/x/crypto/bcrypt"
)

// Permissions a user may hold (the same names as rqlite's auth file).
const (
	PermAll     = "all"
	PermExecute = "execute" // writes
	PermQuery   = "query"   // reads
	PermSchema  = "schema"  // schema changes (with execute)
	PermStatus  = "status"  // /status and /metrics
	PermRemove  = "remove"  // taking a node out of the membership, handing leadership over
	// rqlite's names for its cluster endpoints.
	PermReady     = "ready"      // /readyz
	PermLeaderOps = "leader-ops" // POST /leader
	PermBackup    = "backup"     // GET /db/backup
	PermLoad      = "load"       // POST /db/load
)

// Users is the optional users file: HTTP Basic authentication and
// per-user permissions. The entry with username "*" gives anonymous
// requests their permissions.
type Users struct {
	byName    map[string]*user
	anonymous map[string]bool
}

type user struct {
	hash  []byte // bcrypt hash, or nil
	plain []byte // SHA-256 of a plain password, compared in constant time
	perms map[string]bool
}

type userEntry struct {
	Username string   `json:"username"`
	Password string   `json:"password"`
	Perms    []string `json:"perms"`
}

// LoadUsers reads a users file: a JSON array of {"username", "password",
// "perms"} objects. Passwords may be plain or bcrypt hashes ($2a$, $2b$, $2y$).
func LoadUsers(path string) (*Users, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read users file: %w", err)
	}
	var entries []userEntry
	if err := json.Unmarshal(b, &entries); err != nil {
		return nil, fmt.Errorf("users file %s: %w", path, err)
	}
	u := &Users{byName: map[string]*user{}, anonymous: map[string]bool{}}
	for i, e := range entries {
		perms := map[string]bool{}
		for _, p := range e.Perms {
			switch p {
			case PermAll, PermExecute, PermQuery, PermSchema, PermStatus, PermRemove:
				perms[p] = true
			case PermReady, PermLeaderOps, PermBackup, PermLoad, "join", "snapshot", "join-read-only", "query-read-only", "ready-read-only":
				// rqlite's own permission names: an rqlite users file
				// loads as it is.
				perms[p] = true
			default:
				return nil, fmt.Errorf("users file %s: entry %d: unknown permission %q", path, i, p)
			}
		}
		if e.Username == "*" {
			u.anonymous = perms
			continue
		}
		if e.Username == "" {
			return nil, fmt.Errorf("users file %s: entry %d has no username", path, i)
		}
		us := &user{perms: perms}
		if strings.HasPrefix(e.Password, "$2a$") || strings.HasPrefix(e.Password, "$2b$") || strings.HasPrefix(e.Password, "$2y$") {
			us.hash = []byte(e.Password)
		} else {
			h := sha256.Sum256([]byte(e.Password))
			us.plain = h[:]
		}
		u.byName[e.Username] = us
	}
	return u, nil
}

type ctxUser struct{}

// identify returns the permissions of the request's user, or an error
// status: 401 for missing or wrong credentials.
func (u *Users) identify(r *http.Request) (map[string]bool, int, string) {
	name, pass, ok := r.BasicAuth()
	if !ok {
		if len(u.anonymous) > 0 {
			return u.anonymous, 0, ""
		}
		return nil, http.StatusUnauthorized, "authentication required: send HTTP Basic credentials"
	}
	us := u.byName[name]
	if us == nil {
		// Spend the same time as a real check so names cannot be probed.
		bcrypt.CompareHashAndPassword([]byte("$2a$10$7EqJtq98hPqEX7fNZaFWoOhi5BWX4Z3Q1NHtDWRU6ZLkbqgZj2Gfa"), []byte(pass))
		return nil, http.StatusUnauthorized, "wrong user name or password"
	}
	if us.hash != nil {
		if bcrypt.CompareHashAndPassword(us.hash, []byte(pass)) != nil {
			return nil, http.StatusUnauthorized, "wrong user name or password"
		}
	} else {
		h := sha256.Sum256([]byte(pass))
		if subtle.ConstantTimeCompare(h[:], us.plain) != 1 {
			return nil, http.StatusUnauthorized, "wrong user name or password"
		}
	}
	return us.perms, 0, ""
}

func has(perms map[string]bool, p string) bool { return perms[PermAll] || perms[p] }

// check authenticates r and requires permission perm. It writes the
// WWW-Authenticate challenge on 401.
func (u *Users) check(w http.ResponseWriter, r *http.Request, perm string) (map[string]bool, int, string) {
	perms, status, msg := u.identify(r)
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Basic realm="ddb"`)
		return nil, status, msg
	}
	if perm != "" && !has(perms, perm) {
		return nil, http.StatusForbidden, fmt.Sprintf("permission %q required", perm)
	}
	return perms, 0, ""
}
