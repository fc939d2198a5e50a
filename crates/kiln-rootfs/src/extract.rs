//! Unpacking a package's data tarball into a root directory, safely.
//!
//! Paths are resolved the way the kernel would resolve them inside a chroot
//! of the root: `..` never climbs above it and symlinks (absolute or
//! relative) are followed relative to it. So no archive member can write
//! outside the root, whatever links earlier members or packages created.
//!
//! What a package may unpack is bounded ([`Limits`]): its file bytes by its
//! declared `Installed-Size`, counted as they are written (a decompression
//! bomb is stopped before it lands), its number of members, the length of
//! its names and the size of the headers between two members (long names
//! and extended attributes, which the tar reader keeps in memory).

use std::cell::Cell;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use crate::inroot::{Dir, Root};
use kiln_model::human_size;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A package may unpack this many times its declared `Installed-Size` …
pub const FACTOR: u64 = 4;
/// … plus this much (packages declaring a few KiB, rounding, tools that
/// compute the field differently) …
pub const SLACK: u64 = 64 << 20;
/// … and never more than this, whatever it declares.
pub const MAX_PACKAGE_BYTES: u64 = 16 << 30;
/// At most one member per KiB of the byte limit (dpkg counts at least 1 KiB
/// for every directory, link and non-empty file), and never more than this.
pub const MAX_MEMBERS: u64 = 1_000_000;
/// The longest member name or link target (the kernel's `PATH_MAX` less the NUL).
pub const MAX_PATH: usize = 4095;
/// The longest path component (`NAME_MAX`).
pub const MAX_NAME: usize = 255;
/// Headers (long names, extended attributes) between two members.
pub const MAX_HEADERS: u64 = 1 << 20;
/// Replaces the byte limit of every package (e.g. `2G`), for a trusted
/// package whose `Installed-Size` is wrong.
pub const LIMIT_ENV: &str = "KILN_UNPACK_LIMIT";

#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("unsafe path in package: {0}")]
    UnsafePath(String),
    #[error("too many levels of symbolic links resolving {0}")]
    SymlinkLoop(String),
    #[error("cannot replace directory {0} with a non-directory")]
    DirectoryInTheWay(String),
    #[error(
        "refused as a likely decompression bomb: it declares Installed-Size: {} ({}) but unpacks more than {}; stopped after unpacking {} (a package may unpack {})",
        declared / 1024, human_size(*declared), human_size(*limit), human_size(*written), rule(*overridden)
    )]
    TooLarge {
        declared: u64,
        limit: u64,
        written: u64,
        overridden: bool,
    },
    #[error(
        "refused as a likely decompression bomb: it declares Installed-Size: {} ({}) but has more than {limit} members (a package may have one per KiB of {})",
        declared / 1024, human_size(*declared), rule(*overridden)
    )]
    TooManyMembers {
        declared: u64,
        limit: u64,
        overridden: bool,
    },
    #[error("refused: a member's headers (long names, extended attributes) are larger than {} before {after}", human_size(MAX_HEADERS))]
    HeadersTooLarge { after: String },
    #[error(
        "the packages unpack more than the {} of RAM (/dev/shm) set aside for them from their Installed-Size ({} so far)",
        human_size(*room), human_size(*used)
    )]
    RoomExceeded { room: u64, used: u64 },
}

fn io(path: &str, source: std::io::Error) -> ExtractError {
    ExtractError::Io {
        path: path.to_string(),
        source,
    }
}

fn rule(overridden: bool) -> String {
    if overridden {
        format!("what {LIMIT_ENV} says")
    } else {
        format!(
            "{FACTOR} × its Installed-Size + {}, at most {}",
            human_size(SLACK),
            human_size(MAX_PACKAGE_BYTES)
        )
    }
}

/// Parses a size such as `512M`, `2G` or `1000000` (bytes; K, M, G, T are
/// powers of 1024).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, 'k' | 'K') => (&s[..i], 1 << 10),
        (i, 'm' | 'M') => (&s[..i], 1 << 20),
        (i, 'g' | 'G') => (&s[..i], 1 << 30),
        (i, 't' | 'T') => (&s[..i], 1u64 << 40),
        _ => (s, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mult)
}

/// `KILN_UNPACK_LIMIT`, if set: `Err` with the value when it is not a size.
pub fn limit_override() -> Result<Option<u64>, String> {
    match std::env::var(LIMIT_ENV) {
        Ok(v) if !v.trim().is_empty() => parse_size(&v).map(Some).ok_or(v),
        _ => Ok(None),
    }
}

/// Payload room shared by the packages of one build area: the bytes all of
/// them together may write (used when the area is in RAM).
#[derive(Debug)]
pub struct Room {
    limit: u64,
    used: AtomicU64,
}

impl Room {
    pub fn new(limit: u64) -> Room {
        Room {
            limit,
            used: AtomicU64::new(0),
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }

    /// Takes `n` bytes, or fails (taking nothing) when that would go past the limit.
    pub fn take(&self, n: u64) -> Result<(), ExtractError> {
        let mut cur = self.used.load(Ordering::SeqCst);
        loop {
            let next = cur.saturating_add(n);
            if next > self.limit {
                return Err(ExtractError::RoomExceeded {
                    room: self.limit,
                    used: next,
                });
            }
            match self
                .used
                .compare_exchange(cur, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return Ok(()),
                Err(now) => cur = now,
            }
        }
    }
}

/// What one package may unpack.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Its declared `Installed-Size`, in bytes.
    pub declared: u64,
    /// File bytes (members dropped by a filter count too: they are part of
    /// what the package declares).
    pub max_bytes: u64,
    pub max_members: u64,
    /// The byte limit comes from `KILN_UNPACK_LIMIT`.
    pub overridden: bool,
    /// The build area's shared room, charged with the bytes written.
    pub room: Option<Arc<Room>>,
}

impl Limits {
    /// The limits of a package declaring `declared` bytes (`Installed-Size`
    /// × 1024): at most `4 × declared + 64 MiB` file bytes, and never more
    /// than 16 GiB, or `KILN_UNPACK_LIMIT` when that is set; at most one
    /// member per KiB of that, and never more than 1 000 000.
    pub fn for_package(declared: u64) -> Limits {
        let rule = declared
            .saturating_mul(FACTOR)
            .saturating_add(SLACK)
            .min(MAX_PACKAGE_BYTES);
        let over = limit_override().ok().flatten();
        Self::with_max_bytes(declared, over.unwrap_or(rule), over.is_some())
    }

    fn with_max_bytes(declared: u64, max_bytes: u64, overridden: bool) -> Limits {
        Limits {
            declared,
            max_bytes,
            max_members: (max_bytes / 1024).clamp(1, MAX_MEMBERS),
            overridden,
            room: None,
        }
    }

    /// Charges the bytes written to `room` as well.
    pub fn in_room(mut self, room: Option<Arc<Room>>) -> Limits {
        self.room = room;
        self
    }
}

/// Counts a package's bytes against its limits.
struct Meter<'a> {
    limits: &'a Limits,
    /// File bytes of the package so far, written or dropped.
    counted: u64,
    /// Bytes written.
    written: u64,
    members: u64,
    /// The copy buffer.
    buf: Vec<u8>,
}

impl<'a> Meter<'a> {
    fn new(limits: &'a Limits) -> Meter<'a> {
        Meter {
            limits,
            counted: 0,
            written: 0,
            members: 0,
            buf: Vec::new(),
        }
    }

    fn count(&mut self, n: u64) -> Result<(), ExtractError> {
        let next = self.counted.saturating_add(n);
        if next > self.limits.max_bytes {
            return Err(ExtractError::TooLarge {
                declared: self.limits.declared,
                limit: self.limits.max_bytes,
                written: self.written,
                overridden: self.limits.overridden,
            });
        }
        self.counted = next;
        Ok(())
    }

    /// Bytes about to be written: refused before they are.
    fn write(&mut self, n: u64) -> Result<(), ExtractError> {
        self.count(n)?;
        if let Some(room) = &self.limits.room {
            room.take(n)?;
        }
        self.written += n;
        Ok(())
    }

    fn member(&mut self) -> Result<(), ExtractError> {
        self.members += 1;
        if self.members > self.limits.max_members {
            return Err(ExtractError::TooManyMembers {
                declared: self.limits.declared,
                limit: self.limits.max_members,
                overridden: self.limits.overridden,
            });
        }
        Ok(())
    }
}

/// Copies an entry's content to `out`, each chunk counted before it is written.
fn copy_counted(
    from: &mut dyn Read,
    out: &mut dyn Write,
    meter: &mut Meter,
    shown: &str,
) -> Result<(), ExtractError> {
    // One buffer per package, not per file.
    let mut buf = std::mem::take(&mut meter.buf);
    buf.resize(64 << 10, 0);
    let r = copy_with(from, out, meter, shown, &mut buf);
    meter.buf = buf;
    r
}

fn copy_with(
    from: &mut dyn Read,
    out: &mut dyn Write,
    meter: &mut Meter,
    shown: &str,
    buf: &mut [u8],
) -> Result<(), ExtractError> {
    loop {
        let n = match from.read(buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io(shown, e)),
        };
        meter.write(n as u64)?;
        out.write_all(&buf[..n]).map_err(|e| io(shown, e))?;
    }
}

/// The uncompressed tar stream, of which the tar reader may read only so
/// much before it hands over the next member: that member's content and
/// [`MAX_HEADERS`] of headers. Long names and extended attributes are kept
/// in memory by the tar reader; this bounds them.
struct Guarded<'a, R> {
    inner: R,
    left: &'a Cell<u64>,
    tripped: &'a Cell<bool>,
}

impl<R: Read> Read for Guarded<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.left.get();
        if left == 0 {
            self.tripped.set(true);
            return Err(std::io::Error::other("headers too large"));
        }
        let want = (buf.len() as u64).min(left) as usize;
        let n = self.inner.read(&mut buf[..want])?;
        self.left.set(left - n as u64);
        Ok(n)
    }
}

/// One archive member, checked, to be placed in a root.
#[derive(Debug)]
pub struct Member {
    comps: Vec<String>,
    /// `/usr/bin/x`, as dpkg lists it.
    shown: String,
    kind: tar::EntryType,
    header: tar::Header,
    link: Option<PathBuf>,
    /// Where a regular file's content was staged.
    staged: Option<PathBuf>,
}

/// What becomes of a regular file's content.
enum Content<'a, 'b> {
    /// Read from the archive now, counted.
    Stream(&'a mut dyn Read, &'a mut Meter<'b>),
    /// Already written (and counted) to this file.
    Staged(&'a Path),
}

/// What is done with each member: its content is read from the archive
/// and counted with the meter.
type EachMember<'m> = dyn FnMut(Member, &mut dyn Read, &mut Meter) -> Result<(), ExtractError> + 'm;

/// Reads every member of the tar stream `data`, checking limits and names,
/// and hands each member kept by `keep` to `each` with its content.
fn for_each_member<R: Read>(
    data: R,
    limits: &Limits,
    keep: &dyn Fn(&str) -> bool,
    each: &mut EachMember,
) -> Result<u64, ExtractError> {
    let left = Cell::new(MAX_HEADERS);
    let tripped = Cell::new(false);
    let mut archive = tar::Archive::new(Guarded {
        inner: data,
        left: &left,
        tripped: &tripped,
    });
    let mut meter = Meter::new(limits);
    let mut last = String::from("the first member");
    let entries = archive.entries().map_err(|e| io("data.tar", e))?;
    for entry in entries {
        let mut entry = match entry {
            Ok(e) => e,
            Err(_) if tripped.get() => return Err(ExtractError::HeadersTooLarge { after: last }),
            Err(e) => return Err(io("data.tar", e)),
        };
        meter.member()?;
        let header = entry.header().clone();
        // This member's content (stored size, or the expanded size of a
        // sparse file), its padding and the next member's headers.
        let stored = header.entry_size().unwrap_or(0).max(entry.size());
        left.set(stored.saturating_add(512 + MAX_HEADERS));
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        check_name(&raw, &name)?;
        let comps = member_components(&name)?;
        let shown = if comps.is_empty() {
            "/.".to_string()
        } else {
            format!("/{}", comps.join("/"))
        };
        last = shown.clone();
        let kind = header.entry_type();
        let link = match kind {
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| ExtractError::UnsafePath(shown.clone()))?
                    .into_owned();
                if target.len() > MAX_PATH {
                    return Err(ExtractError::UnsafePath(format!(
                        "{shown}: link target longer than {MAX_PATH} bytes"
                    )));
                }
                Some(PathBuf::from(
                    <std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(target),
                ))
            }
            _ => None,
        };
        if !comps.is_empty() && !keep(&shown) {
            // Not written, but part of what the package declares.
            meter.count(entry.size())?;
            continue;
        }
        let m = Member {
            comps,
            shown,
            kind,
            header,
            link,
            staged: None,
        };
        each(m, &mut entry, &mut meter)?;
    }
    if tripped.get() {
        return Err(ExtractError::HeadersTooLarge { after: last });
    }
    Ok(meter.written)
}

/// Names the kernel would refuse anyway, refused before anything is made.
fn check_name(raw: &[u8], shown: &str) -> Result<(), ExtractError> {
    let short = || shown.chars().take(100).collect::<String>();
    if raw.len() > MAX_PATH {
        return Err(ExtractError::UnsafePath(format!(
            "{}…: name longer than {MAX_PATH} bytes",
            short()
        )));
    }
    if raw.split(|b| *b == b'/').any(|c| c.len() > MAX_NAME) {
        return Err(ExtractError::UnsafePath(format!(
            "{}: a component longer than {MAX_NAME} bytes",
            short()
        )));
    }
    Ok(())
}

/// Normalizes an archive member name into components below the root.
/// Leading `./` and `/` are dropped; `..` is refused outright.
pub fn member_components(name: &str) -> Result<Vec<String>, ExtractError> {
    let mut out = Vec::new();
    for c in Path::new(name).components() {
        match c {
            Component::Normal(s) => out.push(s.to_string_lossy().into_owned()),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(ExtractError::UnsafePath(name.to_string()))
            }
        }
    }
    Ok(out)
}

/// Unpacks the data tarball `data` (the uncompressed stream) into `root`
/// within `limits`. Returns the paths it installed, in archive order, as
/// dpkg lists them (`/.`, `/usr`, `/usr/bin/x`, …).
pub fn unpack<R: Read>(data: R, root: &Path, limits: &Limits) -> Result<Vec<String>, ExtractError> {
    unpack_filtered(data, root, &|_| true, limits)
}

/// Like [`unpack`], keeping only members for which `keep(path)` is true.
pub fn unpack_filtered<R: Read>(
    data: R,
    root: &Path,
    keep: &dyn Fn(&str) -> bool,
    limits: &Limits,
) -> Result<Vec<String>, ExtractError> {
    let mut listed = Vec::new();
    let mut at = Placer::open(root)?;
    for_each_member(data, limits, keep, &mut |m, content, meter| {
        at.place(&m, Some(Content::Stream(content, meter)))?;
        listed.push(m.shown);
        Ok(())
    })?;
    Ok(listed)
}

/// The file bytes of the data tarball `data` within `limits`, read and
/// counted, nothing written: for packages another tool unpacks.
pub fn measure<R: Read>(data: R, limits: &Limits) -> Result<u64, ExtractError> {
    for_each_member(data, limits, &|_| true, &mut |m, content, meter| {
        if matches!(m.kind, tar::EntryType::Regular | tar::EntryType::Continuous) {
            copy_counted(content, &mut std::io::sink(), meter, &m.shown)?;
        }
        Ok(())
    })
}

/// The owner of each path of a root (relative, without a leading `/`) as
/// a build by root would have left it on disk, where that is not `0:0`.
/// A build without privileges cannot give files away, so its files belong
/// to the user who ran it; the image writers take the owners from here
/// instead (see `kiln_image::TarOptions::owners`), and the image is the
/// same, byte for byte, whoever built it.
pub type Ownership = std::collections::BTreeMap<String, (u32, u32)>;

/// Sets the owner of `rel` in `owners`; `0:0` is the default and not kept.
pub fn set_owner(owners: &mut Ownership, rel: &str, uid: u32, gid: u32) {
    let rel = rel.trim_start_matches("./").trim_matches('/').to_string();
    if (uid, gid) == (0, 0) {
        owners.remove(&rel);
    } else {
        owners.insert(rel, (uid, gid));
    }
}

/// A package read into a staging directory, to be placed in a root later
/// with [`Staged::apply`]: packages can be read (decompressed, counted,
/// written) in parallel and still placed in order.
#[derive(Debug)]
pub struct Staged {
    members: Vec<Member>,
    /// File bytes written to the staging directory.
    pub written: u64,
}

/// Reads the data tarball `data` within `limits`, writing each regular
/// file kept by `keep` to a file of its own in `dir` (made here; on the
/// root's file system, so that placing is a rename).
pub fn stage<R: Read>(
    data: R,
    dir: &Path,
    keep: &dyn Fn(&str) -> bool,
    limits: &Limits,
) -> Result<Staged, ExtractError> {
    std::fs::create_dir_all(dir).map_err(|e| io(&dir.display().to_string(), e))?;
    let mut members = Vec::new();
    let written = for_each_member(data, limits, keep, &mut |mut m, content, meter| {
        if matches!(m.kind, tar::EntryType::Regular | tar::EntryType::Continuous) {
            let file = dir.join(members.len().to_string());
            let mut f = std::fs::File::create(&file).map_err(|e| io(&m.shown, e))?;
            copy_counted(content, &mut f, meter, &m.shown)?;
            m.staged = Some(file);
        }
        members.push(m);
        Ok(())
    })?;
    Ok(Staged { members, written })
}

impl Staged {
    /// Records in `owners` the owner each member gets when the package is
    /// placed by root (see [`Ownership`]): files and symbolic links their
    /// archive owner, hard links their target's; directories are left as
    /// they are (the unpacker makes them without an owner of their own).
    pub fn record_owners(&self, owners: &mut Ownership) {
        for m in &self.members {
            let rel = m.comps.join("/");
            match m.kind {
                tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::Symlink => {
                    let uid = m.header.uid().unwrap_or(0) as u32;
                    let gid = m.header.gid().unwrap_or(0) as u32;
                    set_owner(owners, &rel, uid, gid);
                }
                tar::EntryType::Link => {
                    let target = m
                        .link
                        .as_ref()
                        .and_then(|t| member_components(&t.to_string_lossy()).ok())
                        .map(|c| c.join("/"));
                    let ids = target
                        .and_then(|t| owners.get(&t).copied())
                        .unwrap_or((0, 0));
                    set_owner(owners, &rel, ids.0, ids.1);
                }
                _ => {}
            }
        }
    }

    /// Places the staged package in `root`, as [`unpack`] would have.
    pub fn apply(&self, root: &Path) -> Result<Vec<String>, ExtractError> {
        let mut listed = Vec::new();
        let mut at = Placer::open(root)?;
        for m in &self.members {
            let content = m.staged.as_deref().map(Content::Staged);
            at.place(m, content)?;
            listed.push(m.shown.clone());
        }
        Ok(listed)
    }
}

/// Puts members in a root. Every entry is made through a directory fd
/// resolved inside the root ([`crate::inroot`]) and acted on by name with
/// `*at` calls that never follow a link in that name, so a component that
/// another package (unpacked at the same time) swaps for a link after the
/// walk cannot redirect a write: it lands in the directory that was walked.
struct Placer {
    root: Root,
    /// The last parent directory, by its path in the root: consecutive
    /// members mostly share one.
    last: Option<(String, Dir)>,
}

impl Placer {
    fn open(root: &Path) -> Result<Placer, ExtractError> {
        let root = Root::open(root).map_err(|e| io(&root.display().to_string(), e))?;
        Ok(Placer { root, last: None })
    }

    fn parent(&mut self, rel: &str, shown: &str) -> Result<&Dir, ExtractError> {
        parent_in(&self.root, &mut self.last, rel, shown)
    }

    /// Puts one member in the root: files and links made under a temporary
    /// name beside their destination and renamed over it, as dpkg does.
    fn place(&mut self, m: &Member, content: Option<Content>) -> Result<(), ExtractError> {
        let comps = &m.comps;
        let shown = &m.shown;
        let Some((last, parents)) = comps.split_last() else {
            return Ok(());
        };
        let name = std::ffi::OsStr::new(last.as_str());
        let header = &m.header;
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let uid = header.uid().unwrap_or(0) as u32;
        let gid = header.gid().unwrap_or(0) as u32;
        let parent_rel = parents.join("/");
        let err = |e: std::io::Error| io(shown, e);
        let existing = self.parent(&parent_rel, shown)?.lstat(name).ok();
        match m.kind {
            tar::EntryType::Directory => {
                // An existing directory, or a link to one inside the root
                // (merged /usr: `bin` -> `usr/bin`), stays.
                let is_dir = match existing {
                    Some(e) if e.is_dir() => true,
                    Some(e) if e.is_symlink() => {
                        self.root.stat(comps.join("/")).is_ok_and(|m| m.is_dir())
                    }
                    _ => false,
                };
                if !is_dir {
                    let dir = self.parent(&parent_rel, shown)?;
                    if existing.is_some() {
                        dir.remove(name).map_err(err)?;
                    }
                    match dir.mkdir(name, mode) {
                        Ok(()) => {}
                        // Another package being unpacked at the same time made it.
                        Err(e)
                            if e.kind() == std::io::ErrorKind::AlreadyExists
                                && dir.lstat(name).is_ok_and(|m| m.is_dir()) => {}
                        Err(e) => return Err(err(e)),
                    }
                }
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if existing.is_some_and(|m| m.is_dir()) {
                    return Err(ExtractError::DirectoryInTheWay(shown.clone()));
                }
                let dir = self.parent(&parent_rel, shown)?;
                let tmp = match content {
                    Some(Content::Staged(file)) => {
                        // Kiln's own staging area: owner, then mode (changing
                        // the owner clears set-id bits).
                        chown(file, header, shown)?;
                        std::fs::set_permissions(file, std::fs::Permissions::from_mode(mode))
                            .map_err(err)?;
                        dir.adopt_temp(file).map_err(err)?
                    }
                    Some(Content::Stream(from, meter)) => {
                        let (tmp, mut f) = dir.create_temp().map_err(err)?;
                        let filled = copy_counted(from, &mut f, meter, shown).and_then(|_| {
                            fchown(&f, uid, gid)
                                .and_then(|_| {
                                    f.set_permissions(std::fs::Permissions::from_mode(mode))
                                })
                                .map_err(err)
                        });
                        drop(f);
                        if let Err(e) = filled {
                            dir.discard(tmp);
                            return Err(e);
                        }
                        tmp
                    }
                    None => return Err(err(std::io::Error::other("content was not staged"))),
                };
                dir.commit(tmp, name).map_err(err)?;
            }
            tar::EntryType::Symlink => {
                let target = m
                    .link
                    .as_ref()
                    .ok_or_else(|| ExtractError::UnsafePath(shown.clone()))?;
                if existing.is_some_and(|m| m.is_dir()) {
                    return Err(ExtractError::DirectoryInTheWay(shown.clone()));
                }
                let dir = self.parent(&parent_rel, shown)?;
                let tmp = dir.symlink_temp(target).map_err(err)?;
                if let Err(e) = dir.lchown_temp(&tmp, uid, gid) {
                    dir.discard(tmp);
                    return Err(err(e));
                }
                dir.commit(tmp, name).map_err(err)?;
            }
            tar::EntryType::Link => {
                let target = m
                    .link
                    .as_ref()
                    .ok_or_else(|| ExtractError::UnsafePath(shown.clone()))?;
                let tcomps = member_components(&target.to_string_lossy())?;
                if existing.is_some_and(|m| m.is_dir()) {
                    return Err(ExtractError::DirectoryInTheWay(shown.clone()));
                }
                let src = tcomps.join("/");
                let dir = parent_in(&self.root, &mut self.last, &parent_rel, shown)?;
                let tmp = dir
                    .hard_link_temp(&self.root, Path::new(&src))
                    .map_err(err)?;
                dir.commit(tmp, name).map_err(err)?;
            }
            // Device nodes and FIFOs are not shipped in Debian packages.
            other => {
                return Err(io(
                    shown,
                    std::io::Error::other(format!("unsupported member type {other:?}")),
                ))
            }
        }
        Ok(())
    }
}

/// The directory `rel` of `root`, through the one-entry cache `last`.
fn parent_in<'a>(
    root: &Root,
    last: &'a mut Option<(String, Dir)>,
    rel: &str,
    shown: &str,
) -> Result<&'a Dir, ExtractError> {
    if last.as_ref().map(|(p, _)| p.as_str()) != Some(rel) {
        let d = root.dir(rel, 0o755).map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => ExtractError::SymlinkLoop(shown.to_string()),
            _ => io(shown, e),
        })?;
        *last = Some((rel.to_string(), d));
    }
    Ok(&last.as_ref().expect("just set").1)
}

fn fchown(f: &std::fs::File, uid: u32, gid: u32) -> std::io::Result<()> {
    match std::os::unix::fs::fchown(f, Some(uid), Some(gid)) {
        // Without privileges ownership cannot be kept; dpkg sets it again later.
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Ok(()),
        r => r,
    }
}

fn chown(path: &Path, header: &tar::Header, shown: &str) -> Result<(), ExtractError> {
    let uid = header.uid().unwrap_or(0) as u32;
    let gid = header.gid().unwrap_or(0) as u32;
    match std::os::unix::fs::chown(path, Some(uid), Some(gid)) {
        Ok(()) => Ok(()),
        // Without privileges ownership cannot be kept; dpkg sets it again later.
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Ok(()),
        Err(e) => Err(io(shown, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tarball(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(if *kind == tar::EntryType::Directory {
                0o755
            } else {
                0o644
            });
            match kind {
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    h.set_size(0);
                    b.append_link(&mut h, path, data).unwrap();
                }
                _ => {
                    h.set_size(data.len() as u64);
                    h.set_cksum();
                    b.append_data(&mut h, path, data.as_bytes()).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    fn unpack_into(
        root: &Path,
        entries: &[(&str, tar::EntryType, &str)],
    ) -> Result<Vec<String>, ExtractError> {
        let data = tarball(entries);
        unpack(&data[..], root, &Limits::for_package(0))
    }

    use tar::EntryType::{Directory as D, Link as H, Regular as F, Symlink as L};

    #[test]
    fn unpacks_files_links_and_lists_them() {
        let d = tempfile::tempdir().unwrap();
        let listed = unpack_into(
            d.path(),
            &[
                ("./", D, ""),
                ("./usr/", D, ""),
                ("./usr/bin/", D, ""),
                ("./usr/bin/a", F, "A"),
                ("./usr/bin/b", L, "a"),
                ("./usr/bin/c", H, "./usr/bin/a"),
            ],
        )
        .unwrap();
        assert_eq!(
            listed,
            [
                "/.",
                "/usr",
                "/usr/bin",
                "/usr/bin/a",
                "/usr/bin/b",
                "/usr/bin/c"
            ]
        );
        assert_eq!(
            std::fs::read_to_string(d.path().join("usr/bin/b")).unwrap(),
            "A"
        );
        assert_eq!(
            std::fs::read_to_string(d.path().join("usr/bin/c")).unwrap(),
            "A"
        );
    }

    #[test]
    fn dot_dot_members_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let inner = d.path().join("root");
        std::fs::create_dir(&inner).unwrap();
        // The tar crate refuses to *write* such names, so build the header by hand.
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..13].copy_from_slice(b"../escaped.tx");
        h.set_size(1);
        h.set_entry_type(F);
        h.set_cksum();
        let mut data = h.as_bytes().to_vec();
        data.extend_from_slice(&[b'x'; 512]);
        data.extend_from_slice(&[0; 1024]);
        let e = unpack(&data[..], &inner, &Limits::for_package(0)).unwrap_err();
        assert!(matches!(e, ExtractError::UnsafePath(_)), "{e}");
        assert!(!d.path().join("escaped.tx").exists());
    }

    #[test]
    fn symlinks_cannot_lead_outside_the_root() {
        let d = tempfile::tempdir().unwrap();
        let inner = d.path().join("root");
        std::fs::create_dir(&inner).unwrap();
        // An absolute symlink and a relative one climbing out, then files through them.
        unpack_into(
            &inner,
            &[
                ("./abs", L, "/"),
                ("./rel", L, "../../../../.."),
                ("./abs/etc/x", F, "1"),
                ("./rel/y", F, "2"),
            ],
        )
        .unwrap();
        assert_eq!(std::fs::read_to_string(inner.join("etc/x")).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(inner.join("y")).unwrap(), "2");
        assert!(!d.path().join("y").exists());
        assert!(!Path::new("/etc/x").exists() || std::fs::read_to_string("/etc/x").unwrap() != "1");
    }

    #[test]
    fn merged_usr_directory_symlinks_are_followed_and_kept() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("usr/bin")).unwrap();
        std::os::unix::fs::symlink("usr/bin", d.path().join("bin")).unwrap();
        unpack_into(d.path(), &[("./bin/", D, ""), ("./bin/sh", F, "#!")]).unwrap();
        assert!(std::fs::symlink_metadata(d.path().join("bin"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(
            std::fs::read_to_string(d.path().join("usr/bin/sh")).unwrap(),
            "#!"
        );
    }

    #[test]
    fn a_file_replaces_a_symlink_instead_of_writing_through_it() {
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("outside");
        std::fs::write(&outside, "keep").unwrap();
        let inner = d.path().join("root");
        std::fs::create_dir(&inner).unwrap();
        std::os::unix::fs::symlink(&outside, inner.join("f")).unwrap();
        unpack_into(&inner, &[("./f", F, "new")]).unwrap();
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "keep");
        assert_eq!(std::fs::read_to_string(inner.join("f")).unwrap(), "new");
    }

    /// Limits of `max` file bytes and `members` members, declaring 1 KiB.
    fn small(max: u64, members: u64) -> Limits {
        Limits {
            declared: 1024,
            max_bytes: max,
            max_members: members,
            overridden: false,
            room: None,
        }
    }

    /// A tarball of `n` files of `len` zeros each.
    fn zeros(n: usize, len: usize) -> Vec<u8> {
        let body = vec![0u8; len];
        let names: Vec<String> = (0..n).map(|i| format!("./z/{i}")).collect();
        let mut entries = vec![("./z/", D, String::new())];
        for name in &names {
            entries.push((name.as_str(), F, String::new()));
        }
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, _) in &entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(0o755);
            let data: &[u8] = if *kind == F { &body } else { &[] };
            h.set_size(data.len() as u64);
            h.set_cksum();
            b.append_data(&mut h, path, data).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// File bytes below `dir`.
    fn bytes_below(dir: &Path) -> u64 {
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let m = e.as_ref().unwrap().metadata().unwrap();
            if m.is_dir() {
                n += bytes_below(&e.unwrap().path());
            } else {
                n += m.len();
            }
        }
        n
    }

    #[test]
    fn the_limit_holds_as_bytes_are_written_not_after() {
        const MIB: u64 = 1 << 20;
        let d = tempfile::tempdir().unwrap();
        // 5 MiB in 1 MiB files, against a limit of 2.5 MiB.
        let data = zeros(5, MIB as usize);
        let limit = 5 * MIB / 2;
        let e = unpack(&data[..], d.path(), &small(limit, 100)).unwrap_err();
        match &e {
            ExtractError::TooLarge {
                written, limit: l, ..
            } => {
                assert_eq!(*l, limit);
                assert!(*written <= limit, "{written} written");
                assert_eq!(*written, 2 * MIB + MIB / 2);
            }
            other => panic!("{other}"),
        }
        let text = e.to_string();
        assert!(text.contains("decompression bomb"), "{text}");
        assert!(text.contains("Installed-Size: 1 (1.0 KiB)"), "{text}");
        assert!(text.contains("more than 2.5 MiB"), "{text}");
        // Two whole files; the third was stopped half-way and removed.
        assert!(bytes_below(d.path()) <= limit);
        assert_eq!(bytes_below(d.path()), 2 * MIB);
        // Staged, the stopped file stays where it was written: still within the limit.
        let s = tempfile::tempdir().unwrap();
        stage(&data[..], s.path(), &|_| true, &small(limit, 100)).unwrap_err();
        assert_eq!(bytes_below(s.path()), limit);
        // Measuring writes nothing and stops at the same point.
        assert!(matches!(
            measure(&data[..], &small(limit, 100)),
            Err(ExtractError::TooLarge { .. })
        ));
        // Dropped members count: they are part of what the package declares.
        let t = tempfile::tempdir().unwrap();
        let e = unpack_filtered(&data[..], t.path(), &|p| p == "/z", &small(limit, 100));
        assert!(
            matches!(e, Err(ExtractError::TooLarge { written: 0, .. })),
            "{e:?}"
        );
        // Within the limit all is written.
        assert_eq!(measure(&data[..], &small(5 * MIB, 100)).unwrap(), 5 * MIB);
    }

    #[test]
    fn the_rule_is_four_times_the_declared_size_plus_64_mib_at_most_16_gib() {
        const MIB: u64 = 1 << 20;
        let l = Limits::for_package(1024);
        assert_eq!(l.max_bytes, 4 * 1024 + 64 * MIB);
        assert_eq!(l.max_members, 4 + 64 * 1024);
        let l = Limits::for_package(100 * MIB);
        assert_eq!(l.max_bytes, 464 * MIB);
        let l = Limits::for_package(u64::MAX);
        assert_eq!(l.max_bytes, 16 << 30);
        assert_eq!(l.max_members, MAX_MEMBERS);
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("512m"), Some(512 * MIB));
        assert_eq!(parse_size("1000"), Some(1000));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("99999999999T"), None);
    }

    #[test]
    fn members_names_and_headers_are_bounded() {
        let d = tempfile::tempdir().unwrap();
        // More members than allowed.
        let data = zeros(10, 0);
        let e = unpack(&data[..], d.path(), &small(1 << 20, 5)).unwrap_err();
        assert!(
            matches!(e, ExtractError::TooManyMembers { limit: 5, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("more than 5 members"), "{e}");
        // A component longer than NAME_MAX, a name longer than PATH_MAX.
        for name in ["a".repeat(300), format!("{}/x", "d/".repeat(2100))] {
            let mut b = tar::Builder::new(Vec::new());
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(F);
            h.set_mode(0o644);
            h.set_size(0);
            b.append_data(&mut h, &name, &[][..]).unwrap();
            let data = b.into_inner().unwrap();
            let e = unpack(&data[..], d.path(), &small(1 << 20, 100)).unwrap_err();
            assert!(matches!(e, ExtractError::UnsafePath(_)), "{e}");
        }
        // A GNU long name of 2 MiB: the tar reader would keep it in memory.
        let mut data = Vec::new();
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
        h.set_entry_type(tar::EntryType::GNULongName);
        h.set_mode(0o644);
        h.set_size(2 << 20);
        h.set_cksum();
        data.extend_from_slice(h.as_bytes());
        data.extend(std::iter::repeat_n(b'a', 2 << 20));
        data.extend_from_slice(&[0; 1024]);
        let e = unpack(&data[..], d.path(), &small(1 << 30, 100)).unwrap_err();
        assert!(matches!(e, ExtractError::HeadersTooLarge { .. }), "{e}");
        assert_eq!(bytes_below(d.path()), 0);
    }

    #[test]
    fn a_shared_room_stops_the_packages_together() {
        const MIB: u64 = 1 << 20;
        let room = Arc::new(Room::new(3 * MIB));
        let data = zeros(2, MIB as usize);
        let limits = small(10 * MIB, 100).in_room(Some(room.clone()));
        let a = tempfile::tempdir().unwrap();
        unpack(&data[..], a.path(), &limits).unwrap();
        assert_eq!(room.used(), 2 * MIB);
        let b = tempfile::tempdir().unwrap();
        let e = unpack(&data[..], b.path(), &limits).unwrap_err();
        assert!(
            matches!(e, ExtractError::RoomExceeded { room: r, .. } if r == 3 * MIB),
            "{e}"
        );
        assert!(room.used() <= 3 * MIB);
        assert!(bytes_below(b.path()) <= MIB);
    }

    #[test]
    fn staged_packages_are_placed_in_order_later_ones_winning() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let first = tarball(&[
            ("./etc/", D, ""),
            ("./etc/x", F, "first"),
            ("./etc/y", F, "y"),
        ]);
        let second = tarball(&[("./etc/", D, ""), ("./etc/x", F, "second")]);
        // Staged in the opposite order, placed in package order.
        let b = stage(
            &second[..],
            &d.path().join("s2"),
            &|_| true,
            &small(1 << 20, 100),
        )
        .unwrap();
        let a = stage(
            &first[..],
            &d.path().join("s1"),
            &|_| true,
            &small(1 << 20, 100),
        )
        .unwrap();
        assert_eq!(a.written, 6);
        a.apply(&root).unwrap();
        b.apply(&root).unwrap();
        assert_eq!(
            std::fs::read_to_string(root.join("etc/x")).unwrap(),
            "second"
        );
        assert_eq!(std::fs::read_to_string(root.join("etc/y")).unwrap(), "y");
    }

    #[test]
    fn a_link_planted_at_the_temporary_name_is_not_written_through() {
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("outside");
        std::fs::write(&outside, "keep").unwrap();
        let inner = d.path().join("root");
        std::fs::create_dir(&inner).unwrap();
        // Whatever the temporary name will be, a link is already there.
        let next = crate::inroot::TEMP.load(Ordering::SeqCst);
        for n in next..next + 64 {
            let name = format!(".kiln-new.{}.{n}", std::process::id());
            std::os::unix::fs::symlink(&outside, inner.join(name)).unwrap();
        }
        unpack_into(&inner, &[("./f", F, "new")]).unwrap();
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "keep");
        assert_eq!(std::fs::read_to_string(inner.join("f")).unwrap(), "new");
    }

    #[test]
    fn a_directory_swapped_for_a_link_during_the_unpack_does_not_redirect_writes() {
        // Another package unpacked at the same time (or anything else) swaps
        // `a` between the real directory and a link to a host directory,
        // while members under `a/` are written.
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        let inner = d.path().join("root");
        std::fs::create_dir_all(inner.join("a")).unwrap();
        let names: Vec<String> = (0..100).map(|i| format!("./a/f{i}")).collect();
        let entries: Vec<(&str, tar::EntryType, &str)> =
            names.iter().map(|n| (n.as_str(), F, "x")).collect();
        let data = tarball(&entries);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let swapper = {
            let (inner, victim, stop) = (inner.clone(), victim.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut swaps = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    if std::fs::rename(inner.join("a"), inner.join("a-real")).is_ok() {
                        let _ = std::os::unix::fs::symlink(&victim, inner.join("a"));
                        std::thread::sleep(std::time::Duration::from_micros(200));
                        let _ = std::fs::remove_file(inner.join("a"));
                        let _ = std::fs::rename(inner.join("a-real"), inner.join("a"));
                        std::thread::sleep(std::time::Duration::from_micros(200));
                        swaps += 1;
                    }
                }
                swaps
            })
        };
        for _ in 0..100 {
            // Failures are fine (a name vanished mid-way); escapes are not.
            let _ = unpack(&data[..], &inner, &Limits::for_package(1 << 20));
        }
        stop.store(true, Ordering::Relaxed);
        assert!(swapper.join().unwrap() > 0, "the swap never happened");
        let leaked: Vec<_> = std::fs::read_dir(&victim).unwrap().flatten().collect();
        assert!(
            leaked.is_empty(),
            "{} writes went through the link: {:?}",
            leaked.len(),
            leaked.first().map(|e| e.path())
        );
    }
}
