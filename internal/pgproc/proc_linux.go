package pgproc

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
)

// sysProcAttr runs the process with cred (nil: as ourselves) and makes the
// kernel kill it if the test binary dies without running its cleanups (a
// panic or a -timeout), so that no postmaster outlives its test. Go sets the
// death signal after it changes the credentials, which would clear it.
func sysProcAttr(cred *syscall.Credential) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGKILL}
}

// children returns the processes whose parent is pid.
func children(pid int) []int {
	var out []int
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, f := range stats {
		if st, ppid, ok := procStat(f); ok && st != 'Z' && ppid == pid {
			n, _ := strconv.Atoi(filepath.Base(filepath.Dir(f)))
			out = append(out, n)
		}
	}
	return out
}

// alive reports whether process pid exists and has not exited (a zombie
// has: nobody may reap the orphans of a killed postmaster).
func alive(pid int) bool {
	st, _, ok := procStat("/proc/" + strconv.Itoa(pid) + "/stat")
	return ok && st != 'Z' && st != 'X'
}

// procStat reads the state and the parent's pid from a /proc/<pid>/stat
// file: "pid (comm) state ppid ...", where comm may hold spaces and
// parentheses.
func procStat(file string) (state byte, ppid int, ok bool) {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0, 0, false
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, false
	}
	f := bytes.Fields(b[i+1:])
	if len(f) < 2 || len(f[0]) != 1 {
		return 0, 0, false
	}
	ppid, err = strconv.Atoi(string(f[1]))
	if err != nil {
		return 0, 0, false
	}
	return f[0][0], ppid, true
}
