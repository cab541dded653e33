package checker

import (
	"testing"
	"time"
)

func present(version int64, row string) Value {
	return Value{Present: true, Version: version, Row: row}
}

func TestCheckWindow(t *testing.T) {
	v1, v2, v3 := present(1, "a"), present(2, "b"), present(3, "c")
	gone := Value{Version: 2} // the delete of v2
	ms := int64(time.Millisecond)
	tests := []struct {
		name       string
		init       Value
		ops        []Op
		violations int
		stale      int
		phantoms   int
		staleness  time.Duration
	}{
		{
			name: "sequential reads follow writes",
			init: v1,
			ops: []Op{
				{Kind: Read, Value: v1, Call: 0, Return: 1 * ms},
				{Kind: Write, Value: v2, Call: 2 * ms, Return: 3 * ms},
				{Kind: Read, Value: v2, Call: 4 * ms, Return: 5 * ms},
			},
		},
		{
			name: "a read concurrent with a write may return either value",
			init: v1,
			ops: []Op{
				{Kind: Write, Value: v2, Call: 0, Return: 10 * ms},
				{Kind: Read, Value: v1, Call: 1 * ms, Return: 2 * ms},
				{Kind: Read, Value: v2, Call: 3 * ms, Return: 4 * ms},
			},
		},
		{
			name: "a read after the write returned must not return the old value",
			init: v1,
			ops: []Op{
				{Kind: Write, Value: v2, Call: 0, Return: 1 * ms},
				{Kind: Read, Value: v1, Call: 5 * ms, Return: 6 * ms},
			},
			violations: 1, stale: 1, staleness: 4 * time.Millisecond,
		},
		{
			name: "reads must not go back in time",
			init: v1,
			ops: []Op{
				{Kind: Write, Value: v2, Call: 0, Return: 100 * ms},
				{Kind: Read, Value: v2, Call: 1 * ms, Return: 2 * ms, Source: "db"},
				{Kind: Read, Value: v1, Call: 3 * ms, Return: 4 * ms, Source: "cached"},
			},
			violations: 1, stale: 1, staleness: 1 * time.Millisecond,
		},
		{
			name: "a value no write produced is a phantom",
			init: v1,
			ops: []Op{
				{Kind: Read, Value: present(2, "rolled back"), Call: 0, Return: 1 * ms},
			},
			violations: 1, phantoms: 1,
		},
		{
			name: "a maybe-write may have happened",
			init: v1,
			ops: []Op{
				{Kind: MaybeWrite, Value: v2, Call: 0, Return: 1 * ms},
				{Kind: Read, Value: v2, Call: 2 * ms, Return: 3 * ms},
			},
		},
		{
			name: "a maybe-write may not have happened",
			init: v1,
			ops: []Op{
				{Kind: MaybeWrite, Value: v2, Call: 0, Return: 1 * ms},
				{Kind: Read, Value: v1, Call: 2 * ms, Return: 3 * ms},
			},
		},
		{
			name: "but not both",
			init: v1,
			ops: []Op{
				{Kind: MaybeWrite, Value: v2, Call: 0, Return: 1 * ms},
				{Kind: Read, Value: v2, Call: 2 * ms, Return: 3 * ms},
				{Kind: Read, Value: v1, Call: 4 * ms, Return: 5 * ms},
			},
			violations: 1, stale: 1, staleness: 1 * time.Millisecond,
		},
		{
			name: "delete and re-insert",
			init: v2,
			ops: []Op{
				{Kind: Write, Value: gone, Call: 0, Return: 1 * ms},
				{Kind: Read, Value: Absent, Call: 2 * ms, Return: 3 * ms},
				{Kind: Write, Value: v3, Call: 4 * ms, Return: 5 * ms},
				{Kind: Read, Value: v3, Call: 6 * ms, Return: 7 * ms},
			},
		},
		{
			name: "an absent read after the re-insert returned is stale",
			init: v2,
			ops: []Op{
				{Kind: Write, Value: gone, Call: 0, Return: 1 * ms},
				{Kind: Write, Value: v3, Call: 4 * ms, Return: 5 * ms},
				{Kind: Read, Value: Absent, Call: 8 * ms, Return: 9 * ms},
			},
			violations: 1, stale: 1, staleness: 3 * time.Millisecond,
		},
		{
			name: "concurrent writes take effect in version order",
			init: v1,
			ops: []Op{
				{Kind: Write, Value: v3, Call: 0, Return: 10 * ms},
				{Kind: Write, Value: v2, Call: 0, Return: 10 * ms},
				{Kind: Read, Value: v3, Call: 11 * ms, Return: 12 * ms},
			},
		},
		{
			name: "so the older version cannot be the last one",
			init: v1,
			ops: []Op{
				{Kind: Write, Value: v3, Call: 0, Return: 10 * ms},
				{Kind: Write, Value: v2, Call: 0, Return: 10 * ms},
				{Kind: Read, Value: v2, Call: 11 * ms, Return: 12 * ms},
			},
			violations: 1, stale: 1, staleness: 1 * time.Millisecond,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for i := range tc.ops {
				tc.ops[i].Key = 7
			}
			var c Checker
			res := c.CheckWindow(map[int64]Value{7: tc.init}, 0, tc.ops)
			if res.Violations != tc.violations || res.StaleReads != tc.stale || res.Phantoms != tc.phantoms {
				t.Fatalf("got %d violations, %d stale, %d phantoms; want %d, %d, %d\n%v",
					res.Violations, res.StaleReads, res.Phantoms, tc.violations, tc.stale, tc.phantoms, c.Violations)
			}
			if c.Totals.MaxStaleness != tc.staleness {
				t.Fatalf("staleness %s, want %s", c.Totals.MaxStaleness, tc.staleness)
			}
		})
	}
}

func TestStalenessAcrossWindows(t *testing.T) {
	ms := int64(time.Millisecond)
	v1, v2 := present(1, "a"), present(2, "b")
	var c Checker
	c.CheckWindow(map[int64]Value{1: v1}, 0, []Op{{Key: 1, Kind: Write, Value: v2, Call: 1 * ms, Return: 2 * ms}})
	// A cache that kept v1 serves it in the next window.
	res := c.CheckWindow(map[int64]Value{1: v2}, 10*ms, []Op{{Key: 1, Kind: Read, Value: v1, Call: 20 * ms, Return: 21 * ms}})
	if res.Violations != 1 || res.StaleReads != 1 {
		t.Fatalf("got %+v", res)
	}
	if c.Totals.MaxStaleness != 18*time.Millisecond {
		t.Fatalf("staleness %s", c.Totals.MaxStaleness)
	}
	if c.Totals.Ops != 2 || c.Totals.Windows != 2 {
		t.Fatalf("totals %+v", c.Totals)
	}
}

// Writers queued on one row lock all overlap; with reads of every version
// in between, the check must stay fast.
func TestQueuedWritersCheckQuickly(t *testing.T) {
	ms := int64(time.Millisecond)
	var ops []Op
	for i := int64(1); i <= 40; i++ {
		v := present(i+1, "x")
		ops = append(ops, Op{Key: 1, Kind: Write, Value: v, Call: 0, Return: (100 + i) * ms, Client: int(i)})
		for r := int64(0); r < 5; r++ {
			ops = append(ops, Op{Key: 1, Kind: Read, Value: v, Call: (100 + i) * ms, Return: (100+i)*ms + ms/2, Client: 100 + int(r)})
		}
	}
	var c Checker
	c.Timeout = 5 * time.Second
	res := c.CheckWindow(map[int64]Value{1: present(1, "x")}, 0, ops)
	if res.Violations != 0 || res.Unknown != 0 {
		t.Fatalf("got %+v", res)
	}
}

// Reads stale behind writes that bypassed the cache are measured, not
// counted as violations; behind any other write they still are.
func TestBypassingWrites(t *testing.T) {
	ms := int64(time.Millisecond)
	v1, v2, v3 := present(1, "a"), present(2, "b"), present(3, "c")
	tests := []struct {
		name               string
		ops                []Op
		violations, stale  int
		behind             int
		bypassStaleness    time.Duration
		wantBypassExamples int
	}{
		{
			name: "a read behind a bypassing write",
			ops: []Op{
				{Kind: Write, Value: v2, Call: 0, Return: 1 * ms, Bypass: true},
				{Kind: Read, Value: v1, Call: 5 * ms, Return: 6 * ms},
			},
			behind: 1, bypassStaleness: 4 * time.Millisecond,
		},
		{
			name: "the same write not marked is a violation",
			ops: []Op{
				{Kind: Write, Value: v2, Call: 0, Return: 1 * ms},
				{Kind: Read, Value: v1, Call: 5 * ms, Return: 6 * ms},
			},
			violations: 1, stale: 1,
		},
		{
			name: "known by a read of the database first",
			ops: []Op{
				{Kind: Write, Value: v2, Call: 0, Return: 10 * ms, Bypass: true},
				{Kind: Read, Value: v2, Call: 1 * ms, Return: 2 * ms, Source: "db"},
				{Kind: Read, Value: v1, Call: 4 * ms, Return: 5 * ms, Source: "cached"},
				{Kind: Read, Value: v2, Call: 6 * ms, Return: 7 * ms, Source: "cached"},
			},
			behind: 1, bypassStaleness: 2 * time.Millisecond,
		},
		{
			name: "behind a write of the plugin's that followed it",
			ops: []Op{
				{Kind: Write, Value: v2, Call: 0, Return: 1 * ms, Bypass: true},
				{Kind: Write, Value: v3, Call: 2 * ms, Return: 3 * ms},
				{Kind: Read, Value: v2, Call: 5 * ms, Return: 6 * ms},
			},
			violations: 1, stale: 1,
		},
		{
			name: "behind both",
			ops: []Op{
				{Kind: Write, Value: v2, Call: 0, Return: 1 * ms, Bypass: true},
				{Kind: Write, Value: v3, Call: 2 * ms, Return: 3 * ms},
				{Kind: Read, Value: v1, Call: 5 * ms, Return: 6 * ms},
			},
			violations: 1, stale: 1,
		},
		{
			name: "an absence behind a bypassing insert, while a delete runs",
			ops: []Op{
				{Kind: Write, Value: Value{Version: 1}, Call: 0, Return: 1 * ms},
				{Kind: Write, Value: v2, Call: 2 * ms, Return: 3 * ms, Bypass: true},
				{Kind: Write, Value: Value{Version: 2}, Call: 2500 * ms / 1000, Return: 20 * ms},
				{Kind: Read, Value: Absent, Call: 4 * ms, Return: 6 * ms},
				{Kind: Read, Value: v2, Call: 7 * ms, Return: 8 * ms},
			},
			behind: 1, bypassStaleness: 1 * time.Millisecond,
		},
		{
			name: "the same insert through the plugin",
			ops: []Op{
				{Kind: Write, Value: Value{Version: 1}, Call: 0, Return: 1 * ms},
				{Kind: Write, Value: v2, Call: 2 * ms, Return: 3 * ms},
				{Kind: Write, Value: Value{Version: 2}, Call: 2500 * ms / 1000, Return: 20 * ms},
				{Kind: Read, Value: Absent, Call: 4 * ms, Return: 6 * ms},
				{Kind: Read, Value: v2, Call: 7 * ms, Return: 8 * ms},
			},
			violations: 1,
		},
		{
			name: "a row served after an absent read saw its bypassing delete",
			ops: []Op{
				{Kind: Write, Value: v2, Call: 2 * ms, Return: 20 * ms},
				{Kind: Write, Value: Value{Version: 2}, Call: 3 * ms, Return: 25 * ms, Bypass: true},
				{Kind: Read, Value: Absent, Call: 10 * ms, Return: 12 * ms},
				{Kind: Read, Value: v2, Call: 15 * ms, Return: 16 * ms},
			},
			behind: 1, bypassStaleness: 3 * time.Millisecond,
		},
		{
			name: "the same delete through the plugin",
			ops: []Op{
				{Kind: Write, Value: v2, Call: 2 * ms, Return: 20 * ms},
				{Kind: Write, Value: Value{Version: 2}, Call: 3 * ms, Return: 25 * ms},
				{Kind: Read, Value: Absent, Call: 10 * ms, Return: 12 * ms},
				{Kind: Read, Value: v2, Call: 15 * ms, Return: 16 * ms},
			},
			violations: 1,
		},
		{
			name: "a bypassing write is still a write: reads must not invent an order",
			ops: []Op{
				{Kind: Write, Value: v2, Call: 0, Return: 1 * ms, Bypass: true},
				{Kind: Read, Value: v2, Call: 2 * ms, Return: 3 * ms},
				{Kind: Read, Value: present(2, "never written"), Call: 4 * ms, Return: 5 * ms},
			},
			violations: 1,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for i := range tc.ops {
				tc.ops[i].Key = 7
			}
			var c Checker
			res := c.CheckWindow(map[int64]Value{7: v1}, 0, tc.ops)
			if res.Violations != tc.violations || res.StaleReads != tc.stale || res.BypassStale != tc.behind {
				t.Fatalf("got %+v; want %d violations, %d stale, %d behind bypassing writes\n%v",
					res, tc.violations, tc.stale, tc.behind, c.Violations)
			}
			if c.Totals.MaxBypassStaleness != tc.bypassStaleness || len(c.BypassStale) != tc.behind {
				t.Fatalf("bypass staleness %s, %d kept; want %s", c.Totals.MaxBypassStaleness, len(c.BypassStale), tc.bypassStaleness)
			}
		})
	}
}

func TestBypassStaleKeepsTheStalest(t *testing.T) {
	ms := int64(time.Millisecond)
	c := Checker{KeepExamples: 2}
	ops := []Op{{Key: 1, Kind: Write, Value: present(2, "b"), Call: 0, Return: 1 * ms, Bypass: true}}
	for _, at := range []int64{3, 9, 2, 7} {
		ops = append(ops, Op{Key: 1, Kind: Read, Value: present(1, "a"), Call: at * ms, Return: at*ms + 1, Client: int(at)})
	}
	c.CheckWindow(map[int64]Value{1: present(1, "a")}, 0, ops)
	if len(c.BypassStale) != 2 || c.BypassStale[0].Staleness != 8*time.Millisecond || c.BypassStale[1].Staleness != 6*time.Millisecond {
		t.Fatalf("kept %v", c.BypassStale)
	}
	if c.Totals.BypassStale != 4 || c.Totals.BypassWrites != 1 {
		t.Fatalf("totals %+v", c.Totals)
	}
}

// The second reading of a row with bypassing writes must start from the
// window's initial state, not from the absence the window ended with.
func TestBypassingDeleteOfARowInsertedInTheWindow(t *testing.T) {
	ms := int64(time.Millisecond)
	v2, v3 := present(2, "b"), present(3, "c")
	ops := []Op{
		{Key: 1, Kind: Write, Value: v2, Call: 0, Return: 1 * ms, Source: "insert"},
		{Key: 1, Kind: Write, Value: v3, Call: 2 * ms, Return: 20 * ms},
		{Key: 1, Kind: Write, Value: Value{Version: 3}, Call: 3 * ms, Return: 25 * ms, Bypass: true},
		{Key: 1, Kind: Read, Value: Absent, Call: 10 * ms, Return: 12 * ms},
		{Key: 1, Kind: Read, Value: v3, Call: 15 * ms, Return: 16 * ms},
	}
	var c Checker
	res := c.CheckWindow(map[int64]Value{1: Absent}, 0, ops)
	if res.Violations != 0 || res.StaleReads != 0 || res.BypassStale != 1 {
		t.Fatalf("got %+v\n%v", res, c.Violations)
	}
	// Stale from the absent read's return on, not from the window's start.
	if c.Totals.MaxBypassStaleness != 3*time.Millisecond {
		t.Fatalf("staleness %s, want 3ms", c.Totals.MaxBypassStaleness)
	}
}
