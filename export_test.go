package writethrough

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
	e, err := parseEntry(b)
	if err != nil {
		return RawEntry{}, err
	}
	out := RawEntry{State: e.state, Token: string(e.token), Row: e.row}
	if e.state == statePending {
		out.Flags = b[headerLen]
		out.Writers = int(b[headerLen+1])
	}
	return out, nil
}

const (
	StateCommitted = stateCommitted
	StatePending   = statePending
	StateLease     = stateLease
	StateTombstone = stateTombstone
)
