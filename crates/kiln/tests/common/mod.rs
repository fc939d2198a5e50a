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
    kiln_command_with(Path::new(env!("CARGO_BIN_EXE_kiln")), cache_dir, args, envs)
}

/// A copy of the kiln binary that any user can run: tests that drop to an
/// ordinary uid cannot rely on the checkout (often mode 0700) being open.
pub fn kiln_binary_for_anyone() -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("kiln-test-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.join("kiln");
    if !bin.exists() {
        let tmp = dir.join(format!(".kiln.{:?}", std::thread::current().id()));
        std::fs::copy(env!("CARGO_BIN_EXE_kiln"), &tmp).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&tmp, &bin).unwrap();
    }
    bin
}

/// [`kiln_command`] running `program`.
pub fn kiln_command_with(
    program: &Path,
    cache_dir: &Path,
    args: &[&str],
    envs: &[(&str, &str)],
) -> Command {
    let mut c = Command::new(program);
    // Each test's builds go into the catalog beside its cache, never the
    // user's.
    c.args(args)
        .env("KILN_CACHE_DIR", cache_dir)
        .env("KILN_CATALOG", cache_dir.join("catalog.sqlite"))
        // The serials `kiln verify TREE` remembers: never the user's.
        .env("XDG_STATE_HOME", cache_dir.join("state"))
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

/// A docker-registry on loopback, stopped when dropped; with `auth`, Basic
/// authentication for that user and password (an htpasswd file).
pub struct Registry {
    child: std::process::Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub fn start(auth: Option<(&str, &str)>) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cfg = format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        if let Some((user, password)) = auth {
            let o = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .expect("htpasswd (apache2-utils) is installed");
            assert!(o.status.success());
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, &o.stdout).unwrap();
            cfg.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
                file.display()
            ));
        }
        let path = dir.path().join("config.yml");
        std::fs::write(&path, cfg).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("docker-registry is installed");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Registry {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Checks `value` against `docs/schemas/NAME.schema.json` with Python's
/// jsonschema (installed by `.ci/run`), failing with every violation.
#[allow(dead_code)]
#[track_caller]
pub fn assert_matches_schema(name: &str, value: &serde_json::Value) {
    let schema = workspace().join(format!("docs/schemas/{name}.schema.json"));
    let script = "import json, sys, jsonschema\n\
        schema = json.load(open(sys.argv[1]))\n\
        v = jsonschema.Draft202012Validator(schema)\n\
        errors = [f\"{'/'.join(map(str, e.absolute_path))}: {e.message}\" for e in v.iter_errors(json.load(sys.stdin))]\n\
        print('\\n'.join(errors)); sys.exit(1 if errors else 0)\n";
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(&schema)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(serde_json::to_string(value).unwrap().as_bytes())
            .unwrap();
    }
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "{} does not match {}:\n{}{}",
        name,
        schema.display(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// An Ed25519 key pair made with openssl: (KEY.pem, KEY.pub).
#[allow(dead_code)]
pub fn ed25519_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let pem = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub"));
    for args in [
        vec![
            "genpkey",
            "-algorithm",
            "ed25519",
            "-out",
            pem.to_str().unwrap(),
        ],
        vec![
            "pkey",
            "-in",
            pem.to_str().unwrap(),
            "-pubout",
            "-out",
            public.to_str().unwrap(),
        ],
    ] {
        let o = Command::new("openssl").args(&args).output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    }
    (pem, public)
}

/// An ordinary user for the rootless tests, created when missing: with a
/// subordinate id range of its own in /etc/subuid and /etc/subgid when
/// `subids`, without any when not; `id` is its uid when it is made (far
/// from the uids useradd hands out). Returns its uid.
pub fn ordinary_user(name: &str, id: u32, subids: Option<u32>) -> u32 {
    let uid = || {
        Command::new("id")
            .args(["-u", name])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .trim()
                    .parse::<u32>()
                    .unwrap()
            })
    };
    if uid().is_none() {
        // No home, no login; no automatic range (the test sets it).
        let st = Command::new("useradd")
            .args(["-M", "-U", "-u", &id.to_string(), "-s", "/usr/sbin/nologin"])
            .args(["-K", "SUB_UID_COUNT=0"])
            .args(["-K", "SUB_GID_COUNT=0", name])
            .status()
            .unwrap();
        assert!(st.success(), "useradd {name}");
    }
    let listed = |f: &str| {
        std::fs::read_to_string(f)
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with(&format!("{name}:")))
    };
    match subids {
        Some(start) if !listed("/etc/subuid") || !listed("/etc/subgid") => {
            let range = format!("{start}-{}", start + 65535);
            let st = Command::new("usermod")
                .args(["--add-subuids", &range, "--add-subgids", &range, name])
                .status()
                .unwrap();
            assert!(st.success(), "usermod --add-subuids {range} {name}");
        }
        None => assert!(
            !listed("/etc/subuid"),
            "{name} has subordinate ids in /etc/subuid"
        ),
        _ => {}
    }
    uid().unwrap()
}

/// `kiln ARGS` as the ordinary user `user` (through runuser), with HOME,
/// the cache, the catalog and the state in `home` (which the user must own)
/// and `envs` on top.
pub fn kiln_as(user: &str, home: &Path, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let bin = kiln_binary_for_anyone();
    let mut c = Command::new("runuser");
    c.args(["-u", user, "--", "env"])
        .arg(format!("HOME={}", home.display()))
        .arg(format!("KILN_CACHE_DIR={}", home.join("cache").display()))
        .arg(format!(
            "KILN_CATALOG={}",
            home.join("catalog.sqlite").display()
        ))
        .arg(format!("XDG_STATE_HOME={}", home.join("state").display()))
        .arg("NO_COLOR=1");
    for (k, v) in envs {
        c.arg(format!("{k}={v}"));
    }
    c.arg(bin).args(args).current_dir(home).output().unwrap()
}
