package txhook

import (
	"reflect"
	"strings"
	"testing"
)

// runSniff plays a script on a transaction of its own: "stage KEY" stages a
// key, any other line is a statement the transaction executed. It returns
// which staged keys may still be installed at commit, and the savepoints the
// transaction still knows, oldest first.
func runSniff(script []string) (valid map[string]bool, savepoints []string) {
	tx := &Tx{}
	for _, line := range script {
		if key, ok := strings.CutPrefix(line, "stage "); ok {
			tx.Stage(nil, key)
			continue
		}
		tx.sniff(line)
	}
	valid = map[string]bool{}
	for _, e := range tx.entries {
		valid[e.Key] = e.Valid
	}
	for _, sp := range tx.savepoints {
		savepoints = append(savepoints, sp.name)
	}
	return valid, savepoints
}

func TestSniffFollowsSavepoints(t *testing.T) {
	cases := []struct {
		name       string
		script     []string
		valid      map[string]bool
		savepoints []string
	}{
		{
			name:       "GORM's spelling: a rolled-back savepoint undoes what was staged after it",
			script:     []string{"stage a", "SAVEPOINT sp1", "stage b", "ROLLBACK TO SAVEPOINT sp1", "stage c"},
			valid:      map[string]bool{"a": true, "b": false, "c": true},
			savepoints: []string{"sp1"},
		},
		{
			name:       "a key staged again after the rollback is valid again",
			script:     []string{"SAVEPOINT sp1", "stage a", "ROLLBACK TO SAVEPOINT sp1", "stage a"},
			valid:      map[string]bool{"a": true},
			savepoints: []string{"sp1"},
		},
		{
			name:       "a savepoint survives its rollback and can be rolled back to again",
			script:     []string{"SAVEPOINT sp1", "stage a", "ROLLBACK TO SAVEPOINT sp1", "stage a", "ROLLBACK TO SAVEPOINT sp1"},
			valid:      map[string]bool{"a": false},
			savepoints: []string{"sp1"},
		},
		{
			name:       "a key staged before the savepoint and again inside it is undone",
			script:     []string{"stage a", "SAVEPOINT sp1", "stage a", "ROLLBACK TO SAVEPOINT sp1"},
			valid:      map[string]bool{"a": false},
			savepoints: []string{"sp1"},
		},
		{
			name: "nested: rolling back the outer one undoes the inner one's writes and forgets it",
			script: []string{"stage a", "SAVEPOINT outer", "stage b", "SAVEPOINT inner", "stage c",
				"ROLLBACK TO SAVEPOINT outer"},
			valid:      map[string]bool{"a": true, "b": false, "c": false},
			savepoints: []string{"outer"},
		},
		{
			name: "nested: rolling back the inner one keeps the outer one's writes",
			script: []string{"SAVEPOINT outer", "stage b", "SAVEPOINT inner", "stage c",
				"ROLLBACK TO SAVEPOINT inner"},
			valid:      map[string]bool{"b": true, "c": false},
			savepoints: []string{"outer", "inner"},
		},
		{
			name:       "a reused name: rollback goes to the latest",
			script:     []string{"SAVEPOINT sp", "stage a", "SAVEPOINT sp", "stage b", "ROLLBACK TO SAVEPOINT sp"},
			valid:      map[string]bool{"a": true, "b": false},
			savepoints: []string{"sp", "sp"},
		},
		{
			name:       "RELEASE keeps the writes and forgets the savepoint and those after it",
			script:     []string{"SAVEPOINT outer", "stage a", "SAVEPOINT inner", "stage b", "RELEASE SAVEPOINT outer"},
			valid:      map[string]bool{"a": true, "b": true},
			savepoints: nil,
		},
		{
			name:       "RELEASE without the SAVEPOINT word",
			script:     []string{"SAVEPOINT outer", "SAVEPOINT inner", "RELEASE inner"},
			valid:      map[string]bool{},
			savepoints: []string{"outer"},
		},
		{
			name:       "ROLLBACK TO without the SAVEPOINT word",
			script:     []string{"SAVEPOINT sp1", "stage a", "ROLLBACK TO sp1"},
			valid:      map[string]bool{"a": false},
			savepoints: []string{"sp1"},
		},
		{
			name:       "after a release, a rollback to the savepoint before it still works",
			script:     []string{"SAVEPOINT a1", "stage x", "SAVEPOINT a2", "stage y", "RELEASE SAVEPOINT a2", "ROLLBACK TO SAVEPOINT a1"},
			valid:      map[string]bool{"x": false, "y": false},
			savepoints: []string{"a1"},
		},
		{
			name:       "a rollback to a savepoint never seen undoes everything staged",
			script:     []string{"stage a", "SAVEPOINT sp1", "stage b", "ROLLBACK TO SAVEPOINT elsewhere"},
			valid:      map[string]bool{"a": false, "b": false},
			savepoints: []string{"sp1"},
		},
		{
			name: "case, whitespace, quotes and a semicolon do not matter",
			script: []string{"  savepoint \"sp1\"\n", "stage a", "rollback   to savepoint sp1;", "stage b",
				"\tSavePoint `sp2`  ;", "stage c", "release savepoint \"sp2\""},
			valid:      map[string]bool{"a": false, "b": true, "c": true},
			savepoints: []string{"sp1"},
		},
		{
			name: "other statements change nothing",
			script: []string{"SAVEPOINT sp1", "stage a", "SELECT * FROM savepoints", "RESET ALL",
				"SET search_path TO x", "UPDATE t SET a = 1", "ALTER TABLE t ADD c int", "ANALYZE t",
				"RELEASE_LOCK('x')", "SAVEPOINTS", "short", "", "r", "s", "a", ";", "/* */", "-- only a comment"},
			valid:      map[string]bool{"a": true},
			savepoints: []string{"sp1"},
		},
		{
			name:       "ROLLBACK WORK TO, without the SAVEPOINT word",
			script:     []string{"SAVEPOINT sp", "stage a", "ROLLBACK WORK TO sp"},
			valid:      map[string]bool{"a": false},
			savepoints: []string{"sp"},
		},
		{
			name:       "ROLLBACK TRANSACTION TO SAVEPOINT",
			script:     []string{"stage a", "SAVEPOINT sp", "stage b", "ROLLBACK TRANSACTION TO SAVEPOINT sp"},
			valid:      map[string]bool{"a": true, "b": false},
			savepoints: []string{"sp"},
		},
		{
			name: "every spelling of ROLLBACK TO rolls back to the named savepoint",
			script: []string{"SAVEPOINT s1", "stage a", "SAVEPOINT s2", "stage b", "SAVEPOINT s3", "stage c",
				"rollback work to savepoint s3", "stage c", "Rollback Transaction To s2", "stage b",
				"ROLLBACK\tTO\n s1"},
			valid:      map[string]bool{"a": false, "b": false, "c": false},
			savepoints: []string{"s1"},
		},
		{
			name:       "RELEASE SAVEPOINT and RELEASE forget the savepoint",
			script:     []string{"SAVEPOINT a1", "SAVEPOINT a2", "RELEASE SAVEPOINT a2", "SAVEPOINT a3", "RELEASE a3"},
			valid:      map[string]bool{},
			savepoints: []string{"a1"},
		},
		{
			name:       "unquoted names are folded to lower case: Sp and sp are one savepoint",
			script:     []string{"SAVEPOINT Sp", "stage a", "ROLLBACK TO SAVEPOINT sp", "SAVEPOINT SP2", "RELEASE sP2"},
			valid:      map[string]bool{"a": false},
			savepoints: []string{"sp"},
		},
		{
			name:       `quoted names keep their case: "sp" and "SP" are two savepoints`,
			script:     []string{`SAVEPOINT "sp"`, "stage a", `SAVEPOINT "SP"`, "stage b", `ROLLBACK TO SAVEPOINT "sp"`},
			valid:      map[string]bool{"a": false, "b": false},
			savepoints: []string{"sp"},
		},
		{
			name:       `a quoted "Sp" is not the unquoted Sp`,
			script:     []string{`SAVEPOINT "Sp"`, "stage a", "SAVEPOINT Sp", "stage b", `ROLLBACK TO "Sp"`},
			valid:      map[string]bool{"a": false, "b": false},
			savepoints: []string{"Sp"},
		},
		{
			name:       `RELEASE of a quoted "SP" forgets it, not the later sp`,
			script:     []string{`SAVEPOINT "SP"`, "stage a", "SAVEPOINT sp", `RELEASE "SP"`},
			valid:      map[string]bool{"a": true},
			savepoints: nil,
		},
		{
			name:       "a quoted name may hold spaces, quotes and semicolons",
			script:     []string{`SAVEPOINT "my ""sp""; x"`, "stage a", `SAVEPOINT my`, `ROLLBACK TO "my ""sp""; x";`},
			valid:      map[string]bool{"a": false},
			savepoints: []string{`my "sp"; x`},
		},
		{
			name:       "a savepoint may be named savepoint",
			script:     []string{"SAVEPOINT savepoint", "stage a", "ROLLBACK TO savepoint", "stage b", "ROLLBACK TO SAVEPOINT savepoint"},
			valid:      map[string]bool{"a": false, "b": false},
			savepoints: []string{"savepoint"},
		},
		{
			name: "comments before and inside the statement",
			script: []string{"/* a /* nested */ comment */ SAVEPOINT sp", "stage a",
				"-- why\nROLLBACK /* here too */ TO -- and here\n sp", "stage b"},
			valid:      map[string]bool{"a": false, "b": true},
			savepoints: []string{"sp"},
		},
		{
			name:       "only the first of several statements is followed",
			script:     []string{"SAVEPOINT sp", "stage a", "ROLLBACK TO sp; SAVEPOINT other"},
			valid:      map[string]bool{"a": false},
			savepoints: []string{"sp"},
		},
		{
			name:       "a ROLLBACK of the whole transaction undoes everything and forgets the savepoints",
			script:     []string{"stage a", "SAVEPOINT sp", "stage b", "ROLLBACK"},
			valid:      map[string]bool{"a": false, "b": false},
			savepoints: nil,
		},
		{
			name:       "ABORT, ROLLBACK WORK and ROLLBACK AND CHAIN roll the whole transaction back",
			script:     []string{"stage a", "abort;", "stage b", "ROLLBACK WORK", "stage c", "ROLLBACK TRANSACTION AND NO CHAIN", "stage d", "rollback and chain"},
			valid:      map[string]bool{"a": false, "b": false, "c": false, "d": false},
			savepoints: nil,
		},
		{
			name:       "a ROLLBACK the sniffer cannot read undoes everything",
			script:     []string{"stage a", "SAVEPOINT sp", "stage b", `ROLLBACK TO U&"sp"`},
			valid:      map[string]bool{"a": false, "b": false},
			savepoints: nil,
		},
		{
			name:       "a SAVEPOINT or RELEASE the sniffer cannot read changes nothing",
			script:     []string{"SAVEPOINT sp", "stage a", "SAVEPOINT a b", `SAVEPOINT "open`, "RELEASE", "RELEASE SAVEPOINT", "SAVEPOINT"},
			valid:      map[string]bool{"a": true},
			savepoints: []string{"sp"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			valid, sps := runSniff(tc.script)
			if !reflect.DeepEqual(valid, tc.valid) {
				t.Errorf("valid keys = %v, want %v", valid, tc.valid)
			}
			if !reflect.DeepEqual(sps, tc.savepoints) {
				t.Errorf("savepoints = %q, want %q", sps, tc.savepoints)
			}
		})
	}
}

// FuzzSniff: no statement makes the sniffer panic, and a statement that
// does not start with a savepoint keyword changes nothing.
func FuzzSniff(f *testing.F) {
	for _, s := range []string{"SAVEPOINT sp", `ROLLBACK TRANSACTION TO SAVEPOINT "a""b"`, "RELEASE x;",
		"/* /* */ */ abort", "-- x\nrollback work to `y`", `SAVEPOINT "`, "ROLLBACK TO U&\"x\"", "\xff\xfe"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, query string) {
		tx := &Tx{}
		tx.Stage(nil, "k")
		tx.savepoint("sp")
		tx.sniff(query)
		s := scanner{q: query}
		if first, ok := s.next(); !ok || first.quoted ||
			(first.text != "savepoint" && first.text != "rollback" && first.text != "release" && first.text != "abort") {
			if !tx.entries[0].Valid || len(tx.savepoints) != 1 {
				t.Errorf("%q changed the transaction's savepoints", query)
			}
		}
	})
}
