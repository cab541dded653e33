package writethrough_test

import (
	"context"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"
	"gorm.io/gorm"

	"github.com/gorm-writethrough/writethrough"
	"github.com/gorm-writethrough/writethrough/internal/redisproc"
)

// The hit paths beside the floor they wrap: a go-redis GET of the same row,
// msgpack-encoded, plus msgpack.Unmarshal. Cross-contender comparisons live
// in bench/.

func benchEnv(b *testing.B) (*env, User) {
	e := setup(b, nil, writethrough.Config{})
	u := User{Email: "bench@x", Name: "Bench", Balance: 42}
	if err := e.db.Create(&u).Error; err != nil {
		b.Fatal(err)
	}
	return e, u
}

func BenchmarkFloorGet(b *testing.B) {
	e, u := benchEnv(b)
	ctx := context.Background()
	raw, _ := msgpack.Marshal(&u)
	key := e.prefix + ":floor"
	if err := e.rdb.Set(ctx, key, raw, 0).Err(); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		bs, err := e.rdb.Get(ctx, key).Bytes()
		if err != nil {
			b.Fatal(err)
		}
		var out User
		if err := msgpack.Unmarshal(bs, &out); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkGetHit(b *testing.B) {
	e, u := benchEnv(b)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := writethrough.Get[User](ctx, e.db, u.ID); err != nil {
			b.Fatal(err)
		}
	}
	if hits := e.p.Stats().Hits; hits < uint64(b.N) {
		b.Fatalf("%d hits for %d reads", hits, b.N)
	}
}

func BenchmarkCachedFirstHit(b *testing.B) {
	e, u := benchEnv(b)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var out User
		if err := e.db.Scopes(writethrough.Cached).First(&out, u.ID).Error; err != nil {
			b.Fatal(err)
		}
	}
	if hits := e.p.Stats().Hits; hits < uint64(b.N) {
		b.Fatalf("%d hits for %d reads", hits, b.N)
	}
}

func BenchmarkUpdateByKey(b *testing.B) {
	e, u := benchEnv(b)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := e.db.Model(&User{ID: u.ID}).Update("balance", i).Error; err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkUpdateReplicated is the price of Config.WaitReplicas: updates on
// a private Redis with one replica, without and with waiting for it, in
// GORM's own transaction (the prepare runs beside the statement) and in
// one of the caller's (the prepare runs just before COMMIT).
//
//	go test -run XXX -bench UpdateReplicated -benchtime 3000x -count 5 .
func BenchmarkUpdateReplicated(b *testing.B) {
	master := redisproc.Start(b, "--repl-diskless-sync-delay", "0")
	host, port, _ := net.SplitHostPort(master.Addr())
	redisproc.Start(b, "--replicaof", host, port)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := redisproc.WaitAcked(ctx, master.Client(b), "bench:probe", 1); err != nil {
		b.Fatal(err)
	}
	for _, wait := range []int{0, 1} {
		db, _ := openDB(b, nil)
		install(b, db, master.Client(b), writethrough.Config{Prefix: "br" + strconv.Itoa(wait), DrainInterval: -1, WaitReplicas: wait})
		if err := db.AutoMigrate(&User{}); err != nil {
			b.Fatal(err)
		}
		u := User{Email: "bench@x", Name: "Bench", Balance: 42}
		if err := db.Create(&u).Error; err != nil {
			b.Fatal(err)
		}
		name := "wait=" + strconv.Itoa(wait)
		b.Run(name+"/implicit-tx", func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if err := db.Model(&User{ID: u.ID}).Update("balance", i).Error; err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(name+"/caller-tx", func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				err := db.Transaction(func(tx *gorm.DB) error {
					return tx.Model(&User{ID: u.ID}).Update("balance", i).Error
				})
				if err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
