package writethrough_test

import (
	"context"
	"testing"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/gorm-writethrough/writethrough"
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
