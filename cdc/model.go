package cdc

import (
	"fmt"
	"strings"

	"gorm.io/gorm/schema"
)

// model is one cached model stored from a followed table: how its keys are
// named from a row image, and the SCAN pattern that covers all of them.
type model struct {
	name    string
	pkCols  []string
	prefix  string // every key of the model starts with it
	pattern string // SCAN MATCH pattern for prefix
}

func newModel(sch *schema.Schema, prefix string) (*model, error) {
	if len(sch.PrimaryFields) == 0 {
		return nil, fmt.Errorf("cdc: model %s has no primary key", sch.Name)
	}
	m := &model{name: sch.Name, prefix: prefix + ":" + escape(sch.Table) + ":"}
	for _, f := range sch.PrimaryFields {
		m.pkCols = append(m.pkCols, f.DBName)
	}
	m.pattern = globEscape(m.prefix) + "*"
	return m, nil
}

// key names the cache key of the row image vals (column -> text value).
func (m *model) key(vals map[string]string) (string, bool) {
	var b strings.Builder
	b.WriteString(m.prefix)
	for i, c := range m.pkCols {
		v, ok := vals[c]
		if !ok {
			return "", false
		}
		if i > 0 {
			b.WriteByte(':')
		}
		b.WriteString(escape(v))
	}
	return b.String(), true
}

func escape(s string) string {
	const hexd = "0123456789ABCDEF"
	var b []byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '%' || c == ':' || c == '{' || c == '}' || c < 0x20 || c == 0x7f:
			b = append(b, '%', hexd[c>>4], hexd[c&15])
		default:
			b = append(b, c)
		}
	}
	return string(b)
}

// globEscape escapes the characters Redis's glob patterns give a meaning.
func globEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch r {
		case '*', '?', '[', ']', '\\':
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}
