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
	// schemaGuarded: some entry names the "schema" permission, so schema
	// changes need it on rqlite's API too (an rqlite users file, which
	// never names it, lets "execute" change the schema there, as rqlite
	// does).
	schemaGuarded bool
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
				if p == PermSchema {
					u.schemaGuarded = true
				}
			case PermReady, PermLeaderOps, PermBackup, PermLoad, PermChanges, "join", "snapshot", "join-read-only", "query-read-only", "ready-read-only":
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
		if strings.HasPrefix(e.Password, "$2") {
			// A bcrypt hash, or text that looks like one: a hash that
			// bcrypt cannot read would refuse every login, so the file is
			// refused instead.
			if _, err := bcrypt.Cost([]byte(e.Password)); err != nil {
				return nil, fmt.Errorf("users file %s: entry %d (%s): the password looks like a bcrypt hash but is not a valid one (%v); make one with: master -hash-password", path, i, e.Username, err)
			}
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
	if len(u.anonymous) == 0 {
		return us.perms, 0, ""
	}
	// What everyone may do, an authenticated user may do too.
	merged := make(map[string]bool, len(us.perms)+len(u.anonymous))
	for p := range u.anonymous {
		merged[p] = true
	}
	for p := range us.perms {
		merged[p] = true
	}
	return merged, 0, ""
}

func has(perms map[string]bool, p string) bool { return perms[PermAll] || perms[p] }

// SchemaOnRqlite reports whether a user with perms may change the schema
// on rqlite's API (see schemaGuarded).
func (u *Users) SchemaOnRqlite(perms map[string]bool) bool {
	return u == nil || !u.schemaGuarded || has(perms, PermSchema)
}

// check authenticates r and requires permission perm. It writes the
// WWW-Authenticate challenge on 401.
func (u *Users) check(w http.ResponseWriter, r *http.Request, perm string) (map[string]bool, int, string) {
	perms, status, msg := u.identify(r)
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Basic realm="ddb"`)
		return nil, status, msg
	}
	if perm != "" && !has(perms, perm) {
		if _, _, authenticated := r.BasicAuth(); !authenticated {
			// Anonymous, and everyone's permissions do not cover it: the
			// client may have credentials that do.
			w.Header().Set("WWW-Authenticate", `Basic realm="ddb"`)
			return nil, http.StatusUnauthorized, fmt.Sprintf("authentication required: anonymous requests lack the %q permission", perm)
		}
		return nil, http.StatusForbidden, fmt.Sprintf("permission %q required", perm)
	}
	return perms, 0, ""
}
