package cdc_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/gorm-writethrough/writethrough"
)

type Reading struct {
	ID  int64 `gorm:"primaryKey" cache:"ttl:1h"`
	Day int   `gorm:"primaryKey"`
	V   int
}

// TestPartitionedTables: a partitioned table's changes are written to its
// partitions; the consumer follows them under the table's own name, with
// the publication it makes and with one made elsewhere without
// publish_via_partition_root.
func TestPartitionedTables(t *testing.T) {
	for _, premade := range []bool{false, true} {
		name := "own publication"
		if premade {
			name = "publication made elsewhere"
		}
		t.Run(name, func(t *testing.T) {
			r := newRig(t, &Account{})
			r.exec(`CREATE TABLE readings (id bigint, day int, v int NOT NULL DEFAULT 0, PRIMARY KEY (id, day)) PARTITION BY LIST (day)`)
			r.exec(`CREATE TABLE readings_1 PARTITION OF readings FOR VALUES IN (1)`)
			r.exec(`CREATE TABLE readings_2 PARTITION OF readings FOR VALUES IN (2)`)
			r.exec(`INSERT INTO readings (id, day, v) VALUES (1, 1, 10), (2, 2, 20)`)
			if premade {
				r.exec(`CREATE PUBLICATION ` + r.cfg.Publication + ` FOR TABLE readings, accounts`)
			}
			r.cfg.Models = []any{&Account{}, &Reading{}}
			r.start()
			r.caughtUp()
			ctx := context.Background()
			for _, k := range []Reading{{ID: 1, Day: 1}, {ID: 2, Day: 2}} {
				var got Reading
				if err := r.db.Scopes(writethrough.Cached).Where(&k).First(&got).Error; err != nil {
					t.Fatal(err)
				}
				e, err := writethrough.Inspect(ctx, r.db, &Reading{}, []any{k.ID, k.Day})
				if err != nil || e.State != writethrough.EntryCommitted {
					t.Fatalf("key %v before the raw update: %v %v", k, e.State, err)
				}
			}
			r.exec("UPDATE readings SET v = v + 1")
			for _, k := range []Reading{{ID: 1, Day: 1}, {ID: 2, Day: 2}} {
				r.gone(&Reading{}, []any{k.ID, k.Day})
			}
			var via bool
			if err := r.raw.QueryRow(ctx, "SELECT pubviaroot FROM pg_publication WHERE pubname = $1", r.cfg.Publication).Scan(&via); err != nil && err != pgx.ErrNoRows {
				t.Fatal(err)
			}
			if !via {
				t.Fatal("the publication does not publish via the partition root")
			}
		})
	}
}
