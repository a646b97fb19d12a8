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
			// One spool directory for all: t.TempDir's bookkeeping per
			// call would be counted as held after Close.
			dir := t.TempDir()
			var before, after runtime.MemStats
			base := heapAfterGC()
			runtime.ReadMemStats(&before)
			for i := range txs {
				tx := New(dir, DefaultSpoolMemory)
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
			// A leak would keep the index (tens of KiB); a few KiB is
			// the heap's noise when other packages' tests run beside.
			if held := (int64(heapAfterGC()) - int64(base)) / n; held > 4<<10 {
				t.Errorf("after Close, each transaction still holds %d bytes", held)
			}
			runtime.KeepAlive(txs)
		})
	}
}

// typicalHeader is the header of an ordinary message that crossed a few
// hops: 21 fields, 1.9 KB, some folded.
var typicalHeader = strings.Repeat("Received: from relay.example.net (relay.example.net [192.0.2.7])\r\n\tby mx.example.org (Postfix) with ESMTPS id 4Abc123\r\n\tfor <bob@example.org>; Fri, 02 Jan 2026 03:04:05 +0000\r\n", 4) +
	"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.net; s=s1;\r\n\th=from:to:subject:date:message-id; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;\r\n\tb=" + strings.Repeat("A", 340) + "\r\n" +
	"From: Alice <alice@example.net>\r\nTo: Bob <bob@example.org>\r\nSubject: the usual\r\nDate: Fri, 02 Jan 2026 03:04:00 +0000\r\n" +
	"Message-ID: <1234@example.net>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n" +
	strings.Repeat("X-Filler: some value that a list or a filter added\r\n", 9) + "\r\n"

// BenchmarkReadHeader reads typicalHeader as the server does and asks for
// two fields, as loop and a filter would: 6 allocations, 4.9 KB and 8 µs
// per header (when every field was a string and a struct: 73
// allocations, 7.9 KB and 16 µs).
func BenchmarkReadHeader(b *testing.B) {
	msg := []byte(typicalHeader + "body\r\n")
	br := bufio.NewReaderSize(nil, 32<<10)
	b.ReportAllocs()
	b.SetBytes(int64(len(typicalHeader)))
	for b.Loop() {
		tx := Transaction{Body: NewSpool("", DefaultSpoolMemory)}
		br.Reset(bytes.NewReader(msg))
		if err := tx.ReadHeader(br, HeaderLimits{}); err != nil {
			b.Fatal(err)
		}
		if tx.Header.Count("Received") != 4 || tx.Header.Get("subject") != "the usual" {
			b.Fatal("parsed wrong")
		}
		tx.Close()
	}
}
