// Command writethrough-cdc runs a change-data-capture consumer (package cdc)
// as a sidecar: it follows PostgreSQL's logical replication stream for the
// cached tables and invalidates their keys in Redis when rows change outside
// the plugin.
//
//	writethrough-cdc -database postgres://cdc@db/app -redis redis://cache:6379/0 \
//	    -prefix app -tables users,orders -key 'orders=order:{id}'
//
// Flags fall back to the environment: DATABASE_URL, REDIS_URL,
// WRITETHROUGH_PREFIX, WRITETHROUGH_SLOT, WRITETHROUGH_PUBLICATION,
// WRITETHROUGH_TABLES, WRITETHROUGH_SCHEMA, WRITETHROUGH_LOG_LEVEL. It logs
// JSON lines to stderr, prints its counters every -stats interval and when
// it stops, and stops on SIGINT or SIGTERM. Exit codes: 0 stopped by a
// signal, 1 a failure retrying cannot fix (no REPLICATION, wal_level not
// logical), 2 bad flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/gorm-writethrough/writethrough/cdc"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func run(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("writethrough-cdc", flag.ContinueOnError)
	fs.SetOutput(stderr)
	database := fs.String("database", env("DATABASE_URL", ""), "PostgreSQL URL; its role needs REPLICATION (env DATABASE_URL)")
	redisURL := fs.String("redis", env("REDIS_URL", "redis://127.0.0.1:6379/0"), "Redis URL (env REDIS_URL)")
	prefix := fs.String("prefix", env("WRITETHROUGH_PREFIX", "wt"), "the plugin's Config.Prefix (env WRITETHROUGH_PREFIX)")
	slot := fs.String("slot", env("WRITETHROUGH_SLOT", "writethrough"), "replication slot (env WRITETHROUGH_SLOT)")
	pub := fs.String("publication", env("WRITETHROUGH_PUBLICATION", "writethrough"), "publication (env WRITETHROUGH_PUBLICATION)")
	tables := fs.String("tables", env("WRITETHROUGH_TABLES", ""), "cached tables, comma-separated, spelled as the models name them: the name is part of the key (env WRITETHROUGH_TABLES)")
	schemaName := fs.String("schema", env("WRITETHROUGH_SCHEMA", ""), "the schema to find unqualified -tables in, when the database URL's search_path does not reach them; not part of the key (env WRITETHROUGH_SCHEMA)")
	level := fs.String("log-level", env("WRITETHROUGH_LOG_LEVEL", "info"), "debug (a line per applied transaction), info, warn or error (env WRITETHROUGH_LOG_LEVEL)")
	var keys multiFlag
	fs.Var(&keys, "key", "TABLE=TEMPLATE: a table's key template, as in its model's tag (repeatable)")
	every := fs.Duration("stats", time.Minute, "how often to log the counters (0: never)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	usage := func(msg string) int {
		fmt.Fprintln(stderr, "writethrough-cdc:", msg)
		fs.Usage()
		return 2
	}
	if *database == "" {
		return usage("-database (or DATABASE_URL) is required")
	}
	templates := map[string]string{}
	for _, k := range keys {
		t, tmpl, ok := strings.Cut(k, "=")
		if !ok || t == "" || tmpl == "" {
			return usage("-key wants TABLE=TEMPLATE, got " + k)
		}
		templates[strings.TrimSpace(t)] = tmpl
	}
	var list []cdc.Table
	for _, t := range strings.Split(*tables, ",") {
		if t = strings.TrimSpace(t); t != "" {
			list = append(list, cdc.Table{Name: t, Schema: *schemaName, Key: templates[t]})
			delete(templates, t)
		}
	}
	if len(list) == 0 {
		return usage("-tables (or WRITETHROUGH_TABLES) is required")
	}
	for t := range templates {
		return usage("-key names " + t + ", which is not in -tables")
	}
	opts, err := redis.ParseURL(*redisURL)
	if err != nil {
		return usage("-redis: " + err.Error())
	}
	rdb := redis.NewClient(opts)
	defer rdb.Close()
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(*level)); err != nil {
		return usage("-log-level: " + err.Error())
	}
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: lv}))
	c, err := cdc.New(nil, cdc.Config{
		Redis: rdb, Prefix: *prefix, Tables: list, ConnString: *database,
		Slot: *slot, Publication: *pub, Logger: log,
	})
	if err != nil {
		return usage(err.Error())
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *every > 0 {
		go func() {
			t := time.NewTicker(*every)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					logStats(log, "cdc: stats", c.Stats())
				}
			}
		}()
	}
	err = c.Run(ctx)
	logStats(log, "cdc: stopped", c.Stats())
	if err != nil && !errors.Is(err, context.Canceled) {
		log.Error("cdc: cannot go on", "err", err)
		return 1
	}
	return 0
}

func logStats(log *slog.Logger, msg string, st cdc.Stats) {
	log.Info(msg, "state", st.State.String(), "transactions", st.Transactions,
		"keys", st.KeysApplied, "skipped", st.KeysSkipped, "truncates", st.Truncates,
		"purges", st.Purges, "purged_keys", st.PurgedKeys, "lag", st.Lag.String(), "max_lag", st.MaxLag.String(),
		"confirmed", st.ConfirmedLSN, "reconnects", st.Reconnects, "errors", st.Errors, "last_error", st.LastError)
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }
