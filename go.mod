module github.com/ddbgo/ddb

go 1.26.8

require github.com/mattn/go-sqlite3 v1.14.53

require golang.org/x/crypto v0.59.0

require (
	github.com/anishathalye/porcupine v1.3.1
	github.com/rqlite/gorqlite v0.0.0-20261020015727-7224ce2bd419
	go.etcd.io/raft/v3 v3.6.0
)

require (
	github.com/gogo/protobuf v1.3.2 // indirect
	github.com/golang/protobuf v1.5.4 // indirect
	google.golang.org/protobuf v1.33.0 // indirect
)
