package cluster

import (
	"strings"
	"testing"
)

func TestBackupURLs(t *testing.T) {
	for _, tc := range []struct{ in, bucket, err string }{
		{"s3://backups/shop/eu?region=eu-west-1", "s3://backups?prefix=shop%2Feu%2F&region=eu-west-1&response_checksum_validation=when_required", ""},
		{"s3://backups?region=x&endpoint=http://127.0.0.1:8333&use_path_style=true", "s3://backups?endpoint=http%3A%2F%2F127.0.0.1%3A8333&region=x&response_checksum_validation=when_required&use_path_style=true", ""},
		{"gs://b/p", "gs://b?prefix=p%2F", ""},
		{"azblob://container", "azblob://container", ""},
		{"file:///var/backups/ddb", "file:///var/backups/ddb", ""},
		{"file://relative/dir", "", "file:///absolute/path"},
		{"s3://key:secret@backups/x", "", "credentials do not belong in the URL"},
		{"ftp://host/x", "", "the scheme must be one of"},
		{"s3:///x", "", "name the bucket"},
	} {
		got, shown, err := ParseBackupURL(tc.in)
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%s: %v, want an error with %q", tc.in, err, tc.err)
		case tc.err == "" && (err != nil || got != tc.bucket):
			t.Errorf("%s: %q %v, want %q", tc.in, got, err, tc.bucket)
		case strings.Contains(shown, "secret") || (err != nil && strings.Contains(err.Error(), "secret@")):
			t.Errorf("%s: the credentials are shown: %q %v", tc.in, shown, err)
		}
	}
	if !IsBackupURL("s3://b") || IsBackupURL("backup.db") || IsBackupURL("/abs/backup.db") {
		t.Fatal("IsBackupURL")
	}
}
