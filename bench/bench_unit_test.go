package bench_test

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"
	"gorm.io/gorm/schema"

	"github.com/gorm-writethrough/writethrough/bench"
)

func TestUserHasTheTenColumnsOfColumns(t *testing.T) {
	t.Parallel()
	s, err := schema.Parse(&bench.User{}, &sync.Map{}, schema.NamingStrategy{})
	if err != nil {
		t.Fatal(err)
	}
	var got string
	for i, name := range s.DBNames {
		if i > 0 {
			got += ", "
		}
		got += name
	}
	if got != bench.Columns {
		t.Errorf("columns %q, want %q", got, bench.Columns)
	}
	if s.Table != "users" {
		t.Errorf("table %q, want users", s.Table)
	}
}

func TestMakeUserRowsAreTheDocumentedSize(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC)
	for _, id := range []int64{1, 99_999, 100_000} {
		u := bench.MakeUser(id, at)
		if len(u.Bio) != bench.BioLen {
			t.Errorf("id %d: bio is %d bytes, want %d", id, len(u.Bio), bench.BioLen)
		}
		buf, err := msgpack.Marshal(&u)
		if err != nil {
			t.Fatal(err)
		}
		if n := len(buf); n < 330 || n > 400 {
			t.Errorf("id %d: msgpack row is %d bytes, want about 360", id, n)
		}
	}
}

func TestPhaserNeverOverlapsParties(t *testing.T) {
	t.Parallel()
	const parties, goroutines, perG = 3, 8, 300
	p := newPhaser(parties, time.Millisecond)
	var inflight [parties]atomic.Int64
	var wg sync.WaitGroup
	for range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range perG {
				who := p.enter()
				inflight[who].Add(1)
				for other := range parties {
					if other != who && inflight[other].Load() != 0 {
						t.Errorf("party %d runs during party %d's phase", other, who)
					}
				}
				time.Sleep(50 * time.Microsecond)
				inflight[who].Add(-1)
				p.exit(who)
			}
		}()
	}
	wg.Wait()
	var total int64
	for i, n := range p.ops {
		if n == 0 {
			t.Errorf("party %d never ran", i)
		}
		total += n
	}
	if total != goroutines*perG {
		t.Errorf("counted %d operations, want %d", total, goroutines*perG)
	}
	for i, r := range p.rates() {
		if r <= 0 {
			t.Errorf("party %d: rate %v", i, r)
		}
	}
}
