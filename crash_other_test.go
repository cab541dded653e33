//go:build !linux

package writethrough_test

// crashScenarios are the fault matrix's crash rows: none, since the writer
// process they kill relies on Linux (crash_test.go).
func crashScenarios() []*faultScenario { return nil }
