package writethrough

import "github.com/gorm-writethrough/writethrough/internal/entry"

// SetHook installs a test hook called at the plugin's named interleaving
// points ("read:after-lease", "read:after-db-before-fill",
// "read:flight" (before joining or starting the shared load),
// "write:after-prepare", "tx:before-commit", "write:before-finalize",
// "write:after-finalize") with the Redis key involved. Install it before the
// plugin is used concurrently.
func SetHook(p *Plugin, fn func(point, key string)) { p.hook = fn }

// RawEntry is the decoded header of a raw Redis value, for assertions.
type RawEntry struct {
	State byte
	Token string
	Row   []byte
	// Writers in flight, for pending entries.
	Writers int
	Flags   byte
}

// ParseEntry decodes a raw Redis value's header.
func ParseEntry(b []byte) (RawEntry, error) {
	e, err := entry.Parse(b)
	if err != nil {
		return RawEntry{}, err
	}
	out := RawEntry{State: byte(e.State), Token: string(e.Token), Writers: e.Writers, Flags: byte(e.Flags)}
	if e.State == entry.Committed {
		out.Row = e.Row
	}
	return out, nil
}

const (
	StateCommitted = byte(entry.Committed)
	StatePending   = byte(entry.Pending)
	StateLease     = byte(entry.Lease)
	StateTombstone = byte(entry.Tombstone)
)

// ReadAnyReplica makes the plugin send the reads that must see the primary
// (fills, pending and suspect keys) wherever dbresolver sends reads: the bug
// the replica tests must catch. Set it while no statement runs.
func ReadAnyReplica(p *Plugin, on bool) { p.anyReplica = on }

// DrainerStopped reports whether p's background drainer ran and has
// stopped.
func DrainerStopped(p *Plugin) bool {
	p.drainMu.Lock()
	defer p.drainMu.Unlock()
	if p.drainDone == nil {
		return false
	}
	select {
	case <-p.drainDone:
		return true
	default:
		return false
	}
}

// DrainerStarted reports whether p's background drainer was started.
func DrainerStarted(p *Plugin) bool { return p.drainStarted.Load() }
