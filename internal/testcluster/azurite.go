package testcluster

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob"
)

// Azurite, Microsoft's emulator of Azure Blob Storage, for the tests of
// backups to azblob:// URLs. It is an npm package, installed once into the
// user's cache directory; it needs Node.js and npm.

// AzuriteVersion is the release the tests install.
const AzuriteVersion = "3.35.0"

// The emulator's well-known account and key (public: they are in its docs).
const (
	azuriteAccount = "devstoreaccount1"
	azuriteKey     = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

var (
	azuriteOnce sync.Once
	azuritePath string
	azuriteErr  error
)

// AzuriteBinary returns the path of azurite-blob, installing it the first
// time.
func AzuriteBinary() (string, error) {
	azuriteOnce.Do(func() {
		if _, err := exec.LookPath("npm"); err != nil {
			azuriteErr = err
			return
		}
		dir := filepath.Join(testCache(), "azurite-"+AzuriteVersion)
		azuritePath = filepath.Join(dir, "node_modules", ".bin", "azurite-blob")
		azuriteErr = installOnce(dir, azuritePath, dir+".lock", func() error {
			out, err := exec.Command("npm", "install", "--prefix", dir, "azurite@"+AzuriteVersion, "--no-audit", "--no-fund").CombinedOutput()
			if err != nil {
				return &installError{string(out), err}
			}
			return nil
		})
	})
	return azuritePath, azuriteErr
}

type installError struct {
	out string
	err error
}

func (e *installError) Error() string { return "npm install azurite: " + e.err.Error() + "\n" + e.out }

// Azure is a running Azurite with one container.
type Azure struct {
	Endpoint  string // http://127.0.0.1:port/devstoreaccount1
	Container string
	port      int
	cmd       *exec.Cmd
	done      chan struct{}
}

// StartAzure starts Azurite's blob service on a free loopback port, with
// its data in dir, and creates container.
func StartAzure(t interface {
	TB
	Skipf(format string, args ...any)
}, dir, container string) *Azure {
	t.Helper()
	bin, err := AzuriteBinary()
	if err != nil {
		t.Skipf("Azurite cannot be installed here, so the tests against Azure Blob Storage do not run: %v", err)
	}
	port, err := FreeBasePort(0)
	if err != nil {
		t.Fatalf("%v", err)
	}
	a := &Azure{port: port, Container: container, Endpoint: "http://127.0.0.1:" + strconv.Itoa(port) + "/" + azuriteAccount}
	logf, err := os.Create(filepath.Join(dir, "azurite.log"))
	if err != nil {
		t.Fatalf("%v", err)
	}
	a.cmd = exec.Command(bin, "--blobHost", "127.0.0.1", "--blobPort", strconv.Itoa(port), "--location", filepath.Join(dir, "data"),
		"--skipApiVersionCheck", "--disableTelemetry")
	a.cmd.Stdout, a.cmd.Stderr = logf, logf
	if err := a.cmd.Start(); err != nil {
		t.Fatalf("start Azurite: %v", err)
	}
	a.done = make(chan struct{})
	go func() { a.cmd.Wait(); logf.Close(); close(a.done) }()
	t.Cleanup(func() {
		a.cmd.Process.Signal(syscall.SIGKILL)
		<-a.done
	})
	cred, err := azblob.NewSharedKeyCredential(azuriteAccount, azuriteKey)
	if err != nil {
		t.Fatalf("%v", err)
	}
	client, err := azblob.NewClientWithSharedKeyCredential(a.Endpoint+"/", cred, nil)
	if err != nil {
		t.Fatalf("%v", err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if resp, err := http.Get(a.Endpoint + "?comp=list"); err == nil {
			resp.Body.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_, err = client.CreateContainer(ctx, container, nil)
			cancel()
			if err == nil {
				return a
			}
		}
		select {
		case <-a.done:
			b, _ := os.ReadFile(filepath.Join(dir, "azurite.log"))
			t.Fatalf("Azurite exited at start:\n%s", tail(b))
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("Azurite does not answer after 60 s")
		}
	}
}

// Env is what a process needs to use the emulator (the Azure SDK's
// variables, as gocloud.dev's azureblob reads them).
func (a *Azure) Env() []string {
	return []string{"AZURE_STORAGE_ACCOUNT=" + azuriteAccount, "AZURE_STORAGE_KEY=" + azuriteKey,
		"AZURE_STORAGE_DOMAIN=127.0.0.1:" + strconv.Itoa(a.port), "AZURE_STORAGE_PROTOCOL=http", "AZURE_STORAGE_IS_LOCAL_EMULATOR=true"}
}

// URL is a backup URL for a prefix in the container.
func (a *Azure) URL(prefix string) string { return "azblob://" + a.Container + "/" + prefix }
