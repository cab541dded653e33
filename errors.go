package writethrough

import (
	"errors"
	"fmt"
)

// ErrCacheUnavailable is returned when Redis could not take part in a
// statement that needs it. In Strict mode every write error caused by Redis
// (a refused, failed or timed-out prepare, an open circuit breaker) wraps it
// and the transaction does not commit. Soft mode never returns it from a
// write.
var ErrCacheUnavailable = errors.New("writethrough: cache unavailable")

// ErrInvalidConfig is wrapped by every error that reports a bad [Config]
// field. It surfaces from db.Use.
var ErrInvalidConfig = errors.New("writethrough: invalid config")

// ErrInvalidTag is wrapped by every error that reports a malformed cache tag.
// It surfaces from db.Use (for the models listed in [Config.Models]) or from
// the first statement on the model.
var ErrInvalidTag = errors.New("writethrough: invalid cache tag")

// ErrUnsupported is returned when a call asks for something the plugin cannot
// do for that model, such as [Get] with a key that does not fit the model's
// primary key.
var ErrUnsupported = errors.New("writethrough: unsupported")

// ConfigError reports a bad field of [Config].
type ConfigError struct {
	Field  string // the Config field, such as "Timeout"
	Reason string
}

func (e *ConfigError) Error() string {
	return fmt.Sprintf("writethrough: config field %s: %s", e.Field, e.Reason)
}

// Unwrap returns [ErrInvalidConfig].
func (e *ConfigError) Unwrap() error { return ErrInvalidConfig }

// TagError reports a malformed cache tag. It names the model, the field that
// carries the tag and the offending word.
type TagError struct {
	Model  string // the model's Go type name
	Field  string // the struct field that carries the tag
	Word   string // the bad word of the tag, or "" when the tag as a whole is misplaced
	Reason string
}

func (e *TagError) Error() string {
	if e.Word == "" {
		return fmt.Sprintf("writethrough: model %s, field %s: %s", e.Model, e.Field, e.Reason)
	}
	return fmt.Sprintf("writethrough: model %s, field %s: cache tag %q: %s", e.Model, e.Field, e.Word, e.Reason)
}

// Unwrap returns [ErrInvalidTag].
func (e *TagError) Unwrap() error { return ErrInvalidTag }

// unavailable wraps a Redis error so that errors.Is(err, ErrCacheUnavailable)
// holds while the cause stays visible.
func unavailable(op string, err error) error {
	return fmt.Errorf("%w: %s: %w", ErrCacheUnavailable, op, err)
}
