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

// suspects counts, per key, the outbox records this process wrote and that
// have not been drained (or rolled back) yet.
type suspects struct {
	n  atomic.Int64 // keys in m, for a lock-free "none" check
	mu sync.Mutex   // protects m
	m  map[string]suspect
}

type suspect struct {
	records int       // outbox records of this key not yet drained
	expires time.Time // zero: until drained; set when a write's outcome is unknown
}

// mark counts one record per key, before the write that recorded them
// commits.
func (s *suspects) mark(keys []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = make(map[string]suspect)
	}
	for _, k := range keys {
		e, ok := s.m[k]
		if !ok {
			s.n.Add(1)
		}
		e.records++
		s.m[k] = e
	}
}

// unmark takes back one record per key: it rolled back, or was never
// written.
func (s *suspects) unmark(keys []string) {
	counts := make(map[string]int, len(keys))
	for _, k := range keys {
		counts[k]++
	}
	s.drained(counts)
}

// drained takes back records the drainer has processed.
func (s *suspects) drained(counts map[string]int) {
	if s.n.Load() == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, c := range counts {
		e, ok := s.m[k]
		if !ok {
			continue
		}
		e.records -= c
		if e.records <= 0 {
			delete(s.m, k)
			s.n.Add(-1)
			continue
		}
		s.m[k] = e
	}
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
