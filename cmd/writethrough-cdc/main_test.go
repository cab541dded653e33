package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/gorm-writethrough/writethrough"
	"github.com/gorm-writethrough/writethrough/internal/testenv"
	"github.com/gorm-writethrough/writethrough/internal/testrig"
)

// The test binary runs as the sidecar when this is set: the tests start it
// as a child process and stop it with a signal, as an operator would.
const envSidecar = "WT_SIDECAR_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(envSidecar) == "1" {
		os.Exit(run(os.Args[1:], os.Stderr))
	}
	os.Exit(m.Run())
}

func TestBadFlagsExitTwo(t *testing.T) {
	t.Setenv("DATABASE_URL", "")
	t.Setenv("WRITETHROUGH_TABLES", "")
	for _, args := range [][]string{
		{},
		{"-database", "postgres://x/y"},
		{"-database", "postgres://x/y", "-tables", "a", "-key", "b=k:{id}"},
		{"-database", "postgres://x/y", "-tables", "a", "-log-level", "loud"},
		{"-nope"},
	} {
		var out bytes.Buffer
		if code := run(args, &out); code != 2 {
			t.Errorf("%q: exit %d, want 2\n%s", args, code, &out)
		}
	}
}

type Account struct {
	ID      int64 `gorm:"primaryKey" cache:"ttl:1h"`
	Balance int64
}

// TestSidecar runs the command against a schema the database URL does not
// reach (found with -schema), checks a raw write invalidates the
// application's key, and stops it with SIGINT: exit 0 with its counters.
func TestSidecar(t *testing.T) {
	dsn := testenv.PostgresDSN(t)
	pc, err := pgconn.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	schemaName := pc.RuntimeParams["search_path"]
	db, err := gorm.Open(postgres.Open(dsn), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		t.Fatal(err)
	}
	if sqlDB, err := db.DB(); err == nil {
		t.Cleanup(func() { _ = sqlDB.Close() })
	}
	var level string
	if err := db.Raw("SHOW wal_level").Scan(&level).Error; err != nil || level != "logical" {
		t.Skipf("wal_level is %q (%v); the sidecar needs logical (scripts/services.sh sets it)", level, err)
	}
	rdb, prefix := testenv.Redis(t)
	if err := db.Use(writethrough.New(rdb, writethrough.Config{Prefix: prefix})); err != nil {
		t.Fatal(err)
	}
	if err := db.AutoMigrate(&Account{}); err != nil {
		t.Fatal(err)
	}
	if err := db.Create(&Account{ID: 1, Balance: 1}).Error; err != nil {
		t.Fatal(err)
	}
	name := "wt_side_" + strings.TrimPrefix(schemaName, "wt_")
	base := os.Getenv("DATABASE_URL")
	if base == "" {
		base = testenv.DefaultPostgresDSN
	}
	testrig.DropSlotAtCleanup(t, base, name)
	redisURL := os.Getenv("REDIS_URL")
	if redisURL == "" {
		redisURL = "redis://" + testenv.DefaultRedisAddr + "/0"
	}

	cmd := exec.Command(os.Args[0], "-database", base, "-redis", redisURL, "-prefix", prefix,
		"-schema", schemaName, "-tables", "accounts", "-slot", name, "-publication", name, "-stats", "0")
	cmd.Env = append(os.Environ(), envSidecar+"=1")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var log []string
	waitFor := func(what string) string {
		t.Helper()
		deadline := time.After(30 * time.Second)
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("the sidecar ended before %q:\n%s", what, strings.Join(log, "\n"))
				}
				log = append(log, l)
				if strings.Contains(l, what) {
					return l
				}
			case <-deadline:
				t.Fatalf("no %q from the sidecar:\n%s", what, strings.Join(log, "\n"))
			}
		}
	}
	waitFor(`"msg":"cdc: streaming"`)

	var a Account
	if err := db.Scopes(writethrough.Cached).First(&a, 1).Error; err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if e, err := writethrough.Inspect(ctx, db, &Account{}, 1); err != nil || e.State != writethrough.EntryCommitted {
		t.Fatalf("key before the raw write: %v %v", e.State, err)
	}
	if err := db.Exec("UPDATE accounts SET balance = 2 WHERE id = 1").Error; err != nil {
		t.Fatal(err)
	}
	if err := testrig.Poll(30*time.Second, func() (bool, error) {
		e, err := writethrough.Inspect(ctx, db, &Account{}, 1)
		return err == nil && e.State == writethrough.EntryAbsent, err
	}); err != nil {
		t.Fatalf("the application's key after the raw write: %v\n%s", err, strings.Join(log, "\n"))
	}

	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	last := waitFor(`"msg":"cdc: stopped"`)
	if !strings.Contains(last, `"transactions":`) || strings.Contains(last, `"transactions":0`) {
		t.Errorf("the last counters count no transaction: %s", last)
	}
	for range lines {
	}
	err = cmd.Wait()
	var ee *exec.ExitError
	if err != nil && (!errors.As(err, &ee) || ee.ExitCode() != 0) {
		t.Fatalf("exit: %v\n%s", err, strings.Join(log, "\n"))
	}
}
