package rowcodec

import (
	"bytes"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

// TestUnknownZoneNamesDoNotGrowTheCache: zone names read from Redis that do
// not load are remembered only up to a bound, and still decode to a fixed
// zone of that name and offset.
func TestUnknownZoneNamesDoNotGrowTheCache(t *testing.T) {
	const prefix = "Nowhere/TestUnknownZoneNames-"
	for i := 0; i < 4*maxUnknownLocs; i++ {
		name := fmt.Sprint(prefix, i)
		in := time.Date(2024, 1, 1, 0, 0, 0, 0, time.FixedZone(name, 3600))
		var buf bytes.Buffer
		enc := msgpack.NewEncoder(&buf)
		if err := encTime(enc, reflect.ValueOf(in)); err != nil {
			t.Fatal(err)
		}
		var out time.Time
		if err := decTime(msgpack.NewDecoder(&buf), reflect.ValueOf(&out).Elem()); err != nil {
			t.Fatal(err)
		}
		if got, off := out.Zone(); got != name || off != 3600 || !out.Equal(in) {
			t.Fatalf("decoded %v, want %v", out, in)
		}
	}
	n := 0
	locCache.Range(func(k, _ any) bool {
		if strings.HasPrefix(k.(string), prefix) {
			n++
		}
		return true
	})
	if n > maxUnknownLocs {
		t.Fatalf("%d unknown zone names cached, bound %d", n, maxUnknownLocs)
	}
}
