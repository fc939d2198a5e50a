//! Helpers shared by the integration tests of the `kiln` binary: each test
//! file says `mod common; use common::*;` and uses what it needs (hence the
//! `dead_code` allowance: no file uses every helper).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};

/// The workspace root (the directory of the top Cargo.toml).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// `target/kiln-test-cache/NAME`, created: caches the real-archive tests
/// share between runs and test files.
pub fn shared_dir(name: &str) -> PathBuf {
    let d = workspace().join("target/kiln-test-cache").join(name);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Kiln's cache for the real-archive tests (indexes and `.deb`s).
pub fn cache() -> PathBuf {
    shared_dir("kiln")
}

/// True (and says so) when KILN_SKIP_NETWORK_TESTS is set: the test that
/// asks returns without doing anything.
pub fn skip() -> bool {
    if std::env::var_os("KILN_SKIP_NETWORK_TESTS").is_some() {
        eprintln!("KILN_SKIP_NETWORK_TESTS is set: real-archive test not run");
        return true;
    }
    false
}

static SERIAL: Mutex<()> = Mutex::new(());

/// Held by the tests of one file that must not run at the same time (big
/// builds, QEMU boots); a test that panicked while holding it does not
/// poison it for the others.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The `kiln` binary with `args`, NO_COLOR=1 and KILN_CACHE_DIR=`cache_dir`,
/// then `envs` (which may override both), ready to run or to adjust.
pub fn kiln_command(cache_dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.args(args)
        .env("KILN_CACHE_DIR", cache_dir)
        .env("NO_COLOR", "1");
    for (k, v) in envs {
        c.env(k, v);
    }
    c
}

/// Runs `kiln` with `args` and extra `envs` against the shared [`cache`].
pub fn kiln(args: &[&str], envs: &[(&str, &str)]) -> Output {
    kiln_command(&cache(), args, envs).output().unwrap()
}

/// stderr then stdout, for assertions and their messages.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    )
}

/// stderr alone (where kiln's progress, warnings and errors go).
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// stdout parsed as JSON (`--json`), or a panic showing what was printed.
pub fn json_of(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("kiln printed no JSON on stdout ({e}): {}", text(o)))
}

/// A JSON file, parsed.
pub fn json_file(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}
