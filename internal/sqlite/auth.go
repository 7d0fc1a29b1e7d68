package sqlite

/*
#include "ddb.h"
*/
import "C"

import "runtime/cgo"

// The package sets SQLite's authorizer itself (ddb_set_authorizer in
// changes.c) instead of through the driver, whose callback leaves out the
// fifth argument: the trigger or view an action is coded for. The store
// needs it to tell its own capture triggers' actions (see changes.c) from
// a client's.

// Authorizer is consulted for every action while a statement is prepared:
// op is SQLite's action code, a1 and a2 its arguments, db the schema and
// trigger the innermost trigger or view the action comes from ("" for the
// statement itself). It returns SQLite's verdict (0: allow).
type Authorizer func(op int, a1, a2, db, trigger string) int

//export ddbAuthorize
func ddbAuthorize(handle C.ulonglong, op C.int, a1, a2, a3, a4 *C.char) C.int {
	c := cgo.Handle(handle).Value().(*Conn)
	if c.auth == nil {
		return 0
	}
	return C.int(c.auth(int(op), goString(a1), goString(a2), goString(a3), goString(a4)))
}

func goString(p *C.char) string {
	if p == nil {
		return ""
	}
	return C.GoString(p)
}

// installAuthorizer makes SQLite consult c.auth (see SetAuthorizer).
func (c *Conn) installAuthorizer() error {
	c.self = cgo.NewHandle(c)
	if rc := C.ddb_set_authorizer(c.db, C.ulonglong(c.self)); rc != codeOK {
		c.self.Delete()
		c.self = 0
		return c.lastError()
	}
	return nil
}

// removeAuthorizer undoes installAuthorizer, before the connection closes.
func (c *Conn) removeAuthorizer() {
	if c.self != 0 {
		C.ddb_set_authorizer(c.db, 0)
		c.self.Delete()
		c.self = 0
	}
}
