//! One build's cancellation handle: a flag the pipeline checks between
//! steps, the child processes to kill and the scratch directories to remove
//! when it is cancelled. Nothing here is process-wide, so cancelling one
//! build leaves another build in the same process alone.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Inner {
    cancelled: AtomicBool,
    children: Mutex<Vec<u32>>,
    dirs: Mutex<Vec<PathBuf>>,
}

/// Cheap to clone; clones share the same state.
#[derive(Clone, Default)]
pub struct Cancel(Arc<Inner>);

impl std::fmt::Debug for Cancel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cancel")
            .field("cancelled", &self.is_cancelled())
            .finish_non_exhaustive()
    }
}

/// The error a cancelled step returns.
#[derive(Debug, thiserror::Error)]
#[error("cancelled")]
pub struct Cancelled;

impl Cancel {
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// Cancels: later checks fail, running children are killed (a sandbox
    /// child takes its PID namespace with it) and scratch areas removed.
    pub fn cancel(&self) {
        self.0.cancelled.store(true, Ordering::SeqCst);
        let pids: Vec<u32> = std::mem::take(&mut *self.0.children.lock().unwrap());
        for pid in pids {
            // SAFETY: kill(2) with a pid we spawned and a valid signal.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
        }
        // Children may still have been writing: give them a moment to die.
        std::thread::sleep(std::time::Duration::from_millis(50));
        for d in self.0.dirs.lock().unwrap().iter() {
            let _ = std::fs::remove_dir_all(d);
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::SeqCst)
    }

    /// `Err(Cancelled)` once cancelled: call between steps.
    pub fn check(&self) -> Result<(), Cancelled> {
        if self.is_cancelled() {
            Err(Cancelled)
        } else {
            Ok(())
        }
    }

    /// Records a running child process; kill it on cancel until `forget_child`.
    pub fn child_started(&self, pid: u32) {
        self.0.children.lock().unwrap().push(pid);
        if self.is_cancelled() {
            self.cancel();
        }
    }

    pub fn child_finished(&self, pid: u32) {
        self.0.children.lock().unwrap().retain(|p| *p != pid);
    }

    /// A scratch directory to remove if the build is cancelled.
    pub fn track_dir(&self, dir: &Path) {
        self.0.dirs.lock().unwrap().push(dir.to_path_buf());
    }

    pub fn untrack_dir(&self, dir: &Path) {
        self.0.dirs.lock().unwrap().retain(|d| d != dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancelling_one_handle_leaves_another_alone() {
        let a = Cancel::new();
        let b = Cancel::new();
        let da = tempfile::tempdir().unwrap();
        let db = tempfile::tempdir().unwrap();
        a.track_dir(da.path());
        b.track_dir(db.path());
        a.cancel();
        assert!(a.check().is_err());
        assert!(b.check().is_ok());
        assert!(!da.path().exists());
        assert!(db.path().exists());
    }

    #[test]
    fn cancel_kills_a_registered_child() {
        let a = Cancel::new();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        a.child_started(child.id());
        let t = std::time::Instant::now();
        a.cancel();
        let st = child.wait().unwrap();
        assert!(!st.success());
        assert!(t.elapsed().as_secs() < 10);
    }
}
