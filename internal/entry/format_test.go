package entry_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/gorm-writethrough/writethrough/internal/entry"
)

// The layout spelled out byte by byte, independently of the package's
// constants: a change to an offset or a length fails these tests.
const (
	tokA = "AAAAAAAAAAAAAAAA" // 16 bytes
	tokB = "BBBBBBBBBBBBBBBB"
	tokC = "CCCCCCCCCCCCCCCC"
	fp   = "fp345678" // 8 bytes
	row  = "\x93\x01\xa1x\xc0"
)

func TestParseReadsEveryState(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		raw  string
		want entry.Entry
	}{
		{"committed", "w\x01C" + tokA + fp + row,
			entry.Entry{State: entry.Committed, Token: []byte(tokA), Fingerprint: []byte(fp), Row: []byte(row)}},
		{"committed empty row", "w\x01C" + tokA + fp,
			entry.Entry{State: entry.Committed, Token: []byte(tokA), Fingerprint: []byte(fp), Row: []byte{}}},
		{"lease", "w\x01L" + tokA + fp,
			entry.Entry{State: entry.Lease, Token: []byte(tokA), Fingerprint: []byte(fp)}},
		{"tombstone", "w\x01T" + tokA + fp,
			entry.Entry{State: entry.Tombstone, Token: []byte(tokA), Fingerprint: []byte(fp)}},
		{"pending, one writer, a row", "w\x01P" + tokA + fp + "\x02\x01" + tokA + row,
			entry.Entry{State: entry.Pending, Token: []byte(tokA), Fingerprint: []byte(fp),
				Flags: entry.FlagHasRow, Writers: 1, Row: []byte(row)}},
		{"pending, two writers, overlap", "w\x01P" + tokB + fp + "\x01\x02" + tokA + tokB,
			entry.Entry{State: entry.Pending, Token: []byte(tokB), Fingerprint: []byte(fp),
				Flags: entry.FlagOverlap, Writers: 2, Row: []byte{}}},
		{"pending, tombstone intent", "w\x01P" + tokA + fp + "\x04\x01" + tokA,
			entry.Entry{State: entry.Pending, Token: []byte(tokA), Fingerprint: []byte(fp),
				Flags: entry.FlagDelete, Writers: 1, Row: []byte{}}},
		{"pending, no writers", "w\x01P" + tokA + fp + "\x00\x00",
			entry.Entry{State: entry.Pending, Token: []byte(tokA), Fingerprint: []byte(fp), Row: []byte{}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := entry.Parse([]byte(tc.raw))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if !equalEntry(got, tc.want) {
				t.Fatalf("Parse = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func equalEntry(a, b entry.Entry) bool {
	return a.State == b.State && bytes.Equal(a.Token, b.Token) && bytes.Equal(a.Fingerprint, b.Fingerprint) &&
		bytes.Equal(a.Row, b.Row) && a.Flags == b.Flags && a.Writers == b.Writers
}

func TestParseRefusesWhatIsNotAnEntry(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		raw  []byte
		want error
	}{
		{"nil", nil, entry.ErrCorrupt},
		{"empty", []byte{}, entry.ErrCorrupt},
		{"one byte", []byte("w"), entry.ErrCorrupt},
		{"another magic", []byte("x\x01C" + tokA + fp), entry.ErrCorrupt},
		{"plain text", []byte("garbage"), entry.ErrCorrupt},
		{"header cut short", []byte("w\x01C" + tokA + fp[:7]), entry.ErrCorrupt},
		{"unknown state", []byte("w\x01X" + tokA + fp), entry.ErrCorrupt},
		{"pending without flags or count", []byte("w\x01P" + tokA + fp), entry.ErrCorrupt},
		{"pending without count", []byte("w\x01P" + tokA + fp + "\x02"), entry.ErrCorrupt},
		{"pending missing its tokens", []byte("w\x01P" + tokA + fp + "\x00\x05" + tokA), entry.ErrCorrupt},
		{"pending missing a token's last byte", []byte("w\x01P" + tokA + fp + "\x00\x02" + tokA + tokB[:15]), entry.ErrCorrupt},
		{"another format version", []byte("w\x02C" + tokA + fp + row), entry.ErrForeign},
		{"another format version, short", []byte("w\x02"), entry.ErrForeign},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if _, err := entry.Parse(tc.raw); !errors.Is(err, tc.want) {
				t.Fatalf("Parse(%q) = %v, want %v", tc.raw, err, tc.want)
			}
		})
	}
}

func TestValuesHaveTheFrozenLayout(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		got  []byte
		want string
	}{
		{"lease", entry.LeaseValue(tokA, fp), "w\x01L" + tokA + fp},
		{"committed", entry.CommittedValue(tokA, fp, []byte(row)), "w\x01C" + tokA + fp + row},
		{"tombstone", entry.TombstoneValue(tokA, fp), "w\x01T" + tokA + fp},
		{"header", entry.AppendHeader([]byte("x"), entry.Pending, tokA, fp), "xw\x01P" + tokA + fp},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if string(tc.got) != tc.want {
				t.Fatalf("got %q, want %q", tc.got, tc.want)
			}
		})
	}
	if entry.HeaderLen != 27 || entry.TokenLen != 16 || entry.FingerprintLen != 8 {
		t.Fatalf("layout lengths changed: header %d, token %d, fingerprint %d", entry.HeaderLen, entry.TokenLen, entry.FingerprintLen)
	}
}

func TestNewTokenIsFreshAndSized(t *testing.T) {
	t.Parallel()
	a, b := entry.NewToken(), entry.NewToken()
	if len(a) != entry.TokenLen || len(b) != entry.TokenLen {
		t.Fatalf("token lengths %d, %d; want %d", len(a), len(b), entry.TokenLen)
	}
	if a == b {
		t.Fatalf("two tokens are equal")
	}
}

// FuzzParseEntry parses arbitrary bytes as an entry. It must never panic,
// and what it accepts must agree with the layout the Lua scripts read.
func FuzzParseEntry(f *testing.F) {
	f.Add([]byte("w\x01C" + tokA + fp + row))
	f.Add([]byte("w\x01T" + tokA + fp))
	f.Add([]byte("w\x01L" + tokA + fp))
	f.Add([]byte("w\x01P" + tokA + fp + "\x02\x01"))
	f.Add([]byte("w\x01P" + tokA + fp + "\x02\x02" + strings.Repeat("u", 32)))
	f.Add([]byte("w\x02C"))
	f.Add([]byte("garbage"))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := entry.Parse(b)
		if err != nil {
			if !errors.Is(err, entry.ErrCorrupt) && !errors.Is(err, entry.ErrForeign) {
				t.Fatalf("unexpected error %v", err)
			}
			if errors.Is(err, entry.ErrForeign) && (len(b) < 2 || b[0] != 'w' || b[1] == 1) {
				t.Fatalf("foreign is only another format version of an entry")
			}
			return
		}
		if len(b) < 27 || b[0] != 'w' || b[1] != 1 {
			t.Fatalf("accepted a short or foreign header")
		}
		if got := entry.AppendHeader(nil, e.State, string(e.Token), string(e.Fingerprint)); !bytes.Equal(got, b[:27]) {
			t.Fatalf("header does not round-trip")
		}
		switch e.State {
		case entry.Committed:
			if !bytes.Equal(e.Row, b[27:]) {
				t.Fatalf("committed row is not the rest of the value")
			}
		case entry.Pending:
			n := int(b[28])
			if len(b) < 29+n*16 {
				t.Fatalf("pending entry shorter than its %d writer tokens", n)
			}
			if e.Flags != entry.Flags(b[27]) || e.Writers != n || !bytes.Equal(e.Row, b[29+n*16:]) {
				t.Fatalf("pending fields are not at their offsets: %+v", e)
			}
		case entry.Lease, entry.Tombstone:
		default:
			t.Fatalf("accepted unknown state %q", e.State)
		}
	})
}
