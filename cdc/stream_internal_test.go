package cdc

import "testing"

func TestInProgressReadsTheSnapshot(t *testing.T) {
	for _, tc := range []struct {
		snap string
		xid  uint32
		want bool
	}{
		{"100:105:", 99, false},
		{"100:105:", 104, false},
		{"100:105:", 105, true}, // at the horizon: not yet visible
		{"100:105:", 200, true},
		{"100:105:101,103", 103, true},
		{"100:105:101,103", 102, false},
		{"4294967396:4294967400:4294967398", 102, true}, // epoch 1: low bits 100, 104, 102
		{"4294967396:4294967400:4294967398", 101, false},
		{"4294967290:4294967300:", 4294967295, false}, // across the 32-bit wrap: 0xFFFFFFFF < xmax 4 (mod 2^32)
		{"4294967290:4294967300:", 4, true},
		{"garbage", 1, false},
	} {
		if got := inProgress(tc.snap, tc.xid); got != tc.want {
			t.Errorf("inProgress(%q, %d) = %v, want %v", tc.snap, tc.xid, got, tc.want)
		}
	}
}
