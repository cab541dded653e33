package writethrough

import (
	"sync"
	"testing"
)

func newTestGate() *gate {
	return &gate{idle: make(chan struct{})}
}

func TestGateCloseWaitsForWorkInFlight(t *testing.T) {
	g := newTestGate()
	if !g.enter() {
		t.Fatal("an open gate refused work")
	}
	closing := make(chan struct{})
	closed := make(chan struct{})
	go func() {
		close(closing)
		g.close()
		close(closed)
	}()
	<-closing
	select {
	case <-closed:
		t.Fatal("close returned while work was in flight")
	default:
	}
	g.leave()
	<-closed
	if g.enter() {
		t.Fatal("a closed gate let work start")
	}
	g.close() // idempotent: nothing in flight, returns at once
}

// TestGateNeverLetsWorkOutliveClose runs enters against close: every enter
// that succeeds must end before close returns.
func TestGateNeverLetsWorkOutliveClose(t *testing.T) {
	for round := 0; round < 200; round++ {
		g := newTestGate()
		var mu sync.Mutex // protects running, closedDone
		running, closedDone := 0, false
		var wg sync.WaitGroup
		for i := 0; i < 8; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := 0; j < 20; j++ {
					if !g.enter() {
						return
					}
					mu.Lock()
					if closedDone {
						t.Error("work started after close returned")
					}
					running++
					mu.Unlock()
					mu.Lock()
					running--
					mu.Unlock()
					g.leave()
				}
			}()
		}
		g.close()
		mu.Lock()
		if running != 0 {
			t.Errorf("close returned with %d pieces of work running", running)
		}
		closedDone = true
		mu.Unlock()
		wg.Wait()
	}
}
