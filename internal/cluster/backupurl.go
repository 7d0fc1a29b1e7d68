package cluster

import (
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
)

// BackupSchemes are the URL schemes a backup target may have (package
// offsite).
var BackupSchemes = []string{"s3", "gs", "azblob", "file"}

// IsBackupURL reports whether s names an object-storage target rather than a
// file: it starts with one of the BackupSchemes and "://".
func IsBackupURL(s string) bool {
	for _, sc := range BackupSchemes {
		if strings.HasPrefix(s, sc+"://") {
			return true
		}
	}
	return false
}

// ParseBackupURL checks a target's URL without opening it, and returns the URL
// the bucket is opened with: s3://bucket/some/prefix?region=... names the
// bucket "bucket" and the prefix "some/prefix/" (gocloud.dev's prefix
// parameter); file:///dir names a directory.
func ParseBackupURL(raw string) (bucketURL, shown string, err error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", "", fmt.Errorf("backup URL: %w", err)
	}
	if !slices.Contains(BackupSchemes, u.Scheme) {
		return "", "", fmt.Errorf("backup URL %q: the scheme must be one of s3, gs, azblob or file", u.Redacted())
	}
	if u.User != nil {
		return "", "", errors.New("backup URL: credentials do not belong in the URL (a flag shows in ps): use the store's environment variables or files (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, ~/.aws/credentials, GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_ACCOUNT and AZURE_STORAGE_KEY)")
	}
	shown = u.Redacted()
	if u.Scheme == "file" {
		if u.Path == "" || u.Host != "" {
			return "", "", fmt.Errorf("backup URL %q: write a directory as file:///absolute/path", shown)
		}
		return u.String(), shown, nil
	}
	if u.Host == "" {
		return "", "", fmt.Errorf("backup URL %q: name the bucket: %s://bucket/prefix", shown, u.Scheme)
	}
	q := u.Query()
	if u.Scheme == "s3" && !q.Has("response_checksum_validation") {
		// Every download is checked against its manifest's SHA-256; the
		// SDK's own check of multipart objects only warns on stderr.
		q.Set("response_checksum_validation", "when_required")
	}
	if p := strings.Trim(u.Path, "/"); p != "" {
		q.Set("prefix", p+"/")
	}
	u.Path, u.RawQuery = "", q.Encode()
	return u.String(), shown, nil
}
