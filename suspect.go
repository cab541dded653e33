package writethrough

import (
	"sync"
	"sync/atomic"
	"time"
)

// Soft mode lets a write commit when Redis missed it, and the outbox deletes
// the key's old entry once Redis answers. Until then that entry is stale.
// This process knows which keys it sent to the outbox, so its own reads of
// those keys go to the database until the drainer has deleted them: in the
// process that made the write, a Soft failure costs cache hits, not fresh
// reads. Other processes are bounded by the drain.

// suspects tracks keys recorded in the outbox and not drained yet.
type suspects struct {
	n   atomic.Int64  // entries in m, for a lock-free "none" check
	seq atomic.Uint64 // orders marks against drain passes
	mu  sync.Mutex    // protects m
	m   map[string]suspect
}

type suspect struct {
	seq     uint64
	expires time.Time // zero: until drained; set when the write's outcome is unknown
}

// mark records keys as suspect before the write that recorded them commits.
func (s *suspects) mark(keys []string) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = make(map[string]suspect)
	}
	for _, k := range keys {
		if _, ok := s.m[k]; !ok {
			s.n.Add(1)
		}
		s.m[k] = suspect{seq: s.seq.Add(1)}
	}
	return s.seq.Load()
}

// expire bounds the marks of keys whose write's outcome is unknown (a COMMIT
// that failed): if their outbox records did commit, a drain clears them
// sooner.
func (s *suspects) expire(keys []string, after time.Duration) {
	if s.n.Load() == 0 {
		return
	}
	at := time.Now().Add(after)
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, k := range keys {
		if e, ok := s.m[k]; ok && e.expires.IsZero() {
			e.expires = at
			s.m[k] = e
		}
	}
}

// is reports whether key is suspect.
func (s *suspects) is(key string) bool {
	if s.n.Load() == 0 {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.m[key]
	if ok && !e.expires.IsZero() && time.Now().After(e.expires) {
		delete(s.m, key)
		s.n.Add(-1)
		return false
	}
	return ok
}

// clear drops the marks of keys made no later than seq: their records were
// drained, or their transaction rolled back.
func (s *suspects) clear(keys []string, seq uint64) {
	if s.n.Load() == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, k := range keys {
		if e, ok := s.m[k]; ok && e.seq <= seq {
			delete(s.m, k)
			s.n.Add(-1)
		}
	}
}
