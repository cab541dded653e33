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
			savepoints: []string{"SP1"},
		},
		{
			name:       "a key staged again after the rollback is valid again",
			script:     []string{"SAVEPOINT sp1", "stage a", "ROLLBACK TO SAVEPOINT sp1", "stage a"},
			valid:      map[string]bool{"a": true},
			savepoints: []string{"SP1"},
		},
		{
			name:       "a savepoint survives its rollback and can be rolled back to again",
			script:     []string{"SAVEPOINT sp1", "stage a", "ROLLBACK TO SAVEPOINT sp1", "stage a", "ROLLBACK TO SAVEPOINT sp1"},
			valid:      map[string]bool{"a": false},
			savepoints: []string{"SP1"},
		},
		{
			name:       "a key staged before the savepoint and again inside it is undone",
			script:     []string{"stage a", "SAVEPOINT sp1", "stage a", "ROLLBACK TO SAVEPOINT sp1"},
			valid:      map[string]bool{"a": false},
			savepoints: []string{"SP1"},
		},
		{
			name: "nested: rolling back the outer one undoes the inner one's writes and forgets it",
			script: []string{"stage a", "SAVEPOINT outer", "stage b", "SAVEPOINT inner", "stage c",
				"ROLLBACK TO SAVEPOINT outer"},
			valid:      map[string]bool{"a": true, "b": false, "c": false},
			savepoints: []string{"OUTER"},
		},
		{
			name: "nested: rolling back the inner one keeps the outer one's writes",
			script: []string{"SAVEPOINT outer", "stage b", "SAVEPOINT inner", "stage c",
				"ROLLBACK TO SAVEPOINT inner"},
			valid:      map[string]bool{"b": true, "c": false},
			savepoints: []string{"OUTER", "INNER"},
		},
		{
			name:       "a reused name: rollback goes to the latest",
			script:     []string{"SAVEPOINT sp", "stage a", "SAVEPOINT sp", "stage b", "ROLLBACK TO SAVEPOINT sp"},
			valid:      map[string]bool{"a": true, "b": false},
			savepoints: []string{"SP", "SP"},
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
			savepoints: []string{"OUTER"},
		},
		{
			name:       "ROLLBACK TO without the SAVEPOINT word",
			script:     []string{"SAVEPOINT sp1", "stage a", "ROLLBACK TO sp1"},
			valid:      map[string]bool{"a": false},
			savepoints: []string{"SP1"},
		},
		{
			name:       "after a release, a rollback to the savepoint before it still works",
			script:     []string{"SAVEPOINT a1", "stage x", "SAVEPOINT a2", "stage y", "RELEASE SAVEPOINT a2", "ROLLBACK TO SAVEPOINT a1"},
			valid:      map[string]bool{"x": false, "y": false},
			savepoints: []string{"A1"},
		},
		{
			name:       "a rollback to a savepoint never seen undoes everything staged",
			script:     []string{"stage a", "SAVEPOINT sp1", "stage b", "ROLLBACK TO SAVEPOINT elsewhere"},
			valid:      map[string]bool{"a": false, "b": false},
			savepoints: []string{"SP1"},
		},
		{
			name: "case, whitespace, quotes and a semicolon do not matter",
			script: []string{"  savepoint \"sp1\"\n", "stage a", "rollback   to savepoint sp1;", "stage b",
				"\tSavePoint `sp2`  ;", "stage c", "release savepoint \"sp2\""},
			valid:      map[string]bool{"a": false, "b": true, "c": true},
			savepoints: []string{"SP1"},
		},
		{
			name: "other statements change nothing",
			script: []string{"SAVEPOINT sp1", "stage a", "SELECT * FROM savepoints", "ROLLBACK",
				"RESET ALL", "SET search_path TO x", "UPDATE t SET a = 1", "short", "", "r", "s"},
			valid:      map[string]bool{"a": true},
			savepoints: []string{"SP1"},
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
