package writethrough_test

// The rig: every test of this package gets its database, its Redis and its
// plugin from here, and the helpers that several test files share live
// here too. It builds on internal/testenv (a schema and a key prefix of the
// test's own on the shared servers, skipped under -short), internal/redisproc
// (a redis-server of the test's own) and internal/testrig (what the tests of
// other packages share as well).
//
//	setup             the shared servers: most tests
//	setupFault        a redis-server of the test's own, to kill, pause or fill
//	setupBehindProxy  the same, reached through a fault proxy
//	setupProxied      the database behind a fault proxy
//	newEnv            what they all call: rigOpts says what to build
//	install           a plugin on a database the test opened itself
//
// The bigger harnesses build on these: newTwin (twin_test.go), the
// linearizability runs (newPluginRun, consistency_test.go) and the fault
// matrix (newFaultRun, fault_test.go).

import (
	"context"
	"errors"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"

	"github.com/gorm-writethrough/writethrough"
	"github.com/gorm-writethrough/writethrough/internal/faultproxy"
	"github.com/gorm-writethrough/writethrough/internal/redisproc"
	"github.com/gorm-writethrough/writethrough/internal/testenv"
	"github.com/gorm-writethrough/writethrough/internal/testrig"
)

// User is the rig's default model.
type User struct {
	ID        uint   `gorm:"primaryKey" cache:"ttl:10m"`
	Email     string `gorm:"uniqueIndex"`
	Name      string
	Balance   int64
	Status    string `gorm:"default:active"`
	CreatedAt time.Time
	UpdatedAt time.Time
	finds     int `gorm:"-"`
}

func (u *User) AfterFind(*gorm.DB) error {
	u.finds++
	return nil
}

// env is one test's database, Redis and plugin.
type env struct {
	db     *gorm.DB
	rdb    *redis.Client // the plugin's client
	prefix string
	p      *writethrough.Plugin
	sqls   *atomic.Int64     // statements that reached the database
	srv    *redisproc.Server // the test's own redis-server; nil on the shared one
}

// rigOpts says what newEnv builds. The zero value: a plugin configured as
// the zero Config (but for its Prefix) on the shared servers, and the User
// table.
type rigOpts struct {
	// gorm is the database's configuration; nil means &gorm.Config{}. Its
	// Logger is replaced by a statement counter (env.sqls).
	gorm *gorm.Config
	// cfg goes to writethrough.New as it is, but for an empty Prefix on the
	// shared Redis, which becomes the test's own prefix.
	cfg writethrough.Config
	// models are migrated once the plugin is registered; none means User.
	models []any
	// own starts a redis-server of the test's own (redisproc), started with
	// redisArgs; the plugin's client is a testrig.FaultClient, which never
	// retries.
	own       bool
	redisArgs []string
	// via, with own, gives the address the plugin reaches the server at
	// (through a fault proxy); nil means the server's own.
	via func(*redisproc.Server) string
	// db is a database the caller opened, with its statement counter sqls;
	// nil means a schema of the test's own (testenv.Postgres).
	db   *gorm.DB
	sqls *atomic.Int64
}

// newEnv builds what o says: the database, Redis, the plugin registered on
// the database (closed when the test ends) and the migrated models.
func newEnv(t testing.TB, o rigOpts) *env {
	t.Helper()
	e := &env{db: o.db, sqls: o.sqls}
	if e.db == nil {
		e.db, e.sqls = openDB(t, o.gorm)
	}
	cfg := o.cfg
	if o.own {
		e.srv = redisproc.Start(t, o.redisArgs...)
		addr := e.srv.Addr()
		if o.via != nil {
			addr = o.via(e.srv)
		}
		e.rdb = testrig.FaultClient(t, addr)
	} else {
		var prefix string
		e.rdb, prefix = testenv.Redis(t)
		if cfg.Prefix == "" {
			cfg.Prefix = prefix
		}
	}
	e.prefix = cfg.Prefix
	if e.prefix == "" {
		e.prefix = "wt" // Config.Prefix's default
	}
	e.p = install(t, e.db, e.rdb, cfg)
	models := o.models
	if len(models) == 0 {
		models = []any{&User{}}
	}
	require.NoError(t, e.db.AutoMigrate(models...))
	return e
}

// openDB opens a database on a schema of the test's own, with a counter of
// the statements it sends. A nil gcfg means &gorm.Config{}; its Logger is
// replaced.
func openDB(t testing.TB, gcfg *gorm.Config) (*gorm.DB, *atomic.Int64) {
	t.Helper()
	if gcfg == nil {
		gcfg = &gorm.Config{}
	}
	n := testrig.CountSQL(gcfg)
	return testenv.Postgres(t, gcfg), n
}

// install registers a plugin for rdb with cfg on db and closes it when the
// test ends (before the database closes).
func install(t testing.TB, db *gorm.DB, rdb redis.UniversalClient, cfg writethrough.Config) *writethrough.Plugin {
	t.Helper()
	p := writethrough.New(rdb, cfg)
	t.Cleanup(func() { _ = p.Close() })
	require.NoError(t, db.Use(p))
	return p
}

// setup is a test on the shared servers. The plugin runs no background
// drainer unless cfg asks for one, so that env.sqls counts only the test's
// statements.
func setup(t testing.TB, gcfg *gorm.Config, cfg writethrough.Config, models ...any) *env {
	t.Helper()
	if cfg.DrainInterval == 0 {
		cfg.DrainInterval = -1 // no background statements: the SQL counter counts only the test's
	}
	return newEnv(t, rigOpts{gorm: gcfg, cfg: cfg, models: models})
}

// setupFault is a test with a redis-server of its own, started with args,
// which it may break. Unless cfg says otherwise: prefix "fault", Timeout
// 200ms, and no background drainer (tests drain explicitly).
func setupFault(t *testing.T, cfg writethrough.Config, args ...string) *env {
	t.Helper()
	return newEnv(t, rigOpts{cfg: faultDefaults(cfg), own: true, redisArgs: args})
}

// setupBehindProxy is setupFault with Redis reached through a fault proxy:
// Block makes commands fail without ever reaching Redis.
func setupBehindProxy(t *testing.T, cfg writethrough.Config) (*env, *faultproxy.Proxy) {
	t.Helper()
	var proxy *faultproxy.Proxy
	e := newEnv(t, rigOpts{cfg: faultDefaults(cfg), own: true, via: func(srv *redisproc.Server) string {
		proxy = faultproxy.New(t, srv.Addr())
		return proxy.Addr()
	}})
	return e, proxy
}

func faultDefaults(cfg writethrough.Config) writethrough.Config {
	if cfg.Prefix == "" {
		cfg.Prefix = "fault"
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 200 * time.Millisecond
	}
	if cfg.DrainInterval == 0 {
		cfg.DrainInterval = -1 // tests drain explicitly
	}
	return cfg
}

// setupProxied is setup with the database behind a fault proxy, migrating
// models; direct reaches the same schema without it. The pool keeps no
// idle connections, so that cutting the proxy's links breaks only the
// statement in flight.
func setupProxied(t testing.TB, cfg writethrough.Config, models ...any) (e *env, proxy *faultproxy.Proxy, direct *gorm.DB) {
	t.Helper()
	dsn := testenv.PostgresDSN(t)
	pc, err := pgx.ParseConfig(dsn)
	require.NoError(t, err)
	target := net.JoinHostPort(pc.Host, strconv.Itoa(int(pc.Port)))
	proxy = faultproxy.New(t, target)
	host, port, err := net.SplitHostPort(proxy.Addr())
	require.NoError(t, err)
	gcfg := &gorm.Config{}
	n := testrig.CountSQL(gcfg)
	db := testrig.Open(t, withHostPort(dsn, host, port), gcfg)
	testrig.Pool(t, db, 0, 0)
	direct = testrig.Open(t, dsn, nil)
	testrig.Pool(t, direct, 0, 0)
	e = newEnv(t, rigOpts{db: db, sqls: n, cfg: cfg, models: models})
	return e, proxy, direct
}

// withHostPort points a DSN, in URL or keyword/value form, at host:port.
func withHostPort(dsn, host, port string) string {
	if u, err := url.Parse(dsn); err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") {
		u.Host = net.JoinHostPort(host, port)
		return u.String()
	}
	return dsn + " host=" + host + " port=" + port // a later keyword wins
}

// calm is the Config of tests about what is stored rather than about timing:
// a Redis call is not cut short on a loaded machine.
func calm() writethrough.Config { return writethrough.Config{Timeout: 2 * time.Second} }

// key is the default key of a row of table with primary key id.
func (e *env) key(table string, id any) string {
	return e.prefix + ":" + table + ":" + toString(id)
}

// keyOf is the key the plugin gives the row of model with primary key id.
func (e *env) keyOf(t testing.TB, model any, id any) string {
	t.Helper()
	key, err := writethrough.KeyOf(e.db, e.p, model, id)
	require.NoError(t, err)
	return key
}

func toString(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case uint:
		return uintStr(uint64(x))
	case int:
		return uintStr(uint64(x))
	}
	panic("unsupported")
}

func uintStr(n uint64) string {
	if n == 0 {
		return "0"
	}
	var b []byte
	for n > 0 {
		b = append([]byte{byte('0' + n%10)}, b...)
		n /= 10
	}
	return string(b)
}

// state returns the state byte of the key's entry, or 0 when absent.
func (e *env) state(t testing.TB, key string) byte {
	t.Helper()
	return stateOf(t, e.rdb, key)
}

// stateOf returns the state byte of the entry rdb holds at key, or 0 when
// absent.
func stateOf(t testing.TB, rdb *redis.Client, key string) byte {
	t.Helper()
	raw, err := rdb.Get(context.Background(), key).Bytes()
	if errors.Is(err, redis.Nil) {
		return 0
	}
	require.NoError(t, err)
	en, err := writethrough.ParseEntry(raw)
	require.NoError(t, err)
	return en.State
}

// pttl returns the key's remaining lifetime, failing when it has none.
func pttl(t *testing.T, e *env, key string) time.Duration {
	t.Helper()
	d, err := e.rdb.PTTL(context.Background(), key).Result()
	require.NoError(t, err)
	require.Greater(t, d, time.Duration(0), "key %s must exist and have a TTL (PTTL %v)", key, d)
	return d
}

// dbUser reads a User from the database, around the cache.
func (e *env) dbUser(t *testing.T, id uint) User {
	t.Helper()
	var u User
	require.NoError(t, e.db.First(&u, id).Error)
	return u
}

func ptr[T any](v T) *T { return &v }

// none is the scope that changes nothing.
func none(db *gorm.DB) *gorm.DB { return db }

// Interleaving: the plugin's named points (SetHook), driven from the test
// goroutine. Nothing is ordered by sleeping.

// stepTimeout bounds every wait for another goroutine: reaching it is a failure
// (a deadlock, or a goroutine that never reached its point), never a way to
// order events.
const stepTimeout = 15 * time.Second

// points drives a plugin's interleaving points.
type points struct {
	mu     sync.Mutex        // protects the fields below
	pauses map[string]*pause // by point + " " + key
	hits   map[string]int    // by point + " " + key
	step   *stepper
}

// pause stops the first goroutine that reaches its point for its key.
type pause struct {
	reached chan struct{}
	release chan struct{}
	once    sync.Once
}

func hookPoints(t testing.TB, p *writethrough.Plugin) *points {
	pts := &points{pauses: map[string]*pause{}, hits: map[string]int{}}
	writethrough.SetHook(p, pts.hit)
	t.Cleanup(func() {
		pts.mu.Lock()
		defer pts.mu.Unlock()
		for _, pa := range pts.pauses {
			pa.resume()
		}
		if pts.step != nil {
			pts.step.stop()
		}
	})
	return pts
}

func (pts *points) hit(point, key string) {
	id := point + " " + key
	pts.mu.Lock()
	pts.hits[id]++
	pa := pts.pauses[id]
	if pa != nil {
		delete(pts.pauses, id) // only the first goroutine stops
	}
	st := pts.step
	pts.mu.Unlock()
	if pa != nil {
		close(pa.reached)
		<-pa.release
	}
	if st != nil {
		st.hit(point, key)
	}
}

// count says how often point was reached for key.
func (pts *points) count(point, key string) int {
	pts.mu.Lock()
	defer pts.mu.Unlock()
	return pts.hits[point+" "+key]
}

// pauseAt arms a pause: the first goroutine to reach point for key waits
// there until resume.
func (pts *points) pauseAt(point, key string) *pause {
	pa := &pause{reached: make(chan struct{}), release: make(chan struct{})}
	pts.mu.Lock()
	defer pts.mu.Unlock()
	pts.pauses[point+" "+key] = pa
	return pa
}

func (pa *pause) wait(t testing.TB) {
	t.Helper()
	select {
	case <-pa.reached:
	case <-time.After(stepTimeout):
		t.Fatal("no goroutine reached the pause point")
	}
}

func (pa *pause) resume() { pa.once.Do(func() { close(pa.release) }) }

// stepper stops the writer at every write or transaction point it reaches
// for its keys (the hook names a transaction's first key at tx:before-commit
// and at finalize) from its prepare on, and hands each stop to the test goroutine, which looks at the
// world and lets it go on. Read points are not stopped: the test goroutine
// itself reads at each stop.
type stepper struct {
	keys  map[string]bool // nil: every key
	stops chan string
	goOn  chan struct{}
	done  chan struct{}
	once  sync.Once
}

func (pts *points) stepThrough(keys ...string) *stepper {
	st := &stepper{stops: make(chan string), goOn: make(chan struct{}), done: make(chan struct{})}
	if len(keys) > 0 {
		st.keys = map[string]bool{}
		for _, k := range keys {
			st.keys[k] = true
		}
	}
	pts.mu.Lock()
	defer pts.mu.Unlock()
	pts.step = st
	return st
}

func (st *stepper) hit(point, key string) {
	if (st.keys != nil && !st.keys[key]) || strings.HasPrefix(point, "read:") || point == "write:after-reread" {
		return
	}
	select {
	case st.stops <- point:
	case <-st.done:
		return
	}
	select {
	case <-st.goOn:
	case <-st.done:
	}
}

func (st *stepper) stop() { st.once.Do(func() { close(st.done) }) }

// run steps the writer until it is done, calling look at every stop, and
// returns the points it stopped at.
func (st *stepper) run(t testing.TB, writerDone <-chan struct{}, look func(point string)) []string {
	t.Helper()
	var seen []string
	for {
		select {
		case point := <-st.stops:
			seen = append(seen, point)
			look(point)
			st.goOn <- struct{}{}
		case <-writerDone:
			return seen
		case <-time.After(stepTimeout):
			t.Fatalf("the writer neither stopped nor finished; stops so far: %v", seen)
		}
	}
}

type outcome[T any] struct {
	v   T
	err error
}

// async runs f on its own goroutine.
func async[T any](f func() (T, error)) <-chan outcome[T] {
	ch := make(chan outcome[T], 1)
	go func() {
		v, err := f()
		ch <- outcome[T]{v, err}
	}()
	return ch
}

func await[T any](t testing.TB, ch <-chan outcome[T]) outcome[T] {
	t.Helper()
	select {
	case o := <-ch:
		return o
	case <-time.After(stepTimeout):
		t.Fatal("the goroutine did not finish")
	}
	panic("unreachable")
}

// redisCommands counts the commands a Redis client sends, by name, pipelined
// or not.
type redisCommands struct {
	mu sync.Mutex // protects n
	n  map[string]int
}

func countRedisCommands(rdb *redis.Client) *redisCommands {
	c := &redisCommands{n: map[string]int{}}
	rdb.AddHook(c)
	return c
}

func (c *redisCommands) DialHook(next redis.DialHook) redis.DialHook { return next }

func (c *redisCommands) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.add(cmd)
		return next(ctx, cmd)
	}
}

func (c *redisCommands) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, cmd := range cmds {
			c.add(cmd)
		}
		return next(ctx, cmds)
	}
}

func (c *redisCommands) add(cmd redis.Cmder) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n[strings.ToLower(cmd.Name())]++
}

// reads is how many GETs and MGETs were sent since the last reset.
func (c *redisCommands) reads() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n["get"] + c.n["mget"]
}

// total is how many commands were sent since the last reset.
func (c *redisCommands) total() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, v := range c.n {
		n += v
	}
	return n
}

func (c *redisCommands) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	clear(c.n)
}

// gatherFlight makes n cached reads of one key meet on one flight: the
// flight's leader waits after taking its lease until all n readers have
// arrived. allIn is closed when they have; release lets the leader go on.
// awaitFlight waits until every reader of gatherFlight has joined the
// flight, and fails the test (instead of hanging) when one never does: a
// reader whose Redis lookup failed reads the database without the flight.
func awaitFlight(t *testing.T, allIn <-chan struct{}) {
	t.Helper()
	select {
	case <-allIn:
	case <-time.After(time.Minute):
		t.Fatal("not every reader joined the database read's flight (a Redis lookup failed or timed out?)")
	}
}

func gatherFlight(p *writethrough.Plugin, n int32) (allIn <-chan struct{}, release func()) {
	var arrived atomic.Int32
	in := make(chan struct{})
	gate := make(chan struct{})
	writethrough.SetHook(p, func(point, key string) {
		switch point {
		case "read:flight":
			if arrived.Add(1) == n {
				close(in)
			}
		case "read:after-lease":
			<-gate // the leader waits until every reader has arrived
		}
	})
	return in, func() { close(gate) }
}
