package store

import (
	"errors"
	"fmt"
	"strings"

	sqlite3 "github.com/mattn/go-sqlite3"
)

// Kind is what a statement does, as SQLite's authorizer reports it while
// compiling the statement. Text is never matched to decide this.
type Kind int

// Statement kinds, from least to most privileged.
const (
	KindRead   Kind = iota // reads only
	KindWrite              // changes rows
	KindSchema             // changes the schema: master only
)

func (k Kind) String() string {
	switch k {
	case KindRead:
		return "read"
	case KindWrite:
		return "write"
	default:
		return "schema"
	}
}

// ForbiddenError is a statement outside the allowed set (ATTACH, VACUUM,
// transaction control, durability pragmas, the project's own tables, ...).
type ForbiddenError struct{ Reason string }

func (e *ForbiddenError) Error() string { return e.Reason }

// SchemaDeniedError is a schema change where the policy allows none (a
// write that entered at a slave).
type SchemaDeniedError struct{ Statement string }

func (e *SchemaDeniedError) Error() string {
	return fmt.Sprintf("schema changes must be sent to the master: %s", e.Statement)
}

// NotReadError reports that a statement run as a read changes something.
type NotReadError struct{ Kind Kind }

func (e *NotReadError) Error() string { return fmt.Sprintf("statement is a %s, not a read", e.Kind) }

// sqliteRecursive is SQLITE_RECURSIVE (a recursive CTE), which the driver does not export.
const sqliteRecursive = 33

// InternalPrefix starts the name of every table the project keeps for itself.
const InternalPrefix = "_ddb_"

func isInternal(name string) bool {
	return len(name) >= len(InternalPrefix) && strings.EqualFold(name[:len(InternalPrefix)], InternalPrefix)
}

// internalTables are the tables the project keeps for itself, in every
// version: the only names of the internal namespace a database may hold.
var internalTables = []string{"_ddb_meta", "_ddb_log", "_ddb_members", "_ddb_requests", "_ddb_raft_state", "_ddb_raft_log", "_ddb_load", "_ddb_changes"}

// knownInternal reports whether name is one of internalTables.
func knownInternal(name string) bool {
	for _, t := range internalTables {
		if strings.EqualFold(name, t) {
			return true
		}
	}
	return false
}

// internalNameTaken returns a schema object of the internal namespace
// that is none of the project's own tables ("" if none): what a user
// statement made there by a route the authorizer does not name (a RENAME
// TO, whose new name it is not told; a virtual table's shadow tables).
func internalNameTaken(c interface {
	QueryRow(string, ...any) ([]any, error)
}) (string, error) {
	q := `SELECT name FROM sqlite_schema WHERE name LIKE '\_ddb\_%' ESCAPE '\' AND lower(name) NOT IN (`
	for i, t := range internalTables {
		if i > 0 {
			q += ", "
		}
		q += "'" + t + "'"
	}
	row, err := c.QueryRow(q + ") LIMIT 1")
	if err != nil || row == nil {
		return "", err
	}
	name, _ := row[0].(string)
	return name, nil
}

// errInternalName refuses a user object in the internal namespace.
func errInternalName(name string) *ForbiddenError {
	return &ForbiddenError{Reason: fmt.Sprintf("%s: names starting with %s are internal to the database; choose another name", name, InternalPrefix)}
}

func isSchemaTable(name string) bool {
	switch strings.ToLower(name) {
	case "sqlite_master", "sqlite_schema", "sqlite_temp_master", "sqlite_temp_schema":
		return true
	}
	return false
}

func isStatTable(name string) bool {
	switch strings.ToLower(name) {
	case "sqlite_stat1", "sqlite_stat4":
		return true
	}
	return false
}

// Pragmas clients may run. Those in pragmaWithArg take a name or number as
// argument and only inspect; the rest are allowed only without an argument,
// which reads the setting.
var (
	pragmaWithArg = map[string]bool{
		"table_info": true, "table_xinfo": true, "table_list": true, "index_list": true,
		"index_info": true, "index_xinfo": true, "foreign_key_list": true,
		"foreign_key_check": true, "integrity_check": true, "quick_check": true,
	}
	pragmaReadOnly = map[string]bool{
		"collation_list": true, "function_list": true, "module_list": true, "pragma_list": true,
		"compile_options": true, "database_list": true, "encoding": true, "page_size": true,
		"page_count": true, "freelist_count": true, "user_version": true, "application_id": true,
		"schema_version": true, "data_version": true, "foreign_keys": true, "journal_mode": true,
		"synchronous": true, "auto_vacuum": true, "cache_size": true, "busy_timeout": true,
		"recursive_triggers": true, "max_page_count": true,
	}
)

// judge classifies one authorizer action. A non-empty reason means the
// action is forbidden to clients.
func judge(op int, a1, a2 string) (Kind, string) {
	switch op {
	case sqlite3.SQLITE_SELECT, sqliteRecursive:
		return KindRead, ""
	case sqlite3.SQLITE_READ:
		if isInternal(a1) {
			return KindRead, fmt.Sprintf("table %s is internal to the database and cannot be read", a1)
		}
		return KindRead, ""
	case sqlite3.SQLITE_FUNCTION:
		if strings.EqualFold(a2, "load_extension") {
			return KindRead, "load_extension is not allowed"
		}
		if isInternal(a2) {
			return KindRead, fmt.Sprintf("%s() is internal to the database", a2)
		}
		return KindRead, ""
	case sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE:
		switch {
		case isInternal(a1):
			return KindWrite, fmt.Sprintf("table %s is internal to the database and cannot be changed", a1)
		case isSchemaTable(a1):
			// SQLite records every schema change as a write to sqlite_schema.
			return KindSchema, ""
		case isStatTable(a1):
			// Statistics steer the query planner like the schema does.
			return KindSchema, ""
		}
		return KindWrite, ""
	case sqlite3.SQLITE_REINDEX:
		return KindWrite, ""
	case sqlite3.SQLITE_CREATE_TABLE, sqlite3.SQLITE_DROP_TABLE, sqlite3.SQLITE_CREATE_VIEW,
		sqlite3.SQLITE_DROP_VIEW, sqlite3.SQLITE_CREATE_VTABLE, sqlite3.SQLITE_DROP_VTABLE:
		if isInternal(a1) {
			return KindSchema, fmt.Sprintf("%s is internal to the database", a1)
		}
		return KindSchema, ""
	case sqlite3.SQLITE_ANALYZE:
		return KindSchema, ""
	case sqlite3.SQLITE_CREATE_INDEX, sqlite3.SQLITE_DROP_INDEX, sqlite3.SQLITE_CREATE_TRIGGER,
		sqlite3.SQLITE_DROP_TRIGGER:
		if isInternal(a1) || isInternal(a2) {
			return KindSchema, fmt.Sprintf("%s on %s: the table is internal to the database", a1, a2)
		}
		return KindSchema, ""
	case sqlite3.SQLITE_ALTER_TABLE:
		if isInternal(a2) {
			return KindSchema, fmt.Sprintf("table %s is internal to the database", a2)
		}
		return KindSchema, ""
	case sqlite3.SQLITE_CREATE_TEMP_TABLE, sqlite3.SQLITE_CREATE_TEMP_INDEX,
		sqlite3.SQLITE_CREATE_TEMP_TRIGGER, sqlite3.SQLITE_CREATE_TEMP_VIEW,
		sqlite3.SQLITE_DROP_TEMP_TABLE, sqlite3.SQLITE_DROP_TEMP_INDEX,
		sqlite3.SQLITE_DROP_TEMP_TRIGGER, sqlite3.SQLITE_DROP_TEMP_VIEW:
		return KindSchema, "TEMP tables, views, indexes and triggers are not allowed: they would exist on one connection of one node only"
	case sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH:
		return KindSchema, "ATTACH and DETACH are not allowed: each node serves exactly one SQLite database"
	case sqlite3.SQLITE_TRANSACTION, sqlite3.SQLITE_SAVEPOINT:
		return KindWrite, `transaction control (BEGIN, COMMIT, ROLLBACK, SAVEPOINT) is not allowed: send the statements together in "queries", which run as one atomic transaction`
	case sqlite3.SQLITE_PRAGMA:
		name := strings.ToLower(a1)
		if pragmaWithArg[name] {
			if isInternal(a2) {
				return KindRead, fmt.Sprintf("%s is internal to the database", a2)
			}
			return KindRead, ""
		}
		if pragmaReadOnly[name] && a2 == "" {
			return KindRead, ""
		}
		return KindWrite, fmt.Sprintf("PRAGMA %s is not allowed: only pragmas that inspect the schema or read a setting may be run", a1)
	}
	return KindWrite, fmt.Sprintf("operation %d is not allowed", op)
}

// pragmasOfSchema are the pragmas whose answer depends on the schema
// alone, and so is the same on every node.
var pragmasOfSchema = map[string]bool{
	"table_info": true, "table_xinfo": true, "table_list": true, "index_list": true,
	"index_info": true, "index_xinfo": true, "foreign_key_list": true, "foreign_key_check": true,
}

// nondeterministic explains a read whose value differs between nodes with
// identical content: where pages lie in the file (sqlite_schema.rootpage),
// and pragmas about the file or the process (page_count, freelist_count,
// database_list with the file's path, data_version, ...), read through
// their table-valued functions.
func nondeterministic(op int, a1, a2 string) string {
	if op != sqlite3.SQLITE_READ {
		return ""
	}
	if isSchemaTable(a1) && strings.EqualFold(a2, "rootpage") {
		return a1 + ".rootpage (where a table's pages lie in the file)"
	}
	if isStatTable(a1) && strings.EqualFold(a2, "rowid") {
		return a1 + ".rowid (ANALYZE numbers its rows counting the project's own tables, which differ between nodes)"
	}
	if name, ok := strings.CutPrefix(strings.ToLower(a1), "pragma_"); ok && !pragmasOfSchema[name] {
		return "the pragma " + name + " (a property of this node's file or process)"
	}
	return ""
}

// policy says which actions the authorizer refuses while a statement is compiled.
type policy int

const (
	policyClient         policy = iota // refuse forbidden actions
	policyClientNoSchema               // and schema changes (writes that entered at a slave)
	policyReadOnly                     // and anything that is not a read
	policyReplica                      // allow all: entries the master already checked
)

// authState records what the statement being compiled does.
type authState struct {
	policy    policy
	kind      Kind   // strongest action seen
	forbidden string // first forbidden action
	denied    Kind   // set with deniedSet when the policy refused a kind
	deniedSet bool
	triggerOn []string // tables that got a trigger: its body is checked after
	// nondet names the first thing the statement reads whose value is not
	// the same on every node (see nondeterministic); a write may not use it.
	nondet              string
	prevUpdatedRootpage bool // the previous action was SQLite's own UPDATE of sqlite_schema.rootpage
	// wrote: under policyReadOnly, a row change was seen and let through,
	// to be judged once compiled (see prepare): a virtual table's module
	// (R-Tree) prepares its own writes while a read that first uses the
	// table on a connection compiles.
	wrote bool
}

func (a *authState) reset(p policy) { *a = authState{policy: p} }

func (a *authState) authorize(op int, a1, a2, db, trigger string) int {
	if strings.HasPrefix(trigger, captureTrigger) {
		// The change stream's own triggers (see changes.go): what they do
		// is the store's, not the statement's.
		return sqlite3.SQLITE_OK
	}
	k, why := judge(op, a1, a2)
	if s := schemaOf(op, a1, db); why == "" && s != "" && !strings.EqualFold(s, "main") {
		// What a statement changes is judged by where it lies, however
		// it is spelled: temp.t is a TEMP table, as CREATE TEMP TABLE t.
		why = fmt.Sprintf("objects in the %s schema are not allowed: they would exist on one connection of one node only; use the main database", s)
	}
	// DROP TABLE moves root pages with a nested UPDATE of sqlite_schema
	// that reads rootpage in its WHERE: that read is SQLite's own.
	own := op == sqlite3.SQLITE_READ && a.prevUpdatedRootpage
	a.prevUpdatedRootpage = op == sqlite3.SQLITE_UPDATE && isSchemaTable(a1) && strings.EqualFold(a2, "rootpage")
	if a.nondet == "" && !own {
		a.nondet = nondeterministic(op, a1, a2)
	}
	if op == sqlite3.SQLITE_CREATE_TRIGGER {
		a.triggerOn = append(a.triggerOn, a2)
	}
	if k > a.kind {
		a.kind = k
	}
	if a.policy == policyReplica {
		return sqlite3.SQLITE_OK
	}
	if why != "" {
		if a.forbidden == "" {
			a.forbidden = why
		}
		return sqlite3.SQLITE_DENY
	}
	if a.policy == policyReadOnly && k == KindWrite {
		a.wrote = true
		return sqlite3.SQLITE_OK
	}
	if (a.policy == policyClientNoSchema && k == KindSchema) || (a.policy == policyReadOnly && k != KindRead) {
		a.denied, a.deniedSet = k, true
		return sqlite3.SQLITE_DENY
	}
	return sqlite3.SQLITE_OK
}

// schemaOf is the schema ("main", "temp") an action changes something in,
// for the actions whose fourth authorizer argument names it ("" for the
// others: for ALTER TABLE it names a column).
func schemaOf(op int, a1, db string) string {
	switch op {
	case sqlite3.SQLITE_CREATE_TABLE, sqlite3.SQLITE_CREATE_INDEX, sqlite3.SQLITE_CREATE_TRIGGER,
		sqlite3.SQLITE_CREATE_VIEW, sqlite3.SQLITE_CREATE_VTABLE, sqlite3.SQLITE_DROP_TABLE,
		sqlite3.SQLITE_DROP_INDEX, sqlite3.SQLITE_DROP_TRIGGER, sqlite3.SQLITE_DROP_VIEW,
		sqlite3.SQLITE_DROP_VTABLE:
		return db
	case sqlite3.SQLITE_INSERT:
		// (Of a schema table too: a trigger named temp.tr on a main table
		// is reported as CREATE TRIGGER in main, then recorded in temp's
		// sqlite_master.)
		return db
	case sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE:
		if isSchemaTable(a1) {
			return "" // SQLite's own bookkeeping (a RENAME updates temp's sqlite_master too)
		}
		return db
	}
	return ""
}

// prepareError turns a failed prepare into the error the client should see.
func (a *authState) prepareError(sql string, err error) error {
	switch {
	case a.forbidden != "":
		return &ForbiddenError{Reason: a.forbidden}
	case a.deniedSet && a.policy == policyReadOnly:
		return &NotReadError{Kind: a.denied}
	case a.deniedSet:
		return &SchemaDeniedError{Statement: abbreviate(sql)}
	}
	if db := databaseCommand(sql); db != "" {
		return &SQLError{Err: errors.New(db)}
	}
	return &SQLError{Err: err, Compile: true}
}

// databaseCommand explains CREATE/DROP DATABASE, which SQLite rejects as a
// syntax error. The text is looked at only to word the error better.
func databaseCommand(sql string) string {
	f := strings.Fields(strings.ToUpper(stripComments(sql)))
	if len(f) >= 2 && (f[0] == "CREATE" || f[0] == "DROP") && (f[1] == "DATABASE" || f[1] == "SCHEMA") {
		return f[0] + " DATABASE is not supported: each node binds to one SQLite database; create tables in it instead"
	}
	return ""
}

func stripComments(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch {
		case strings.HasPrefix(s[i:], "--"):
			for i < len(s) && s[i] != '\n' {
				i++
			}
			b.WriteByte(' ')
		case strings.HasPrefix(s[i:], "/*"):
			end := strings.Index(s[i+2:], "*/")
			if end < 0 {
				return b.String()
			}
			i += end + 3
			b.WriteByte(' ')
		default:
			b.WriteByte(s[i])
		}
	}
	return b.String()
}

// SQLError is an error SQLite reported for a client's statement (syntax,
// constraint, missing table...). Compile: SQLite could not compile the
// statement against this node's schema (it may name a table a newer
// schema has: the leader's may differ).
type SQLError struct {
	Err     error
	Compile bool
}

func (e *SQLError) Error() string { return e.Err.Error() }
func (e *SQLError) Unwrap() error { return e.Err }

func abbreviate(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 100 {
		return s[:97] + "..."
	}
	return s
}
