package api

import "testing"

func BenchmarkDecodeRequest(b *testing.B) {
	body := []byte(`{"command":"exec","query":"INSERT INTO users (username, email) VALUES (?, ?)","params":["ann","ann@example.com"],"is_master":false}`)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeRequest(body, "quorum"); err != nil {
			b.Fatal(err)
		}
	}
}
