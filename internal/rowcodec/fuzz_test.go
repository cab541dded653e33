package rowcodec

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
)

// FuzzDecodeRow decodes arbitrary bytes into fuzzRow. It must never panic
// (not even one the decoder recovers from), and whatever decodes must
// re-encode to a fixed point.
func FuzzDecodeRow(f *testing.F) {
	c := testCodec(f)
	for _, r := range fuzzSamples() {
		f.Add(encodeSample(f, c, r))
	}
	f.Add([]byte{})
	f.Add([]byte{0xdd, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		var row fuzzRow
		err := c.Decode(b, reflect.ValueOf(&row).Elem())
		if errors.Is(err, ErrDecodePanic) {
			t.Fatalf("Decode recovered a panic: %v", err)
		}
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("decode error does not wrap ErrCorrupt: %v", err)
			}
			return
		}
		b2, err := c.encode(nil, reflect.ValueOf(&row).Elem())
		if err != nil {
			return // a decoded value its own Valuer refuses (not a decoder fault)
		}
		var row2 fuzzRow
		if err := c.Decode(b2, reflect.ValueOf(&row2).Elem()); err != nil {
			t.Fatalf("the re-encoded row does not decode: %v\n%x", err, b2)
		}
		b3, err := c.encode(nil, reflect.ValueOf(&row2).Elem())
		if err != nil {
			t.Fatalf("the re-decoded row does not encode: %v", err)
		}
		if !bytes.Equal(b2, b3) {
			t.Fatalf("encode(decode(x)) is not a fixed point:\n%x\n%x", b2, b3)
		}
	})
}
