//! Every path Kiln opens inside a build root, read or written.
//!
//! A build root is filled by packages, and a package may be hostile: it can
//! plant a symlink at `/etc/passwd`, `/tmp` or `/var/cache/apt` pointing at a
//! file or directory of the build host. Opening `root.join(rel)` would follow
//! such a link out of the root, and Kiln runs as root.
//!
//! [`Root`] holds a directory fd of the root and resolves every path from it,
//! one component at a time, each opened with `O_NOFOLLOW`: a symlink is read
//! with `readlinkat` and resolved the way the kernel resolves it inside a
//! chroot of the root: an absolute target restarts at the root, `..` never
//! climbs above it, at most 40 links per path. Whatever the links say, no
//! operation here reaches a file outside the root.
//!
//! Per operation, the last component:
//!
//! * is **followed** (inside the root) when reading ([`Root::read`],
//!   [`Root::stat`], [`Root::exists`], [`Root::read_dir`]) and when creating
//!   directories ([`Root::create_dir_all`]: merged-/usr links such as
//!   `lib -> usr/lib` are walked through);
//! * is **never followed** when writing or changing: [`Root::write`] and
//!   [`Root::symlink`] replace a link there (temporary file, then `renameat`),
//!   [`Root::ensure_dir`] replaces a link with a real directory,
//!   [`Root::set_mode`] and [`Root::truncate`] refuse a link, and
//!   [`Root::remove_file`], [`Root::remove_tree`], [`Root::set_owner`] and
//!   [`Root::metadata`] act on the link itself.
//!
//! Paths given by the caller are relative to the root (a leading `/` is
//! allowed); `..` in them is refused. Resolution is a user-space walk of
//! `openat`/`readlinkat` on the fds it holds, which behaves like
//! `openat2(RESOLVE_IN_ROOT)` on every kernel.

use std::ffi::{CStr, CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

const MAX_LINKS: usize = 40;

/// A build root, opened once; all paths are resolved inside it.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

/// What a path names, as `lstat` sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

/// The `lstat` (or `stat`) facts Kiln uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub kind: Kind,
    /// Permission bits, with setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub len: u64,
}

impl Meta {
    pub fn is_dir(&self) -> bool {
        self.kind == Kind::Dir
    }
    pub fn is_file(&self) -> bool {
        self.kind == Kind::File
    }
    pub fn is_symlink(&self) -> bool {
        self.kind == Kind::Symlink
    }
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cstring(b: &[u8]) -> io::Result<CString> {
    CString::new(b).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in a path"))
}

fn os_err(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

fn openat(dir: RawFd, name: &CStr, flags: libc::c_int, mode: u32) -> io::Result<OwnedFd> {
    let fd = cvt(unsafe {
        libc::openat(
            dir,
            name.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn fstatat(dir: RawFd, name: &CStr, flags: libc::c_int) -> io::Result<Meta> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    cvt(unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, flags) })?;
    Ok(meta(&st))
}

fn fstat(fd: RawFd) -> io::Result<Meta> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    cvt(unsafe { libc::fstat(fd, &mut st) })?;
    Ok(meta(&st))
}

fn meta(st: &libc::stat) -> Meta {
    let kind = match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => Kind::File,
        libc::S_IFDIR => Kind::Dir,
        libc::S_IFLNK => Kind::Symlink,
        _ => Kind::Other,
    };
    Meta {
        kind,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        len: st.st_size as u64,
    }
}

fn readlinkat(dir: RawFd, name: &CStr) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    loop {
        let n = unsafe {
            libc::readlinkat(
                dir,
                name.as_ptr(),
                buf.as_mut_ptr() as *mut libc::c_char,
                buf.len(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        if n < buf.len() {
            buf.truncate(n);
            return Ok(buf);
        }
        buf.resize(buf.len() * 2, 0);
    }
}

/// The names in the directory `fd` (without `.` and `..`), sorted.
fn list(fd: RawFd) -> io::Result<Vec<OsString>> {
    let dup = cvt(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) })?;
    let dir = unsafe { libc::fdopendir(dup) };
    if dir.is_null() {
        let e = io::Error::last_os_error();
        unsafe { libc::close(dup) };
        return Err(e);
    }
    let mut out = Vec::new();
    loop {
        // readdir returns NULL at the end and on error; errno tells which.
        unsafe { *libc::__errno_location() = 0 };
        let ent = unsafe { libc::readdir(dir) };
        if ent.is_null() {
            let errno = io::Error::last_os_error();
            unsafe { libc::closedir(dir) };
            if errno.raw_os_error().unwrap_or(0) != 0 {
                return Err(errno);
            }
            break;
        }
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) }.to_bytes();
        if name != b"." && name != b".." {
            out.push(OsString::from_vec(name.to_vec()));
        }
    }
    out.sort();
    Ok(out)
}

/// Removes everything in the directory `fd`, never following a link.
/// Without privileges, directories of our own that a package made
/// read-only (`dr-xr-xr-x`) are made writable first, so they can be emptied.
fn remove_contents(fd: RawFd) -> io::Result<()> {
    for name in list(fd)? {
        let c = cstring(name.as_bytes())?;
        let m = fstatat(fd, &c, libc::AT_SYMLINK_NOFOLLOW)?;
        if m.is_dir() {
            make_emptiable(fd, &c, &m)?;
            let sub = openat(
                fd,
                &c,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                0,
            )?;
            remove_contents(sub.as_raw_fd())?;
            cvt(unsafe { libc::unlinkat(fd, c.as_ptr(), libc::AT_REMOVEDIR) })?;
        } else {
            cvt(unsafe { libc::unlinkat(fd, c.as_ptr(), 0) })?;
        }
    }
    Ok(())
}

/// Gives the directory `name` in `dir` (described by `m`) owner rwx when
/// this process is not root, owns it and lacks them, so it can be emptied.
fn make_emptiable(dir: RawFd, name: &CStr, m: &Meta) -> io::Result<()> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 && m.uid == euid && m.mode & 0o700 != 0o700 {
        // The entry was a directory an instant ago, in a tree of our own.
        cvt(unsafe { libc::fchmodat(dir, name.as_ptr(), m.mode | 0o700, 0) })?;
    }
    Ok(())
}

/// A caller's path as components; `..` is refused, `.` and empty parts dropped.
fn parts(rel: &Path) -> io::Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for p in rel.as_os_str().as_bytes().split(|b| *b == b'/') {
        match p {
            b"" | b"." => {}
            b".." => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("`..` in a path inside the root: {}", rel.display()),
                ))
            }
            _ => out.push(p.to_vec()),
        }
    }
    Ok(out)
}

pub(crate) static TEMP: AtomicU64 = AtomicU64::new(0);

fn temp_name(name: &[u8]) -> io::Result<CString> {
    let mut t = b".kiln-".to_vec();
    t.extend_from_slice(&name[..name.len().min(100)]);
    t.extend_from_slice(
        format!(
            ".{}.{}",
            std::process::id(),
            TEMP.fetch_add(1, Ordering::Relaxed)
        )
        .as_bytes(),
    );
    cstring(&t)
}

/// A directory inside a root, held by an fd: operations on a name in it act
/// on that directory entry and never follow a link in the name, whatever
/// happens to the path that led here meanwhile. For writers that place many
/// entries (the package unpacker): the walk to the directory is done once.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
}

impl Dir {
    fn name(name: &std::ffi::OsStr) -> io::Result<CString> {
        let b = name.as_bytes();
        if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("not a name in a directory: {}", name.to_string_lossy()),
            ));
        }
        cstring(b)
    }

    /// `lstat` of `name`.
    pub fn lstat(&self, name: &std::ffi::OsStr) -> io::Result<Meta> {
        fstatat(
            self.fd.as_raw_fd(),
            &Dir::name(name)?,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    }

    /// Makes the directory `name` with `mode` (exactly, no umask).
    pub fn mkdir(&self, name: &std::ffi::OsStr, mode: u32) -> io::Result<()> {
        let c = Dir::name(name)?;
        let d = self.fd.as_raw_fd();
        cvt(unsafe { libc::mkdirat(d, c.as_ptr(), 0o700) })?;
        let fd = openat(
            d,
            &c,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )?;
        cvt(unsafe { libc::fchmod(fd.as_raw_fd(), mode) }).map(|_| ())
    }

    /// Removes the non-directory `name` (a link itself).
    pub fn remove(&self, name: &std::ffi::OsStr) -> io::Result<()> {
        let c = Dir::name(name)?;
        cvt(unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) }).map(|_| ())
    }

    /// A new file under a temporary name of its own (never through a link:
    /// `O_EXCL|O_NOFOLLOW`), to fill and then [`Dir::commit`].
    pub fn create_temp(&self) -> io::Result<(TempEntry, std::fs::File)> {
        let (tmp, fd) = fresh(b"new", |tmp| {
            openat(
                self.fd.as_raw_fd(),
                tmp,
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
                0o600,
            )
        })?;
        Ok((TempEntry(tmp), std::fs::File::from(fd)))
    }

    /// A symlink to `target` under a temporary name, to [`Dir::commit`].
    pub fn symlink_temp(&self, target: &Path) -> io::Result<TempEntry> {
        let t = cstring(target.as_os_str().as_bytes())?;
        let (tmp, _) = fresh(b"link", |tmp| {
            cvt(unsafe { libc::symlinkat(t.as_ptr(), self.fd.as_raw_fd(), tmp.as_ptr()) })
        })?;
        Ok(TempEntry(tmp))
    }

    /// A hard link to `src` (a path in `root`, its last component not
    /// followed) under a temporary name, to [`Dir::commit`].
    pub fn hard_link_temp(&self, root: &Root, src: &Path) -> io::Result<TempEntry> {
        let (sdir, sname) = root.locate(src, false, None)?;
        let (tmp, _) = fresh(b"hard", |tmp| {
            cvt(unsafe {
                libc::linkat(
                    sdir.as_raw_fd(),
                    sname.as_ptr(),
                    self.fd.as_raw_fd(),
                    tmp.as_ptr(),
                    0,
                )
            })
        })?;
        Ok(TempEntry(tmp))
    }

    /// Moves Kiln's own host file `path` (a staged file) in as a temporary
    /// entry, to [`Dir::commit`].
    pub fn adopt_temp(&self, path: &Path) -> io::Result<TempEntry> {
        let from = cstring(path.as_os_str().as_bytes())?;
        let tmp = temp_name(b"staged")?;
        cvt(unsafe {
            libc::renameat(
                libc::AT_FDCWD,
                from.as_ptr(),
                self.fd.as_raw_fd(),
                tmp.as_ptr(),
            )
        })?;
        Ok(TempEntry(tmp))
    }

    /// `lchown` of a temporary entry (a link itself). Without privileges
    /// ownership cannot be kept (a distroless build as a user): not an error.
    pub fn lchown_temp(&self, t: &TempEntry, uid: u32, gid: u32) -> io::Result<()> {
        let d = self.fd.as_raw_fd();
        match cvt(unsafe { libc::fchownat(d, t.0.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) }) {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => Ok(()),
            r => r.map(|_| ()),
        }
    }

    /// Renames the temporary entry over `name` (atomically replacing a
    /// non-directory there); on failure the temporary entry is removed.
    pub fn commit(&self, t: TempEntry, name: &std::ffi::OsStr) -> io::Result<()> {
        let d = self.fd.as_raw_fd();
        let r = Dir::name(name).and_then(|c| {
            cvt(unsafe { libc::renameat(d, t.0.as_ptr(), d, c.as_ptr()) }).map(|_| ())
        });
        if r.is_err() {
            self.discard(t);
        }
        r
    }

    /// Removes a temporary entry that will not be committed.
    pub fn discard(&self, t: TempEntry) {
        unsafe { libc::unlinkat(self.fd.as_raw_fd(), t.0.as_ptr(), 0) };
    }
}

/// Makes an entry under a fresh temporary name with `make`, trying the
/// next name when one is taken (a package may have shipped a file or link
/// under the name Kiln would pick; it is left alone, never written through).
fn fresh<T>(
    stem: &[u8],
    mut make: impl FnMut(&CString) -> io::Result<T>,
) -> io::Result<(CString, T)> {
    let mut tries = 0;
    loop {
        let tmp = temp_name(stem)?;
        match make(&tmp) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 1000 => tries += 1,
            r => return r.map(|v| (tmp, v)),
        }
    }
}

/// A temporary entry in a [`Dir`], not yet renamed to its name.
#[derive(Debug)]
pub struct TempEntry(CString);

impl Root {
    /// Opens the root directory `path` (a path Kiln chose, trusted).
    pub fn open(path: &Path) -> io::Result<Root> {
        let c = cstring(path.as_os_str().as_bytes())?;
        let fd = openat(libc::AT_FDCWD, &c, libc::O_PATH | libc::O_DIRECTORY, 0)?;
        Ok(Root {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The host path the root was opened from (for messages and for tools
    /// that confine themselves, such as a chroot).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Resolves `rel` to the directory holding its last component and that
    /// component's name (`.` when `rel` resolves to a directory itself, such
    /// as the root). Links in the last component are resolved too when
    /// `follow_last`, so the name returned is then not a link (or absent).
    /// Missing directories on the way are made with `create` as mode.
    fn locate(
        &self,
        rel: &Path,
        follow_last: bool,
        create: Option<u32>,
    ) -> io::Result<(OwnedFd, CString)> {
        let mut todo = parts(rel)?;
        todo.reverse();
        let mut stack: Vec<OwnedFd> = Vec::new();
        let mut links = 0;
        let take = |stack: &mut Vec<OwnedFd>| match stack.pop() {
            Some(f) => Ok(f),
            None => self.fd.try_clone(),
        };
        while let Some(c) = todo.pop() {
            match &c[..] {
                b"" | b"." => continue,
                b".." => {
                    stack.pop();
                    continue;
                }
                _ => {}
            }
            let last = todo.iter().all(|t| t.is_empty() || t == b".");
            let cur = stack
                .last()
                .map(|f| f.as_raw_fd())
                .unwrap_or(self.fd.as_raw_fd());
            let name = cstring(&c)?;
            if last && !follow_last {
                return Ok((take(&mut stack)?, name));
            }
            match fstatat(cur, &name, libc::AT_SYMLINK_NOFOLLOW) {
                Ok(m) if m.is_symlink() => {
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(os_err(libc::ELOOP));
                    }
                    let target = readlinkat(cur, &name)?;
                    if target.starts_with(b"/") {
                        stack.clear();
                    }
                    for p in target.split(|b| *b == b'/').rev() {
                        todo.push(p.to_vec());
                    }
                }
                Ok(_) if last => return Ok((take(&mut stack)?, name)),
                Ok(m) if m.is_dir() => {
                    let fd = openat(
                        cur,
                        &name,
                        libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                        0,
                    )?;
                    stack.push(fd);
                }
                Ok(_) => return Err(os_err(libc::ENOTDIR)),
                Err(e) if e.kind() == io::ErrorKind::NotFound && last => {
                    return Ok((take(&mut stack)?, name));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && create.is_some() => {
                    let mode = create.unwrap_or(0o755);
                    match cvt(unsafe { libc::mkdirat(cur, name.as_ptr(), mode) }) {
                        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
                        _ => {}
                    }
                    // Look again: what is there now is walked like anything else.
                    todo.push(c);
                }
                Err(e) => return Err(e),
            }
        }
        Ok((take(&mut stack)?, cstring(b".")?))
    }

    /// Opens `rel` (links followed inside the root) with `flags`.
    fn open_in(&self, rel: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
        let (dir, name) = self.locate(rel, true, None)?;
        openat(dir.as_raw_fd(), &name, flags | libc::O_NOFOLLOW, 0)
    }

    /// The contents of the file `rel`; links are followed inside the root.
    pub fn read(&self, rel: impl AsRef<Path>) -> io::Result<Vec<u8>> {
        use std::io::Read;
        let fd = self.open_in(rel.as_ref(), libc::O_RDONLY | libc::O_NONBLOCK)?;
        if !fstat(fd.as_raw_fd())?.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a regular file", rel.as_ref().display()),
            ));
        }
        let mut out = Vec::new();
        std::fs::File::from(fd).read_to_end(&mut out)?;
        Ok(out)
    }

    /// Opens the regular file `rel` for reading; links are followed inside
    /// the root. Anything else (a directory, a FIFO, a device) is refused.
    pub fn open_file(&self, rel: impl AsRef<Path>) -> io::Result<std::fs::File> {
        let fd = self.open_in(rel.as_ref(), libc::O_RDONLY | libc::O_NONBLOCK)?;
        if !fstat(fd.as_raw_fd())?.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a regular file", rel.as_ref().display()),
            ));
        }
        Ok(std::fs::File::from(fd))
    }

    pub fn read_to_string(&self, rel: impl AsRef<Path>) -> io::Result<String> {
        String::from_utf8(self.read(rel)?)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// `stat`: what `rel` names, links followed inside the root.
    pub fn stat(&self, rel: impl AsRef<Path>) -> io::Result<Meta> {
        let (dir, name) = self.locate(rel.as_ref(), true, None)?;
        fstatat(dir.as_raw_fd(), &name, libc::AT_SYMLINK_NOFOLLOW)
    }

    /// `lstat`: what `rel` names, a link in the last component not followed.
    pub fn metadata(&self, rel: impl AsRef<Path>) -> io::Result<Meta> {
        let (dir, name) = self.locate(rel.as_ref(), false, None)?;
        fstatat(dir.as_raw_fd(), &name, libc::AT_SYMLINK_NOFOLLOW)
    }

    /// Whether `rel` exists, links followed inside the root (so a link that
    /// points outside the root, or nowhere, does not exist).
    pub fn exists(&self, rel: impl AsRef<Path>) -> bool {
        self.stat(rel).is_ok()
    }

    pub fn is_dir(&self, rel: impl AsRef<Path>) -> bool {
        self.stat(rel).is_ok_and(|m| m.is_dir())
    }

    pub fn is_file(&self, rel: impl AsRef<Path>) -> bool {
        self.stat(rel).is_ok_and(|m| m.is_file())
    }

    /// The target of the link `rel`, as written in the link.
    pub fn read_link(&self, rel: impl AsRef<Path>) -> io::Result<PathBuf> {
        let (dir, name) = self.locate(rel.as_ref(), false, None)?;
        Ok(PathBuf::from(OsString::from_vec(readlinkat(
            dir.as_raw_fd(),
            &name,
        )?)))
    }

    /// The entries of the directory `rel` (links followed inside the root),
    /// sorted by name, with their `lstat` kind.
    pub fn read_dir(&self, rel: impl AsRef<Path>) -> io::Result<Vec<(OsString, Kind)>> {
        let fd = self.open_in(rel.as_ref(), libc::O_RDONLY | libc::O_DIRECTORY)?;
        let mut out = Vec::new();
        for name in list(fd.as_raw_fd())? {
            let c = cstring(name.as_bytes())?;
            let kind = fstatat(fd.as_raw_fd(), &c, libc::AT_SYMLINK_NOFOLLOW)?.kind;
            out.push((name, kind));
        }
        Ok(out)
    }

    /// Writes `bytes` to `rel` with `mode` (exactly, no umask), atomically:
    /// a temporary file beside it, then `renameat`. A link at `rel` is
    /// replaced, never written through; parent directories are resolved
    /// inside the root and made (0755) where missing.
    pub fn write(&self, rel: impl AsRef<Path>, bytes: &[u8], mode: u32) -> io::Result<()> {
        self.write_with(rel.as_ref(), mode, &mut |f| {
            use std::io::Write;
            f.write_all(bytes)
        })
    }

    /// Writes `rel` with `mode` from what `fill` writes into a temporary
    /// file beside it, renamed into place only when `fill` succeeds (so a
    /// failed or interrupted write leaves no partial file at `rel`). A link
    /// at `rel` is replaced, never written through.
    pub fn write_with(
        &self,
        rel: &Path,
        mode: u32,
        fill: &mut dyn FnMut(&mut std::fs::File) -> io::Result<()>,
    ) -> io::Result<()> {
        let (dir, name) = self.locate(rel, false, Some(0o755))?;
        let d = dir.as_raw_fd();
        if name.as_bytes() == b"." {
            return Err(os_err(libc::EISDIR));
        }
        if fstatat(d, &name, libc::AT_SYMLINK_NOFOLLOW).is_ok_and(|m| m.is_dir()) {
            return Err(os_err(libc::EISDIR));
        }
        let tmp = temp_name(name.as_bytes())?;
        let fd = openat(
            d,
            &tmp,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
            0o600,
        )?;
        let mut f = std::fs::File::from(fd);
        let done = fill(&mut f)
            .and_then(|_| cvt(unsafe { libc::fchmod(f.as_raw_fd(), mode) }).map(|_| ()))
            .and_then(|_| {
                cvt(unsafe { libc::renameat(d, tmp.as_ptr(), d, name.as_ptr()) }).map(|_| ())
            });
        if done.is_err() {
            unsafe { libc::unlinkat(d, tmp.as_ptr(), 0) };
        }
        done
    }

    /// Puts the host file `src` (Kiln's own, e.g. a cached `.deb`) at `rel`:
    /// a hard link where possible, else a copy with `mode`. Like [`Root::write`],
    /// a link at `rel` is replaced.
    pub fn copy_in(&self, src: &Path, rel: impl AsRef<Path>, mode: u32) -> io::Result<()> {
        let rel = rel.as_ref();
        let (dir, name) = self.locate(rel, false, Some(0o755))?;
        let csrc = cstring(src.as_os_str().as_bytes())?;
        let tmp = temp_name(name.as_bytes())?;
        let d = dir.as_raw_fd();
        if cvt(unsafe { libc::linkat(libc::AT_FDCWD, csrc.as_ptr(), d, tmp.as_ptr(), 0) }).is_ok() {
            let r = cvt(unsafe { libc::renameat(d, tmp.as_ptr(), d, name.as_ptr()) });
            if r.is_err() {
                unsafe { libc::unlinkat(d, tmp.as_ptr(), 0) };
            }
            return r.map(|_| ());
        }
        let mut input = std::fs::File::open(src)?;
        self.write_with(rel, mode, &mut |f| io::copy(&mut input, f).map(|_| ()))
    }

    /// The directory `rel` as a [`Dir`], made with its missing parents
    /// (`mode`, less the umask) like [`Root::create_dir_all`]; links on the
    /// way, the last one included, are followed inside the root.
    pub fn dir(&self, rel: impl AsRef<Path>, mode: u32) -> io::Result<Dir> {
        let rel = rel.as_ref();
        if parts(rel)?.is_empty() {
            return Ok(Dir {
                fd: self.fd.try_clone()?,
            });
        }
        // One walk: the last component made if missing, then opened without
        // following (a non-directory there fails ENOTDIR or ELOOP).
        let (dir, name) = self.locate(rel, true, Some(mode))?;
        match cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) }) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        let fd = openat(
            dir.as_raw_fd(),
            &name,
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )?;
        Ok(Dir { fd })
    }

    /// Makes the directory `rel` and its missing parents with `mode` (less
    /// the umask, as mkdir does). Links on the way, the last one included,
    /// are followed inside the root; a non-directory in the way is an error.
    pub fn create_dir_all(&self, rel: impl AsRef<Path>, mode: u32) -> io::Result<()> {
        let (dir, name) = self.locate(rel.as_ref(), true, Some(mode))?;
        match cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) }) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if fstatat(dir.as_raw_fd(), &name, libc::AT_SYMLINK_NOFOLLOW)?.is_dir() {
                    Ok(())
                } else {
                    Err(os_err(libc::ENOTDIR))
                }
            }
            r => r.map(|_| ()),
        }
    }

    /// Makes `rel` a real directory with exactly `mode`: a link there is
    /// replaced by a directory (for paths such as `/tmp` and `/root` whose
    /// modes Kiln sets), a missing one made; any other file is an error.
    pub fn ensure_dir(&self, rel: impl AsRef<Path>, mode: u32) -> io::Result<()> {
        let (dir, name) = self.locate(rel.as_ref(), false, Some(0o755))?;
        let d = dir.as_raw_fd();
        match fstatat(d, &name, libc::AT_SYMLINK_NOFOLLOW) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.is_symlink() => {
                cvt(unsafe { libc::unlinkat(d, name.as_ptr(), 0) })?;
                cvt(unsafe { libc::mkdirat(d, name.as_ptr(), 0o700) })?;
            }
            Ok(_) => return Err(os_err(libc::ENOTDIR)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                cvt(unsafe { libc::mkdirat(d, name.as_ptr(), 0o700) })?;
            }
            Err(e) => return Err(e),
        }
        let fd = openat(
            d,
            &name,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
        )?;
        cvt(unsafe { libc::fchmod(fd.as_raw_fd(), mode) }).map(|_| ())
    }

    /// `fchmod` of `rel` through an fd opened in the root; a link at `rel`
    /// is refused (ELOOP), never followed.
    pub fn set_mode(&self, rel: impl AsRef<Path>, mode: u32) -> io::Result<()> {
        let (dir, name) = self.locate(rel.as_ref(), false, None)?;
        let fd = openat(
            dir.as_raw_fd(),
            &name,
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY,
            0,
        )?;
        cvt(unsafe { libc::fchmod(fd.as_raw_fd(), mode) }).map(|_| ())
    }

    /// `lchown` of `rel`: a link there is changed itself, not its target.
    pub fn set_owner(&self, rel: impl AsRef<Path>, uid: u32, gid: u32) -> io::Result<()> {
        let (dir, name) = self.locate(rel.as_ref(), false, None)?;
        cvt(unsafe {
            libc::fchownat(
                dir.as_raw_fd(),
                name.as_ptr(),
                uid,
                gid,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })
        .map(|_| ())
    }

    /// Truncates the regular file `rel` to zero length; a link there is
    /// refused (ELOOP), never followed.
    pub fn truncate(&self, rel: impl AsRef<Path>) -> io::Result<()> {
        let (dir, name) = self.locate(rel.as_ref(), false, None)?;
        let fd = openat(
            dir.as_raw_fd(),
            &name,
            libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY,
            0,
        )?;
        if !fstat(fd.as_raw_fd())?.is_file() {
            return Err(os_err(libc::EINVAL));
        }
        cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), 0) }).map(|_| ())
    }

    /// Makes `rel` a symlink to `target` (written as given), replacing
    /// whatever non-directory is there (atomically, by `renameat`).
    pub fn symlink(&self, target: impl AsRef<Path>, rel: impl AsRef<Path>) -> io::Result<()> {
        let (dir, name) = self.locate(rel.as_ref(), false, Some(0o755))?;
        let d = dir.as_raw_fd();
        if name.as_bytes() == b"."
            || fstatat(d, &name, libc::AT_SYMLINK_NOFOLLOW).is_ok_and(|m| m.is_dir())
        {
            return Err(os_err(libc::EISDIR));
        }
        let t = cstring(target.as_ref().as_os_str().as_bytes())?;
        let tmp = temp_name(name.as_bytes())?;
        cvt(unsafe { libc::symlinkat(t.as_ptr(), d, tmp.as_ptr()) })?;
        let r = cvt(unsafe { libc::renameat(d, tmp.as_ptr(), d, name.as_ptr()) });
        if r.is_err() {
            unsafe { libc::unlinkat(d, tmp.as_ptr(), 0) };
        }
        r.map(|_| ())
    }

    /// Removes the non-directory `rel` (a link itself, never its target).
    pub fn remove_file(&self, rel: impl AsRef<Path>) -> io::Result<()> {
        let (dir, name) = self.locate(rel.as_ref(), false, None)?;
        cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) }).map(|_| ())
    }

    /// Removes the empty directory `rel`.
    pub fn remove_dir(&self, rel: impl AsRef<Path>) -> io::Result<()> {
        let (dir, name) = self.locate(rel.as_ref(), false, None)?;
        cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), libc::AT_REMOVEDIR) })
            .map(|_| ())
    }

    /// Removes `rel` and everything below it. No link is followed: a link
    /// at `rel` or inside the tree is removed itself.
    pub fn remove_tree(&self, rel: impl AsRef<Path>) -> io::Result<()> {
        let (dir, name) = self.locate(rel.as_ref(), false, None)?;
        let d = dir.as_raw_fd();
        if name.as_bytes() == b"." {
            return Err(os_err(libc::EINVAL));
        }
        let m = fstatat(d, &name, libc::AT_SYMLINK_NOFOLLOW)?;
        if m.is_dir() {
            make_emptiable(d, &name, &m)?;
            let sub = openat(
                d,
                &name,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                0,
            )?;
            remove_contents(sub.as_raw_fd())?;
            cvt(unsafe { libc::unlinkat(d, name.as_ptr(), libc::AT_REMOVEDIR) })?;
        } else {
            cvt(unsafe { libc::unlinkat(d, name.as_ptr(), 0) })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    /// A root whose paths are links to a victim directory outside it, and
    /// that victim's files with their bytes and modes.
    struct Hostile {
        _dir: tempfile::TempDir,
        root: PathBuf,
        victim: PathBuf,
    }

    impl Hostile {
        fn new() -> Hostile {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("root");
            let victim = dir.path().join("victim");
            std::fs::create_dir_all(victim.join("sub")).unwrap();
            std::fs::write(victim.join("secret"), b"host secret\n").unwrap();
            std::fs::write(victim.join("sub/f"), b"host file\n").unwrap();
            std::fs::set_permissions(victim.join("secret"), PermissionsExt::from_mode(0o600))
                .unwrap();
            std::fs::set_permissions(victim.join("sub"), PermissionsExt::from_mode(0o750)).unwrap();
            for d in ["etc", "var/cache", "usr/share/doc/p", "a/b"] {
                std::fs::create_dir_all(root.join(d)).unwrap();
            }
            let v = victim.display().to_string();
            // Absolute links, relative links climbing out, dangling ones.
            for (at, to) in [
                ("etc/passwd", format!("{v}/secret")),
                ("etc/group", "../../victim/secret".to_string()),
                ("etc/fstab", format!("{v}/new-file")),
                ("var/cache/apt", format!("{v}/sub")),
                ("tmp", v.clone()),
                ("usr/share/doc/p/copyright", format!("{v}/secret")),
                ("a/b/up", "../../../../../../victim".to_string()),
                ("out", v.clone()),
            ] {
                symlink(to, root.join(at)).unwrap();
            }
            Hostile {
                _dir: dir,
                root,
                victim,
            }
        }

        /// Every path below the victim with its bytes and mode.
        fn snapshot(&self) -> Vec<(PathBuf, u32, Vec<u8>)> {
            fn walk(p: &Path, out: &mut Vec<(PathBuf, u32, Vec<u8>)>) {
                let m = std::fs::symlink_metadata(p).unwrap();
                let bytes = if m.is_file() {
                    std::fs::read(p).unwrap()
                } else {
                    Vec::new()
                };
                out.push((p.to_path_buf(), m.permissions().mode(), bytes));
                if m.is_dir() {
                    let mut names: Vec<_> = std::fs::read_dir(p)
                        .unwrap()
                        .map(|e| e.unwrap().path())
                        .collect();
                    names.sort();
                    for n in names {
                        walk(&n, out);
                    }
                }
            }
            let mut out = Vec::new();
            walk(&self.victim, &mut out);
            out
        }
    }

    #[test]
    fn no_operation_reaches_the_victim_through_planted_links() {
        let h = Hostile::new();
        let before = h.snapshot();
        let r = Root::open(&h.root).unwrap();
        // Reads resolve inside the root: the victim is not there.
        assert!(r.read("etc/passwd").is_err());
        assert!(r.read("usr/share/doc/p/copyright").is_err());
        assert!(r.read("a/b/up/secret").is_err());
        assert!(r.read("out/sub/f").is_err());
        assert!(!r.exists("etc/passwd"));
        assert!(r.read_dir("var/cache/apt").is_err());
        assert!(r.read_dir("tmp").is_err());
        // A link replaced by a real directory (the victim's path starts
        // with /tmp, so this also ends the loop tmp -> /tmp/... -> ...).
        r.ensure_dir("tmp", 0o1777).unwrap();
        let tmp = std::fs::symlink_metadata(h.root.join("tmp")).unwrap();
        assert!(tmp.is_dir());
        assert_eq!(tmp.permissions().mode() & 0o7777, 0o1777);
        // Writes replace the links.
        r.write("etc/passwd", b"root:x:0:0::/root:/bin/sh\n", 0o644)
            .unwrap();
        r.write("etc/group", b"root:x:0:\n", 0o644).unwrap();
        r.write("etc/fstab", b"# fstab\n", 0o644).unwrap();
        r.write("out/sub/f", b"in the root\n", 0o644).unwrap();
        r.write("a/b/up/secret", b"in the root\n", 0o644).unwrap();
        assert_eq!(
            r.read("etc/passwd").unwrap(),
            b"root:x:0:0::/root:/bin/sh\n"
        );
        assert!(std::fs::symlink_metadata(h.root.join("etc/passwd"))
            .unwrap()
            .is_file());
        // What the links pointed at was made inside the root instead.
        assert_eq!(
            std::fs::read(
                h.root
                    .join(h.victim.strip_prefix("/").unwrap())
                    .join("sub/f")
            )
            .unwrap(),
            b"in the root\n"
        );
        assert_eq!(
            std::fs::read(h.root.join("victim/secret")).unwrap(),
            b"in the root\n"
        );
        // Directory operations.
        assert!(r.set_mode("var/cache/apt", 0o777).is_err());
        assert!(r.truncate("usr/share/doc/p/copyright").is_err());
        r.set_owner("var/cache/apt", 0, 0).ok();
        r.create_dir_all("var/cache/apt/archives/partial", 0o755)
            .unwrap();
        r.remove_tree("var/cache/apt").unwrap();
        assert!(std::fs::symlink_metadata(h.root.join("var/cache/apt")).is_err());
        r.create_dir_all("out/x", 0o755).unwrap();
        r.remove_tree("out").unwrap();
        r.symlink("/usr/share/zoneinfo/UTC", "usr/share/doc/p/copyright")
            .unwrap();
        r.remove_file("a/b/up").unwrap();
        r.remove_tree("").unwrap_err();
        assert!(r.read("../victim/secret").is_err());
        assert_eq!(before, h.snapshot(), "the victim changed");
    }

    #[test]
    fn links_resolve_inside_the_root_like_a_chroot() {
        let d = tempfile::tempdir().unwrap();
        let r = Root::open(d.path()).unwrap();
        r.create_dir_all("usr/lib/x", 0o755).unwrap();
        r.symlink("usr/lib", "lib").unwrap();
        r.write("lib/x/a", b"a", 0o640).unwrap();
        assert_eq!(std::fs::read(d.path().join("usr/lib/x/a")).unwrap(), b"a");
        assert_eq!(r.metadata("usr/lib/x/a").unwrap().mode, 0o640);
        r.symlink("/usr/lib/x/a", "usr/abs").unwrap();
        r.symlink("../../../../usr/lib/x/a", "usr/rel").unwrap();
        assert_eq!(r.read("usr/abs").unwrap(), b"a");
        assert_eq!(r.read("usr/rel").unwrap(), b"a");
        assert!(r.metadata("usr/abs").unwrap().is_symlink());
        assert!(r.stat("usr/abs").unwrap().is_file());
        r.symlink("loop", "loop").unwrap();
        assert_eq!(
            r.read("loop").unwrap_err().raw_os_error(),
            Some(libc::ELOOP)
        );
        let names: Vec<_> = r.read_dir("lib").unwrap();
        assert_eq!(names, vec![(OsString::from("x"), Kind::Dir)]);
        r.write("usr/abs", b"b", 0o644).unwrap();
        assert_eq!(std::fs::read(d.path().join("usr/lib/x/a")).unwrap(), b"a");
        assert!(r.write("usr/lib", b"", 0o644).is_err());
        r.remove_tree("usr").unwrap();
        let left: Vec<_> = r
            .read_dir("")
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(left, ["lib", "loop"]);
    }
}
