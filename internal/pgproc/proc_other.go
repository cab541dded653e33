//go:build !linux

package pgproc

import "syscall"

// sysProcAttr runs the process with cred (nil: as ourselves). Only Linux
// can tie the server's life to the test binary's; elsewhere the cleanups
// alone stop it.
func sysProcAttr(cred *syscall.Credential) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Credential: cred}
}

// children returns nil: without /proc the server's processes are not
// listed, and Kill does not wait for a killed postmaster's children.
func children(int) []int { return nil }

// alive reports whether process pid exists.
func alive(pid int) bool { return syscall.Kill(pid, 0) == nil }
