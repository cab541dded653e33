package writethrough

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

// The zero Config means the defaults that Config's field comments document.
func TestZeroConfigMeansTheDocumentedDefaults(t *testing.T) {
	got, err := Config{}.withDefaults()
	if err != nil {
		t.Fatalf("withDefaults of the zero Config: %v", err)
	}
	want := Config{
		Prefix:           "wt",
		DefaultTTL:       time.Hour,
		NegativeTTL:      time.Minute,
		LeaseTTL:         2 * time.Second,
		PendingTTL:       time.Minute,
		Timeout:          100 * time.Millisecond,
		Mode:             Soft,
		Jitter:           10,
		MaxRowSize:       1 << 20,
		OutboxTable:      "writethrough_outbox",
		DrainInterval:    time.Second,
		BreakerThreshold: 5,
		BreakerCooldown:  time.Second,
		WaitTimeout:      50 * time.Millisecond,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("withDefaults(Config{}) =\n%+v\nwant\n%+v", got, want)
	}
}

func TestSetFieldsAreKeptAndNegativesMeanOff(t *testing.T) {
	in := Config{
		Prefix:           "app:v2",
		DefaultTTL:       5 * time.Minute,
		NegativeTTL:      3 * time.Second,
		LeaseTTL:         time.Second,
		PendingTTL:       30 * time.Second,
		Timeout:          time.Second,
		Mode:             Strict,
		Jitter:           -1,
		MaxRowSize:       4096,
		OutboxTable:      "my_outbox",
		DrainInterval:    -1,
		BreakerThreshold: -1,
		BreakerCooldown:  time.Millisecond,
		AsyncFinalize:    true,
		CacheReads:       true,
		DisableOutbox:    true,
	}
	got, err := in.withDefaults()
	if err != nil {
		t.Fatalf("withDefaults: %v", err)
	}
	want := in
	want.Jitter = 0           // negative: no jitter
	want.BreakerThreshold = 0 // negative: no breaker
	want.DrainInterval = -1   // negative: no drainer, kept negative
	if !reflect.DeepEqual(got, want) {
		t.Errorf("withDefaults =\n%+v\nwant\n%+v", got, want)
	}
}

func TestWithDefaultsCopiesModels(t *testing.T) {
	type m struct{ ID int }
	models := []any{&m{}, &m{}}
	in := Config{Models: models[:1]}
	got, err := in.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	got.Models[0] = nil
	got.Models = append(got.Models, "x")
	if models[0] == nil || models[1] == "x" {
		t.Errorf("the caller's Models changed: %v", models)
	}
}

// Every invalid field is reported by name, as a *ConfigError wrapping
// ErrInvalidConfig whose message names the field too.
func TestEveryInvalidFieldIsNamed(t *testing.T) {
	cases := []struct {
		name  string
		cfg   Config
		field string
	}{
		{"negative DefaultTTL", Config{DefaultTTL: -time.Minute}, "DefaultTTL"},
		{"DefaultTTL below a millisecond", Config{DefaultTTL: time.Microsecond}, "DefaultTTL"},
		{"negative NegativeTTL", Config{NegativeTTL: -time.Second}, "NegativeTTL"},
		{"NegativeTTL below a millisecond", Config{NegativeTTL: 999 * time.Microsecond}, "NegativeTTL"},
		{"negative LeaseTTL", Config{LeaseTTL: -time.Second}, "LeaseTTL"},
		{"LeaseTTL below a millisecond", Config{LeaseTTL: time.Nanosecond}, "LeaseTTL"},
		{"negative PendingTTL", Config{PendingTTL: -time.Second}, "PendingTTL"},
		{"PendingTTL below a millisecond", Config{PendingTTL: time.Microsecond}, "PendingTTL"},
		{"PendingTTL equal to Timeout", Config{PendingTTL: time.Second, Timeout: time.Second}, "PendingTTL"},
		{"PendingTTL below Timeout", Config{PendingTTL: time.Second, Timeout: 2 * time.Second}, "PendingTTL"},
		{"PendingTTL below the default Timeout", Config{PendingTTL: 50 * time.Millisecond}, "PendingTTL"},
		{"negative Timeout", Config{Timeout: -time.Second}, "Timeout"},
		{"Timeout below a millisecond", Config{Timeout: time.Microsecond}, "Timeout"},
		{"negative WaitReplicas", Config{WaitReplicas: -1}, "WaitReplicas"},
		{"negative WaitTimeout", Config{WaitTimeout: -time.Second}, "WaitTimeout"},
		{"WaitTimeout below a millisecond", Config{WaitTimeout: time.Microsecond}, "WaitTimeout"},
		{"WaitTimeout not below Timeout", Config{WaitReplicas: 1, WaitTimeout: 100 * time.Millisecond}, "WaitTimeout"},
		{"DrainInterval below a millisecond", Config{DrainInterval: time.Microsecond}, "DrainInterval"},
		{"negative BreakerCooldown", Config{BreakerCooldown: -time.Second}, "BreakerCooldown"},
		{"BreakerCooldown below a millisecond", Config{BreakerCooldown: time.Microsecond}, "BreakerCooldown"},
		{"Prefix with a space", Config{Prefix: "my app"}, "Prefix"},
		{"Prefix with a brace", Config{Prefix: "app{1}"}, "Prefix"},
		{"Prefix with a glob", Config{Prefix: "app*"}, "Prefix"},
		{"unknown Mode", Config{Mode: Mode(7)}, "Mode"},
		{"negative Mode", Config{Mode: Mode(-1)}, "Mode"},
		{"Jitter above 100", Config{Jitter: 101}, "Jitter"},
		{"negative MaxRowSize", Config{MaxRowSize: -1}, "MaxRowSize"},
		{"OutboxTable not an identifier", Config{OutboxTable: "bad table; drop"}, "OutboxTable"},
		{"OutboxTable quoted", Config{OutboxTable: `"outbox"`}, "OutboxTable"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.cfg.withDefaults()
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("withDefaults = %v, want a *ConfigError", err)
			}
			if ce.Field != tc.field {
				t.Errorf("Field = %q, want %q (%v)", ce.Field, tc.field, err)
			}
			if !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("%v does not wrap ErrInvalidConfig", err)
			}
			if !strings.Contains(err.Error(), tc.field) {
				t.Errorf("%q does not name the field %s", err, tc.field)
			}
		})
	}
}

// The edges that are valid: a millisecond, Jitter 100, the largest
// identifier-shaped table name.
func TestValidEdgesPass(t *testing.T) {
	cases := []struct {
		name string
		cfg  Config
	}{
		{"every duration one millisecond but PendingTTL", Config{
			DefaultTTL: time.Millisecond, NegativeTTL: time.Millisecond, LeaseTTL: time.Millisecond,
			Timeout: time.Millisecond, DrainInterval: time.Millisecond, BreakerCooldown: time.Millisecond,
			PendingTTL: 2 * time.Millisecond,
		}},
		{"Jitter 100", Config{Jitter: 100}},
		{"Prefix of every allowed character", Config{Prefix: "Az09_.-:"}},
		{"OutboxTable with a schema", Config{OutboxTable: "audit.wt_outbox"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := tc.cfg.withDefaults(); err != nil {
				t.Errorf("withDefaults: %v", err)
			}
		})
	}
}

// New reports a bad Config, and a nil client, from Initialize, before it
// looks at the database.
func TestNewKeepsTheConfigErrorForInitialize(t *testing.T) {
	p := New(nil, Config{Jitter: 200})
	var ce *ConfigError
	if err := p.Initialize(nil); !errors.As(err, &ce) || ce.Field != "Jitter" {
		t.Errorf("Initialize = %v, want the Jitter error", err)
	}
	p = New(nil, Config{})
	if err := p.Initialize(nil); !errors.As(err, &ce) || ce.Field != "rdb" {
		t.Errorf("Initialize = %v, want the nil client reported as field rdb", err)
	}
}
