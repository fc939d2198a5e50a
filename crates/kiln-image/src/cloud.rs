//! The disk formats clouds import, made from `disk.raw` without external
//! tools, reproducibly:
//!
//! - **Azure**: a *fixed* VHD: the raw disk, padded to a whole number of
//!   MiB, followed by the 512-byte VHD footer (cookie `conectix`,
//!   big-endian sizes, CHS geometry, one's-complement checksum).
//! - **GCE**: a gzip-compressed tar whose only member is `disk.raw`, in GNU
//!   tar format (what `images.insert` accepts).
//!
//! Both start with [`check_uefi_disk`]: a cloud gets nothing that is not a
//! GPT disk with an EFI system partition. Holes in the raw disk stay holes
//! in the VHD; the tar's gzip runs on every core ([`crate::pgzip`]).
//! Outputs are written under a temporary name and renamed into place, so a
//! failure never leaves a half-written file at the destination. The
//! readers ([`read_fixed_vhd`], [`read_gce_tar`]) check a file before it is
//! uploaded and treat it as hostile: every field is checked, nothing is
//! allocated from a size the file claims.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::gpt;

const MIB: u64 = 1 << 20;
const FOOTER: usize = 512;
/// Seconds from the Unix epoch to the VHD epoch (2000-01-01 00:00:00 UTC).
const VHD_EPOCH: i64 = 946_684_800;
/// The name GCE requires for the tar's only member.
pub const GCE_MEMBER: &str = "disk.raw";

#[derive(Debug, thiserror::Error)]
pub enum CloudFormatError {
    #[error("{path}: {what}")]
    Invalid { path: PathBuf, what: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

impl CloudFormatError {
    fn invalid(path: &Path, what: impl Into<String>) -> Self {
        CloudFormatError::Invalid {
            path: path.to_path_buf(),
            what: what.into(),
        }
    }
    fn io(path: &Path) -> impl FnOnce(io::Error) -> Self + '_ {
        move |source| CloudFormatError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// What to do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            CloudFormatError::Invalid { .. } => Some(
                "give the disk.raw of a `disk` build (a GPT disk with an EFI system partition), or rebuild the converted file"
                    .into(),
            ),
            CloudFormatError::Io { source, .. } if source.raw_os_error() == Some(28) => {
                Some("the disk is full: free space where the file is written".into())
            }
            CloudFormatError::Io { .. } => None,
        }
    }
}

/// What [`check_uefi_disk`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UefiDisk {
    pub size: u64,
    pub disk_guid: String,
    pub partitions: usize,
}

/// The checks of [`check_uefi_disk`] on the first sectors of a disk of
/// `size` bytes.
fn check_uefi_head(head: &[u8], size: u64) -> Result<(String, usize), String> {
    if head.len() < 512 {
        return Err("too short to be a disk image".into());
    }
    if head[510..512] != [0x55, 0xaa] || head[446 + 4] != 0xee {
        return Err("no protective MBR (partition type 0xEE): not a GPT disk image".into());
    }
    let (disk_guid, entries) = gpt::read_table_from(io::Cursor::new(head), size)
        .map_err(|e| format!("not a valid GPT disk: {e}"))?;
    if !entries.iter().any(|e| e.type_guid == gpt::types::ESP) {
        return Err("the GPT has no EFI system partition, so a UEFI machine cannot boot it".into());
    }
    Ok((disk_guid, entries.len()))
}

/// The sectors [`check_uefi_head`] needs: the MBR, the GPT header and a
/// 128-entry array.
const HEAD: usize = 34 * 512;

/// Checks that `raw` is a disk a UEFI machine boots: a protective MBR, a
/// valid primary GPT (signature, CRCs, entries inside the disk) and an EFI
/// system partition.
pub fn check_uefi_disk(raw: &Path) -> Result<UefiDisk, CloudFormatError> {
    let meta = std::fs::metadata(raw).map_err(CloudFormatError::io(raw))?;
    if !meta.is_file() {
        return Err(CloudFormatError::invalid(raw, "not a regular file"));
    }
    let mut head = vec![0u8; HEAD.min(meta.len() as usize)];
    File::open(raw)
        .and_then(|mut f| f.read_exact(&mut head))
        .map_err(CloudFormatError::io(raw))?;
    let (disk_guid, partitions) =
        check_uefi_head(&head, meta.len()).map_err(|w| CloudFormatError::invalid(raw, w))?;
    Ok(UefiDisk {
        size: meta.len(),
        disk_guid,
        partitions,
    })
}

/// What was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Converted {
    pub path: PathBuf,
    /// Bytes of the file written.
    pub size: u64,
    /// The disk's size as the cloud sees it (the VHD's virtual size).
    pub disk_size: u64,
}

/// CHS geometry of a VHD footer for `size` bytes (the algorithm of the VHD
/// specification): (cylinders, heads, sectors per track).
pub fn vhd_geometry(size: u64) -> (u16, u8, u8) {
    let mut total = size / 512;
    total = total.min(65535 * 16 * 255);
    let (spt, heads, cth);
    if total >= 65535 * 16 * 63 {
        spt = 255;
        heads = 16;
        cth = total / spt;
    } else {
        let mut s = 17;
        let mut c = total / s;
        let mut h = c.div_ceil(1024).max(4);
        if c >= h * 1024 || h > 16 {
            s = 31;
            h = 16;
            c = total / s;
        }
        if c >= h * 1024 {
            s = 63;
            h = 16;
            c = total / s;
        }
        spt = s;
        heads = h;
        cth = c;
    }
    ((cth / heads) as u16, heads as u8, spt as u8)
}

/// The 512-byte footer of a fixed VHD of `size` bytes.
fn vhd_footer(size: u64, epoch: i64, unique_id: &[u8; 16]) -> [u8; FOOTER] {
    let mut f = [0u8; FOOTER];
    f[0..8].copy_from_slice(b"conectix");
    f[8..12].copy_from_slice(&2u32.to_be_bytes()); // features: reserved bit set
    f[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes()); // format version 1.0
    f[16..24].copy_from_slice(&u64::MAX.to_be_bytes()); // data offset: none (fixed)
    let stamp = (epoch - VHD_EPOCH).clamp(0, u32::MAX as i64) as u32;
    f[24..28].copy_from_slice(&stamp.to_be_bytes());
    f[28..32].copy_from_slice(b"kiln");
    f[32..36].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    // The specification knows two host OS values; Windows is what every
    // cloud tool writes.
    f[36..40].copy_from_slice(b"Wi2k");
    f[40..48].copy_from_slice(&size.to_be_bytes()); // original size
    f[48..56].copy_from_slice(&size.to_be_bytes()); // current size
    let (c, h, s) = vhd_geometry(size);
    f[56..58].copy_from_slice(&c.to_be_bytes());
    f[58] = h;
    f[59] = s;
    f[60..64].copy_from_slice(&2u32.to_be_bytes()); // disk type: fixed
    f[68..84].copy_from_slice(unique_id);
    let sum = vhd_checksum(&f);
    f[64..68].copy_from_slice(&sum.to_be_bytes());
    f
}

/// One's complement of the byte sum of the footer, its checksum field
/// counted as zero.
fn vhd_checksum(f: &[u8; FOOTER]) -> u32 {
    let sum = f
        .iter()
        .enumerate()
        .filter(|(i, _)| !(64..68).contains(i))
        .fold(0u32, |a, (_, b)| a.wrapping_add(*b as u32));
    !sum
}

/// Writes `dest` through a temporary file beside it, renamed into place
/// when `write` succeeds, removed when it fails.
fn write_atomically(
    dest: &Path,
    write: impl FnOnce(&mut File, &Path) -> Result<(), CloudFormatError>,
) -> Result<(), CloudFormatError> {
    let dir = dest.parent().filter(|p| !p.as_os_str().is_empty());
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir
        .unwrap_or(Path::new("."))
        .join(format!(".{name}.partial-{}", std::process::id()));
    let r = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(CloudFormatError::io(&tmp))
        .and_then(|mut f| {
            write(&mut f, &tmp)?;
            f.sync_all().map_err(CloudFormatError::io(&tmp))
        })
        .and_then(|()| std::fs::rename(&tmp, dest).map_err(CloudFormatError::io(dest)));
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

/// Copies the data of `src` into `out` at the same offsets: only the
/// extents the filesystem has data for (SEEK_DATA/SEEK_HOLE), and of
/// those only the 1 MiB blocks that are not all zeros, so holes stay holes
/// and nothing is read twice (the output is sized by the caller).
fn copy_sparse(
    src: &File,
    src_path: &Path,
    out: &File,
    out_path: &Path,
    len: u64,
) -> Result<(), CloudFormatError> {
    use std::os::fd::AsRawFd as _;
    let fd = src.as_raw_fd();
    let mut buf = vec![0u8; MIB as usize];
    let mut pos = 0u64;
    while pos < len {
        // SAFETY: lseek on a file descriptor this function borrows.
        let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                return Ok(()); // only a hole is left
            }
            if e.raw_os_error() == Some(libc::EINVAL) {
                // No SEEK_DATA here: everything is data.
                return copy_blocks(src, src_path, out, out_path, pos, len, &mut buf);
            }
            return Err(CloudFormatError::io(src_path)(e));
        }
        let data = data as u64;
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data as libc::off_t, libc::SEEK_HOLE) };
        let end = if hole < 0 {
            len
        } else {
            (hole as u64).min(len)
        };
        copy_blocks(src, src_path, out, out_path, data, end, &mut buf)?;
        pos = end;
    }
    Ok(())
}

/// Copies `[from, to)` of `src` into `out` in blocks, skipping zero ones.
fn copy_blocks(
    src: &File,
    src_path: &Path,
    out: &File,
    out_path: &Path,
    from: u64,
    to: u64,
    buf: &mut [u8],
) -> Result<(), CloudFormatError> {
    use std::os::unix::fs::FileExt as _;
    let mut at = from;
    while at < to {
        let n = (to - at).min(buf.len() as u64) as usize;
        src.read_exact_at(&mut buf[..n], at)
            .map_err(CloudFormatError::io(src_path))?;
        let block = &buf[..n];
        // Word-wise, so the compiler vectorises it.
        let zero = block
            .chunks(64)
            .all(|c| c.iter().fold(0u8, |a, b| a | b) == 0);
        if !zero {
            out.write_all_at(block, at)
                .map_err(CloudFormatError::io(out_path))?;
        }
        at += n as u64;
    }
    Ok(())
}

/// The sha256 (hex) of a file, for callers that need it (a build hashes
/// its artifacts itself).
pub fn sha256_file(path: &Path) -> Result<String, CloudFormatError> {
    let mut f = File::open(path).map_err(CloudFormatError::io(path))?;
    let mut h = Sha256::new();
    io::copy(&mut f, &mut h).map_err(CloudFormatError::io(path))?;
    Ok(hex::encode(h.finalize()))
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Writes the fixed VHD of the UEFI disk `raw` to `dest`: the disk padded
/// with zeros to a whole number of MiB (Azure's rule), then the footer. Its
/// timestamp is `epoch` (the build's), its unique id the first 16 bytes of
/// sha256 over the disk's GPT GUID and size (both derived from the image),
/// so the same disk gives the same bytes.
pub fn write_fixed_vhd(raw: &Path, dest: &Path, epoch: i64) -> Result<Converted, CloudFormatError> {
    let disk = check_uefi_disk(raw)?;
    let size = disk.size.div_ceil(MIB) * MIB;
    write_atomically(dest, |out, tmp| {
        let src = File::open(raw).map_err(CloudFormatError::io(raw))?;
        if src.metadata().map_err(CloudFormatError::io(raw))?.len() != disk.size {
            return Err(CloudFormatError::invalid(
                raw,
                "the disk changed while it was read",
            ));
        }
        out.set_len(size).map_err(CloudFormatError::io(tmp))?;
        copy_sparse(&src, raw, out, tmp, disk.size)?;
        let mut h = Sha256::new();
        h.update(disk.disk_guid.as_bytes());
        h.update(size.to_be_bytes());
        let id: [u8; 16] = h.finalize()[..16].try_into().unwrap();
        let footer = vhd_footer(size, epoch, &id);
        out.seek(SeekFrom::Start(size))
            .and_then(|_| out.write_all(&footer))
            .map_err(CloudFormatError::io(tmp))?;
        Ok(())
    })?;
    Ok(Converted {
        path: dest.to_path_buf(),
        size: size + FOOTER as u64,
        disk_size: size,
    })
}

/// A fixed VHD's footer, as read back and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VhdInfo {
    /// The virtual size (the disk the cloud sees).
    pub disk_size: u64,
    pub creator: String,
    pub geometry: (u16, u8, u8),
}

/// Reads and checks a fixed VHD as Azure requires it: the footer's cookie,
/// checksum and disk type, a current size that is the file's size less the
/// footer and a whole number of MiB, and the disk inside a UEFI GPT disk.
pub fn read_fixed_vhd(path: &Path) -> Result<VhdInfo, CloudFormatError> {
    let bad = |m: String| CloudFormatError::invalid(path, m);
    let mut f = File::open(path).map_err(CloudFormatError::io(path))?;
    let len = f.metadata().map_err(CloudFormatError::io(path))?.len();
    if len < (FOOTER as u64) + MIB {
        return Err(bad(format!("{len} bytes is too small for a VHD")));
    }
    let mut foot = [0u8; FOOTER];
    f.seek(SeekFrom::Start(len - FOOTER as u64))
        .and_then(|_| f.read_exact(&mut foot))
        .map_err(CloudFormatError::io(path))?;
    if &foot[0..8] != b"conectix" {
        return Err(bad(
            "no VHD footer (cookie `conectix` missing in the last 512 bytes)".into(),
        ));
    }
    let be32 = |r: std::ops::Range<usize>| u32::from_be_bytes(foot[r].try_into().unwrap());
    let be64 = |r: std::ops::Range<usize>| u64::from_be_bytes(foot[r].try_into().unwrap());
    if be32(64..68) != vhd_checksum(&foot) {
        return Err(bad(
            "VHD footer checksum mismatch (the footer is corrupted)".into(),
        ));
    }
    match be32(60..64) {
        2 => {}
        3 => return Err(bad("a dynamic VHD: Azure takes fixed VHDs only".into())),
        t => return Err(bad(format!("VHD disk type {t} is not fixed (2)"))),
    }
    if be64(16..24) != u64::MAX {
        return Err(bad(
            "a fixed VHD has no data offset, but this footer gives one".into(),
        ));
    }
    let size = be64(48..56);
    if size != len - FOOTER as u64 {
        return Err(bad(format!(
            "the footer says {size} bytes but the file holds {} before it (truncated or padded?)",
            len - FOOTER as u64
        )));
    }
    if size % MIB != 0 {
        return Err(bad(format!(
            "virtual size {size} is not a whole number of MiB (Azure refuses it)"
        )));
    }
    let geometry = (
        u16::from_be_bytes(foot[56..58].try_into().unwrap()),
        foot[58],
        foot[59],
    );
    // The disk inside: a GPT disk with an ESP, read in place (the footer
    // lies after the backup GPT, where the GPT reader does not look).
    check_uefi_disk(path).map_err(|e| match e {
        CloudFormatError::Invalid { what, .. } => bad(format!("the disk inside: {what}")),
        other => other,
    })?;
    Ok(VhdInfo {
        disk_size: size,
        creator: String::from_utf8_lossy(&foot[28..32]).into_owned(),
        geometry,
    })
}

/// The 512-byte GNU tar header of the member `disk.raw` of `size` bytes.
fn gnu_header(size: u64, epoch: i64) -> [u8; 512] {
    let mut h = tar::Header::new_gnu();
    h.set_path(GCE_MEMBER).expect("a short relative name");
    h.set_size(size); // base-256 past 8 GiB, as GNU tar writes it
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(epoch.max(0) as u64);
    h.set_entry_type(tar::EntryType::Regular);
    let _ = h.set_username("root");
    let _ = h.set_groupname("root");
    h.set_cksum();
    *h.as_bytes()
}

/// Writes GCE's import archive of the UEFI disk `raw` to `dest`: a gzip
/// (parallel, level 6, mtime 0) of a GNU tar whose only member is
/// `disk.raw` (mode 0644, owner root, mtime `epoch`), ended by two zero
/// blocks and padded to GNU tar's 10 KiB record.
pub fn write_gce_tar(raw: &Path, dest: &Path, epoch: i64) -> Result<Converted, CloudFormatError> {
    let disk = check_uefi_disk(raw)?;
    write_atomically(dest, |out, tmp| {
        let mut src = File::open(raw).map_err(CloudFormatError::io(raw))?;
        let mut gz = crate::pgzip::ParallelGz::new(io::BufWriter::new(&mut *out), 6);
        let io_out = CloudFormatError::io(tmp);
        let r = (|| {
            gz.write_all(&gnu_header(disk.size, epoch))?;
            let n = io::copy(&mut (&mut src).take(disk.size), &mut gz)?;
            if n != disk.size {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the disk changed while it was read",
                ));
            }
            let written = 512 + n.div_ceil(512) * 512 + 1024;
            let record = 20 * 512;
            let pad =
                (n.div_ceil(512) * 512 - n) + 1024 + (written.div_ceil(record) * record - written);
            gz.write_all(&vec![0u8; pad as usize])?;
            gz.finish()?.flush()
        })();
        r.map_err(io_out)?;
        Ok(())
    })?;
    let size = std::fs::metadata(dest)
        .map_err(CloudFormatError::io(dest))?
        .len();
    Ok(Converted {
        path: dest.to_path_buf(),
        size,
        disk_size: disk.size,
    })
}

/// What [`read_gce_tar`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GceTarInfo {
    pub disk_size: u64,
}

/// Reads and checks a GCE import archive all the way through: gzip, one
/// GNU-format member named `disk.raw` (a regular file), nothing after it
/// but zero blocks, and the member a UEFI GPT disk (its first 34 sectors
/// are checked as a GPT: MBR, header and entry CRCs).
pub fn read_gce_tar(path: &Path) -> Result<GceTarInfo, CloudFormatError> {
    let bad = |m: String| CloudFormatError::invalid(path, m);
    let f = File::open(path).map_err(CloudFormatError::io(path))?;
    let mut gz = flate2::read::MultiGzDecoder::new(io::BufReader::new(f));
    let gz_err = |e: io::Error| bad(format!("not a whole gzip stream: {e}"));
    let mut h = [0u8; 512];
    gz.read_exact(&mut h).map_err(gz_err)?;
    let header = tar::Header::from_byte_slice(&h);
    if header.as_gnu().is_none() {
        return Err(bad(
            "the tar member is not in GNU format (GCE wants `tar --format=gnu`)".into(),
        ));
    }
    let want = header
        .cksum()
        .map_err(|_| bad("the tar header's checksum field is not a number".into()))?;
    let got: u32 = h
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                b' ' as u32
            } else {
                *b as u32
            }
        })
        .sum();
    if want != got {
        return Err(bad(
            "tar header checksum mismatch (the archive is corrupted)".into(),
        ));
    }
    let name = header.path_bytes();
    if name.as_ref() != GCE_MEMBER.as_bytes() {
        return Err(bad(format!(
            "the member is `{}`, but GCE takes only `{GCE_MEMBER}`",
            String::from_utf8_lossy(&name)
        )));
    }
    if header.entry_type() != tar::EntryType::Regular {
        return Err(bad(format!("`{GCE_MEMBER}` is not a regular file")));
    }
    let size = header
        .size()
        .map_err(|_| bad("the member's size is not a number".into()))?;
    // The disk: check its GPT from its first 34 sectors, then read the rest.
    let head_len = size.min(HEAD as u64) as usize;
    let mut head = vec![0u8; head_len];
    gz.read_exact(&mut head).map_err(gz_err)?;
    check_uefi_head(&head, size).map_err(|what| bad(format!("`{GCE_MEMBER}`: {what}")))?;
    let rest = size - head_len as u64;
    let n = io::copy(&mut (&mut gz).take(rest), &mut io::sink()).map_err(gz_err)?;
    if n != rest {
        return Err(bad(format!(
            "the archive ends inside `{GCE_MEMBER}` (truncated upload?)"
        )));
    }
    let pad = size.div_ceil(512) * 512 - size;
    io::copy(&mut (&mut gz).take(pad), &mut io::sink()).map_err(gz_err)?;
    let mut tail = [0u8; 512];
    loop {
        match read_full(&mut gz, &mut tail).map_err(gz_err)? {
            0 => break,
            512 if tail.iter().all(|b| *b == 0) => {}
            _ => {
                return Err(bad(format!(
                    "the archive has more than `{GCE_MEMBER}` in it (GCE takes one member)"
                )))
            }
        }
    }
    Ok(GceTarInfo { disk_size: size })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpt::{types, write_disk, Partition};

    /// A small GPT disk: an ESP (with some bytes in it) and a root, or
    /// without the ESP.
    fn disk(dir: &Path, esp: bool) -> PathBuf {
        let content = dir.join("esp.img");
        std::fs::write(&content, vec![0x5au8; 300_000]).unwrap();
        let mut parts = vec![Partition {
            type_guid: types::ROOT_X86_64.into(),
            guid: "11111111-2222-3333-4444-555555555555".into(),
            label: "root".into(),
            image: None,
            size: 2 * MIB,
            attributes: 0,
        }];
        if esp {
            parts.insert(
                0,
                Partition {
                    type_guid: types::ESP.into(),
                    guid: "aaaaaaaa-2222-3333-4444-555555555555".into(),
                    label: "esp".into(),
                    image: Some(content),
                    size: 3 * MIB,
                    attributes: 0,
                },
            );
        }
        let raw = dir.join(if esp { "disk.raw" } else { "bios.raw" });
        write_disk(&raw, "99999999-2222-3333-4444-555555555555", &parts).unwrap();
        raw
    }

    #[test]
    fn geometry_follows_the_vhd_specification() {
        // 1 GiB: 2097152 sectors < 65535*16*63, 17 spt gives too many
        // cylinders, 31 too, so 63 spt and 16 heads.
        assert_eq!(vhd_geometry(1 << 30), (2080, 16, 63));
        // Small: 4 MiB = 8192 sectors → 17 spt, 4 heads.
        assert_eq!(vhd_geometry(4 * MIB), (120, 4, 17));
        // Past the CHS limit: capped at 65535×16×255.
        assert_eq!(vhd_geometry(1 << 40), (65535, 16, 255));
    }

    #[test]
    fn a_fixed_vhd_is_the_disk_and_a_checked_footer() {
        let t = tempfile::tempdir().unwrap();
        let raw = disk(t.path(), true);
        let vhd = t.path().join("disk.vhd");
        let c = write_fixed_vhd(&raw, &vhd, 1_700_000_000).unwrap();
        let bytes = std::fs::read(&vhd).unwrap();
        let data = std::fs::read(&raw).unwrap();
        assert_eq!(c.disk_size % MIB, 0);
        assert_eq!(bytes.len() as u64, c.disk_size + 512);
        assert_eq!(&bytes[..data.len()], &data[..]);
        assert_eq!(&bytes[bytes.len() - 512..][..8], b"conectix");
        let info = read_fixed_vhd(&vhd).unwrap();
        assert_eq!(info.disk_size, c.disk_size);
        assert_eq!(info.creator, "kiln");
        // The same disk and epoch give the same bytes.
        write_fixed_vhd(&raw, &t.path().join("again.vhd"), 1_700_000_000).unwrap();
        assert_eq!(
            sha256_file(&t.path().join("again.vhd")).unwrap(),
            hex::encode(Sha256::digest(&bytes))
        );
        // Holes stay holes: the zero blocks of the disk are not allocated.
        use std::os::unix::fs::MetadataExt as _;
        let m = std::fs::metadata(&vhd).unwrap();
        assert!(
            m.blocks() * 512 < m.len(),
            "{} blocks for {} bytes",
            m.blocks(),
            m.len()
        );
        // No temporary file is left beside it.
        let left: Vec<_> = std::fs::read_dir(t.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("partial"))
            .collect();
        assert!(left.is_empty());
    }

    #[test]
    fn damaged_or_foreign_vhds_are_refused_with_the_reason() {
        let t = tempfile::tempdir().unwrap();
        let raw = disk(t.path(), true);
        let vhd = t.path().join("disk.vhd");
        write_fixed_vhd(&raw, &vhd, 0).unwrap();
        let good = std::fs::read(&vhd).unwrap();
        let n = good.len();
        let case = |name: &str, bytes: &[u8], want: &str| {
            let p = t.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            let e = read_fixed_vhd(&p).unwrap_err().to_string();
            assert!(e.contains(want), "{name}: {e}");
        };
        let mut b = good.clone();
        b[n - 512 + 50] ^= 1; // current size changed, checksum not
        case("sum.vhd", &b, "checksum mismatch");
        let mut b = good.clone();
        b[n - 512..n - 504].copy_from_slice(b"notavhd!");
        case("cookie.vhd", &b, "no VHD footer");
        case("cut.vhd", &good[..n - 4096], "no VHD footer");
        // A dynamic disk, with a valid checksum.
        let mut b = good.clone();
        b[n - 512 + 63] = 3;
        let mut foot: [u8; 512] = b[n - 512..].try_into().unwrap();
        let s = vhd_checksum(&foot);
        foot[64..68].copy_from_slice(&s.to_be_bytes());
        b[n - 512..].copy_from_slice(&foot);
        case("dynamic.vhd", &b, "dynamic VHD");
        // A size that does not match the file.
        let mut foot: [u8; 512] = good[n - 512..].try_into().unwrap();
        foot[48..56].copy_from_slice(&((n as u64 - 512) * 2).to_be_bytes());
        let s = vhd_checksum(&foot);
        foot[64..68].copy_from_slice(&s.to_be_bytes());
        let mut b = good.clone();
        b[n - 512..].copy_from_slice(&foot);
        case("size.vhd", &b, "the footer says");
        // A broken GPT inside.
        let mut b = good.clone();
        b[512] ^= 0xff;
        case("gpt.vhd", &b, "the disk inside");
        // Something that is not a file at all.
        let e = read_fixed_vhd(t.path()).unwrap_err();
        assert!(matches!(e, CloudFormatError::Io { .. }) || e.to_string().contains("too small"));
    }

    #[test]
    fn only_uefi_gpt_disks_are_converted() {
        let t = tempfile::tempdir().unwrap();
        let no_esp = disk(t.path(), false);
        let e = write_fixed_vhd(&no_esp, &t.path().join("x.vhd"), 0).unwrap_err();
        assert!(e.to_string().contains("no EFI system partition"), "{e}");
        assert!(e.hint().unwrap().contains("disk.raw"));
        assert!(!t.path().join("x.vhd").exists());
        let text = t.path().join("notes.txt");
        std::fs::write(&text, vec![b'a'; 40_000]).unwrap();
        let e = write_gce_tar(&text, &t.path().join("x.tar.gz"), 0).unwrap_err();
        assert!(e.to_string().contains("protective MBR"), "{e}");
        let tiny = t.path().join("tiny");
        std::fs::write(&tiny, b"x").unwrap();
        assert!(check_uefi_disk(&tiny).is_err());
        // A GPT whose header was damaged.
        let raw = disk(t.path(), true);
        let mut b = std::fs::read(&raw).unwrap();
        b[512 + 24] ^= 1;
        let bad = t.path().join("badgpt.raw");
        std::fs::write(&bad, &b).unwrap();
        let e = check_uefi_disk(&bad).unwrap_err().to_string();
        assert!(e.contains("GPT header checksum"), "{e}");
        assert!(!t.path().join("x.tar.gz").exists());
    }

    #[test]
    fn the_gce_archive_holds_disk_raw_alone_in_gnu_format() {
        let t = tempfile::tempdir().unwrap();
        let raw = disk(t.path(), true);
        let out = t.path().join("disk.tar.gz");
        let c = write_gce_tar(&raw, &out, 1_700_000_000).unwrap();
        assert_eq!(read_gce_tar(&out).unwrap().disk_size, c.disk_size);
        let gz = flate2::read::MultiGzDecoder::new(File::open(&out).unwrap());
        let plain: Vec<u8> = {
            let mut v = Vec::new();
            { gz }.read_to_end(&mut v).unwrap();
            v
        };
        assert_eq!(plain.len() % (20 * 512), 0, "padded to GNU tar's record");
        assert_eq!(&plain[257..265], b"ustar  \0", "GNU magic");
        let mut a = tar::Archive::new(&plain[..]);
        let mut names = Vec::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            names.push(e.path().unwrap().display().to_string());
            assert_eq!(e.header().mtime().unwrap(), 1_700_000_000);
            let mut d = Vec::new();
            e.read_to_end(&mut d).unwrap();
            assert_eq!(d, std::fs::read(&raw).unwrap());
        }
        assert_eq!(names, ["disk.raw"]);
        write_gce_tar(&raw, &t.path().join("again.tar.gz"), 1_700_000_000).unwrap();
        assert_eq!(
            sha256_file(&t.path().join("again.tar.gz")).unwrap(),
            sha256_file(&out).unwrap(),
            "reproducible"
        );
    }

    #[test]
    fn a_damaged_gce_archive_is_refused_with_the_reason() {
        let t = tempfile::tempdir().unwrap();
        let raw = disk(t.path(), true);
        let data = std::fs::read(&raw).unwrap();
        let write = |name: &str, tar_bytes: &[u8]| {
            let p = t.path().join(name);
            let mut gz = flate2::write::GzEncoder::new(
                File::create(&p).unwrap(),
                flate2::Compression::fast(),
            );
            gz.write_all(tar_bytes).unwrap();
            gz.finish().unwrap();
            p
        };
        let tar_of = |members: &[(&str, &[u8])], gnu: bool| {
            let mut b = tar::Builder::new(Vec::new());
            for (name, d) in members {
                let mut h = if gnu {
                    tar::Header::new_gnu()
                } else {
                    tar::Header::new_ustar()
                };
                h.set_path(name).unwrap();
                h.set_size(d.len() as u64);
                h.set_mode(0o644);
                h.set_cksum();
                b.append(&h, *d).unwrap();
            }
            b.into_inner().unwrap()
        };
        let case = |name: &str, p: &Path, want: &str| {
            let e = read_gce_tar(p).unwrap_err().to_string();
            assert!(e.contains(want), "{name}: {e}");
        };
        case(
            "ustar",
            &write("u.tar.gz", &tar_of(&[("disk.raw", &data)], false)),
            "GNU format",
        );
        case(
            "name",
            &write("n.tar.gz", &tar_of(&[("root.img", &data)], true)),
            "only `disk.raw`",
        );
        case(
            "two",
            &write(
                "two.tar.gz",
                &tar_of(&[("disk.raw", &data), ("evil", b"x")], true),
            ),
            "more than `disk.raw`",
        );
        case(
            "notgpt",
            &write("g.tar.gz", &tar_of(&[("disk.raw", &[7u8; 40_000])], true)),
            "protective MBR",
        );
        let whole = tar_of(&[("disk.raw", &data)], true);
        case(
            "cut",
            &write("cut.tar.gz", &whole[..whole.len() / 2]),
            "truncated",
        );
        let mut sum = whole.clone();
        sum[0] = b'x';
        case("sum", &write("s.tar.gz", &sum), "checksum mismatch");
        let notgz = t.path().join("plain.tar.gz");
        std::fs::write(&notgz, &whole).unwrap();
        case("notgz", &notgz, "gzip");
        // The good one passes.
        read_gce_tar(&write("ok.tar.gz", &whole)).unwrap();
    }
}
