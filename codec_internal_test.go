package writethrough

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"sync"
	"testing"

	"gorm.io/gorm/schema"

	"github.com/gorm-writethrough/writethrough/internal/rowcodec"
)

// entrySample returns a token, the fingerprint of a small model and the
// encoding of one of its rows, to seed FuzzParseEntry.
func entrySample(tb testing.TB) (token, fp string, row []byte) {
	tb.Helper()
	type sample struct {
		ID   uint `gorm:"primaryKey"`
		Name string
	}
	sch, err := schema.Parse(&sample{}, &sync.Map{}, schema.NamingStrategy{})
	if err != nil {
		tb.Fatal(err)
	}
	c, err := rowcodec.New(sch)
	if err != nil {
		tb.Fatal(err)
	}
	row, err = c.Append(nil, reflect.ValueOf(&sample{ID: 42, Name: "Ann"}).Elem())
	if err != nil {
		tb.Fatal(err)
	}
	return strings.Repeat("t", tokenLen), c.Fingerprint(), row
}

// FuzzParseEntry parses arbitrary bytes as an entry header. It must never
// panic, and what it accepts must agree with the layout the Lua scripts read.
func FuzzParseEntry(f *testing.F) {
	tok, fp, row := entrySample(f)
	f.Add(append(appendHeader(nil, stateCommitted, tok, fp), row...))
	f.Add(appendHeader(nil, stateTombstone, tok, fp))
	f.Add(appendHeader(nil, stateLease, tok, fp))
	f.Add(append(appendHeader(nil, statePending, tok, fp), pendHasRow, 1))
	f.Add(append(append(appendHeader(nil, statePending, tok, fp), pendHasRow, 2), strings.Repeat("u", 2*tokenLen)...))
	f.Add([]byte("w\x02C"))
	f.Add([]byte("garbage"))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := parseEntry(b)
		if err != nil {
			if !errors.Is(err, errCorrupt) && !errors.Is(err, errForeign) {
				t.Fatalf("unexpected error %v", err)
			}
			if errors.Is(err, errForeign) && (len(b) < 2 || b[0] != entryMagic || b[1] == formatVersion) {
				t.Fatalf("foreign is only another format version of an entry")
			}
			return
		}
		if len(b) < headerLen || b[0] != entryMagic || b[1] != formatVersion {
			t.Fatalf("accepted a short or foreign header")
		}
		if got := appendHeader(nil, e.state, string(e.token), string(e.fp)); !bytes.Equal(got, b[:headerLen]) {
			t.Fatalf("header does not round-trip")
		}
		switch e.state {
		case stateCommitted:
			if !bytes.Equal(e.row, b[headerLen:]) {
				t.Fatalf("committed row is not the rest of the value")
			}
		case statePending:
			if n := int(b[headerLen+1]); len(b) < headerLen+2+n*tokenLen {
				t.Fatalf("pending entry shorter than its %d writer tokens", n)
			}
		case stateLease, stateTombstone:
		default:
			t.Fatalf("accepted unknown state %q", e.state)
		}
	})
}
