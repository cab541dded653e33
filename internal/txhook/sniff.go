package txhook

// A transaction follows its savepoints by reading the statements it
// executes successfully, in PostgreSQL's grammar:
//
//	SAVEPOINT name
//	ROLLBACK [ WORK | TRANSACTION ] TO [ SAVEPOINT ] name
//	RELEASE [ SAVEPOINT ] name
//
// A name compares as PostgreSQL compares it: unquoted, folded to lower case
// (Sp and sp are one savepoint); double-quoted, as written ("Sp" and "sp"
// are two). Backquotes (MySQL) keep the name as written too. Other
// databases fold more names together than this; the difference errs on the
// safe side, since a rollback then goes to an older savepoint (undoing more
// for the cache) or to one not found (undoing everything).
//
// Missing a rollback is what must not happen: a write it undid would stay
// valid and its row be installed at commit. So a ROLLBACK that is not a
// readable ROLLBACK TO (ROLLBACK, ABORT, ROLLBACK AND CHAIN, or a form
// the sniffer cannot read) undoes everything staged so far. Only the first
// statement of a multi-statement string is read.

// sniff follows query, a statement the transaction executed successfully.
func (t *Tx) sniff(query string) {
	s := scanner{q: query}
	s.space()
	if s.i >= len(s.q) {
		return
	}
	// Most statements are none of ours: look at one byte, then one word.
	switch s.q[s.i] | 0x20 {
	case 's', 'r', 'a':
	default:
		return
	}
	first, ok := s.next()
	if !ok || first.quoted {
		return
	}
	switch first.text {
	case "savepoint":
		if name, ok := s.name(); ok {
			t.savepoint(name)
		}
	case "release":
		if name, ok := s.optionalSavepoint(); ok {
			t.release(name)
		}
	case "rollback":
		if name, ok := s.rollbackTo(); ok {
			t.rollbackTo(name)
			return
		}
		t.rollbackAll()
	case "abort":
		t.rollbackAll()
	}
}

// token is a word or a quoted identifier.
type token struct {
	text   string // unquoted: folded to lower case; quoted: as written, unescaped
	quoted bool
}

func (k token) is(word string) bool { return !k.quoted && k.text == word }

// scanner reads the tokens of one statement.
type scanner struct {
	q string
	i int
}

// space skips white space and comments (-- to the end of the line, and
// /* */, which nest in PostgreSQL).
func (s *scanner) space() {
	for s.i < len(s.q) {
		switch c := s.q[s.i]; {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v':
			s.i++
		case c == '-' && s.i+1 < len(s.q) && s.q[s.i+1] == '-':
			for s.i < len(s.q) && s.q[s.i] != '\n' {
				s.i++
			}
		case c == '/' && s.i+1 < len(s.q) && s.q[s.i+1] == '*':
			depth := 0
			for s.i < len(s.q) {
				switch {
				case s.q[s.i] == '/' && s.i+1 < len(s.q) && s.q[s.i+1] == '*':
					depth++
					s.i += 2
				case s.q[s.i] == '*' && s.i+1 < len(s.q) && s.q[s.i+1] == '/':
					depth--
					s.i += 2
				default:
					s.i++
				}
				if depth == 0 {
					break
				}
			}
		default:
			return
		}
	}
}

// next reads the next token. It reports false at the end of the
// statement (the end of the string or a semicolon) and on anything that
// is not a word or a quoted identifier.
func (s *scanner) next() (token, bool) {
	s.space()
	if s.i >= len(s.q) || s.q[s.i] == ';' {
		return token{}, false
	}
	switch c := s.q[s.i]; {
	case c == '"' || c == '`':
		return s.quoted(c)
	case wordByte(c) && !('0' <= c && c <= '9') && c != '$':
		start := s.i
		for s.i < len(s.q) && wordByte(s.q[s.i]) {
			s.i++
		}
		return token{text: foldASCII(s.q[start:s.i])}, true
	}
	return token{}, false
}

// quoted reads an identifier quoted by q, where a doubled q stands for one.
func (s *scanner) quoted(q byte) (token, bool) {
	var b []byte
	for i := s.i + 1; i < len(s.q); i++ {
		if s.q[i] != q {
			b = append(b, s.q[i])
			continue
		}
		if i+1 < len(s.q) && s.q[i+1] == q {
			b = append(b, q)
			i++
			continue
		}
		s.i = i + 1
		if len(b) == 0 {
			return token{}, false // "" is no identifier
		}
		return token{text: string(b), quoted: true}, true
	}
	return token{}, false // unterminated
}

// end reports whether the statement ends here.
func (s *scanner) end() bool {
	s.space()
	return s.i >= len(s.q) || s.q[s.i] == ';'
}

// name reads the statement's last token, a savepoint name.
func (s *scanner) name() (string, bool) {
	k, ok := s.next()
	if !ok || !s.end() {
		return "", false
	}
	return k.text, true
}

// optionalSavepoint reads "[ SAVEPOINT ] name" to the end of the statement.
func (s *scanner) optionalSavepoint() (string, bool) {
	k, ok := s.next()
	if !ok {
		return "", false
	}
	if s.end() {
		return k.text, true // the name, even "savepoint"
	}
	if !k.is("savepoint") {
		return "", false
	}
	return s.name()
}

// rollbackTo reads what follows ROLLBACK: "[ WORK | TRANSACTION ] TO
// [ SAVEPOINT ] name". It reports false for anything else.
func (s *scanner) rollbackTo() (string, bool) {
	k, ok := s.next()
	if ok && (k.is("work") || k.is("transaction")) {
		k, ok = s.next()
	}
	if !ok || !k.is("to") {
		return "", false
	}
	return s.optionalSavepoint()
}

// wordByte reports whether c may be part of an unquoted identifier
// (letters, digits, _ and $, and every byte of a multi-byte character).
func wordByte(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '$' || c >= 0x80
}

// foldASCII lower-cases ASCII letters, as PostgreSQL folds unquoted
// identifiers in a multi-byte encoding.
func foldASCII(w string) string {
	for i := 0; i < len(w); i++ {
		if 'A' <= w[i] && w[i] <= 'Z' {
			b := []byte(w)
			for j := i; j < len(b); j++ {
				if 'A' <= b[j] && b[j] <= 'Z' {
					b[j] += 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return w
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
		t.undoAll()
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

// rollbackAll follows a rollback of the whole transaction, or one the
// sniffer could not read: nothing staged so far is valid.
func (t *Tx) rollbackAll() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.undoAll()
	t.savepoints = nil
}

func (t *Tx) undoAll() {
	for _, e := range t.entries {
		e.Valid = false
	}
}

func (t *Tx) release(name string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if i := t.find(name); i >= 0 {
		t.savepoints = t.savepoints[:i]
	}
}

// IsSavepointSQL reports whether query is a SAVEPOINT, RELEASE or ROLLBACK
// TO statement: transaction control that writes no row.
func IsSavepointSQL(query string) bool {
	s := scanner{q: query}
	s.space()
	first, ok := s.next()
	if !ok || first.quoted {
		return false
	}
	switch first.text {
	case "savepoint":
		_, ok := s.name()
		return ok
	case "release":
		_, ok := s.optionalSavepoint()
		return ok
	case "rollback":
		_, ok := s.rollbackTo()
		return ok
	}
	return false
}
