package txhook

import "strings"

// sniff follows SAVEPOINT, ROLLBACK TO SAVEPOINT and RELEASE SAVEPOINT.
func (t *Tx) sniff(query string) {
	q := strings.TrimSpace(query)
	if len(q) < 9 || (q[0]|0x20 != 's' && q[0]|0x20 != 'r') {
		return
	}
	w := strings.Fields(strings.ToUpper(strings.TrimSuffix(q, ";")))
	name := func(i int) string {
		if i < len(w) {
			return strings.Trim(w[i], "\"`")
		}
		return ""
	}
	switch {
	case len(w) == 2 && w[0] == "SAVEPOINT":
		t.savepoint(name(1))
	case len(w) >= 3 && w[0] == "ROLLBACK" && w[1] == "TO":
		if w[2] == "SAVEPOINT" {
			t.rollbackTo(name(3))
		} else {
			t.rollbackTo(name(2))
		}
	case len(w) >= 2 && w[0] == "RELEASE":
		if w[1] == "SAVEPOINT" {
			t.release(name(2))
		} else {
			t.release(name(1))
		}
	}
}

func (t *Tx) savepoint(name string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.savepoints = append(t.savepoints, savepoint{name: name, seq: t.seq})
}

func (t *Tx) find(name string) int {
	for i := len(t.savepoints) - 1; i >= 0; i-- {
		if t.savepoints[i].name == name {
			return i
		}
	}
	return -1
}

// rollbackTo undoes, for the cache, every write staged since the savepoint:
// those keys are no longer valid at the end.
func (t *Tx) rollbackTo(name string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	i := t.find(name)
	if i < 0 {
		// A savepoint we did not see: undo everything, to be safe.
		for _, e := range t.entries {
			e.Valid = false
		}
		return
	}
	mark := t.savepoints[i].seq
	for _, e := range t.entries {
		if e.seq > mark {
			e.Valid = false
		}
	}
	t.savepoints = t.savepoints[:i+1]
}

func (t *Tx) release(name string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if i := t.find(name); i >= 0 {
		t.savepoints = t.savepoints[:i]
	}
}
