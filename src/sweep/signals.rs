//! Stopping a sweep stops its runs: SIGTERM, SIGINT and SIGHUP sent to the
//! sweep are forwarded to every child `resgrad train` it started, no new
//! child starts, and the sweep exits with 128 + the signal once its
//! children have exited (each keeps its last checkpoint; a rerun resumes
//! it). So a rerun never trains beside an orphan of an earlier sweep.
//!
//! The handler is `signal-hook`'s iterator thread (no code runs inside the
//! signal handler itself); children are signalled with `kill(2)`.

use crate::error::{Error, Result};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use std::collections::HashSet;
use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

/// The children of a sweep and whether it is stopping: 0 no, -1 stop
/// starting runs (stdout closed), else the signal that stopped it.
#[derive(Clone, Debug, Default)]
pub struct Children {
    pids: Arc<Mutex<HashSet<u32>>>,
    stopped: Arc<AtomicI32>,
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        SIGTERM => "SIGTERM",
        SIGINT => "SIGINT",
        SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

fn kill(pid: u32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions; a pid that has
    // exited meanwhile gets ESRCH, which is ignored
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// `prctl(PR_SET_PDEATHSIG, SIGTERM)` in the child, between fork and exec
/// (the signal comes when the thread that spawned it ends, and the sweep
/// waits for each child on the thread that started it); a parent already
/// gone by then is caught by comparing `getppid()` with the pid before the
/// fork.
#[cfg(target_os = "linux")]
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child before exec and calls
    // only async-signal-safe functions (prctl, getppid, raise)
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::raise(libc::SIGTERM);
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_: &mut Command) {}

impl Children {
    /// Install the handler (for the life of the process: one sweep per
    /// process) and return the registry it forwards to.
    pub fn install() -> Result<Children> {
        let c = Children::default();
        let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
            .map_err(|e| Error::io("signal handler", e))?;
        let h = c.clone();
        std::thread::spawn(move || {
            for sig in signals.forever() {
                h.stop(sig);
            }
        });
        Ok(c)
    }

    /// Record the stop and forward `sig` to every running child.
    pub fn stop(&self, sig: i32) {
        let cur = self.stopped.load(Ordering::SeqCst);
        if cur <= 0 {
            let _ = self
                .stopped
                .compare_exchange(cur, sig, Ordering::SeqCst, Ordering::SeqCst);
        }
        let pids = self.pids.lock().unwrap_or_else(|p| p.into_inner());
        for &pid in pids.iter() {
            kill(pid, sig);
        }
    }

    /// Start no new run (the running ones finish).
    pub fn stop_starting(&self) {
        let _ = self
            .stopped
            .compare_exchange(0, -1, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Whether new runs may no longer start.
    pub fn stopping(&self) -> bool {
        self.stopped.load(Ordering::SeqCst) != 0
    }

    /// The error a sweep stopped by a signal ends with.
    pub fn stopped_by_signal(&self) -> Option<Error> {
        match self.stopped.load(Ordering::SeqCst) {
            sig if sig > 0 => Some(Error::Interrupted {
                signal: sig,
                name: signal_name(sig),
            }),
            _ => None,
        }
    }

    /// Run `cmd` to completion like `Command::output`, registered as a
    /// child while it runs (a stop that comes between the spawn and the
    /// registration is forwarded right after it). On Linux the child gets
    /// SIGTERM when this thread's process dies without forwarding one
    /// (SIGKILL, a crash): an orphan would train on, holding the run
    /// directory's lock against the next attempt (a requeued Slurm task).
    pub fn output(&self, cmd: &mut Command) -> std::io::Result<Output> {
        die_with_parent(cmd);
        let child: Child = cmd.spawn()?;
        let pid = child.id();
        self.pids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pid);
        let sig = self.stopped.load(Ordering::SeqCst);
        if sig > 0 {
            kill(pid, sig);
        }
        let out = child.wait_with_output();
        self.pids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&pid);
        out
    }
}
