package writethrough_test

import (
	"context"
	"database/sql/driver"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"

	"github.com/gorm-writethrough/writethrough"
	"github.com/gorm-writethrough/writethrough/internal/testenv"
)

// The cache tag grammar and the keys it gives (DESIGN section 2).

type kTemplate struct {
	ID   int64 `gorm:"primaryKey" cache:"key:user:{id}"`
	Name string
}

type kTemplatePrefix struct {
	ID   int64 `gorm:"primaryKey" cache:"key:{prefix}:acct:{ID}:v2"`
	Name string
}

type kTemplateTable struct {
	ID   int64 `gorm:"primaryKey" cache:"key:{table}/{pk}"`
	Name string
}

type kTTL struct {
	ID   int64 `gorm:"primaryKey" cache:"ttl:30s;jitter:0"`
	Name string
}

type kTTLJitter struct {
	ID   int64 `gorm:"primaryKey" cache:" TTL : 1h ; Jitter : 20% "`
	Name string
}

type kDefaultTTL struct {
	ID   int64 `gorm:"primaryKey" cache:""`
	Name string
}

type kAside struct {
	ID   int64 `gorm:"primaryKey" cache:"strategy:aside;ttl:10m"`
	Name string
}

type kThrough struct {
	ID   int64 `gorm:"primaryKey" cache:"strategy:through"`
	Name string
}

func TestTagSettingsTakeEffect(t *testing.T) {
	t.Run("key template", func(t *testing.T) {
		t.Parallel()
		e := setup(t, nil, calm(), &kTemplate{}, &kTemplatePrefix{}, &kTemplateTable{})
		require.NoError(t, e.db.Create(&kTemplate{ID: 42, Name: "a"}).Error)
		require.NoError(t, e.db.Create(&kTemplatePrefix{ID: 42, Name: "b"}).Error)
		require.NoError(t, e.db.Create(&kTemplateTable{ID: 42, Name: "c"}).Error)
		for _, key := range []string{
			e.prefix + ":user:42",              // a template without {prefix} is placed under it
			e.prefix + ":acct:42:v2",           // {prefix} and a field name
			e.prefix + ":k_template_tables/42", // {table} and {pk}
		} {
			assert.Equal(t, byte(writethrough.StateCommitted), e.state(t, key), key)
		}
		n, err := e.rdb.Exists(context.Background(), e.prefix+":k_templates:42").Result()
		require.NoError(t, err)
		assert.Zero(t, n, "the default key is not used when the tag names a template")

		before := e.sqls.Load()
		var got kTemplate
		require.NoError(t, e.db.Scopes(writethrough.Cached).First(&got, 42).Error)
		assert.Equal(t, before, e.sqls.Load(), "a templated key is read back")
		assert.Equal(t, "a", got.Name)
	})

	t.Run("ttl without jitter", func(t *testing.T) {
		t.Parallel()
		e := setup(t, nil, calm(), &kTTL{})
		require.NoError(t, e.db.Create(&kTTL{ID: 1}).Error)
		d := pttl(t, e, e.prefix+":k_ttls:1")
		assert.LessOrEqual(t, d, 30*time.Second)
		assert.Greater(t, d, 25*time.Second)
	})

	t.Run("ttl with jitter, words in any case and spacing", func(t *testing.T) {
		t.Parallel()
		e := setup(t, nil, calm(), &kTTLJitter{})
		lo, hi := 48*time.Minute-time.Minute, 72*time.Minute // 1h ± 20%, less test time
		var seen []time.Duration
		for id := int64(1); id <= 20; id++ {
			require.NoError(t, e.db.Create(&kTTLJitter{ID: id}).Error)
			d := pttl(t, e, fmt.Sprintf("%s:k_ttl_jitters:%d", e.prefix, id))
			assert.GreaterOrEqual(t, d, lo)
			assert.LessOrEqual(t, d, hi)
			seen = append(seen, d)
		}
		spread := false
		for _, d := range seen {
			if d < 58*time.Minute || d > 62*time.Minute {
				spread = true
			}
		}
		assert.True(t, spread, "20 TTLs with 20%% jitter all within 2m of 1h: %v", seen)
	})

	t.Run("no ttl takes Config.DefaultTTL and Config.Jitter", func(t *testing.T) {
		t.Parallel()
		e := setup(t, nil, writethrough.Config{DefaultTTL: 2 * time.Minute, Jitter: -1, Timeout: 2 * time.Second}, &kDefaultTTL{})
		require.NoError(t, e.db.Create(&kDefaultTTL{ID: 1}).Error)
		d := pttl(t, e, e.prefix+":k_default_ttls:1")
		assert.LessOrEqual(t, d, 2*time.Minute)
		assert.Greater(t, d, 2*time.Minute-5*time.Second)
	})

	t.Run("strategy aside leaves the key absent after writes", func(t *testing.T) {
		t.Parallel()
		e := setup(t, nil, calm(), &kAside{}, &kThrough{})
		key := e.prefix + ":k_asides:1"
		require.NoError(t, e.db.Create(&kAside{ID: 1, Name: "a"}).Error)
		assert.Equal(t, byte(0), e.state(t, key), "aside: a create only invalidates")

		var got kAside
		require.NoError(t, e.db.Scopes(writethrough.Cached).First(&got, 1).Error)
		assert.Equal(t, byte(writethrough.StateCommitted), e.state(t, key), "aside: a read fills")
		require.NoError(t, e.db.Model(&kAside{ID: 1}).Update("name", "b").Error)
		assert.Equal(t, byte(0), e.state(t, key), "aside: an update only invalidates")
		require.NoError(t, e.db.Scopes(writethrough.Cached).First(&got, 1).Error)
		assert.Equal(t, "b", got.Name)

		require.NoError(t, e.db.Create(&kThrough{ID: 1, Name: "t"}).Error)
		assert.Equal(t, byte(writethrough.StateCommitted), e.state(t, e.prefix+":k_throughs:1"), "through: a create installs the row")
	})

	t.Run("mode", func(t *testing.T) {
		t.Parallel()
		type kStrict struct {
			ID int64 `gorm:"primaryKey" cache:"mode:strict"`
		}
		type kSoft struct {
			ID int64 `gorm:"primaryKey" cache:"mode:SOFT"`
		}
		db := testenv.Postgres(t, nil)
		// Nothing listens on port 1: every Redis call fails at once.
		rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: 100 * time.Millisecond})
		t.Cleanup(func() { _ = rdb.Close() })
		install(t, db, rdb, writethrough.Config{Mode: writethrough.Soft, DrainInterval: -1, BreakerThreshold: -1})
		require.NoError(t, db.AutoMigrate(&kStrict{}, &kSoft{}))
		assert.ErrorIs(t, db.Create(&kStrict{ID: 1}).Error, writethrough.ErrCacheUnavailable, "mode:strict fails the write")
		assert.NoError(t, db.Create(&kSoft{ID: 1}).Error, "mode:soft lets the write commit")
	})
}

// badTag is a model with a malformed cache tag and what the error must say.
type badTag struct {
	name   string
	model  any
	field  string // the field the error names
	word   string // the bad word, "" when the tag as a whole is misplaced
	reason string // a fragment of the reason
}

type (
	tUnknownWord struct {
		ID int64 `gorm:"primaryKey" cache:"ttl:1m;colour:red"`
	}
	tBadDuration struct {
		ID int64 `gorm:"primaryKey" cache:"ttl:ten minutes"`
	}
	tTinyTTL struct {
		ID int64 `gorm:"primaryKey" cache:"ttl:10us"`
	}
	tNegativeTTL struct {
		ID int64 `gorm:"primaryKey" cache:"ttl:-1m"`
	}
	tNoValue struct {
		ID int64 `gorm:"primaryKey" cache:"ttl"`
	}
	tEmptyValue struct {
		ID int64 `gorm:"primaryKey" cache:"mode:"`
	}
	tBadMode struct {
		ID int64 `gorm:"primaryKey" cache:"mode:lazy"`
	}
	tBadStrategy struct {
		ID int64 `gorm:"primaryKey" cache:"strategy:around"`
	}
	tBadJitter struct {
		ID int64 `gorm:"primaryKey" cache:"jitter:200"`
	}
	tJitterNotANumber struct {
		ID int64 `gorm:"primaryKey" cache:"jitter:lots"`
	}
	tUnclosedBrace struct {
		ID int64 `gorm:"primaryKey" cache:"key:user:{id"`
	}
	tStrayBrace struct {
		ID int64 `gorm:"primaryKey" cache:"key:user:id}"`
	}
	tUnknownPlaceholder struct {
		ID   int64 `gorm:"primaryKey" cache:"key:user:{name}"`
		Name string
	}
	tTemplateWithoutKey struct {
		ID int64 `gorm:"primaryKey" cache:"key:users"`
	}
	tTemplateMissesAKeyColumn struct {
		Tenant string `gorm:"primaryKey" cache:"key:o:{tenant}"`
		Seq    int64  `gorm:"primaryKey;autoIncrement:false"`
	}
	tPlaceholdersTouch struct {
		A string `gorm:"primaryKey" cache:"key:p:{a}{b}"`
		B string `gorm:"primaryKey"`
	}
	tPlaceholdersWithoutColon struct {
		A string `gorm:"primaryKey" cache:"key:p:{a}-{B}"`
		B string `gorm:"primaryKey"`
	}
	tTagOnNonKey struct {
		ID    int64
		Email string `cache:"ttl:1m"`
	}
	tNoPrimaryKey struct {
		Code  string
		Label string `cache:"ttl:1m"`
	}
	tTwoTags struct {
		A string `gorm:"primaryKey" cache:"ttl:1m"`
		B string `gorm:"primaryKey" cache:"ttl:2m"`
	}
)

func badTags() []badTag {
	return []badTag{
		{"unknown word", &tUnknownWord{}, "ID", "colour:red", "unknown key"},
		{"bad duration", &tBadDuration{}, "ID", "ttl:ten minutes", "duration"},
		{"ttl below a millisecond", &tTinyTTL{}, "ID", "ttl:10us", "1ms"},
		{"negative ttl", &tNegativeTTL{}, "ID", "ttl:-1m", "1ms"},
		{"word without a value", &tNoValue{}, "ID", "ttl", "key:value"},
		{"empty value", &tEmptyValue{}, "ID", "mode:", "key:value"},
		{"unknown mode", &tBadMode{}, "ID", "mode:lazy", "strict or soft"},
		{"unknown strategy", &tBadStrategy{}, "ID", "strategy:around", "through or aside"},
		{"jitter above 100", &tBadJitter{}, "ID", "jitter:200", "percentage"},
		{"jitter not a number", &tJitterNotANumber{}, "ID", "jitter:lots", "percentage"},
		{"template with an unclosed brace", &tUnclosedBrace{}, "ID", "key:user:{id", "unclosed"},
		{"template with a stray brace", &tStrayBrace{}, "ID", "key:user:id}", "unbalanced"},
		{"template with an unknown placeholder", &tUnknownPlaceholder{}, "ID", "key:user:{name}", "{name}"},
		{"template without the key", &tTemplateWithoutKey{}, "ID", "key:users", "leaves out"},
		{"template missing a key column", &tTemplateMissesAKeyColumn{}, "Tenant", "key:o:{tenant}", "seq"},
		{"template with touching placeholders", &tPlaceholdersTouch{}, "A", "key:p:{a}{b}", "separated by ':'"},
		{"template with placeholders not split by ':'", &tPlaceholdersWithoutColon{}, "A", "key:p:{a}-{B}", "{a} and {b}"},
		{"tag on a field that is not the key", &tTagOnNonKey{}, "Email", "", "primary-key"},
		{"tag on a model without a primary key", &tNoPrimaryKey{}, "Label", "", "no primary key"},
		{"different tags on a composite key", &tTwoTags{}, "B", "", "differ"},
		{"misspelt word", &tMisspelt{}, "ID", "tll:10m", "unknown key"},
		{"tag on an embedded struct without the key", &tEmbedNoKey{}, "TAudit", "", "holds none"},
		{"tag on a column of an embedded struct that is not the key", &tEmbedTagOnColumn{}, "TBase.Note", "", "primary-key"},
		{"tag on a field GORM ignores", &tIgnoredField{}, "Skip", "", `gorm:"-"`},
		{"tag on an unexported field", &tUnexportedField{}, "hidden", "", "does not map"},
		{"tag on an association", &tTagOnAssociation{}, "Team", "", "association"},
		{"tag on gorm.Model differs from the key's", &tTwoTagsEmbedded{}, "ID", "", "differ"},
	}
}

// checkTagError asserts that err reports tc: a *TagError naming the model,
// the field and the bad word, wrapping ErrInvalidTag.
func checkTagError(t *testing.T, tc badTag, err error) {
	t.Helper()
	require.Error(t, err)
	require.ErrorIs(t, err, writethrough.ErrInvalidTag)
	var te *writethrough.TagError
	require.True(t, errors.As(err, &te), "want a *writethrough.TagError, got %T: %v", err, err)
	model := fmt.Sprintf("%T", tc.model)
	model = model[strings.LastIndexByte(model, '.')+1:]
	assert.Equal(t, model, te.Model)
	assert.Equal(t, tc.field, te.Field)
	assert.Equal(t, tc.word, te.Word)
	assert.Contains(t, te.Reason, tc.reason)
	msg := err.Error()
	assert.Contains(t, msg, model, "the message names the model")
	assert.Contains(t, msg, tc.field, "the message names the field")
	assert.Contains(t, msg, tc.word, "the message names the bad word")
}

func TestMalformedTagFailsUseWhenTheModelIsListed(t *testing.T) {
	for _, tc := range badTags() {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			db := testenv.Postgres(t, nil)
			rdb, prefix := testenv.Redis(t)
			p := writethrough.New(rdb, writethrough.Config{Prefix: prefix, DrainInterval: -1, Models: []any{tc.model}})
			t.Cleanup(func() { _ = p.Close() })
			var err error
			require.NotPanics(t, func() { err = db.Use(p) })
			checkTagError(t, tc, err)
		})
	}
}

func TestMalformedTagFailsTheFirstStatementOnTheModel(t *testing.T) {
	statements := []struct {
		name string
		run  func(db *gorm.DB, model any) error
	}{
		{"Create", func(db *gorm.DB, model any) error { return db.Create(model).Error }},
		{"Update", func(db *gorm.DB, model any) error {
			return db.Model(model).Where("1 = 1").Update(firstColumn(db, model), gorm.Expr("NULL")).Error
		}},
		{"Delete", func(db *gorm.DB, model any) error { return db.Where("1 = 1").Delete(model).Error }},
		{"Cached First", func(db *gorm.DB, model any) error { return db.Scopes(writethrough.Cached).First(model).Error }},
		{"Invalidate", func(db *gorm.DB, model any) error { return writethrough.Invalidate(db, model, 1) }},
	}
	for _, tc := range badTags() {
		for _, st := range statements {
			t.Run(tc.name+"/"+st.name, func(t *testing.T) {
				t.Parallel()
				e := setup(t, nil, calm())
				require.NoError(t, e.db.AutoMigrate(tc.model))
				var err error
				require.NotPanics(t, func() { err = st.run(e.db, tc.model) })
				checkTagError(t, tc, err)
				// And again: the error is remembered, not a one-off.
				require.NotPanics(t, func() { err = st.run(e.db, tc.model) })
				checkTagError(t, tc, err)
			})
		}
	}
}

// firstColumn names a column of model, for an Update that touches nothing.
func firstColumn(db *gorm.DB, model any) string {
	stmt := &gorm.Statement{DB: db}
	if err := stmt.Parse(model); err != nil {
		return "id"
	}
	return stmt.Schema.DBNames[len(stmt.Schema.DBNames)-1]
}

// Keys: every kind of primary key works end to end, and components are
// escaped so that distinct rows never share a key.

type kString struct {
	Code string `gorm:"primaryKey" cache:""`
	Name string
}

type kPair struct {
	A    string `gorm:"primaryKey" cache:""`
	B    string `gorm:"primaryKey"`
	Name string
}

type kPairTemplate struct {
	A    string `gorm:"primaryKey" cache:"key:p:{b}:{a}:x"`
	B    string `gorm:"primaryKey"`
	Name string
}

// UUID is a 16-byte key type with Value, Scan and String, as UUID libraries
// have.
type UUID [16]byte

func (u UUID) String() string {
	h := hex.EncodeToString(u[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

func (u UUID) Value() (driver.Value, error) { return u.String(), nil }

func (u *UUID) Scan(v any) error {
	var s string
	switch x := v.(type) {
	case string:
		s = x
	case []byte:
		s = string(x)
	default:
		return fmt.Errorf("uuid: cannot scan %T", v)
	}
	b, err := hex.DecodeString(strings.ReplaceAll(s, "-", ""))
	if err != nil || len(b) != 16 {
		return fmt.Errorf("uuid: bad text %q", s)
	}
	copy(u[:], b)
	return nil
}

type kUUIDType struct {
	ID   UUID `gorm:"type:uuid;primaryKey" cache:""`
	Name string
}

type kInt32 struct {
	ID   int32 `gorm:"primaryKey" cache:""`
	Name string
}

func TestEveryKeyKindIsWrittenAndHit(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name   string
		models []any
		run    func(t *testing.T, e *env)
	}{
		{"uint", []any{&User{}}, func(t *testing.T, e *env) {
			u := User{Email: "k@x", Name: "K"}
			require.NoError(t, e.db.Create(&u).Error)
			assert.Equal(t, byte(writethrough.StateCommitted), e.state(t, e.key("users", u.ID)))
			hitFirst(t, e, &User{}, u.ID)
			hitFirst(t, e, &User{}, fmt.Sprint(u.ID)) // "42" for 42
			g, err := writethrough.Get[User](ctx, e.db, u.ID)
			require.NoError(t, err)
			assert.Equal(t, "K", g.Name)
		}},
		{"int32", []any{&kInt32{}}, func(t *testing.T, e *env) {
			require.NoError(t, e.db.Create(&kInt32{ID: -7, Name: "neg"}).Error)
			assert.Equal(t, byte(writethrough.StateCommitted), e.state(t, e.prefix+":k_int32:-7"))
			got := hitFirst(t, e, &kInt32{}, int64(-7)).(*kInt32)
			assert.Equal(t, "neg", got.Name)
		}},
		{"string with separators", []any{&kString{}}, func(t *testing.T, e *env) {
			codes := []string{"a:b", "a%3Ab", "a%b", "{a}", "a}{b", "a b", "a\nb", "ä:ö", ""}
			for i, c := range codes[:len(codes)-1] {
				require.NoError(t, e.db.Create(&kString{Code: c, Name: fmt.Sprint(i)}).Error)
			}
			keys := prefixKeys(t, e)
			assert.Len(t, keys, len(codes)-1, "one key per row: %q", keys)
			assert.Contains(t, keys, e.prefix+":k_strings:a%3Ab", "':' is escaped")
			assert.Contains(t, keys, e.prefix+":k_strings:a%253Ab", "'%' is escaped")
			assert.Contains(t, keys, e.prefix+":k_strings:%7Ba%7D", "braces are escaped")
			for i, c := range codes[:len(codes)-1] {
				got := hitFirst(t, e, &kString{}, "code = ?", c).(*kString)
				assert.Equal(t, fmt.Sprint(i), got.Name, "row %q", c)
			}
		}},
		{"uuid string", []any{&p7UUID{}}, func(t *testing.T, e *env) {
			row := p7UUID{Note: "u"}
			require.NoError(t, e.db.Create(&row).Error)
			require.Len(t, row.ID, 36, "the database generated the key")
			assert.Equal(t, byte(writethrough.StateCommitted), e.state(t, e.prefix+":p7_uuids:"+row.ID))
			got := hitFirst(t, e, &p7UUID{}, "id = ?", row.ID).(*p7UUID)
			assert.Equal(t, "u", got.Note)
			// An upper-case spelling is the same row to PostgreSQL; the cache
			// may miss on it but must never answer with another row.
			var up p7UUID
			require.NoError(t, e.db.Scopes(writethrough.Cached).First(&up, "id = ?", strings.ToUpper(row.ID)).Error)
			assert.Equal(t, row.ID, up.ID)
		}},
		{"uuid type", []any{&kUUIDType{}}, func(t *testing.T, e *env) {
			id := UUID{0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}
			require.NoError(t, e.db.Create(&kUUIDType{ID: id, Name: "t"}).Error)
			assert.Equal(t, byte(writethrough.StateCommitted), e.state(t, e.prefix+":k_uuid_types:"+id.String()))
			got := hitFirst(t, e, &kUUIDType{}, id).(*kUUIDType)
			assert.Equal(t, "t", got.Name)
			g, err := writethrough.Get[kUUIDType](ctx, e.db, id)
			require.NoError(t, err)
			assert.Equal(t, id, g.ID)
		}},
		{"composite", []any{&kPair{}}, func(t *testing.T, e *env) {
			// Naively joined with ':' both rows would be "a:b:c".
			rows := []kPair{{A: "a:b", B: "c", Name: "first"}, {A: "a", B: "b:c", Name: "second"}}
			for i := range rows {
				require.NoError(t, e.db.Create(&rows[i]).Error)
			}
			keys := prefixKeys(t, e)
			assert.ElementsMatch(t, []string{e.prefix + ":k_pairs:a%3Ab:c", e.prefix + ":k_pairs:a:b%3Ac"}, keys)
			for _, r := range rows {
				got := kPair{A: r.A, B: r.B}
				before := e.sqls.Load()
				require.NoError(t, e.db.Scopes(writethrough.Cached).Take(&got).Error)
				assert.Equal(t, before, e.sqls.Load(), "hit")
				assert.Equal(t, r.Name, got.Name)
				g, err := writethrough.Get[kPair](ctx, e.db, kPair{A: r.A, B: r.B})
				require.NoError(t, err)
				assert.Equal(t, r.Name, g.Name)
			}
		}},
		{"composite in a template", []any{&kPairTemplate{}}, func(t *testing.T, e *env) {
			// "{b}:{a}:x", columns in another order than the key's.
			rows := []kPairTemplate{{A: "a:b", B: "c", Name: "first"}, {A: "a", B: "b:c", Name: "second"}}
			for i := range rows {
				require.NoError(t, e.db.Create(&rows[i]).Error)
			}
			keys := prefixKeys(t, e)
			assert.ElementsMatch(t, []string{e.prefix + ":p:c:a%3Ab:x", e.prefix + ":p:b%3Ac:a:x"}, keys)
			for _, r := range rows {
				got := kPairTemplate{A: r.A, B: r.B}
				require.NoError(t, e.db.Scopes(writethrough.Cached).Take(&got).Error)
				assert.Equal(t, r.Name, got.Name, "row (%q, %q)", r.A, r.B)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := setup(t, nil, calm(), tc.models...)
			tc.run(t, e)
		})
	}
}

// hitFirst reads a row from the cache with First(model, conds...) and fails
// unless it was a hit; it returns model.
func hitFirst(t *testing.T, e *env, model any, conds ...any) any {
	t.Helper()
	before := e.sqls.Load()
	require.NoError(t, e.db.Scopes(writethrough.Cached).First(model, conds...).Error)
	assert.Equal(t, before, e.sqls.Load(), "First(%q) must be a hit", conds)
	return model
}

// prefixKeys lists the test's keys in Redis.
func prefixKeys(t *testing.T, e *env) []string {
	t.Helper()
	keys, err := e.rdb.Keys(context.Background(), e.prefix+":*").Result()
	require.NoError(t, err)
	return keys
}

type kUntagged struct {
	ID        uint `gorm:"primaryKey"`
	Name      string
	DeletedAt gorm.DeletedAt
}

func TestUntaggedModelCostsNoRedisCommands(t *testing.T) {
	e := setup(t, nil, calm(), &kUntagged{}, &User{})
	counter := countRedisCommands(e.rdb)

	// The counter sees what the plugin sends: a tagged model costs commands.
	require.NoError(t, e.db.Create(&User{Email: "c@x"}).Error)
	require.NotZero(t, counter.total(), "the hook must count the plugin's commands")
	counter.reset()

	ctx := context.Background()
	rows := []kUntagged{{Name: "a"}, {Name: "b"}}
	require.NoError(t, e.db.Create(&rows).Error)
	require.NoError(t, e.db.CreateInBatches(&[]kUntagged{{Name: "c"}, {Name: "d"}}, 1).Error)
	require.NoError(t, e.db.Model(&rows[0]).Update("name", "A").Error)
	require.NoError(t, e.db.Model(&rows[0]).Updates(map[string]any{"name": "AA"}).Error)
	require.NoError(t, e.db.Save(&rows[1]).Error)
	require.NoError(t, e.db.Model(&kUntagged{}).Where("name = ?", "c").Update("name", "C").Error)
	var got kUntagged
	require.NoError(t, e.db.Scopes(writethrough.Cached).First(&got, rows[0].ID).Error)
	var many []kUntagged
	require.NoError(t, e.db.Scopes(writethrough.Cached).Find(&many, []uint{rows[0].ID, rows[1].ID}).Error)
	_, err := writethrough.Get[kUntagged](ctx, e.db, rows[0].ID)
	require.NoError(t, err)
	_, err = writethrough.GetMany[kUntagged](ctx, e.db, rows[0].ID, rows[1].ID)
	require.NoError(t, err)
	require.NoError(t, e.db.Transaction(func(tx *gorm.DB) error {
		return tx.Model(&rows[1]).Update("name", "B").Error
	}))
	require.NoError(t, e.db.Delete(&rows[1]).Error)
	require.NoError(t, e.db.Unscoped().Delete(&rows[0]).Error)
	require.NoError(t, e.db.Where("name = ?", "d").Delete(&kUntagged{}).Error)
	assert.Zero(t, counter.total(), "an untagged model must cost no Redis commands")
}

func TestInvalidConfigFailsUseNamingTheField(t *testing.T) {
	cases := []struct {
		name  string
		cfg   writethrough.Config
		field string
	}{
		{"negative Timeout", writethrough.Config{Timeout: -time.Second}, "Timeout"},
		{"Timeout below a millisecond", writethrough.Config{Timeout: time.Microsecond}, "Timeout"},
		{"negative DefaultTTL", writethrough.Config{DefaultTTL: -time.Minute}, "DefaultTTL"},
		{"Prefix with spaces", writethrough.Config{Prefix: "my app"}, "Prefix"},
		{"Prefix with a brace", writethrough.Config{Prefix: "app{1}"}, "Prefix"},
		{"unknown Mode", writethrough.Config{Mode: writethrough.Mode(7)}, "Mode"},
		{"Jitter 200", writethrough.Config{Jitter: 200}, "Jitter"},
		{"negative MaxRowSize", writethrough.Config{MaxRowSize: -1}, "MaxRowSize"},
		{"PendingTTL not above Timeout", writethrough.Config{PendingTTL: time.Second, Timeout: 2 * time.Second}, "PendingTTL"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			db := testenv.Postgres(t, nil)
			rdb, _ := testenv.Redis(t)
			tc.cfg.DrainInterval = -1
			p := writethrough.New(rdb, tc.cfg)
			t.Cleanup(func() { _ = p.Close() })
			err := db.Use(p)
			require.Error(t, err)
			require.ErrorIs(t, err, writethrough.ErrInvalidConfig)
			var ce *writethrough.ConfigError
			require.True(t, errors.As(err, &ce), "want a *writethrough.ConfigError, got %T: %v", err, err)
			assert.Equal(t, tc.field, ce.Field)
			assert.Contains(t, err.Error(), tc.field)
		})
	}
	t.Run("nil Redis client", func(t *testing.T) {
		t.Parallel()
		db := testenv.Postgres(t, nil)
		err := db.Use(writethrough.New(nil, writethrough.Config{}))
		var ce *writethrough.ConfigError
		require.True(t, errors.As(err, &ce), "got %v", err)
	})
	t.Run("New leaves the caller's Config alone", func(t *testing.T) {
		models := []any{&User{}}
		cfg := writethrough.Config{Models: models}
		_ = writethrough.New(redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}), cfg)
		assert.Equal(t, writethrough.Config{Models: models}, cfg)
	})
}
