package keyspec

import (
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"time"

	"gorm.io/gorm/schema"
)

// TagError reports a malformed cache tag. It names the model, the field
// that carries the tag and the offending word.
type TagError struct {
	Model  string // the model's Go type name
	Field  string // the struct field that carries the tag
	Word   string // the bad word of the tag, or "" when the tag as a whole is misplaced
	Reason string
}

func (e *TagError) Error() string {
	if e.Word == "" {
		return fmt.Sprintf("keyspec: model %s, field %s: %s", e.Model, e.Field, e.Reason)
	}
	return fmt.Sprintf("keyspec: model %s, field %s: cache tag %q: %s", e.Model, e.Field, e.Word, e.Reason)
}

// Tag is a model's cache tag, parsed: words separated by ';', each
// key:value, keys and the mode and strategy values in any case. A word the
// tag repeats takes its last value.
type Tag struct {
	// Field is the primary-key field the tag is on, or applies to when it
	// is on an embedded struct such as gorm.Model.
	Field *schema.Field
	// FieldName is the path of the struct field that carries the tag:
	// "ID", "Model", "Base".
	FieldName string
	// TTL is the ttl word, at least a millisecond; 0 when the tag has none.
	TTL time.Duration
	// Jitter is the jitter word, a percentage of the TTL from 0 to 100;
	// -1 when the tag has none.
	Jitter int
	// Mode is the mode word in lower case, "strict" or "soft"; "" when the
	// tag has none.
	Mode string
	// Aside is true for strategy:aside (writes only invalidate), false for
	// strategy:through and when the tag has no strategy.
	Aside bool
	// Template is the key word's template, "" for the default key.
	Template string
}

const tagKeys = "(keys: ttl, key, mode, strategy, jitter)"

// ParseTag finds and parses the cache tag of the model sch describes. It
// returns nil and no error when the model has no cache tag. A tag that
// cannot be used is a *TagError, never ignored: a word that is not
// key:value, an unknown key or value, a tag on a column that is not the
// primary key, on an embedded struct that holds no primary key, on a field
// GORM does not map, on an association, different tags on the columns of a
// composite key, or a tag on a model without a primary key. The template
// is checked by [New].
//
// A model type without a name has no tag: it is the join model GORM
// generates for a many2many field, which copies both sides' key fields,
// cache tags included, but which the user never wrote. A join model
// declared with SetupJoinTable is a named type and follows its own tag.
func ParseTag(sch *schema.Schema) (*Tag, error) {
	if sch.ModelType.Name() == "" {
		return nil, nil
	}
	field, name, tag, err := findTag(sch)
	if err != nil || field == nil {
		return nil, err
	}
	if len(sch.PrimaryFields) == 0 {
		return nil, &TagError{Model: sch.Name, Field: name, Reason: "model has no primary key"}
	}
	out := &Tag{Field: field, FieldName: name, Jitter: -1}
	for _, word := range strings.Split(tag, ";") {
		word = strings.TrimSpace(word)
		if word == "" {
			continue
		}
		k, v, ok := strings.Cut(word, ":")
		k, v = strings.ToLower(strings.TrimSpace(k)), strings.TrimSpace(v)
		bad := func(reason string) error {
			return &TagError{Model: sch.Name, Field: name, Word: word, Reason: reason}
		}
		if !ok || v == "" {
			return nil, bad("want key:value " + tagKeys)
		}
		switch k {
		case "ttl":
			d, err := time.ParseDuration(v)
			if err != nil {
				return nil, bad("not a Go duration")
			}
			if d < time.Millisecond {
				return nil, bad("ttl must be at least 1ms")
			}
			out.TTL = d
		case "key":
			out.Template = v
		case "mode":
			switch m := strings.ToLower(v); m {
			case "strict", "soft":
				out.Mode = m
			default:
				return nil, bad("mode is strict or soft")
			}
		case "strategy":
			switch strings.ToLower(v) {
			case "through":
				out.Aside = false
			case "aside":
				out.Aside = true
			default:
				return nil, bad("strategy is through or aside")
			}
		case "jitter":
			n, err := strconv.Atoi(strings.TrimSuffix(v, "%"))
			if err != nil || n < 0 || n > 100 {
				return nil, bad("jitter is a percentage from 0 to 100")
			}
			out.Jitter = n
		default:
			return nil, bad("unknown key " + strconv.Quote(k) + " " + tagKeys)
		}
	}
	return out, nil
}

// findTag finds the model's cache tag: on a primary-key field, or on an
// embedded struct (gorm.Model) that holds the primary key, where it applies
// to that key. field is the primary-key field the tag applies to and name
// the struct field that carries it ("ID", "Model"); field is nil when the
// model has no tag.
func findTag(sch *schema.Schema) (field *schema.Field, name, tag string, err error) {
	byPath := make(map[string]*schema.Field, len(sch.Fields))
	under := map[string][]*schema.Field{} // embedded struct path -> its columns
	for _, f := range sch.Fields {
		byPath[strings.Join(f.BindNames, ".")] = f
		for i := 1; i < len(f.BindNames); i++ {
			prefix := strings.Join(f.BindNames[:i], ".")
			under[prefix] = append(under[prefix], f)
		}
	}
	bad := func(path, reason string) error {
		return &TagError{Model: sch.Name, Field: path, Reason: reason}
	}
	take := func(f *schema.Field, path, v string) error {
		if field != nil && v != tag {
			return bad(path, fmt.Sprintf("cache tags on %s and %s differ; put one tag on the primary-key field", name, path))
		}
		if field == nil {
			field, name, tag = f, path, v
		}
		return nil
	}
	noKey := ""
	if len(sch.PrimaryFields) == 0 {
		noKey = "model has no primary key; "
	}
	var walk func(t reflect.Type, path []string, seen map[reflect.Type]bool) error
	walk = func(t reflect.Type, path []string, seen map[reflect.Type]bool) error {
		for i := 0; i < t.NumField(); i++ {
			sf := t.Field(i)
			p := strings.Join(append(path[:len(path):len(path)], sf.Name), ".")
			f := byPath[p]
			inner := under[p]
			v, tagged := sf.Tag.Lookup("cache")
			if tagged {
				switch {
				case f != nil && f.DBName != "" && f.PrimaryKey:
					if err := take(f, p, v); err != nil {
						return err
					}
				case f != nil && f.DBName != "":
					return bad(p, noKey+"the cache tag belongs on the primary-key field (or on an embedded gorm.Model)")
				case f != nil && sch.Relationships.Relations[f.Name] != nil:
					return bad(p, "an association is not cached by its field's tag; tag the primary-key field of "+
						f.FieldType.String()+" itself (and of this model)")
				case f != nil && hasSetting(f, "-"):
					return bad(p, `the field is ignored by GORM (gorm:"-"), so the cache tag applies to nothing; put it on the primary-key field`)
				case f != nil:
					return bad(p, "the field is not a column, so the cache tag applies to nothing; put it on the primary-key field")
				case len(inner) > 0:
					n := 0
					for _, c := range inner {
						if c.PrimaryKey {
							n++
							if err := take(c, p, v); err != nil {
								return err
							}
						}
					}
					if n == 0 {
						return bad(p, noKey+"a cache tag on an embedded struct applies to the primary key it holds, and "+
							sf.Type.String()+" holds none; put the tag on the primary-key field")
					}
				default:
					return bad(p, "GORM does not map this field (unexported or ignored), so the cache tag applies to nothing; put it on the primary-key field")
				}
			}
			ft := sf.Type
			for ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if f == nil && len(inner) > 0 && ft.Kind() == reflect.Struct && !seen[ft] {
				seen[ft] = true
				if err := walk(ft, append(path[:len(path):len(path)], sf.Name), seen); err != nil {
					return err
				}
				delete(seen, ft)
			}
		}
		return nil
	}
	if err := walk(sch.ModelType, nil, map[reflect.Type]bool{sch.ModelType: true}); err != nil {
		return nil, "", "", err
	}
	return field, name, tag, nil
}

func hasSetting(f *schema.Field, name string) bool {
	_, ok := f.TagSettings[name]
	return ok
}
