package keyspec

import "strings"

// Slot returns the Redis Cluster hash slot of key: CRC16 (XMODEM) modulo
// 16384 of the key's hash tag, the text between the first '{' and the
// first '}' after it when that text is not empty, or of the whole key.
func Slot(key string) uint16 {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			key = key[i+1 : i+1+j]
		}
	}
	var crc uint16
	for i := 0; i < len(key); i++ {
		crc ^= uint16(key[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc % 16384
}
