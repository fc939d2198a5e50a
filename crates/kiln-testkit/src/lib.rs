//! Test fixtures: a tiny signed Debian repository made of real `.deb`s
//! (built with `dpkg-deb`), signed with a throwaway OpenPGP key (`gpg`), and
//! served from a directory or a loopback HTTP server with fault injection.
//!
//! Offline and deterministic apart from the key material: the same `Pkg`
//! gives the same `.deb` bytes whatever the umask or the clock (modes are set
//! explicitly, `dpkg-deb` runs with a fixed `SOURCE_DATE_EPOCH`).

pub mod azurite;
pub mod gce;
pub mod moto;
pub mod openstack;
pub mod postgres;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A throwaway OpenPGP home with one or more signing keys: every signature
/// it makes carries one signature per key.
pub struct Key {
    pub home: tempfile::TempDir,
    /// The public keys as a binary keyring file.
    pub keyring: PathBuf,
    /// The digest algorithm of the signatures made from now on (`--digest-algo`).
    pub digest_algo: String,
    /// The e-mail addresses of the signing keys, in the order they were made.
    signers: Vec<String>,
    /// Whether the keys were made on a clock turned back to [`Key::BACKDATED`].
    backdated: bool,
}

/// How a key of a [`Key`] home is made.
#[derive(Clone, Debug, Default)]
pub struct KeyOpts {
    /// Made on 2024-01-01 and valid for one day, so it has long expired;
    /// signatures are made on that day, while it was valid. Implies `backdated`.
    pub expired: bool,
    /// Made on 2024-01-01 (valid, never expiring), and signing on that day: a
    /// home whose first key is backdated takes only backdated keys, so that an
    /// expired key and a valid one can sign the same file.
    pub backdated: bool,
}

impl KeyOpts {
    fn is_backdated(&self) -> bool {
        self.expired || self.backdated
    }
}

impl Key {
    /// When backdated keys are made (`--faked-system-time`).
    pub const BACKDATED: &'static str = "20240101T000000";
    /// When backdated keys sign: inside the day an expired key was valid.
    const BACKDATED_SIGNING: &'static str = "20240101T120000";

    /// A home with one valid key, made now.
    pub fn generate(name: &str) -> Key {
        Self::generate_with(name, &KeyOpts::default())
    }

    /// A home with one key made as `opts` says.
    pub fn generate_with(name: &str, opts: &KeyOpts) -> Key {
        let home = tempfile::tempdir().unwrap();
        let keyring = home.path().join("public.gpg");
        let mut key = Key {
            home,
            keyring,
            digest_algo: "SHA256".into(),
            signers: Vec::new(),
            backdated: opts.is_backdated(),
        };
        key.add_signer(name, opts);
        key
    }

    /// Adds a signing key to this home: signatures made from now on carry
    /// one more signature.
    pub fn add_signer(&mut self, name: &str, opts: &KeyOpts) {
        assert_eq!(
            opts.is_backdated(),
            self.backdated,
            "the keys of one home are all backdated or none is"
        );
        let email = format!("{}@kiln.invalid", name.to_lowercase().replace(' ', "-"));
        let mut args = vec!["--quick-gen-key".to_string(), format!("{name} <{email}>")];
        args.extend(["ed25519", "sign"].map(String::from));
        args.push(if opts.expired { "1d" } else { "never" }.into());
        let mut cmd = self.gpg();
        if self.backdated {
            cmd.args(["--faked-system-time", Self::BACKDATED]);
        }
        run(cmd.args(&args));
        self.signers.push(email);
        self.export();
    }

    /// Revokes every key of this home (with the revocation certificates gpg
    /// made beside them) and exports the keyring again: what was signed
    /// before is now signed by revoked keys. Nothing can be signed after.
    pub fn revoke(&self) {
        for fpr in self.fingerprints() {
            let cert = self
                .home
                .path()
                .join("openpgp-revocs.d")
                .join(format!("{fpr}.rev"));
            // gpg writes the certificate with its armor line defused by a ':'.
            let text = std::fs::read_to_string(&cert).unwrap().replace(
                ":-----BEGIN PGP PUBLIC KEY BLOCK-----",
                "-----BEGIN PGP PUBLIC KEY BLOCK-----",
            );
            let armored = self.home.path().join(format!("{fpr}.rev.asc"));
            std::fs::write(&armored, text).unwrap();
            run(self.gpg().arg("--import").arg(&armored));
        }
        self.export();
    }

    /// The fingerprints of the keys, in the order they were made.
    pub fn fingerprints(&self) -> Vec<String> {
        let listing = run(self
            .gpg()
            .args(["--with-colons", "--fingerprint", "--list-keys"]));
        let mut out = Vec::new();
        let mut primary = false;
        for l in listing.lines() {
            let f: Vec<&str> = l.split(':').collect();
            match f[0] {
                "pub" => primary = true,
                "sub" => primary = false,
                "fpr" if primary => {
                    out.push(f[9].to_string());
                    primary = false;
                }
                _ => {}
            }
        }
        out
    }

    /// `gpg` on this home, without prompts.
    fn gpg(&self) -> Command {
        let mut c = Command::new("gpg");
        c.env("GNUPGHOME", self.home.path()).args([
            "--batch",
            "--quiet",
            "--yes",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
        ]);
        c
    }

    fn export(&self) {
        let out = self.gpg().arg("--export").output().unwrap();
        assert!(out.status.success());
        std::fs::write(&self.keyring, out.stdout).unwrap();
    }

    /// The public keys, ASCII-armored.
    pub fn armored(&self) -> String {
        run(self.gpg().args(["--armor", "--export"]))
    }

    /// `gpg` ready to sign with every key of the home.
    fn signing(&self) -> Command {
        let mut c = self.gpg();
        if self.backdated {
            c.args(["--faked-system-time", Self::BACKDATED_SIGNING]);
        }
        for s in &self.signers {
            c.args(["--local-user", s]);
        }
        c.args(["--digest-algo", &self.digest_algo]);
        c
    }

    pub fn clearsign(&self, input: &Path, output: &Path) {
        let _ = std::fs::remove_file(output);
        run(self
            .signing()
            .arg("--clearsign")
            .arg("--output")
            .arg(output)
            .arg(input));
    }

    pub fn detach_sign(&self, input: &Path, output: &Path) {
        let _ = std::fs::remove_file(output);
        run(self
            .signing()
            .arg("--detach-sign")
            .arg("--output")
            .arg(output)
            .arg(input));
    }
}

/// A binary package to put in the fixture repository.
#[derive(Clone, Debug, Default)]
pub struct Pkg {
    pub name: String,
    pub version: String,
    pub arch: String,
    /// Extra control fields (Depends, Provides, Priority, Essential, …).
    pub fields: Vec<(String, String)>,
    /// Files in the package: path (relative to /) → contents.
    pub files: BTreeMap<String, Vec<u8>>,
    /// Maintainer scripts (postinst, preinst, …) → contents.
    pub scripts: BTreeMap<String, String>,
    /// Paths of `files` that are executable (mode 0755; others are 0644).
    pub executables: BTreeSet<String>,
    /// Symbolic links in the package: path (relative to /) → target, as written.
    pub symlinks: BTreeMap<String, String>,
    /// Files of zeros: path (relative to /) → length. Made sparse on the
    /// build side (no memory, no disk), stored as zeros in the `.deb`: a
    /// large file that compresses to almost nothing.
    pub zeros: BTreeMap<String, u64>,
}

impl Pkg {
    pub fn new(name: &str, version: &str) -> Pkg {
        Pkg {
            name: name.into(),
            version: version.into(),
            arch: "all".into(),
            ..Default::default()
        }
    }
    pub fn arch(mut self, a: &str) -> Pkg {
        self.arch = a.into();
        self
    }
    pub fn field(mut self, k: &str, v: &str) -> Pkg {
        self.fields.push((k.into(), v.into()));
        self
    }
    pub fn depends(self, v: &str) -> Pkg {
        self.field("Depends", v)
    }
    pub fn file(mut self, path: &str, contents: &[u8]) -> Pkg {
        self.files
            .insert(path.trim_start_matches('/').into(), contents.to_vec());
        self
    }
    /// A file with mode 0755.
    pub fn executable(mut self, path: &str, contents: &[u8]) -> Pkg {
        let path = path.trim_start_matches('/').to_string();
        self.executables.insert(path.clone());
        self.files.insert(path, contents.to_vec());
        self
    }
    /// A symbolic link at `path` to `target` (absolute or relative, kept as given).
    pub fn symlink(mut self, path: &str, target: &str) -> Pkg {
        self.symlinks
            .insert(path.trim_start_matches('/').into(), target.into());
        self
    }
    /// A file of `len` zero bytes (mode 0644).
    pub fn zeros(mut self, path: &str, len: u64) -> Pkg {
        self.zeros.insert(path.trim_start_matches('/').into(), len);
        self
    }
    /// The `Installed-Size` (KiB) the index and control file declare
    /// (default: 1, whatever the package holds).
    pub fn installed_size(self, kib: u64) -> Pkg {
        self.field("Installed-Size", &kib.to_string())
    }
    pub fn script(mut self, name: &str, body: &str) -> Pkg {
        self.scripts.insert(name.into(), body.into());
        self
    }
}

/// Options for writing the repository's Release file.
#[derive(Clone, Debug)]
pub struct ReleaseOpts {
    pub suite: String,
    pub codename: String,
    pub date: String,
    pub valid_until: Option<String>,
    /// Sign InRelease (clearsigned) — otherwise write an unsigned Release only.
    pub sign: bool,
}

impl Default for ReleaseOpts {
    fn default() -> Self {
        ReleaseOpts {
            suite: "kiln-test".into(),
            codename: "kiln-test".into(),
            date: "Sat, 01 Nov 2025 12:00:00 UTC".into(),
            valid_until: None,
            sign: true,
        }
    }
}

/// A repository on disk: `dists/SUITE/...` and `pool/...`.
pub struct Repo {
    pub dir: tempfile::TempDir,
    pub key: Key,
    pub debs: BTreeMap<String, PathBuf>,
}

/// `len` bytes of incompressible noise (xorshift64 from `state`, which must
/// not be 0): the same bytes for the same state.
pub fn noise(len: usize, state: u64) -> Vec<u8> {
    assert_ne!(state, 0, "xorshift stays at 0");
    let mut x = state;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Sets `path`'s permission bits.
fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Creates `dir` and its missing parents below `root` with mode 0755, so the
/// `.deb` does not depend on the umask.
fn mkdirs(root: &Path, dir: &Path) {
    let mut d = root.to_path_buf();
    for c in dir.strip_prefix(root).unwrap().components() {
        d.push(c);
        if !d.is_dir() {
            std::fs::create_dir(&d).unwrap();
            chmod(&d, 0o755);
        }
    }
}

/// Builds a `.deb` with dpkg-deb and returns its path. Directories are 0755,
/// files 0644 (0755 for executables and maintainer scripts), all owned by
/// root, every timestamp `SOURCE_DATE_EPOCH`: the bytes depend on the `Pkg` only.
pub fn build_deb(p: &Pkg, out_dir: &Path) -> PathBuf {
    let tree = tempfile::tempdir().unwrap();
    let root = tree.path();
    chmod(root, 0o755);
    mkdirs(root, &root.join("DEBIAN"));
    let mut control = format!(
        "Package: {}\nVersion: {}\nArchitecture: {}\nMaintainer: Kiln Tests <tests@kiln.invalid>\n",
        p.name, p.version, p.arch
    );
    for (k, v) in &p.fields {
        control.push_str(&format!("{k}: {v}\n"));
    }
    control.push_str(&format!("Description: test package {}\n", p.name));
    std::fs::write(root.join("DEBIAN/control"), control).unwrap();
    chmod(&root.join("DEBIAN/control"), 0o644);
    for (name, body) in &p.scripts {
        let path = root.join("DEBIAN").join(name);
        std::fs::write(&path, body).unwrap();
        chmod(&path, 0o755);
    }
    for (path, contents) in &p.files {
        let f = root.join(path);
        mkdirs(root, f.parent().unwrap());
        std::fs::write(&f, contents).unwrap();
        chmod(
            &f,
            if p.executables.contains(path) {
                0o755
            } else {
                0o644
            },
        );
    }
    for (path, len) in &p.zeros {
        let f = root.join(path);
        mkdirs(root, f.parent().unwrap());
        std::fs::File::create(&f).unwrap().set_len(*len).unwrap();
        chmod(&f, 0o644);
    }
    for (path, target) in &p.symlinks {
        let l = root.join(path);
        mkdirs(root, l.parent().unwrap());
        std::os::unix::fs::symlink(target, &l).unwrap();
    }
    std::fs::create_dir_all(out_dir).unwrap();
    let deb = out_dir.join(format!(
        "{}_{}_{}.deb",
        p.name,
        p.version.replace(':', "%3a"),
        p.arch
    ));
    run(Command::new("dpkg-deb")
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .args(["--root-owner-group", "-Zgzip", "--build"])
        .arg(root)
        .arg(&deb));
    deb
}

impl Repo {
    /// Builds, indexes and signs a repository with `pkgs` for `arch`.
    pub fn build(pkgs: &[Pkg], arch: &str, opts: &ReleaseOpts) -> Repo {
        Self::build_signed_by(pkgs, arch, opts, Key::generate("Kiln Test Archive"))
    }

    /// [`Repo::build`], signed by the keys of `key`.
    pub fn build_signed_by(pkgs: &[Pkg], arch: &str, opts: &ReleaseOpts, key: Key) -> Repo {
        let dir = tempfile::tempdir().unwrap();
        let mut repo = Repo {
            dir,
            key,
            debs: BTreeMap::new(),
        };
        repo.write(pkgs, arch, opts);
        repo
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn uri(&self) -> String {
        format!("file://{}", self.root().display())
    }

    pub fn dists(&self, opts: &ReleaseOpts) -> PathBuf {
        self.root().join("dists").join(&opts.suite)
    }

    /// (Re)writes pool, index and Release for the package set.
    pub fn write(&mut self, pkgs: &[Pkg], arch: &str, opts: &ReleaseOpts) {
        let mut index = String::new();
        for p in pkgs {
            let first = p.name.chars().next().unwrap();
            let rel = format!("pool/main/{first}/{}", p.name);
            let deb = build_deb(p, &self.root().join(&rel));
            let bytes = std::fs::read(&deb).unwrap();
            let filename = format!("{rel}/{}", deb.file_name().unwrap().to_str().unwrap());
            index.push_str(&format!(
                "Package: {}\nVersion: {}\nArchitecture: {}\n",
                p.name, p.version, p.arch
            ));
            for (k, v) in &p.fields {
                index.push_str(&format!("{k}: {v}\n"));
            }
            if !p.fields.iter().any(|(k, _)| k == "Installed-Size") {
                index.push_str("Installed-Size: 1\n");
            }
            index.push_str(&format!(
                "Filename: {filename}\nSize: {}\nSHA256: {}\nDescription: test package {}\n\n",
                bytes.len(),
                sha256_hex(&bytes),
                p.name
            ));
            self.debs.insert(p.name.clone(), deb);
        }
        let dists = self.dists(opts);
        let bin = dists.join(format!("main/binary-{arch}"));
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("Packages"), &index).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(index.as_bytes()).unwrap();
        let gz = gz.finish().unwrap();
        std::fs::write(bin.join("Packages.gz"), &gz).unwrap();
        self.write_release(arch, opts);
    }

    /// Writes Release (and InRelease when signing) over what is in dists/.
    pub fn write_release(&self, arch: &str, opts: &ReleaseOpts) {
        let dists = self.dists(opts);
        let mut files = String::new();
        for name in ["Packages", "Packages.gz"] {
            let rel = format!("main/binary-{arch}/{name}");
            let b = std::fs::read(dists.join(&rel)).unwrap();
            files.push_str(&format!(" {} {} {rel}\n", sha256_hex(&b), b.len()));
        }
        let mut release = format!(
            "Origin: Kiln Tests\nLabel: Kiln Tests\nSuite: {}\nCodename: {}\nDate: {}\n",
            opts.suite, opts.codename, opts.date
        );
        if let Some(v) = &opts.valid_until {
            release.push_str(&format!("Valid-Until: {v}\n"));
        }
        release.push_str(&format!(
            "Architectures: {arch}\nComponents: main\nDescription: Kiln test repository\nSHA256:\n{files}"
        ));
        std::fs::write(dists.join("Release"), &release).unwrap();
        let _ = std::fs::remove_file(dists.join("InRelease"));
        if opts.sign {
            self.key
                .clearsign(&dists.join("Release"), &dists.join("InRelease"));
        }
    }
}

/// A minimal HTTP/1.1 file server on 127.0.0.1 for one directory.
pub struct HttpServer {
    pub port: u16,
    stop: Arc<AtomicBool>,
    /// Requests to fail with 500 before serving normally.
    pub fail_next: Arc<AtomicUsize>,
    /// Paths requested so far.
    pub log: Arc<Mutex<Vec<String>>>,
    /// When N > 0, every Nth file served is cut off halfway through its
    /// body and the connection closed (a mirror dropping connections under
    /// load); its headers promise the whole file.
    pub cut_every: Arc<AtomicUsize>,
}

impl HttpServer {
    pub fn serve(root: &Path) -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let fail_next = Arc::new(AtomicUsize::new(0));
        let log = Arc::new(Mutex::new(Vec::new()));
        let cut_every = Arc::new(AtomicUsize::new(0));
        let served = Arc::new(AtomicUsize::new(0));
        let (s, f, l, root) = (
            stop.clone(),
            fail_next.clone(),
            log.clone(),
            root.to_path_buf(),
        );
        let c = cut_every.clone();
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (f, l, root) = (f.clone(), l.clone(), root.clone());
                        let cut = (c.clone(), served.clone());
                        std::thread::spawn(move || handle(stream, &root, &f, &l, &cut));
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
                }
            }
        });
        HttpServer {
            port,
            stop,
            fail_next,
            log,
            cut_every,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn handle(
    stream: TcpStream,
    root: &Path,
    fail: &AtomicUsize,
    log: &Mutex<Vec<String>>,
    (cut_every, served): &(Arc<AtomicUsize>, Arc<AtomicUsize>),
) {
    stream.set_nonblocking(false).ok();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut stream = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" || h == "\n" {
                break;
            }
        }
        log.lock().unwrap().push(path.clone());
        if fail
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            let _ = stream
                .write_all(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n");
            continue;
        }
        let file = root.join(path.trim_start_matches('/'));
        let mut body = Vec::new();
        match std::fs::File::open(&file).and_then(|mut f| f.read_to_end(&mut body)) {
            Ok(_) if file.is_file() => {
                let _ = stream.write_all(
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes(),
                );
                let n = served.fetch_add(1, Ordering::SeqCst) + 1;
                let every = cut_every.load(Ordering::SeqCst);
                if every > 0 && n % every == 0 {
                    let _ = stream.write_all(&body[..body.len() / 2]);
                    let _ = stream.flush();
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                    return;
                }
                let _ = stream.write_all(&body);
            }
            _ => {
                let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
            }
        }
    }
}

/// The shared libraries (and the loader) `bin` loads, as `ldd` names them.
fn libraries_of(bin: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(bin).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| match line.split_once("=>") {
            Some((_, r)) => r.trim().split(' ').next().unwrap_or(""),
            None => line.trim().split(' ').next().unwrap_or(""),
        })
        .filter(|lib| lib.starts_with('/'))
        .map(PathBuf::from)
        .collect()
}

/// A minimal merged-/usr root at `root` holding the host's own `tools`
/// (looked up in `/usr/bin`) and the shared libraries they load, for tests
/// that run commands in a root without building one from packages.
pub fn host_tools_root(root: &Path, tools: &[&str]) {
    for d in ["usr/bin", "usr/lib", "usr/lib64", "usr/sbin"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    for (link, to) in [
        ("bin", "usr/bin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
        ("sbin", "usr/sbin"),
    ] {
        std::os::unix::fs::symlink(to, root.join(link)).unwrap();
    }
    let mut files: Vec<PathBuf> = Vec::new();
    for t in tools {
        let bin = Path::new("/usr/bin").join(t);
        assert!(bin.exists(), "the host has no {}", bin.display());
        files.push(bin.clone());
        files.extend(libraries_of(&bin));
    }
    for f in files {
        // Under merged /usr, /lib/… is /usr/lib/…: copy to the real path.
        let real = std::fs::canonicalize(&f).unwrap();
        let dest = root.join(real.strip_prefix("/").unwrap());
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(&real, &dest).unwrap();
        // The path as named (/lib64/ld-linux…, say), a link to the copy.
        let named = f.to_str().unwrap().trim_start_matches('/');
        let named = ["bin/", "lib/", "lib64/", "sbin/"]
            .iter()
            .find_map(|p| named.strip_prefix(p).map(|rest| format!("usr/{p}{rest}")))
            .unwrap_or_else(|| named.to_string());
        let alias = root.join(&named);
        if alias != dest && std::fs::symlink_metadata(&alias).is_err() {
            std::fs::create_dir_all(alias.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(&real, alias).unwrap();
        }
    }
}

/// A package (`arch`) holding the host's own `tools` (from `/usr/bin`) and
/// the shared libraries they load, at the merged-`/usr` paths they are
/// loaded from, with
/// `/usr/bin/sh` a link to `dash` when it is among them: a fixture image
/// that can run commands.
pub fn host_tools_pkg(name: &str, arch: &str, tools: &[&str]) -> Pkg {
    let mut p = Pkg::new(name, "1").arch(arch);
    let mut libs: BTreeSet<PathBuf> = BTreeSet::new();
    for t in tools {
        let bin = std::fs::canonicalize(Path::new("/usr/bin").join(t)).unwrap();
        p = p.executable(
            &format!("/usr/bin/{t}"),
            &std::fs::read(&bin).unwrap_or_else(|e| panic!("{}: {e}", bin.display())),
        );
        libs.extend(libraries_of(&bin));
    }
    // Each library at the path the loader asks for (its soname), under
    // merged /usr.
    for lib in libs {
        let real = std::fs::canonicalize(&lib).unwrap();
        let named = lib.to_str().unwrap().to_string();
        let at = if named.starts_with("/usr/") {
            named
        } else {
            format!("/usr{named}")
        };
        p = p.executable(&at, &std::fs::read(&real).unwrap());
    }
    if tools.contains(&"dash") {
        p = p.symlink("/usr/bin/sh", "dash");
    }
    p
}

/// A build output directory as `kiln build` leaves it, for catalog tests:
/// `ROOT/NAME-EPOCH` with a valid `manifest.json` listing `packages`
/// (amd64, trixie, version 1; distroless when the name says so), a
/// `rootfs.tar` and an SPDX SBOM.
pub fn fake_build(root: &Path, name: &str, epoch: i64, packages: &[(&str, &str)]) -> PathBuf {
    let dir = root.join(format!("{name}-{epoch}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("rootfs.tar"), format!("{name}{epoch}")).unwrap();
    let pk: Vec<_> = packages
        .iter()
        .map(|(n, v)| {
            serde_json::json!({"name": n, "version": v, "architecture": "amd64", "target": "amd64",
                "source": n, "source-version": v, "sha256": "0".repeat(64)})
        })
        .collect();
    let m = serde_json::json!({
        "schema-version": 1, "image": name, "version": "1", "suite": "trixie",
        "architectures": ["amd64"], "distroless": name.contains("distroless"),
        "source-date-epoch": epoch,
        "lock": {"path": "../x.lock", "recipe-sha256": "1".repeat(64)},
        "packages": pk,
        "outputs": [{"path": "rootfs.tar", "format": "tar", "architecture": "amd64",
            "size": 3, "sha256": "2".repeat(64)}],
        "disk": {}, "tests": [], "users": [], "generator": "kiln test"
    });
    std::fs::write(dir.join("manifest.json"), m.to_string()).unwrap();
    std::fs::write(dir.join("sbom.spdx.json"), "{}").unwrap();
    dir
}

/// A loopback proxy to the port `to` that drops the connection once, after
/// `cut_at` bytes from the client (an upload cut midway); the flag says
/// whether it did.
pub fn cutting_proxy(to: u16, cut_at: u64) -> (u16, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cut2 = cut.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", to)) else {
                return;
            };
            let (mut c2, mut s2) = (c.try_clone().unwrap(), s.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s2, &mut c2);
                let _ = c2.shutdown(std::net::Shutdown::Both);
            });
            let (seen, cut) = (seen.clone(), cut2.clone());
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    let n = match c.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let total =
                        seen.fetch_add(n as u64, std::sync::atomic::Ordering::SeqCst) + n as u64;
                    if total > cut_at && !cut.swap(true, std::sync::atomic::Ordering::SeqCst) {
                        let _ = s.shutdown(std::net::Shutdown::Both);
                        let _ = c.shutdown(std::net::Shutdown::Both);
                        break;
                    }
                    if s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = s.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    (port, cut)
}

/// One recorded request: (method, path with query, authorization, body).
pub type Recorded = (String, String, String, String);

/// A loopback HTTP/1.1 stand-in for an API no emulator has: each request
/// is recorded, then answered with `handler(method, path, authorization,
/// body)`'s status and JSON.
pub struct Recorder {
    pub port: u16,
    pub requests: std::sync::Arc<std::sync::Mutex<Vec<Recorded>>>,
}

pub fn recording_server(
    handler: impl Fn(&str, &str, &str, &str) -> (u16, serde_json::Value) + Send + 'static,
) -> Recorder {
    use std::io::{BufRead, Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let rec = requests.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let mut r = std::io::BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            if r.read_line(&mut line).is_err() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (method, path) = (
                parts.next().unwrap_or("").to_string(),
                parts.next().unwrap_or("").to_string(),
            );
            let (mut len, mut auth) = (0usize, String::new());
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).is_err() {
                    break;
                }
                let h = h.trim_end();
                if h.is_empty() {
                    break;
                }
                let (k, v) = h.split_once(':').unwrap_or((h, ""));
                match k.to_ascii_lowercase().as_str() {
                    "content-length" => len = v.trim().parse().unwrap_or(0),
                    "authorization" => auth = v.trim().to_string(),
                    _ => {}
                }
            }
            let mut body = vec![0u8; len];
            if r.read_exact(&mut body).is_err() {
                continue;
            }
            let body = String::from_utf8_lossy(&body).into_owned();
            rec.lock()
                .unwrap()
                .push((method.clone(), path.clone(), auth.clone(), body.clone()));
            let (status, answer) = handler(&method, &path, &auth, &body);
            let text = answer.to_string();
            let _ = write!(
                s,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                text.len()
            );
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    });
    Recorder { port, requests }
}

/// Runs `f` with the environment variables set (`Some`) or removed
/// (`None`), then puts them back; every caller in the process holds one
/// lock, so tests that read the environment do not see each other's.
pub fn with_env<T>(vars: &[(&str, Option<String>)], f: impl FnOnce() -> T) -> T {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let old: Vec<_> = vars
        .iter()
        .map(|(k, _)| (k.to_string(), std::env::var(k).ok()))
        .collect();
    let set = |k: &str, v: Option<&String>| {
        // SAFETY: every caller that touches the environment holds LOCK.
        unsafe {
            match v {
                Some(v) => std::env::set_var(k, v),
                None => std::env::remove_var(k),
            }
        }
    };
    for (k, v) in vars {
        set(k, v.as_ref());
    }
    let r = f();
    for (k, v) in &old {
        set(k, v.as_ref());
    }
    r
}
