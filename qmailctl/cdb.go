package qmailctl

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
)

// CDB is a constant database file in D. J. Bernstein's cdb format, as
// qmail's morercpthosts.cdb and tcprules' files are: read-only lookups of a
// key, two disk reads at most. It reads the 32-bit format only (cdbmake's,
// qmail-newmrh's). No maintained Go cdb library was available to this
// project (the Go module proxy it builds from serves none of the 32-bit
// readers), so this is the format's reader, which is short:
// https://cr.yp.to/cdb/cdb.txt.
type CDB struct {
	f    *os.File
	size int64
}

// OpenCDB opens a cdb file and checks its size.
func OpenCDB(path string) (*CDB, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if st.Size() < 2048 {
		f.Close()
		return nil, fmt.Errorf("%s: not a cdb file (%d bytes, shorter than its 2048-byte table index)", path, st.Size())
	}
	return &CDB{f: f, size: st.Size()}, nil
}

// Close closes the file.
func (c *CDB) Close() error { return c.f.Close() }

// hash is cdb's hash: h = ((h << 5) + h) ^ c, from 5381.
func hash(key []byte) uint32 {
	h := uint32(5381)
	for _, b := range key {
		h = (h<<5 + h) ^ uint32(b)
	}
	return h
}

// Has reports whether key is in the database.
func (c *CDB) Has(key []byte) (bool, error) {
	_, ok, err := c.Get(key)
	return ok, err
}

// Get returns the first value stored under key.
func (c *CDB) Get(key []byte) ([]byte, bool, error) {
	h := hash(key)
	var slot [8]byte
	if _, err := c.f.ReadAt(slot[:], int64(h%256)*8); err != nil {
		return nil, false, err
	}
	tablePos, tableLen := binary.LittleEndian.Uint32(slot[:4]), binary.LittleEndian.Uint32(slot[4:])
	if tableLen == 0 {
		return nil, false, nil
	}
	start := (h >> 8) % tableLen
	for i := range tableLen {
		at := int64(tablePos) + int64((start+i)%tableLen)*8
		if _, err := c.f.ReadAt(slot[:], at); err != nil {
			return nil, false, c.corrupt(err)
		}
		slotHash, recordPos := binary.LittleEndian.Uint32(slot[:4]), binary.LittleEndian.Uint32(slot[4:])
		if recordPos == 0 {
			return nil, false, nil // an empty slot ends the probe
		}
		if slotHash != h {
			continue
		}
		var lens [8]byte
		if _, err := c.f.ReadAt(lens[:], int64(recordPos)); err != nil {
			return nil, false, c.corrupt(err)
		}
		klen, dlen := int64(binary.LittleEndian.Uint32(lens[:4])), int64(binary.LittleEndian.Uint32(lens[4:]))
		if int64(recordPos)+8+klen+dlen > c.size {
			return nil, false, c.corrupt(nil)
		}
		if klen != int64(len(key)) {
			continue
		}
		rec := make([]byte, klen+dlen)
		if _, err := c.f.ReadAt(rec, int64(recordPos)+8); err != nil {
			return nil, false, c.corrupt(err)
		}
		if bytes.Equal(rec[:klen], key) {
			return rec[klen:], true, nil
		}
	}
	return nil, false, nil
}

func (c *CDB) corrupt(err error) error {
	if err == nil || err == io.EOF {
		return fmt.Errorf("%s: the cdb file is truncated or corrupt: rebuild it", c.f.Name())
	}
	return err
}
