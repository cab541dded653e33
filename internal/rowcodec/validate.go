package rowcodec

import "encoding/binary"

// validMsgpack walks b and checks that it is exactly one msgpack value whose
// every length fits in the bytes that remain (so decoding cannot be made to
// allocate more than len(b)), nested at most 32 deep. When arrayLen >= 0 the
// value must be an array of that length.
func validMsgpack(b []byte, arrayLen int) error {
	if arrayLen >= 0 {
		n, hdr, ok := arrayHeader(b)
		if !ok || n != arrayLen {
			return ErrCorrupt
		}
		rest, ok := skipN(b[hdr:], n, 0)
		if !ok || len(rest) != 0 {
			return ErrCorrupt
		}
		return nil
	}
	rest, ok := skipValue(b, 0)
	if !ok || len(rest) != 0 {
		return ErrCorrupt
	}
	return nil
}

// arrayHeader reads the header of a msgpack array: its length n and the
// header's size hdr.
func arrayHeader(b []byte) (n, hdr int, ok bool) {
	if len(b) == 0 {
		return 0, 0, false
	}
	switch c := b[0]; {
	case c >= 0x90 && c <= 0x9f:
		return int(c & 0x0f), 1, true
	case c == 0xdc && len(b) >= 3:
		return int(binary.BigEndian.Uint16(b[1:])), 3, true
	case c == 0xdd && len(b) >= 5:
		return int(binary.BigEndian.Uint32(b[1:])), 5, true
	}
	return 0, 0, false
}

// skipN skips n values and returns what follows them. A count larger than
// the bytes left is refused before anything is read: every value takes at
// least one byte.
func skipN(b []byte, n, depth int) ([]byte, bool) {
	if n > len(b) {
		return nil, false
	}
	for i := 0; i < n; i++ {
		var ok bool
		if b, ok = skipValue(b, depth); !ok {
			return nil, false
		}
	}
	return b, true
}

// skipValue skips one value, depth levels down, and returns what follows
// it, or false when the value is malformed, longer than b or too deep.
func skipValue(b []byte, depth int) ([]byte, bool) {
	if len(b) == 0 || depth > 32 {
		return nil, false
	}
	c := b[0]
	body := func(hdr, n int) ([]byte, bool) {
		if n < 0 || len(b) < hdr || len(b)-hdr < n {
			return nil, false
		}
		return b[hdr+n:], true
	}
	u8 := func() int {
		if len(b) < 2 {
			return -1
		}
		return int(b[1])
	}
	u16 := func() int {
		if len(b) < 3 {
			return -1
		}
		return int(binary.BigEndian.Uint16(b[1:]))
	}
	u32 := func() int {
		if len(b) < 5 {
			return -1
		}
		return int(binary.BigEndian.Uint32(b[1:]))
	}
	switch {
	case c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3:
		return b[1:], true
	case c >= 0x80 && c <= 0x8f:
		return skipN(b[1:], 2*int(c&0x0f), depth+1)
	case c >= 0x90 && c <= 0x9f:
		return skipN(b[1:], int(c&0x0f), depth+1)
	case c >= 0xa0 && c <= 0xbf:
		return body(1, int(c&0x1f))
	}
	switch c {
	case 0xc4, 0xd9: // bin8, str8
		return body(2, u8())
	case 0xc5, 0xda: // bin16, str16
		return body(3, u16())
	case 0xc6, 0xdb: // bin32, str32
		return body(5, u32())
	case 0xc7: // ext8
		return body(3, u8())
	case 0xc8: // ext16
		if n := u16(); n >= 0 {
			return body(4, n)
		}
	case 0xc9: // ext32
		if n := u32(); n >= 0 {
			return body(6, n)
		}
	case 0xca:
		return body(1, 4)
	case 0xcb:
		return body(1, 8)
	case 0xcc, 0xd0:
		return body(1, 1)
	case 0xcd, 0xd1:
		return body(1, 2)
	case 0xce, 0xd2:
		return body(1, 4)
	case 0xcf, 0xd3:
		return body(1, 8)
	case 0xd4:
		return body(2, 1)
	case 0xd5:
		return body(2, 2)
	case 0xd6:
		return body(2, 4)
	case 0xd7:
		return body(2, 8)
	case 0xd8:
		return body(2, 16)
	case 0xdc:
		if n := u16(); n >= 0 {
			return skipN(b[3:], n, depth+1)
		}
	case 0xdd:
		if n := u32(); n >= 0 {
			return skipN(b[5:], n, depth+1)
		}
	case 0xde:
		if n := u16(); n >= 0 {
			return skipN(b[3:], 2*n, depth+1)
		}
	case 0xdf:
		if n := u32(); n >= 0 {
			return skipN(b[5:], 2*n, depth+1)
		}
	}
	return nil, false
}
