module ddb

go 1.26.8

require github.com/mattn/go-sqlite3 v1.14.53

require golang.org/x/crypto v0.59.0

require github.com/anishathalye/porcupine v1.3.1
