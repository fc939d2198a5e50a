//! GUID partition tables written in-process, deterministically.
//!
//! A disk image is assembled from partition images without loop devices or
//! mounts: protective MBR, primary and backup GPT headers and entry arrays,
//! and each partition's bytes copied in at its (1 MiB aligned) offset. GUIDs
//! come from the caller (Kiln derives them from the image identity), so the
//! same inputs always give the same disk.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const SECTOR: u64 = 512;
const ENTRIES: u64 = 128;
const ENTRY_SIZE: u64 = 128;
const ENTRY_SECTORS: u64 = ENTRIES * ENTRY_SIZE / SECTOR; // 32
const ALIGN: u64 = 1 << 20;

/// Partition type GUIDs of the Discoverable Partitions Specification.
pub mod types {
    pub const ESP: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
    pub const ROOT_X86_64: &str = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709";
    pub const ROOT_ARM64: &str = "b921b045-1df0-41c3-af44-4c6f280d3fae";
    pub const USR_X86_64: &str = "8484680c-9521-48c6-9c11-b0720656f69e";
    pub const USR_VERITY_X86_64: &str = "77ff5f63-e7b6-4633-acf4-1565b864c0e6";
    pub const USR_ARM64: &str = "b0e01050-ee5f-4390-949a-9101b17104e9";
    pub const USR_VERITY_ARM64: &str = "6e11a4e7-fbca-4ded-b9e9-e1a512bb664e";
}

/// A partition to place on the disk.
#[derive(Clone, Debug)]
pub struct Partition {
    pub type_guid: String,
    pub guid: String,
    /// GPT partition name (e.g. "root", "esp"); UTF-16, at most 36 characters.
    pub label: String,
    /// The partition's contents (a filesystem image); may be shorter than `size`.
    pub image: Option<PathBuf>,
    /// Size in bytes (rounded up to 1 MiB).
    pub size: u64,
    /// GPT attribute bits (e.g. bit 60 read-only, 63 no-auto).
    pub attributes: u64,
}

/// Where a partition landed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placed {
    pub first_lba: u64,
    pub last_lba: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum GptError {
    #[error("bad GUID `{0}`")]
    BadGuid(String),
    #[error("partition label `{0}` is longer than 36 characters")]
    LongLabel(String),
    #[error("partition {label}: image {image} ({have} bytes) is larger than the partition ({size} bytes)")]
    TooLarge {
        label: String,
        image: String,
        have: u64,
        size: u64,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// GUID text to the on-disk mixed-endian bytes.
pub fn guid_bytes(s: &str) -> Result<[u8; 16], GptError> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || s.len() != 36 {
        return Err(GptError::BadGuid(s.into()));
    }
    let raw = (0..16)
        .map(|i| {
            u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| GptError::BadGuid(s.into()))
        })
        .collect::<Result<Vec<u8>, _>>()?;
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&[raw[3], raw[2], raw[1], raw[0]]);
    b[4..6].copy_from_slice(&[raw[5], raw[4]]);
    b[6..8].copy_from_slice(&[raw[7], raw[6]]);
    b[8..16].copy_from_slice(&raw[8..16]);
    Ok(b)
}

/// A version-4-shaped GUID derived from `seed` (for reproducible disks).
pub fn guid_from(seed: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::digest(seed);
    h[6] = (h[6] & 0x0f) | 0x40;
    h[8] = (h[8] & 0x3f) | 0x80;
    let x = hex::encode(&h[..16]);
    format!(
        "{}-{}-{}-{}-{}",
        &x[0..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..32]
    )
}

fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

/// Total disk size for `parts` (1 MiB at the start, aligned partitions,
/// room for the backup table at the end).
pub fn disk_size(parts: &[Partition]) -> u64 {
    ALIGN + parts.iter().map(|p| round_up(p.size, ALIGN)).sum::<u64>() + ALIGN
}

fn header(
    disk_guid: &[u8; 16],
    current: u64,
    backup: u64,
    entries_lba: u64,
    last_usable: u64,
    entries_crc: u32,
) -> Vec<u8> {
    let mut h = vec![0u8; 92];
    h[0..8].copy_from_slice(b"EFI PART");
    h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
    h[12..16].copy_from_slice(&92u32.to_le_bytes());
    h[24..32].copy_from_slice(&current.to_le_bytes());
    h[32..40].copy_from_slice(&backup.to_le_bytes());
    h[40..48].copy_from_slice(&(2 + ENTRY_SECTORS).to_le_bytes());
    h[48..56].copy_from_slice(&last_usable.to_le_bytes());
    h[56..72].copy_from_slice(disk_guid);
    h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
    h[80..84].copy_from_slice(&(ENTRIES as u32).to_le_bytes());
    h[84..88].copy_from_slice(&(ENTRY_SIZE as u32).to_le_bytes());
    h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
    let crc = crc32fast::hash(&h);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Writes a GPT disk image at `dest` (created or truncated).
pub fn write_disk(
    dest: &Path,
    disk_guid: &str,
    parts: &[Partition],
) -> Result<Vec<Placed>, GptError> {
    let size = disk_size(parts);
    let sectors = size / SECTOR;
    let last = sectors - 1;
    let dguid = guid_bytes(disk_guid)?;
    let mut entries = vec![0u8; (ENTRIES * ENTRY_SIZE) as usize];
    let mut placed = Vec::new();
    let mut next = ALIGN / SECTOR;
    for (i, p) in parts.iter().enumerate() {
        let name: Vec<u16> = p.label.encode_utf16().collect();
        if name.len() > 36 {
            return Err(GptError::LongLabel(p.label.clone()));
        }
        let len = round_up(p.size, ALIGN) / SECTOR;
        let e = &mut entries[i * ENTRY_SIZE as usize..(i + 1) * ENTRY_SIZE as usize];
        e[0..16].copy_from_slice(&guid_bytes(&p.type_guid)?);
        e[16..32].copy_from_slice(&guid_bytes(&p.guid)?);
        e[32..40].copy_from_slice(&next.to_le_bytes());
        e[40..48].copy_from_slice(&(next + len - 1).to_le_bytes());
        e[48..56].copy_from_slice(&p.attributes.to_le_bytes());
        for (j, c) in name.iter().enumerate() {
            e[56 + 2 * j..58 + 2 * j].copy_from_slice(&c.to_le_bytes());
        }
        placed.push(Placed {
            first_lba: next,
            last_lba: next + len - 1,
        });
        next += len;
    }
    let ecrc = crc32fast::hash(&entries);
    let last_usable = last - 1 - ENTRY_SECTORS;
    let tmp = dest.with_file_name(format!(
        ".{}.partial-{}",
        dest.file_name().and_then(|n| n.to_str()).unwrap_or("disk"),
        std::process::id()
    ));
    let result = (|| -> Result<(), GptError> {
        let mut f = std::fs::File::create(&tmp)?;
        f.set_len(size)?;
        // Protective MBR.
        let mut mbr = vec![0u8; 512];
        mbr[446 + 1..446 + 4].copy_from_slice(&[0x00, 0x02, 0x00]);
        mbr[446 + 4] = 0xee;
        mbr[446 + 5..446 + 8].copy_from_slice(&[0xff, 0xff, 0xff]);
        mbr[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
        mbr[446 + 12..446 + 16]
            .copy_from_slice(&((sectors - 1).min(0xffff_ffff) as u32).to_le_bytes());
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        f.write_all(&mbr)?;
        let mut primary = header(&dguid, 1, last, 2, last_usable, ecrc);
        primary.resize(512, 0);
        f.write_all(&primary)?;
        f.write_all(&entries)?;
        f.seek(SeekFrom::Start((last - ENTRY_SECTORS) * SECTOR))?;
        f.write_all(&entries)?;
        let mut backup = header(&dguid, last, 1, last - ENTRY_SECTORS, last_usable, ecrc);
        backup.resize(512, 0);
        f.write_all(&backup)?;
        for (p, at) in parts.iter().zip(&placed) {
            let Some(img) = &p.image else { continue };
            let mut src = std::fs::File::open(img)?;
            let have = src.metadata()?.len();
            let room = (at.last_lba - at.first_lba + 1) * SECTOR;
            if have > room {
                return Err(GptError::TooLarge {
                    label: p.label.clone(),
                    image: img.display().to_string(),
                    have,
                    size: room,
                });
            }
            f.seek(SeekFrom::Start(at.first_lba * SECTOR))?;
            // Copy, leaving runs of zeros as holes.
            let mut buf = vec![0u8; 1 << 20];
            let mut pos = at.first_lba * SECTOR;
            loop {
                let n = src.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                if buf[..n].iter().all(|b| *b == 0) {
                    f.seek(SeekFrom::Current(n as i64))?;
                } else {
                    f.write_all(&buf[..n])?;
                }
                pos += n as u64;
            }
            let _ = pos;
        }
        f.sync_all()?;
        Ok(())
    })();
    match result {
        Ok(()) => {
            std::fs::rename(&tmp, dest)?;
            Ok(placed)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// A partition read back from a disk image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub type_guid: String,
    pub guid: String,
    pub label: String,
    pub first_lba: u64,
    pub last_lba: u64,
    pub attributes: u64,
}

impl Entry {
    pub fn offset(&self) -> u64 {
        self.first_lba * SECTOR
    }
    pub fn size(&self) -> u64 {
        (self.last_lba + 1 - self.first_lba) * SECTOR
    }
}

fn guid_text(b: &[u8]) -> String {
    let x = |r: &[u8]| hex::encode(r);
    let mut d1 = b[0..4].to_vec();
    d1.reverse();
    let mut d2 = b[4..6].to_vec();
    d2.reverse();
    let mut d3 = b[6..8].to_vec();
    d3.reverse();
    format!(
        "{}-{}-{}-{}-{}",
        x(&d1),
        x(&d2),
        x(&d3),
        x(&b[8..10]),
        x(&b[10..16])
    )
}

/// Reads and checks the primary GPT of a disk image: signature, header and
/// entry-array CRCs, partitions inside the disk. Errors say what is wrong.
pub fn read_table(disk: &Path) -> Result<(String, Vec<Entry>), GptError> {
    let f = std::fs::File::open(disk)?;
    let len = f.metadata()?.len();
    read_table_from(f, len)
}

/// [`read_table`] of a disk of `len` bytes read from `f` (only its first
/// sectors, where the primary GPT lies, are read).
pub fn read_table_from(
    mut f: impl Read + Seek,
    len: u64,
) -> Result<(String, Vec<Entry>), GptError> {
    let bad = |m: String| GptError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, m));
    if len < 34 * SECTOR {
        return Err(bad(format!("{len} bytes is too small for a GPT disk")));
    }
    let mut h = vec![0u8; 512];
    f.seek(SeekFrom::Start(SECTOR))?;
    f.read_exact(&mut h)?;
    if &h[0..8] != b"EFI PART" {
        return Err(bad(
            "no GPT header (signature `EFI PART` missing at LBA 1)".into()
        ));
    }
    let hsize = u32::from_le_bytes(h[12..16].try_into().unwrap()) as usize;
    if !(92..=512).contains(&hsize) {
        return Err(bad(format!("GPT header size {hsize} is invalid")));
    }
    let want = u32::from_le_bytes(h[16..20].try_into().unwrap());
    let mut hc = h[..hsize].to_vec();
    hc[16..20].fill(0);
    if crc32fast::hash(&hc) != want {
        return Err(bad(
            "GPT header checksum mismatch (the partition table is corrupted)".into(),
        ));
    }
    let disk_guid = guid_text(&h[56..72]);
    let entries_lba = u64::from_le_bytes(h[72..80].try_into().unwrap());
    let n = u32::from_le_bytes(h[80..84].try_into().unwrap()) as usize;
    let esize = u32::from_le_bytes(h[84..88].try_into().unwrap()) as usize;
    let ecrc = u32::from_le_bytes(h[88..92].try_into().unwrap());
    if n > 1024 || !(128..=1024).contains(&esize) {
        return Err(bad(format!("GPT entry array {n}×{esize} is invalid")));
    }
    let entries_at = entries_lba
        .checked_mul(SECTOR)
        .filter(|at| {
            at.checked_add((n * esize) as u64)
                .is_some_and(|end| end <= len)
        })
        .ok_or_else(|| {
            bad(
                "the GPT entry array lies beyond the end of the disk image (truncated image?)"
                    .into(),
            )
        })?;
    let mut entries = vec![0u8; n * esize];
    f.seek(SeekFrom::Start(entries_at))?;
    f.read_exact(&mut entries)?;
    if crc32fast::hash(&entries) != ecrc {
        return Err(bad(
            "GPT partition entries checksum mismatch (the partition table is corrupted)".into(),
        ));
    }
    let mut out = Vec::new();
    for e in entries.chunks(esize) {
        if e[0..16].iter().all(|b| *b == 0) {
            continue;
        }
        let name: Vec<u16> = e[56..128]
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|c| *c != 0)
            .collect();
        let entry = Entry {
            type_guid: guid_text(&e[0..16]),
            guid: guid_text(&e[16..32]),
            label: String::from_utf16_lossy(&name),
            first_lba: u64::from_le_bytes(e[32..40].try_into().unwrap()),
            last_lba: u64::from_le_bytes(e[40..48].try_into().unwrap()),
            attributes: u64::from_le_bytes(e[48..56].try_into().unwrap()),
        };
        let end = entry
            .last_lba
            .checked_add(1)
            .and_then(|l| l.checked_mul(SECTOR));
        if entry.last_lba < entry.first_lba || end.is_none_or(|e| e > len) {
            return Err(bad(format!(
                "partition {} ends beyond the end of the disk image (truncated image?)",
                entry.label
            )));
        }
        out.push(entry);
    }
    Ok((disk_guid, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sfdisk_reads_what_we_write() {
        let d = tempfile::tempdir().unwrap();
        let esp = d.path().join("esp.img");
        std::fs::write(&esp, vec![0xabu8; 3 << 20]).unwrap();
        let parts = vec![
            Partition {
                type_guid: types::ESP.into(),
                guid: guid_from(b"esp"),
                label: "esp".into(),
                image: Some(esp.clone()),
                size: 3 << 20,
                attributes: 0,
            },
            Partition {
                type_guid: types::ROOT_X86_64.into(),
                guid: guid_from(b"root"),
                label: "root".into(),
                image: None,
                size: 5 << 20,
                attributes: 1 << 59,
            },
        ];
        let disk = d.path().join("disk.raw");
        let placed = write_disk(&disk, &guid_from(b"disk"), &parts).unwrap();
        assert_eq!(
            placed[0],
            Placed {
                first_lba: 2048,
                last_lba: 2048 + 6144 - 1
            }
        );
        let out = std::process::Command::new("sfdisk")
            .arg("--json")
            .arg(&disk)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let t = &j["partitiontable"];
        assert_eq!(t["label"], "gpt");
        assert_eq!(t["id"].as_str().unwrap().to_lowercase(), guid_from(b"disk"));
        let p = t["partitions"].as_array().unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0]["type"].as_str().unwrap().to_lowercase(), types::ESP);
        assert_eq!(
            p[0]["uuid"].as_str().unwrap().to_lowercase(),
            guid_from(b"esp")
        );
        assert_eq!(p[0]["name"], "esp");
        assert_eq!(p[0]["start"], 2048);
        assert_eq!(
            p[1]["type"].as_str().unwrap().to_lowercase(),
            types::ROOT_X86_64
        );
        assert_eq!(p[1]["name"], "root");
        // sfdisk finds no problem with either table (it checks both CRCs and the backup).
        let verify = std::process::Command::new("sfdisk")
            .arg("--verify")
            .arg(&disk)
            .output()
            .unwrap();
        assert!(
            verify.status.success(),
            "{}",
            String::from_utf8_lossy(&verify.stdout)
        );
        let bytes = std::fs::read(&disk).unwrap();
        assert_eq!(&bytes[2048 * 512..2048 * 512 + 4], &[0xab; 4]);
        // Deterministic.
        let disk2 = d.path().join("disk2.raw");
        write_disk(&disk2, &guid_from(b"disk"), &parts).unwrap();
        assert_eq!(bytes, std::fs::read(&disk2).unwrap());
    }

    #[test]
    fn tables_read_back_and_corruption_is_caught() {
        let d = tempfile::tempdir().unwrap();
        let disk = d.path().join("disk.raw");
        let parts = vec![Partition {
            type_guid: types::ESP.into(),
            guid: guid_from(b"esp"),
            label: "esp".into(),
            image: None,
            size: 2 << 20,
            attributes: 1 << 59,
        }];
        write_disk(&disk, &guid_from(b"disk"), &parts).unwrap();
        let (g, e) = read_table(&disk).unwrap();
        assert_eq!(g, guid_from(b"disk"));
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].type_guid, types::ESP);
        assert_eq!(e[0].guid, guid_from(b"esp"));
        assert_eq!(e[0].label, "esp");
        assert_eq!(e[0].attributes, 1 << 59);
        assert_eq!(e[0].offset(), 1 << 20);
        assert_eq!(e[0].size(), 2 << 20);
        let mut bytes = std::fs::read(&disk).unwrap();
        bytes[1024 + 40] ^= 0xff;
        std::fs::write(&disk, &bytes).unwrap();
        let err = read_table(&disk).unwrap_err().to_string();
        assert!(err.contains("corrupted"), "{err}");
    }

    #[test]
    fn oversized_partition_image_is_refused_with_sizes() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("big.img");
        std::fs::write(&img, vec![1u8; (2 << 20) + 1]).unwrap();
        let parts = vec![Partition {
            type_guid: types::ESP.into(),
            guid: guid_from(b"x"),
            label: "esp".into(),
            image: Some(img),
            size: 1 << 20,
            attributes: 0,
        }];
        let dest = d.path().join("disk.raw");
        let e = write_disk(&dest, &guid_from(b"d"), &parts).unwrap_err();
        assert!(
            e.to_string().contains("is larger than the partition"),
            "{e}"
        );
        assert!(!dest.exists(), "no half-written disk");
    }
}
