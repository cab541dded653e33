package writethrough

import (
	"errors"
	"fmt"
	"reflect"
	"sync"
	"time"

	"gorm.io/gorm"
	"gorm.io/gorm/schema"

	"github.com/gorm-writethrough/writethrough/internal/keyspec"
	"github.com/gorm-writethrough/writethrough/internal/rowcodec"
)

// modelSpec is everything the plugin knows about one cached model, built
// once from its schema and its cache tag.
type modelSpec struct {
	sch       *schema.Schema
	name      string          // Go type name, for errors
	pks       []*schema.Field // primary-key fields, in schema order
	ttl       time.Duration
	jitter    int // percent of ttl
	mode      Mode
	aside     bool          // writes only invalidate
	deletedAt *schema.Field // a gorm.DeletedAt column, if any
	codec     *rowcodec.Codec
	keys      *keyspec.Spec // the keys of the model's rows

	returning    returnCheck // whether RETURNING shows the rows as the table keeps them (returning.go)
	returningSQL sync.Map    // statement table name -> what a write appends to RETURNING (rowColumns)
}

// specEntry caches the outcome of building a spec: models without a cache
// tag have spec == nil and err == nil.
type specEntry struct {
	spec *modelSpec
	err  error
}

var typeOfDeletedAt = reflect.TypeOf(gorm.DeletedAt{})

// specFor returns the spec of model (a struct value or pointer), parsing its
// schema with db's naming strategy.
func (p *Plugin) specFor(db *gorm.DB, model any) (*modelSpec, error) {
	t := reflect.TypeOf(model)
	for t != nil && (t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice) {
		t = t.Elem()
	}
	if t == nil {
		return nil, fmt.Errorf("%w: nil model", ErrUnsupported)
	}
	if e, ok := p.specs.Load(t); ok {
		return e.(*specEntry).spec, e.(*specEntry).err
	}
	stmt := &gorm.Statement{DB: db}
	if err := stmt.Parse(reflect.New(t).Interface()); err != nil {
		return nil, fmt.Errorf("writethrough: parse model %s: %w", t, err)
	}
	return p.specOf(stmt.Schema)
}

// specOf returns the spec for a parsed schema; nil when the model is not
// cached.
func (p *Plugin) specOf(sch *schema.Schema) (*modelSpec, error) {
	if sch == nil {
		return nil, nil
	}
	if e, ok := p.specs.Load(sch.ModelType); ok {
		return e.(*specEntry).spec, e.(*specEntry).err
	}
	spec, err := p.buildSpec(sch)
	e, loaded := p.specs.LoadOrStore(sch.ModelType, &specEntry{spec: spec, err: err})
	if !loaded {
		// Writes that name the table rather than the model, and the
		// foreign keys that cascade from or to it (tables.go, cascade.go).
		if spec != nil {
			p.indexTable(spec)
		}
		for _, s := range p.noteSchema(sch) {
			if s != sch {
				_, _ = p.specOf(s) // index the cached models it reaches
			}
		}
	}
	return e.(*specEntry).spec, e.(*specEntry).err
}

func (p *Plugin) buildSpec(sch *schema.Schema) (*modelSpec, error) {
	tag, err := keyspec.ParseTag(sch)
	if err != nil || tag == nil {
		return nil, tagError(err)
	}
	spec := &modelSpec{
		sch:    sch,
		name:   sch.Name,
		pks:    sch.PrimaryFields,
		ttl:    p.cfg.DefaultTTL,
		jitter: p.cfg.Jitter,
		mode:   p.cfg.Mode,
		aside:  tag.Aside,
	}
	if tag.TTL != 0 {
		spec.ttl = tag.TTL
	}
	if tag.Jitter >= 0 {
		spec.jitter = tag.Jitter
	}
	switch tag.Mode {
	case "strict":
		spec.mode = Strict
	case "soft":
		spec.mode = Soft
	}
	if spec.keys, err = keyspec.New(sch, p.cfg.Prefix, tag); err != nil {
		return nil, tagError(err)
	}
	for _, f := range sch.Fields {
		if f.DBName != "" && f.FieldType == typeOfDeletedAt {
			spec.deletedAt = f
		}
	}
	codec, err := rowcodec.New(sch)
	if err != nil {
		return nil, &TagError{Model: sch.Name, Field: tag.FieldName, Reason: err.Error()}
	}
	spec.codec = codec
	return spec, nil
}

// tagError turns keyspec's report of a malformed tag into the plugin's.
func tagError(err error) error {
	var te *keyspec.TagError
	if errors.As(err, &te) {
		return &TagError{Model: te.Model, Field: te.Field, Word: te.Word, Reason: te.Reason}
	}
	return err
}

type schemaField = schema.Field
