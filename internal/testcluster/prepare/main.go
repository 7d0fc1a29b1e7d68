// Command prepare builds and installs, ahead of the tests, the object
// stores the end-to-end tests of backups start: SeaweedFS (built from the
// Go module proxy) and Azurite (installed with npm), into the user's cache
// directory. CI runs it beside its first steps, so the tests find them
// ready; the tests build them themselves when it has not run.
package main

import (
	"fmt"
	"os"

	"github.com/ddbgo/ddb/internal/testcluster"
)

func main() {
	code := 0
	if p, err := testcluster.WeedBinary(); err != nil {
		fmt.Fprintln(os.Stderr, "SeaweedFS:", err)
		code = 1
	} else {
		fmt.Println("SeaweedFS:", p)
	}
	if p, err := testcluster.AzuriteBinary(); err != nil {
		fmt.Fprintln(os.Stderr, "Azurite:", err)
		code = 1
	} else {
		fmt.Println("Azurite:", p)
	}
	os.Exit(code)
}
