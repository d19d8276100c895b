package builder

import "syscall"

// groupAttr puts a command in a process group of its own, and asks the
// kernel to send it SIGTERM if flakeship dies first (even by SIGKILL), so
// nix stops its build rather than running on as an orphan. (Pdeathsig fires
// when the thread that started the command exits; flakeship never locks
// goroutines to threads, so that is when the process exits.)
func groupAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}
