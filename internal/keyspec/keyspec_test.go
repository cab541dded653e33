package keyspec_test

import (
	"context"
	"database/sql/driver"
	"encoding/hex"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"gorm.io/gorm"
	"gorm.io/gorm/schema"

	"github.com/gorm-writethrough/writethrough/internal/keyspec"
)

const prefix = "wt"

// parse parses model's schema as GORM does with its default naming.
func parse(t testing.TB, model any) *schema.Schema {
	t.Helper()
	sch, err := schema.Parse(model, &sync.Map{}, schema.NamingStrategy{})
	require.NoError(t, err)
	return sch
}

// specOf builds the key spec of model under prefix, from its cache tag.
func specOf(t testing.TB, model any) *keyspec.Spec {
	t.Helper()
	sch := parse(t, model)
	tag, err := keyspec.ParseTag(sch)
	require.NoError(t, err)
	s, err := keyspec.New(sch, prefix, tag)
	require.NoError(t, err)
	return s
}

type (
	kUser struct {
		ID   uint `gorm:"primaryKey" cache:""`
		Name string
	}
	kAccount struct {
		ID int32 `gorm:"primaryKey" cache:"ttl:1m"`
	}
	kCode struct {
		Code string `gorm:"primaryKey" cache:""`
	}
	kPair struct {
		A string `gorm:"primaryKey" cache:""`
		B string `gorm:"primaryKey"`
	}
	kTmplUser struct {
		ID int64 `gorm:"primaryKey" cache:"key:user:{id}"`
	}
	kTmplPrefix struct {
		ID int64 `gorm:"primaryKey" cache:"key:{prefix}:acct:{ID}:v2"`
	}
	kTmplTable struct {
		ID int64 `gorm:"primaryKey" cache:"key:{table}/{pk}"`
	}
	kTmplPair struct {
		A string `gorm:"primaryKey" cache:"key:p:{b}:{a}:x"`
		B string `gorm:"primaryKey"`
	}
	kTagTenant struct {
		Tenant string `gorm:"primaryKey" cache:"key:order:{{{tenant}}}:{id}"`
		ID     int64  `gorm:"primaryKey;autoIncrement:false"`
	}
	kTagLiteral struct {
		ID int64 `gorm:"primaryKey" cache:"key:{{settings}}:{id}"`
	}
	kUUIDString struct {
		ID string `gorm:"type:uuid;primaryKey" cache:""`
	}
	kUUIDType struct {
		ID UUID `gorm:"type:uuid;primaryKey" cache:""`
	}
	kBytes struct {
		ID []byte `gorm:"primaryKey" cache:""`
	}
	kArray struct {
		ID [4]byte `gorm:"primaryKey" cache:""`
	}
	kSKU struct {
		ID sku `gorm:"primaryKey" cache:""`
	}
	kOdd struct {
		ID int64 `gorm:"primaryKey" cache:""`
	}
	kQualified struct {
		ID int64 `gorm:"primaryKey" cache:""`
	}
)

type sku string

func (kOdd) TableName() string       { return "odd:table{1}" }
func (kQualified) TableName() string { return "audit.events" }

// UUID is a 16-byte key type with Value, Scan and String, as UUID libraries
// have.
type UUID [16]byte

func (u UUID) String() string {
	h := hex.EncodeToString(u[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

func (u UUID) Value() (driver.Value, error) { return u.String(), nil }

func (u *UUID) Scan(v any) error {
	s, ok := v.(string)
	if !ok {
		return fmt.Errorf("uuid: cannot scan %T", v)
	}
	b, err := hex.DecodeString(strings.ReplaceAll(s, "-", ""))
	if err != nil || len(b) != 16 {
		return fmt.Errorf("uuid: bad text %q", s)
	}
	copy(u[:], b)
	return nil
}

var someUUID = UUID{0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}

const someUUIDText = "deadbeef-0102-0304-0506-0708090a0b0c"

// TestKeysArePinned pins the key strings: they are the wire format, shared
// by every process that reads or writes the same Redis. A change here is a
// CHANGELOG entry.
func TestKeysArePinned(t *testing.T) {
	n := uint(42)
	cases := []struct {
		name  string
		model any
		vals  []any
		want  string // "" when the values do not fit
	}{
		{"uint", &kUser{}, []any{uint(42)}, "wt:k_users:42"},
		{"uint from an int", &kUser{}, []any{42}, "wt:k_users:42"},
		{"uint from an int8", &kUser{}, []any{int8(42)}, "wt:k_users:42"},
		{"uint from a pointer", &kUser{}, []any{&n}, "wt:k_users:42"},
		{"uint from text", &kUser{}, []any{"42"}, "wt:k_users:42"},
		{"uint from text with a leading zero", &kUser{}, []any{"042"}, "wt:k_users:42"},
		{"uint from text with spaces and a sign", &kUser{}, []any{" +42 "}, "wt:k_users:42"},
		{"uint zero", &kUser{}, []any{0}, ""},
		{"uint negative", &kUser{}, []any{-1}, ""},
		{"uint negative text", &kUser{}, []any{"-1"}, ""},
		{"uint text with trailing garbage", &kUser{}, []any{"1x"}, ""},
		{"uint SQL", &kUser{}, []any{"1=1"}, ""},
		{"uint two signs", &kUser{}, []any{"+-1"}, ""},
		{"uint nil", &kUser{}, []any{nil}, ""},
		{"uint two values", &kUser{}, []any{1, 2}, ""},
		{"int32 negative", &kAccount{}, []any{-7}, "wt:k_accounts:-7"},
		{"int32 from \"01\"", &kAccount{}, []any{"01"}, "wt:k_accounts:1"},
		{"int32 from \" +1\"", &kAccount{}, []any{" +1"}, "wt:k_accounts:1"},
		{"int32 out of range", &kAccount{}, []any{int64(1) << 31}, ""},
		{"int32 lowest", &kAccount{}, []any{int64(-1) << 31}, "wt:k_accounts:-2147483648"},
		{"string", &kCode{}, []any{"abc"}, "wt:k_codes:abc"},
		{"string with ':'", &kCode{}, []any{"a:b"}, "wt:k_codes:a%3Ab"},
		{"string with '%'", &kCode{}, []any{"a%3Ab"}, "wt:k_codes:a%253Ab"},
		{"string with braces", &kCode{}, []any{"{a}"}, "wt:k_codes:%7Ba%7D"},
		{"string with control bytes", &kCode{}, []any{"a\nb\x7f"}, "wt:k_codes:a%0Ab%7F"},
		{"string with spaces and UTF-8", &kCode{}, []any{"ä ö"}, "wt:k_codes:ä ö"},
		{"string with digits stays text", &kCode{}, []any{"007"}, "wt:k_codes:007"},
		{"empty string", &kCode{}, []any{""}, ""},
		{"composite", &kPair{}, []any{"a:b", "c"}, "wt:k_pairs:a%3Ab:c"},
		{"composite, other split", &kPair{}, []any{"a", "b:c"}, "wt:k_pairs:a:b%3Ac"},
		{"composite, one value short", &kPair{}, []any{"a"}, ""},
		{"template without {prefix}", &kTmplUser{}, []any{42}, "wt:user:42"},
		{"template with {prefix} and a field name", &kTmplPrefix{}, []any{42}, "wt:acct:42:v2"},
		{"template with {table} and {pk}", &kTmplTable{}, []any{42}, "wt:k_tmpl_tables/42"},
		{"template with columns out of order", &kTmplPair{}, []any{"a:b", "c"}, "wt:p:c:a%3Ab:x"},
		{"hash tag around a column", &kTagTenant{}, []any{"acme", 7}, "wt:order:{acme}:7"},
		{"hash tag, value with braces", &kTagTenant{}, []any{"a}b{c", 7}, "wt:order:{a%7Db%7Bc}:7"},
		{"literal hash tag", &kTagLiteral{}, []any{7}, "wt:{settings}:7"},
		{"uuid string", &kUUIDString{}, []any{someUUIDText}, "wt:k_uuid_strings:" + someUUIDText},
		{"uuid string in upper case", &kUUIDString{}, []any{strings.ToUpper(someUUIDText)}, "wt:k_uuid_strings:" + someUUIDText},
		{"uuid string in braces", &kUUIDString{}, []any{"{" + strings.ToUpper(someUUIDText) + "}"}, "wt:k_uuid_strings:" + someUUIDText},
		{"uuid string without hyphens", &kUUIDString{}, []any{strings.ReplaceAll(someUUIDText, "-", "")}, "wt:k_uuid_strings:" + someUUIDText},
		{"uuid string, hyphen every four digits", &kUUIDString{}, []any{"DEAD-beef-0102-0304-0506-0708-090a-0b0c"}, "wt:k_uuid_strings:" + someUUIDText},
		{"uuid string, not a uuid", &kUUIDString{}, []any{"deadbeef"}, ""},
		{"uuid string, doubled hyphen", &kUUIDString{}, []any{"deadbeef--0102-0304-0506-0708090a0b0c"}, ""},
		{"uuid string, open brace", &kUUIDString{}, []any{"{" + someUUIDText}, ""},
		{"uuid type", &kUUIDType{}, []any{someUUID}, "wt:k_uuid_types:" + someUUIDText},
		{"uuid type from upper-case text", &kUUIDType{}, []any{strings.ToUpper(someUUIDText)}, "wt:k_uuid_types:" + someUUIDText},
		{"bytes", &kBytes{}, []any{[]byte{0xde, 0xad, 0x3a}}, "wt:k_bytes:dead3a"},
		{"byte array", &kArray{}, []any{[4]byte{1, 2, 0x3a, 0xff}}, "wt:k_arrays:01023aff"},
		{"string type", &kSKU{}, []any{"a:b"}, "wt:k_skus:a%3Ab"},
		{"table name escaped", &kOdd{}, []any{1}, "wt:odd%3Atable%7B1%7D:1"},
		{"schema-qualified table", &kQualified{}, []any{1}, "wt:audit.events:1"},
	}
	ctx := context.Background()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := specOf(t, tc.model)
			got, ok := s.Lookup(ctx, tc.vals...)
			if tc.want == "" {
				assert.False(t, ok, "%v must not fit, got key %q", tc.vals, got)
				return
			}
			require.True(t, ok, "%v must fit", tc.vals)
			assert.Equal(t, tc.want, got)
			if len(tc.vals) == 1 {
				got1, ok := s.Lookup1(tc.vals[0])
				assert.True(t, ok)
				assert.Equal(t, tc.want, got1, "Lookup1 gives Lookup's key")
			}
			// The row with those values has the same key.
			norm, ok := s.NormalizeAll(ctx, tc.vals)
			require.True(t, ok)
			row := reflect.New(reflect.TypeOf(tc.model).Elem()).Elem()
			for i, f := range s.Fields() {
				require.NoError(t, f.Set(ctx, row, norm[i]))
			}
			k, ok := s.RowKey(ctx, row)
			require.True(t, ok)
			assert.True(t, globMatch(s.Pattern(), tc.want), "pattern %q must match key %q", s.Pattern(), tc.want)
			assert.Equal(t, tc.want, k, "RowKey gives Lookup's key")
			assert.True(t, s.Matches(ctx, row, tc.want))
		})
	}
}

func TestRowKeyOfARowWithoutItsKeyIsNotAKey(t *testing.T) {
	s := specOf(t, &kPair{})
	_, ok := s.RowKey(context.Background(), reflect.ValueOf(kPair{A: "a"}))
	assert.False(t, ok)
	assert.False(t, s.Matches(context.Background(), reflect.ValueOf(kPair{A: "a"}), "wt:k_pairs:a:"))
}

func TestKeyWritesValuesAsReadFromARow(t *testing.T) {
	cases := []struct {
		name  string
		model any
		vals  []any
		want  string
	}{
		{"integers", &kUser{}, []any{uint(7)}, "wt:k_users:7"},
		{"composite", &kPair{}, []any{"x", "y:z"}, "wt:k_pairs:x:y%3Az"},
		{"uuid spelled in upper case by a caller", &kUUIDString{}, []any{strings.ToUpper(someUUIDText)}, "wt:k_uuid_strings:" + someUUIDText},
		{"template", &kTmplPair{}, []any{"a", "b"}, "wt:p:b:a:x"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			assert.Equal(t, tc.want, specOf(t, tc.model).Key(tc.vals))
		})
	}
}

func TestEscape(t *testing.T) {
	cases := []struct{ in, want string }{
		{"", ""},
		{"plain-text_1.2", "plain-text_1.2"},
		{"a:b", "a%3Ab"},
		{"100%", "100%25"},
		{"{tag}", "%7Btag%7D"},
		{"tab\there", "tab%09here"},
		{"\x00\x1f\x7f", "%00%1F%7F"},
		{"ä/ö é", "ä/ö é"},
	}
	for _, tc := range cases {
		t.Run(tc.in, func(t *testing.T) {
			t.Parallel()
			assert.Equal(t, tc.want, keyspec.Escape(tc.in))
		})
	}
}

type (
	gmArticle struct {
		gorm.Model `cache:"ttl:10m"`
		Title      string
	}
	gmNamed struct {
		Base  gorm.Model `gorm:"embedded" cache:"ttl:10m"`
		Title string
	}
	GMBase struct {
		gorm.Model
		Tenant string
	}
	gmNested struct {
		GMBase `cache:"ttl:10m;mode:strict"`
		Title  string
	}
	tUntagged struct {
		ID   int64 `gorm:"primaryKey"`
		Name string
	}
)

func TestParseTagReadsEveryWord(t *testing.T) {
	type (
		empty struct {
			ID int64 `gorm:"primaryKey" cache:""`
		}
		all struct {
			ID int64 `gorm:"primaryKey" cache:"ttl:30s;key:u:{id};mode:strict;strategy:aside;jitter:0"`
		}
		spaced struct {
			ID int64 `gorm:"primaryKey" cache:" TTL : 1h ; Jitter : 20% ; Mode : SOFT ;"`
		}
		lastWins struct {
			ID int64 `gorm:"primaryKey" cache:"strategy:aside;ttl:1m;strategy:THROUGH;ttl:2m"`
		}
	)
	cases := []struct {
		name  string
		model any
		want  *keyspec.Tag // Field is checked by name
		field string       // the key field's Go name
	}{
		{"empty tag", &empty{}, &keyspec.Tag{FieldName: "ID", Jitter: -1}, "ID"},
		{"every word", &all{}, &keyspec.Tag{FieldName: "ID", TTL: 30 * time.Second, Jitter: 0, Mode: "strict", Aside: true, Template: "u:{id}"}, "ID"},
		{"any case and spacing", &spaced{}, &keyspec.Tag{FieldName: "ID", TTL: time.Hour, Jitter: 20, Mode: "soft"}, "ID"},
		{"a repeated word takes its last value", &lastWins{}, &keyspec.Tag{FieldName: "ID", TTL: 2 * time.Minute, Jitter: -1}, "ID"},
		{"on an embedded gorm.Model", &gmArticle{}, &keyspec.Tag{FieldName: "Model", TTL: 10 * time.Minute, Jitter: -1}, "ID"},
		{"on a named embedded gorm.Model", &gmNamed{}, &keyspec.Tag{FieldName: "Base", TTL: 10 * time.Minute, Jitter: -1}, "ID"},
		{"on a base struct holding gorm.Model", &gmNested{}, &keyspec.Tag{FieldName: "GMBase", TTL: 10 * time.Minute, Jitter: -1, Mode: "strict"}, "ID"},
		{"no tag", &tUntagged{}, nil, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := keyspec.ParseTag(parse(t, tc.model))
			require.NoError(t, err)
			if tc.want == nil {
				assert.Nil(t, got)
				return
			}
			require.NotNil(t, got)
			require.NotNil(t, got.Field)
			assert.Equal(t, tc.field, got.Field.Name)
			assert.True(t, got.Field.PrimaryKey)
			got.Field = nil
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestParseTagIgnoresGeneratedJoinModels(t *testing.T) {
	type lang struct {
		ID uint `gorm:"primaryKey" cache:"ttl:1m"`
	}
	type user struct {
		ID    uint   `gorm:"primaryKey" cache:"ttl:2m"`
		Langs []lang `gorm:"many2many:user_langs"`
	}
	join := parse(t, &user{}).Relationships.Relations["Langs"].JoinTable
	require.NotNil(t, join)
	require.Empty(t, join.ModelType.Name(), "GORM generates an unnamed type")
	tag, err := keyspec.ParseTag(join)
	require.NoError(t, err, "both sides' different tags are copied, and not an error")
	assert.Nil(t, tag)
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
	tFirstBadWordWins struct {
		ID int64 `gorm:"primaryKey" cache:"mode:lazy;colour:red"`
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
	tTwoHashTags struct {
		A string `gorm:"primaryKey" cache:"key:p:{{{a}}}:{{{b}}}"`
		B string `gorm:"primaryKey"`
	}
	tEmptyHashTag struct {
		ID int64 `gorm:"primaryKey" cache:"key:p:{{}}:{id}"`
	}
	tHashTagNotClosed struct {
		ID int64 `gorm:"primaryKey" cache:"key:p:{{{id}}"`
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
	TAudit struct {
		By string
	}
	tEmbedNoKey struct {
		ID     int64 `gorm:"primaryKey"`
		TAudit `cache:"ttl:1m"`
	}
	tIgnoredField struct {
		ID   int64  `gorm:"primaryKey"`
		Skip string `gorm:"-" cache:"ttl:1m"`
	}
	tUnexportedField struct {
		ID     int64 `gorm:"primaryKey"`
		hidden int   `cache:"ttl:1m"`
	}
	TTeam struct {
		ID int64 `gorm:"primaryKey"`
	}
	tTagOnAssociation struct {
		ID     int64 `gorm:"primaryKey"`
		TeamID int64
		Team   TTeam `cache:"ttl:1m"`
	}
	tTwoTagsEmbedded struct {
		gorm.Model `cache:"ttl:1m"`
		ID         uint `gorm:"primaryKey" cache:"ttl:2m"`
	}
)

var _ = tUnexportedField{hidden: 0}

func TestUnusableTagsAreTagErrors(t *testing.T) {
	cases := []struct {
		name  string
		model any
		want  keyspec.TagError // Reason is a fragment
	}{
		{"unknown word", &tUnknownWord{}, keyspec.TagError{Field: "ID", Word: "colour:red", Reason: `unknown key "colour" (keys: ttl, key, mode, strategy, jitter)`}},
		{"bad duration", &tBadDuration{}, keyspec.TagError{Field: "ID", Word: "ttl:ten minutes", Reason: "not a Go duration"}},
		{"ttl below a millisecond", &tTinyTTL{}, keyspec.TagError{Field: "ID", Word: "ttl:10us", Reason: "ttl must be at least 1ms"}},
		{"word without a value", &tNoValue{}, keyspec.TagError{Field: "ID", Word: "ttl", Reason: "want key:value (keys: ttl, key, mode, strategy, jitter)"}},
		{"empty value", &tEmptyValue{}, keyspec.TagError{Field: "ID", Word: "mode:", Reason: "want key:value"}},
		{"unknown mode", &tBadMode{}, keyspec.TagError{Field: "ID", Word: "mode:lazy", Reason: "mode is strict or soft"}},
		{"unknown strategy", &tBadStrategy{}, keyspec.TagError{Field: "ID", Word: "strategy:around", Reason: "strategy is through or aside"}},
		{"jitter above 100", &tBadJitter{}, keyspec.TagError{Field: "ID", Word: "jitter:200", Reason: "jitter is a percentage from 0 to 100"}},
		{"the first bad word is reported", &tFirstBadWordWins{}, keyspec.TagError{Field: "ID", Word: "mode:lazy", Reason: "strict or soft"}},
		{"template with an unclosed brace", &tUnclosedBrace{}, keyspec.TagError{Field: "ID", Word: "key:user:{id", Reason: "unclosed '{' in key template"}},
		{"template with a stray brace", &tStrayBrace{}, keyspec.TagError{Field: "ID", Word: "key:user:id}", Reason: "unbalanced '}' in key template"}},
		{"template with an unknown placeholder", &tUnknownPlaceholder{}, keyspec.TagError{Field: "ID", Word: "key:user:{name}", Reason: "placeholder {name} is not a primary-key column"}},
		{"template without the key", &tTemplateWithoutKey{}, keyspec.TagError{Field: "ID", Word: "key:users", Reason: "leaves out primary-key column id"}},
		{"template missing a key column", &tTemplateMissesAKeyColumn{}, keyspec.TagError{Field: "Tenant", Word: "key:o:{tenant}", Reason: "leaves out primary-key column seq"}},
		{"template with touching placeholders", &tPlaceholdersTouch{}, keyspec.TagError{Field: "A", Word: "key:p:{a}{b}", Reason: "placeholders {a} and {b} must be separated by ':'"}},
		{"template with two hash tags", &tTwoHashTags{}, keyspec.TagError{Field: "A", Word: "key:p:{{{a}}}:{{{b}}}", Reason: "at most one hash tag"}},
		{"template with an empty hash tag", &tEmptyHashTag{}, keyspec.TagError{Field: "ID", Word: "key:p:{{}}:{id}", Reason: "hash tag '{{}}' is empty"}},
		{"template with a hash tag not closed", &tHashTagNotClosed{}, keyspec.TagError{Field: "ID", Word: "key:p:{{{id}}", Reason: "unbalanced '}'"}},
		{"template with placeholders not split by ':'", &tPlaceholdersWithoutColon{}, keyspec.TagError{Field: "A", Word: "key:p:{a}-{B}", Reason: "placeholders {a} and {b} must be separated by ':'"}},
		{"tag on a field that is not the key", &tTagOnNonKey{}, keyspec.TagError{Field: "Email", Reason: "the cache tag belongs on the primary-key field"}},
		{"tag on a model without a primary key", &tNoPrimaryKey{}, keyspec.TagError{Field: "Label", Reason: "model has no primary key"}},
		{"different tags on a composite key", &tTwoTags{}, keyspec.TagError{Field: "B", Reason: "cache tags on A and B differ"}},
		{"tag on an embedded struct without the key", &tEmbedNoKey{}, keyspec.TagError{Field: "TAudit", Reason: "holds none"}},
		{"tag on a field GORM ignores", &tIgnoredField{}, keyspec.TagError{Field: "Skip", Reason: `gorm:"-"`}},
		{"tag on an unexported field", &tUnexportedField{}, keyspec.TagError{Field: "hidden", Reason: "GORM does not map this field"}},
		{"tag on an association", &tTagOnAssociation{}, keyspec.TagError{Field: "Team", Reason: "an association is not cached"}},
		{"tag on gorm.Model differs from the key's", &tTwoTagsEmbedded{}, keyspec.TagError{Field: "ID", Reason: "differ"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sch := parse(t, tc.model)
			tag, err := keyspec.ParseTag(sch)
			if err == nil {
				require.NotNil(t, tag)
				_, err = keyspec.New(sch, prefix, tag)
			}
			var te *keyspec.TagError
			require.True(t, errors.As(err, &te), "want a *keyspec.TagError, got %T: %v", err, err)
			assert.Equal(t, sch.Name, te.Model)
			assert.Equal(t, tc.want.Field, te.Field)
			assert.Equal(t, tc.want.Word, te.Word)
			assert.Contains(t, te.Reason, tc.want.Reason)
			assert.Contains(t, err.Error(), te.Reason)
		})
	}
}

func TestNewWithoutATagGivesTheDefaultKey(t *testing.T) {
	s, err := keyspec.New(parse(t, &tUntagged{}), "app", nil)
	require.NoError(t, err)
	k, ok := s.Lookup(context.Background(), "9")
	require.True(t, ok)
	assert.Equal(t, "app:t_untaggeds:9", k)
}

func TestValuesTakesEveryFormOfKey(t *testing.T) {
	ctx := context.Background()
	pair := specOf(t, &kPair{})
	user := specOf(t, &kUser{})
	uuids := specOf(t, &kUUIDString{})
	cases := []struct {
		name string
		s    *keyspec.Spec
		key  any
		want []any
		err  *keyspec.KeyError // nil when the key fits
	}{
		{"a value", user, "7", []any{uint64(7)}, nil},
		{"a one-value tuple", user, []any{7}, []any{uint64(7)}, nil},
		{"a model value", user, kUser{ID: 7}, []any{uint(7)}, nil},
		{"a model pointer", user, &kUser{ID: 7}, []any{uint(7)}, nil},
		{"a model without its key", user, kUser{Name: "x"}, nil, &keyspec.KeyError{Model: "kUser", Key: kUser{Name: "x"}, Columns: 1}},
		{"a value that does not fit", user, "1=1", nil, &keyspec.KeyError{Model: "kUser", Key: "1=1", Columns: 1}},
		{"a composite tuple", pair, []any{"a", "b"}, []any{"a", "b"}, nil},
		{"a composite model", pair, kPair{A: "a", B: "b"}, []any{"a", "b"}, nil},
		{"a composite key given one value", pair, "a", nil, &keyspec.KeyError{Model: "kPair", Key: "a", Columns: 2, Tuple: true}},
		{"a composite tuple one short", pair, []any{"a"}, nil, &keyspec.KeyError{Model: "kPair", Key: []any{"a"}, Columns: 2}},
		{"a uuid model in upper case", uuids, kUUIDString{ID: strings.ToUpper(someUUIDText)}, []any{someUUIDText}, nil},
		{"a uuid model that is no uuid", uuids, kUUIDString{ID: "x"}, nil, &keyspec.KeyError{Model: "kUUIDString", Key: kUUIDString{ID: "x"}, Columns: 1}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := tc.s.Values(ctx, tc.key, tc.s.ModelValue)
			if tc.err == nil {
				require.NoError(t, err)
				assert.Equal(t, tc.want, got)
				return
			}
			var ke *keyspec.KeyError
			require.True(t, errors.As(err, &ke), "want a *keyspec.KeyError, got %T: %v", err, err)
			assert.Equal(t, tc.err, ke)
		})
	}
}

func TestModelValueCopiesValuesAndRefusesOtherTypes(t *testing.T) {
	s := specOf(t, &kUser{})
	row := kUser{ID: 3}
	v, ok := s.ModelValue(row)
	require.True(t, ok)
	v.Field(0).SetUint(4)
	assert.Equal(t, uint(3), row.ID, "a value is copied")
	p := &kUser{ID: 3}
	v, ok = s.ModelValue(p)
	require.True(t, ok)
	assert.Equal(t, uintptr(reflect.ValueOf(p).Pointer()), v.Addr().Pointer(), "a pointer is used as it is")
	for _, other := range []any{nil, (*kUser)(nil), kPair{}, &kPair{}, 3} {
		_, ok := s.ModelValue(other)
		assert.False(t, ok, "%#v", other)
	}
}

func TestLooseBeforeResolving(t *testing.T) {
	cases := []struct {
		name  string
		model any
		loose bool
	}{
		{"integer", &kUser{}, false},
		{"bytes", &kBytes{}, false},
		{"uuid type", &kUUIDType{}, false},
		{"uuid string", &kUUIDString{}, false},
		{"string of unknown type", &kCode{}, true},
		{"composite with a string", &kPair{}, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			assert.Equal(t, tc.loose, specOf(t, tc.model).Loose())
		})
	}
}

// TestResolveOnOtherDialectsKeepsStringsLoose: a database that is not
// PostgreSQL is never asked; string keys stay loose.
func TestResolveOnOtherDialectsKeepsStringsLoose(t *testing.T) {
	s := specOf(t, &kCode{})
	require.NoError(t, s.Resolve(&gorm.DB{Config: &gorm.Config{}}))
	assert.True(t, s.Loose())
}

// globMatch is Redis's glob matching (stringmatchlen) for what Pattern
// writes: '*', '?' and backslash escapes.
func globMatch(pat, s string) bool {
	for len(pat) > 0 {
		switch pat[0] {
		case '*':
			for i := len(s); i >= 0; i-- {
				if globMatch(pat[1:], s[i:]) {
					return true
				}
			}
			return false
		case '?':
			if s == "" {
				return false
			}
			pat, s = pat[1:], s[1:]
			continue
		case '\\':
			if len(pat) > 1 {
				pat = pat[1:]
			}
		}
		if s == "" || s[0] != pat[0] {
			return false
		}
		pat, s = pat[1:], s[1:]
	}
	return s == ""
}

func TestPatternMatchesOnlyTheModelsKeys(t *testing.T) {
	users := specOf(t, &kUser{})
	assert.Equal(t, "wt:k_users:*", users.Pattern())
	assert.False(t, globMatch(users.Pattern(), "wt:k_users_archive:1"))
	odd := specOf(t, &kOdd{})
	assert.True(t, globMatch(odd.Pattern(), "wt:odd%3Atable%7B1%7D:1"))
	assert.False(t, globMatch(odd.Pattern(), "wt:odd%3Atable%7B2%7D:1"))
}

// TestHashTagDecidesTheSlot checks what a hash tag is for: on Redis
// Cluster, keys whose tags hold the same text share a slot, whatever else
// they hold, and a key value cannot move the tag.
func TestHashTagDecidesTheSlot(t *testing.T) {
	ctx := context.Background()
	s := specOf(t, &kTagTenant{})
	slot := func(vals ...any) uint16 {
		k, ok := s.Lookup(ctx, vals...)
		require.True(t, ok)
		return keyspec.Slot(k)
	}
	assert.Equal(t, slot("acme", 1), slot("acme", 987654))
	assert.Equal(t, keyspec.Slot("acme"), slot("acme", 1), "the tag is hashed alone")
	assert.NotEqual(t, slot("acme", 1), slot("globex", 1))
	assert.Equal(t, keyspec.Slot(keyspec.Escape("a}b")), slot("a}b", 1), "a brace in a value is escaped, not the tag's end")

	bad, err := keyspec.New(parse(t, &kTagLiteral{}), "wt{x}", mustTag(t, &kTagLiteral{}))
	assert.Nil(t, bad)
	assert.ErrorContains(t, err, "prefix")
}

func mustTag(t *testing.T, model any) *keyspec.Tag {
	tag, err := keyspec.ParseTag(parse(t, model))
	require.NoError(t, err)
	return tag
}

// TestSlotAgreesWithRedis pins Slot to the values Redis's CLUSTER KEYSLOT
// gives (the cluster specification's examples and hash-tag rules).
func TestSlotAgreesWithRedis(t *testing.T) {
	for key, want := range map[string]uint16{
		"123456789":     12739, // CRC16 XMODEM check value 0x31C3
		"foo":           12182,
		"{user1000}.a":  keyspec.Slot("user1000"),
		"foo{{bar}}zap": keyspec.Slot("{bar"),
		"foo{bar}{zap}": keyspec.Slot("bar"),
		"":              0,
	} {
		assert.Equal(t, want, keyspec.Slot(key), "%q", key)
	}
	assert.NotEqual(t, keyspec.Slot("bar"), keyspec.Slot("foo{}{bar}"), "an empty first tag hashes the whole key")
}
