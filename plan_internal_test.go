package writethrough

import (
	"context"
	"net"
	"reflect"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/redis/go-redis/v9"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"
	"gorm.io/gorm/logger"
)

type pUser struct {
	ID   uint `gorm:"primaryKey" cache:"ttl:10m"`
	Name string
}

type pSoft struct {
	ID        int64 `gorm:"primaryKey" cache:"ttl:10m"`
	Name      string
	DeletedAt gorm.DeletedAt
}

type pPair struct {
	A    int `gorm:"primaryKey" cache:"ttl:10m"`
	B    int `gorm:"primaryKey"`
	Name string
}

// countingListener accepts connections on a loopback port and counts them:
// a DSN or a Redis address that must never be dialled.
func countingListener(t *testing.T) (port int, accepted *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	accepted = &atomic.Int64{}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			_ = c.Close()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port, accepted
}

// planned is what the plugin's plan made of the last statement.
type planned struct {
	called bool
	plan   readPlan
	ok     bool
	err    error
}

// dryPlanner returns a GORM database on the PostgreSQL dialect in DryRun
// mode, whose queries are handed to the plugin's plan (with the plugin
// never registered), and what plan made of the last one. Neither the
// database nor Redis is ever dialled: the test fails if either is.
func dryPlanner(t *testing.T) (*gorm.DB, *Plugin, *planned) {
	t.Helper()
	pgPort, pgDials := countingListener(t)
	redisPort, redisDials := countingListener(t)
	dsn := "host=127.0.0.1 port=" + strconv.Itoa(pgPort) + " user=nobody dbname=nowhere sslmode=disable"
	db, err := gorm.Open(postgres.Open(dsn), &gorm.Config{DryRun: true, DisableAutomaticPing: true, Logger: logger.Discard})
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:" + strconv.Itoa(redisPort)})
	p := New(rdb, Config{DrainInterval: -1})
	t.Cleanup(func() {
		_ = p.Close()
		_ = rdb.Close()
		sqlDB, _ := db.DB()
		_ = sqlDB.Close()
		if n := pgDials.Load() + redisDials.Load(); n != 0 {
			t.Errorf("the planner dialled a server %d times", n)
		}
	})
	out := &planned{}
	err = db.Callback().Query().Before("gorm:query").Register("test:plan", func(tx *gorm.DB) {
		*out = planned{called: true}
		spec, err := p.specOf(tx.Statement.Schema)
		if err != nil || spec == nil {
			out.err = err
			return
		}
		out.plan, out.ok = planRead(tx, spec)
	})
	if err != nil {
		t.Fatal(err)
	}
	return db, p, out
}

func TestPlanRecognisesPrimaryKeyLookups(t *testing.T) {
	db, _, got := dryPlanner(t)
	type result struct {
		ok    bool
		keys  []string
		multi bool
		desc  bool
	}
	no := result{}
	one := func(keys ...string) result { return result{ok: true, keys: keys} }
	many := func(keys ...string) result { return result{ok: true, keys: keys, multi: true} }
	var u pUser
	var us []pUser
	var ups []*pUser
	cases := []struct {
		name string
		run  func(db *gorm.DB) *gorm.DB
		want result
	}{
		{"First with an inline key", func(db *gorm.DB) *gorm.DB { return db.First(&pUser{}, 1) }, one("wt:p_users:1")},
		{"Take with an inline string key", func(db *gorm.DB) *gorm.DB { return db.Take(&pUser{}, "7") }, one("wt:p_users:7")},
		{"Where id = ?", func(db *gorm.DB) *gorm.DB { return db.Where("id = ?", 3).First(&pUser{}) }, one("wt:p_users:3")},
		{"Where with the table and quotes", func(db *gorm.DB) *gorm.DB { return db.Where(`"p_users"."id" = ?`, 3).First(&pUser{}) }, one("wt:p_users:3")},
		{"Where IN (?) of one value", func(db *gorm.DB) *gorm.DB { return db.Where("id IN (?)", 4).First(&pUser{}) }, one("wt:p_users:4")},
		{"a map condition", func(db *gorm.DB) *gorm.DB { return db.Where(map[string]any{"id": 5}).First(&pUser{}) }, one("wt:p_users:5")},
		{"a struct condition", func(db *gorm.DB) *gorm.DB { return db.Where(&pUser{ID: 6}).Take(&pUser{}) }, one("wt:p_users:6")},
		{"the destination's own key", func(db *gorm.DB) *gorm.DB { return db.First(&pUser{ID: 8}) }, one("wt:p_users:8")},
		{"the destination's key agrees with the condition", func(db *gorm.DB) *gorm.DB { return db.First(&pUser{ID: 8}, 8) }, one("wt:p_users:8")},
		{"the same key twice", func(db *gorm.DB) *gorm.DB { return db.Where("id = ?", 2).Where("id = ?", 2).First(&pUser{}) }, one("wt:p_users:2")},
		{"Find of a list", func(db *gorm.DB) *gorm.DB { return db.Find(&us, []uint{3, 1, 3}) }, many("wt:p_users:3", "wt:p_users:1")},
		{"Find into pointers", func(db *gorm.DB) *gorm.DB { return db.Find(&ups, []uint{1, 2}) }, many("wt:p_users:1", "wt:p_users:2")},
		{"Where IN ?", func(db *gorm.DB) *gorm.DB { return db.Where("id IN ?", []int{1, 2}).Find(&us) }, many("wt:p_users:1", "wt:p_users:2")},
		{"Find of one key into a slice", func(db *gorm.DB) *gorm.DB { return db.Find(&us, 9) }, many("wt:p_users:9")},
		{"Order by the key, descending", func(db *gorm.DB) *gorm.DB { return db.Order("id desc").Find(&us, []uint{1, 2}) },
			result{ok: true, keys: []string{"wt:p_users:1", "wt:p_users:2"}, multi: true, desc: true}},
		{"a Limit not below the keys", func(db *gorm.DB) *gorm.DB { return db.Limit(2).Find(&us, []uint{1, 2}) }, many("wt:p_users:1", "wt:p_users:2")},
		{"soft delete is the only added clause", func(db *gorm.DB) *gorm.DB { return db.First(&pSoft{}, 1) }, one("wt:p_softs:1")},
		{"a composite key from the destination", func(db *gorm.DB) *gorm.DB { return db.First(&pPair{A: 1, B: 2}) }, one("wt:p_pairs:1:2")},
		{"a composite key from a struct condition", func(db *gorm.DB) *gorm.DB { return db.Where(&pPair{A: 3, B: 4}).Take(&pPair{}) }, one("wt:p_pairs:3:4")},

		{"keys that disagree", func(db *gorm.DB) *gorm.DB { return db.First(&pUser{ID: 2}, 1) }, no},
		{"two conditions naming different keys", func(db *gorm.DB) *gorm.DB { return db.Where("id = ?", 1).Where("id = ?", 2).First(&pUser{}) }, no},
		{"no condition", func(db *gorm.DB) *gorm.DB { return db.First(&u) }, no},
		{"Find of every row", func(db *gorm.DB) *gorm.DB { return db.Find(&us) }, no},
		{"a condition on another column", func(db *gorm.DB) *gorm.DB { return db.Where("name = ?", "x").First(&pUser{}) }, no},
		{"the key and another column", func(db *gorm.DB) *gorm.DB { return db.Where("id = ? AND name = ?", 1, "x").First(&pUser{}) }, no},
		{"a range", func(db *gorm.DB) *gorm.DB { return db.Where("id > ?", 1).First(&pUser{}) }, no},
		{"Or", func(db *gorm.DB) *gorm.DB { return db.Where("id = ?", 1).Or("id = ?", 2).Find(&us) }, no},
		{"Not", func(db *gorm.DB) *gorm.DB { return db.Not("id = ?", 1).First(&pUser{}) }, no},
		{"NULL", func(db *gorm.DB) *gorm.DB { return db.Where("id = ?", nil).First(&pUser{}) }, no},
		{"= ? with a list", func(db *gorm.DB) *gorm.DB { return db.Where("id = ?", []int{1, 2}).Find(&us) }, no},
		{"IN (?) with a list", func(db *gorm.DB) *gorm.DB { return db.Where("id IN (?)", []int{1, 2}).Find(&us) }, no},
		{"one key into a struct from a list of two", func(db *gorm.DB) *gorm.DB { return db.First(&pUser{}, []uint{1, 2}) }, no},
		{"Select", func(db *gorm.DB) *gorm.DB { return db.Select("name").First(&pUser{}, 1) }, no},
		{"Omit", func(db *gorm.DB) *gorm.DB { return db.Omit("name").First(&pUser{}, 1) }, no},
		{"Distinct", func(db *gorm.DB) *gorm.DB { return db.Distinct().Find(&us, []uint{1}) }, no},
		{"Joins", func(db *gorm.DB) *gorm.DB {
			return db.Joins("JOIN p_softs ON p_softs.id = p_users.id").First(&pUser{}, 1)
		}, no},
		{"Unscoped", func(db *gorm.DB) *gorm.DB { return db.Unscoped().First(&pSoft{}, 1) }, no},
		{"another table", func(db *gorm.DB) *gorm.DB { return db.Table("other_users").First(&pUser{}, 1) }, no},
		{"a Limit below the keys", func(db *gorm.DB) *gorm.DB { return db.Limit(1).Find(&us, []uint{1, 2}) }, no},
		{"an Offset", func(db *gorm.DB) *gorm.DB { return db.Offset(1).Find(&us, []uint{1, 2}) }, no},
		{"Group", func(db *gorm.DB) *gorm.DB { return db.Group("name").Find(&us, []uint{1, 2}) }, no},
		{"Order by another column", func(db *gorm.DB) *gorm.DB { return db.Order("name").Find(&us, []uint{1, 2}) }, no},
		{"FOR UPDATE", func(db *gorm.DB) *gorm.DB {
			return db.Clauses(clause.Locking{Strength: clause.LockingStrengthUpdate}).First(&pUser{}, 1)
		}, no},
		{"a composite key missing a column", func(db *gorm.DB) *gorm.DB { return db.Where("a = ?", 1).Take(&pPair{}) }, no},
		{"a composite key's columns in one expression", func(db *gorm.DB) *gorm.DB { return db.Where("a = ? AND b = ?", 1, 2).Take(&pPair{}) }, no},
		{"a destination of another type", func(db *gorm.DB) *gorm.DB {
			var names []string
			return db.Model(&pUser{}).Where("id IN ?", []int{1}).Find(&names)
		}, no},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			*got = planned{}
			if err := tc.run(db.Session(&gorm.Session{NewDB: true})).Error; err != nil {
				t.Fatalf("statement: %v", err)
			}
			if !got.called || got.err != nil {
				t.Fatalf("the statement never reached plan (%v)", got.err)
			}
			res := result{ok: got.ok, keys: got.plan.keys, multi: got.plan.multi, desc: got.plan.desc}
			if !reflect.DeepEqual(res, tc.want) {
				t.Errorf("plan = %+v, want %+v", res, tc.want)
			}
		})
	}
}

// condKeys on conditions built by hand, as GORM or a caller's clause.Expr
// could spell them.
func TestCondKeysAcceptOnlyPlainKeyConditions(t *testing.T) {
	db, p, _ := dryPlanner(t)
	specOf := func(model any) *modelSpec {
		spec, err := p.specFor(db, model)
		if err != nil || spec == nil {
			t.Fatalf("spec of %T: %v", model, err)
		}
		return spec
	}
	user, pair := specOf(&pUser{}), specOf(&pPair{})
	col := func(name string) clause.Column { return clause.Column{Name: name} }
	var nilInt *int
	cases := []struct {
		name  string
		spec  *modelSpec
		conds []clause.Expression
		want  []string // nil: not a lookup
	}{
		{"Eq on the key", user, []clause.Expression{clause.Eq{Column: col("id"), Value: 1}}, []string{"wt:p_users:1"}},
		{"Eq on the primary-key placeholder", user, []clause.Expression{clause.Eq{Column: col(clause.PrimaryKey), Value: 2}}, []string{"wt:p_users:2"}},
		{"Eq on the current table's key", user, []clause.Expression{clause.Eq{Column: clause.Column{Table: clause.CurrentTable, Name: "id"}, Value: 3}}, []string{"wt:p_users:3"}},
		{"Eq with a list is IN", user, []clause.Expression{clause.Eq{Column: col("id"), Value: []int{1, 2}}}, []string{"wt:p_users:1", "wt:p_users:2"}},
		{"IN", user, []clause.Expression{clause.IN{Column: col("id"), Values: []any{4, 5}}}, []string{"wt:p_users:4", "wt:p_users:5"}},
		{"IN of one packed list", user, []clause.Expression{clause.IN{Column: col("id"), Values: []any{[]any{6, 7}}}}, []string{"wt:p_users:6", "wt:p_users:7"}},
		{"Expr id = ?", user, []clause.Expression{clause.Expr{SQL: "id = ?", Vars: []any{8}}}, []string{"wt:p_users:8"}},
		{"two conditions naming the same keys", user, []clause.Expression{
			clause.IN{Column: col("id"), Values: []any{1, 2}}, clause.IN{Column: col("id"), Values: []any{2, 1}},
		}, []string{"wt:p_users:1", "wt:p_users:2"}},
		{"composite", pair, []clause.Expression{clause.Eq{Column: col("a"), Value: 1}, clause.Eq{Column: col("b"), Value: 2}}, []string{"wt:p_pairs:1:2"}},
		{"composite, a column repeated alike", pair, []clause.Expression{
			clause.Eq{Column: col("a"), Value: 1}, clause.Eq{Column: col("b"), Value: 2}, clause.Eq{Column: col("a"), Value: 1},
		}, []string{"wt:p_pairs:1:2"}},

		{"nothing", user, nil, nil},
		{"two conditions naming different keys", user, []clause.Expression{
			clause.IN{Column: col("id"), Values: []any{1, 2}}, clause.IN{Column: col("id"), Values: []any{1, 3}},
		}, nil},
		{"a nil pointer", user, []clause.Expression{clause.Eq{Column: col("id"), Value: nilInt}}, nil},
		{"nil", user, []clause.Expression{clause.Eq{Column: col("id"), Value: nil}}, nil},
		{"an expression value", user, []clause.Expression{clause.Eq{Column: col("id"), Value: clause.Expr{SQL: "1"}}}, nil},
		{"Expr without parentheses", user, []clause.Expression{clause.Expr{SQL: "id = ?", Vars: []any{1}, WithoutParentheses: true}}, nil},
		{"Expr of two values", user, []clause.Expression{clause.Expr{SQL: "id = ? OR id = ?", Vars: []any{1, 2}}}, nil},
		{"Neq", user, []clause.Expression{clause.Neq{Column: col("id"), Value: 1}}, nil},
		{"another column", user, []clause.Expression{clause.Eq{Column: col("name"), Value: "x"}}, nil},
		{"another table's key", user, []clause.Expression{clause.Eq{Column: clause.Column{Table: "p_softs", Name: "id"}, Value: 1}}, nil},
		{"a raw column", user, []clause.Expression{clause.Eq{Column: clause.Column{Name: "id", Raw: true}, Value: 1}}, nil},
		{"an aliased column", user, []clause.Expression{clause.Eq{Column: clause.Column{Name: "id", Alias: "x"}, Value: 1}}, nil},
		{"composite, one column", pair, []clause.Expression{clause.Eq{Column: col("a"), Value: 1}}, nil},
		{"composite, the placeholder", pair, []clause.Expression{clause.Eq{Column: col(clause.PrimaryKey), Value: 1}}, nil},
		{"composite, IN of two", pair, []clause.Expression{clause.IN{Column: col("a"), Values: []any{1, 2}}, clause.Eq{Column: col("b"), Value: 2}}, nil},
		{"composite, a column repeated differently", pair, []clause.Expression{
			clause.Eq{Column: col("a"), Value: 1}, clause.Eq{Column: col("b"), Value: 2}, clause.Eq{Column: col("a"), Value: 3},
		}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st := &gorm.Statement{DB: db, Table: tc.spec.sch.Table, Context: context.Background()}
			keys, ok := condKeys(st, tc.spec, tc.conds)
			if !ok {
				keys = nil
			}
			if !reflect.DeepEqual(keys, tc.want) {
				t.Errorf("condKeys = %q (%v), want %q", keys, ok, tc.want)
			}
		})
	}
}
