package testcluster

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// SeaweedFS, a real S3-compatible object store, for the tests of backups
// to object storage. Its weed binary is built once from the Go module
// proxy (its source is a module like any other) and kept in the user's
// cache directory; $DDB_WEED names one built elsewhere instead.

// WeedModule is the SeaweedFS release the tests build.
const WeedModule = "github.com/seaweedfs/seaweedfs@v0.0.0-20261109003541-7506e5f91cd6"

var (
	weedOnce sync.Once
	weedPath string
	weedErr  error
)

// WeedBinary returns the path of a weed binary, building it the first
// time (a few minutes).
func WeedBinary() (string, error) {
	weedOnce.Do(func() {
		if p := os.Getenv("DDB_WEED"); p != "" {
			weedPath = p
			return
		}
		dir := testCache()
		weedPath = filepath.Join(dir, "weed-"+WeedModule[len("github.com/seaweedfs/seaweedfs@"):]+"-noopt")
		// One build at a time, whichever process starts it (CI builds it
		// ahead, beside the other steps: see internal/testcluster/prepare).
		weedErr = installOnce(dir, weedPath, weedPath+".lock", func() error {
			// The module's go.mod has replace directives, which go
			// install refuses: its source is downloaded, copied, and
			// built as the main module it is.
			out, err := exec.Command("go", "mod", "download", "-json", WeedModule).Output()
			if err != nil {
				return fmt.Errorf("download %s: %v", WeedModule, err)
			}
			var mod struct{ Dir string }
			if err := json.Unmarshal(out, &mod); err != nil || mod.Dir == "" {
				return fmt.Errorf("download %s: %s", WeedModule, out)
			}
			src, err := os.MkdirTemp(dir, "weed-src-")
			if err != nil {
				return err
			}
			defer os.RemoveAll(src)
			if out, err := exec.Command("cp", "-r", mod.Dir+"/.", src).CombinedOutput(); err != nil {
				return fmt.Errorf("copy the source: %v %s", err, out)
			}
			exec.Command("chmod", "-R", "u+w", src).Run()
			tmp := weedPath + ".tmp"
			// Unoptimized, unlinked from debug data: a third faster to
			// build (154 s against 223 s here), and fast enough for the
			// tests.
			build := exec.Command("go", "build", "-gcflags=all=-N -l", "-ldflags=-s -w", "-o", tmp, "./weed")
			build.Dir = src
			build.Env = append(os.Environ(), "GOFLAGS=-mod=mod")
			if out, err := build.CombinedOutput(); err != nil {
				return fmt.Errorf("build weed: %v\n%s", err, out)
			}
			return os.Rename(tmp, weedPath)
		})
	})
	return weedPath, weedErr
}

// S3 is a running SeaweedFS with its S3 gateway.
type S3 struct {
	Endpoint             string // http://127.0.0.1:port
	AccessKey, SecretKey string
	Dir                  string
	args                 []string
	bin                  string
	log                  string
	cmd                  *exec.Cmd
	done                 chan struct{}
}

// StartS3 starts SeaweedFS in dir (everything in one process: master,
// volume server, filer, S3 gateway) on free loopback ports, with one
// identity (AccessKey, SecretKey) and the buckets named created. Nothing
// leaves the machine: telemetry is off and every service binds loopback.
func StartS3(t interface {
	TB
	Skipf(format string, args ...any)
}, dir string, buckets ...string) *S3 {
	t.Helper()
	bin, err := WeedBinary()
	if err != nil {
		t.Skipf("SeaweedFS cannot be built here, so the tests against a real S3 store do not run: %v", err)
	}
	base, err := FreeBasePort(10)
	if err != nil {
		t.Fatalf("%v", err)
	}
	s := &S3{Endpoint: "http://127.0.0.1:" + strconv.Itoa(base), AccessKey: "ddbtestkey", SecretKey: "ddbtestsecret0123456789", Dir: dir, bin: bin,
		log: filepath.Join(dir, "weed.log")}
	conf := filepath.Join(dir, "s3.json")
	b, _ := json.Marshal(map[string]any{"identities": []any{map[string]any{
		"name": "ddb", "credentials": []any{map[string]string{"accessKey": s.AccessKey, "secretKey": s.SecretKey}},
		"actions": []string{"Admin", "Read", "Write", "List", "Tagging"},
	}}})
	if err := os.WriteFile(conf, b, 0o600); err != nil {
		t.Fatalf("%v", err)
	}
	port := func(i int) string { return strconv.Itoa(base + i) }
	s.args = []string{"mini", "-dir", filepath.Join(dir, "data"), "-ip", "127.0.0.1", "-ip.bind", "127.0.0.1",
		"-master.telemetry=false", "-webdav=false", "-admin.ui=false", "-admin.port.legacy", "0",
		"-s3.port", port(0), "-s3.port.grpc", port(1), "-s3.port.iceberg", "0", "-s3.port.lance", "0",
		"-master.port", port(2), "-master.port.grpc", port(3), "-volume.port", port(4), "-volume.port.grpc", port(5),
		"-filer.port", port(6), "-filer.port.grpc", port(7), "-admin.port", port(8), "-admin.port.grpc", port(9),
		"-s3.config", conf, "-s3.autoCreateBucket=false", "-s3.iam=false"}
	if len(buckets) > 0 {
		bs := buckets[0]
		for _, b := range buckets[1:] {
			bs += "," + b
		}
		s.args = append(s.args, "-bucket", bs)
	}
	os.MkdirAll(filepath.Join(dir, "data"), 0o755)
	s.Start(t)
	t.Cleanup(s.Kill)
	return s
}

// Start starts the store (again, after Kill) and waits until its S3
// gateway answers.
func (s *S3) Start(t TB) {
	t.Helper()
	logf, err := os.OpenFile(s.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatalf("%v", err)
	}
	s.cmd = exec.Command(s.bin, s.args...)
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	s.cmd.Dir = s.Dir
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("start SeaweedFS: %v", err)
	}
	s.done = make(chan struct{})
	go func() { s.cmd.Wait(); logf.Close(); close(s.done) }()
	deadline := time.Now().Add(90 * time.Second)
	for {
		resp, err := http.Get(s.Endpoint + "/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode < 500 {
				return
			}
		}
		select {
		case <-s.done:
			b, _ := os.ReadFile(s.log)
			t.Fatalf("SeaweedFS exited at start:\n%s", tail(b))
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(s.log)
			t.Fatalf("SeaweedFS's S3 gateway does not answer after 90 s:\n%s", tail(b))
		}
	}
}

// Kill stops the store with SIGKILL.
func (s *S3) Kill() {
	if s.cmd != nil && s.cmd.Process != nil {
		s.cmd.Process.Signal(syscall.SIGKILL)
		<-s.done
	}
}

// Env is the environment a process needs to use the store with its
// identity (the AWS SDK's variables).
func (s *S3) Env() []string {
	return []string{"AWS_ACCESS_KEY_ID=" + s.AccessKey, "AWS_SECRET_ACCESS_KEY=" + s.SecretKey, "AWS_REGION=us-east-1",
		"AWS_EC2_METADATA_DISABLED=true", "AWS_CONFIG_FILE=/dev/null", "AWS_SHARED_CREDENTIALS_FILE=/dev/null"}
}

// URL is a backup URL for bucket/prefix on this store.
func (s *S3) URL(bucket, prefix string) string {
	return "s3://" + bucket + "/" + prefix + "?region=us-east-1&use_path_style=true&endpoint=" + s.Endpoint
}

func tail(b []byte) string {
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// testCache is the folder of the user cache where the tests keep what they
// install (the system's temporary folder without one).
func testCache() string {
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	return filepath.Join(cache, "ddb-test")
}

// installOnce makes sure path exists: under an exclusive lock on lock,
// which one process at a time takes, install runs unless path is there
// already. dir (which holds what install writes) is made first.
func installOnce(dir, path, lock string, install func() error) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	unlock, err := lockFile(lock)
	if err != nil {
		return err
	}
	defer unlock()
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	return install()
}

// lockFile takes an exclusive lock on path (made if missing), waiting for
// another process that holds it.
func lockFile(path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return func() { syscall.Flock(int(f.Fd()), syscall.LOCK_UN); f.Close() }, nil
}
