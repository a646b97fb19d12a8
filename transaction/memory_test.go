package transaction

import (
	"bufio"
	"bytes"
	"runtime"
	"strings"
	"testing"
)

// headerOfFields returns a header section of about size bytes made of
// copies of field, then the empty line and a short body.
func headerOfFields(field string, size int) []byte {
	msg := bytes.Repeat([]byte(field), size/len(field))
	return append(msg, "\r\nbody\r\n"...)
}

// heapAfterGC returns the bytes in live heap objects.
func heapAfterGC() uint64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// TestHeaderMemoryIsBounded reads headers of 1 MiB (the default
// max_header_size) as the server does and checks what each transaction
// holds afterwards, and what reading it allocated, against the index
// limits: about IndexBytes and a record per parsed field, whatever the
// client sent. Before the bound, 1 MiB of "a:" fields held 12-15 MB per
// transaction (a string and a struct per field) and allocated 58-73 MB.
func TestHeaderMemoryIsBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("reads 24 MiB of headers")
	}
	const (
		n     = 8 // transactions kept, to average out the heap's noise
		index = DefaultHeaderIndexBytes
	)
	for _, tc := range []struct {
		name   string
		msg    []byte
		fields int // parsed
	}{
		{"1 MiB of tiny CRLF fields", headerOfFields("a:\r\n", 1<<20-16), DefaultHeaderIndexFields},
		{"1 MiB of tiny LF fields", headerOfFields("a:\n", 1<<20-16), DefaultHeaderIndexFields},
		{"1 MiB of 100-byte fields", headerOfFields("X-F: "+strings.Repeat("v", 93)+"\r\n", 1<<20-16), DefaultHeaderIndexFields},
		// The index full of text, and as much again unparsed: the
		// unparsed spool's largest in-memory size.
		{"200 KiB of 1000-byte fields", headerOfFields("X-F: "+strings.Repeat("v", 993)+"\r\n", 200<<10), index / 1000},
		{"one 1 MiB field", headerOfFields("X-F: "+strings.Repeat("v", 1<<20-32)+"\r\n", 1<<20-16), 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			txs := make([]*Transaction, n)
			var before, after runtime.MemStats
			base := heapAfterGC()
			runtime.ReadMemStats(&before)
			for i := range txs {
				tx := New(t.TempDir(), DefaultSpoolMemory)
				br := bufio.NewReaderSize(bytes.NewReader(tc.msg), 32<<10)
				if err := tx.ReadHeader(br, HeaderLimits{}); err != nil {
					t.Fatal(err)
				}
				if tx.Header.Len() != tc.fields || tx.Header.Size()+int64(len("body\r\n")) != int64(len(tc.msg)) {
					t.Fatalf("%d fields parsed (want %d), header %d bytes of %d", tx.Header.Len(), tc.fields, tx.Header.Size(), len(tc.msg))
				}
				txs[i] = tx
			}
			runtime.ReadMemStats(&after)
			held := (int64(heapAfterGC()) - int64(base)) / n
			allocated := int64(after.TotalAlloc-before.TotalAlloc) / n
			mallocs := int64(after.Mallocs-before.Mallocs) / n
			t.Logf("per transaction: %d bytes held, %d allocated in %d allocations; %d fields parsed, %d bytes unparsed",
				held, allocated, mallocs, txs[0].Header.Len(), txs[0].Header.Unparsed())
			// The parsed text, a record per parsed field (growth
			// included), the unparsed text gathered before it is
			// written and what the unparsed spool keeps in memory before
			// it moves to a file.
			if limit := int64(index + 24*DefaultHeaderIndexFields + 2*pendSize); held > limit {
				t.Errorf("held %d bytes per transaction, want at most %d", held, limit)
			}
			// Reading allocates the buffer as it doubles, and the spool's.
			if limit := int64(4 * index); allocated > limit {
				t.Errorf("allocated %d bytes per transaction, want at most %d", allocated, limit)
			}
			for _, tx := range txs {
				tx.Close()
			}
			if held := (int64(heapAfterGC()) - int64(base)) / n; held > 1<<10 {
				t.Errorf("after Close, each transaction still holds %d bytes", held)
			}
			runtime.KeepAlive(txs)
		})
	}
}
