package writethrough

import (
	"errors"
	"fmt"
	"runtime/debug"

	"github.com/gorm-writethrough/writethrough/internal/entry"
)

// ErrCacheUnavailable is returned when Redis could not take part in a
// statement that needs it. In Strict mode every write error caused by Redis
// (a refused, failed or timed-out prepare, an open circuit breaker) wraps it
// and the transaction does not commit. Soft mode never returns it from a
// write.
var ErrCacheUnavailable = errors.New("writethrough: cache unavailable")

// ErrNotReplicated is wrapped, beside [ErrCacheUnavailable], by a Strict
// write whose pending mark or invalidation fewer than
// [Config.WaitReplicas] replicas acknowledged in time.
var ErrNotReplicated = entry.ErrNotReplicated

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

// ErrNotRegistered is returned by [Get], [GetMany], [Invalidate] and
// [Inspect] when no writethrough plugin is registered on the *gorm.DB they
// were given (or it is nil): call db.Use(writethrough.New(...)) first.
var ErrNotRegistered = errors.New("writethrough: plugin not registered on this *gorm.DB")

// ErrPanic is wrapped by every [PanicError], so that errors.Is(err,
// ErrPanic) tells a recovered panic from other failures.
var ErrPanic = errors.New("writethrough: panic")

// PanicError is a panic the plugin recovered: in its own code, or in user
// code it ran on its own account rather than in GORM's place (a Scan or
// Value method, a serializer, while it decodes or encodes a cached row or
// builds a key). It keeps the panic's value and the stack of the goroutine
// that panicked. Where the plugin has a safe fallback (a cached row it
// cannot decode is a miss) the error goes to [Config.Logger]; otherwise it
// is the error of the statement or call. It is also what the leader of a
// shared database read re-raises when user code panics in that read; see
// "Panics" in docs/design.md.
type PanicError struct {
	Op    string // what the plugin was doing, such as "re-read after write"
	Value any    // the value the code panicked with
	Stack []byte // the panicking goroutine's stack, from runtime/debug.Stack
}

func (e *PanicError) Error() string {
	return fmt.Sprintf("writethrough: panic during %s: %v\n\n%s", e.Op, e.Value, e.Stack)
}

// Unwrap returns [ErrPanic] and, when the panic's value is an error, that
// error.
func (e *PanicError) Unwrap() []error {
	if err, ok := e.Value.(error); ok {
		return []error{ErrPanic, err}
	}
	return []error{ErrPanic}
}

// newPanicError wraps a recovered value. Call it from the deferred function
// that recovered, so that the stack still holds the frames that panicked.
func newPanicError(op string, r any) *PanicError {
	if pe, ok := r.(*PanicError); ok {
		return pe // already carries the original stack
	}
	return &PanicError{Op: op, Value: r, Stack: debug.Stack()}
}

// recoverLogged, deferred, reports a panic of work that has no caller to
// return it to (background goroutines) to the Logger.
func (p *Plugin) recoverLogged(op string) {
	if r := recover(); r != nil {
		p.logf("writethrough: recovered a panic", "err", newPanicError(op, r))
	}
}

// recoverErr, deferred, returns a panic as the error *err.
func recoverErr(err *error, op string) {
	if r := recover(); r != nil {
		*err = newPanicError(op, r)
	}
}

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
