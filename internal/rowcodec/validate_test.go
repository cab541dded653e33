package rowcodec

import (
	"bytes"
	"errors"
	"reflect"
	"runtime"
	"testing"
)

// TestDecodeRowRejectsLengthBombs: a value that claims more elements or
// bytes than it holds is refused before anything is allocated for it.
func TestDecodeRowRejectsLengthBombs(t *testing.T) {
	c := testCodec(t)
	valid := encodeSample(t, c, fuzzSamples()[1])
	n := len(c.fields)
	bombs := map[string][]byte{
		"array32 of 4G":          {0xdd, 0xff, 0xff, 0xff, 0xff},
		"bin32 of 4G in field 0": append([]byte{0xdc, 0, byte(n), 0xc6, 0xff, 0xff, 0xff, 0xff}, make([]byte, 64)...),
		"str32 of 4G in field 0": append([]byte{0xdc, 0, byte(n), 0xdb, 0xff, 0xff, 0xff, 0xff}, make([]byte, 64)...),
		"map32 of 4G in field 0": append([]byte{0xdc, 0, byte(n), 0xdf, 0xff, 0xff, 0xff, 0xff}, make([]byte, 64)...),
		"nested 64 deep":         append(append([]byte{0xdc, 0, byte(n)}, bytes.Repeat([]byte{0x91}, 64)...), 0xc0),
		"truncated valid row":    valid[:len(valid)-1],
		"valid row plus a byte":  append(bytes.Clone(valid), 0xc0),
	}
	for name, b := range bombs {
		t.Run(name, func(t *testing.T) {
			var row fuzzRow
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			err := c.Decode(b, reflect.ValueOf(&row).Elem())
			runtime.ReadMemStats(&after)
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("want ErrCorrupt, got %v", err)
			}
			if grew := after.TotalAlloc - before.TotalAlloc; grew > 1<<20 {
				t.Fatalf("decoding %d bytes allocated %d bytes", len(b), grew)
			}
		})
	}
}
