//! Reading `.deb` files: the `ar` container, the control and data tarballs
//! and their compression (xz, zstd, gzip or none).
//!
//! A `.deb` is read from memory or from an open file; from a file nothing
//! is read whole: the members are read in place and decompressed as they
//! stream (a package's data can be far larger than memory).

use std::io::{BufReader, Read};
use std::ops::Range;

/// Problems reading a `.deb`.
#[derive(Debug, thiserror::Error)]
pub enum DebError {
    #[error("not a Debian package (no ar archive magic)")]
    NotAr,
    #[error("truncated ar archive (member header at byte {0})")]
    Truncated(u64),
    #[error("malformed ar member header at byte {0}")]
    BadHeader(u64),
    #[error("no {0} member")]
    Missing(&'static str),
    #[error("unsupported compression of member {0}")]
    Compression(String),
    #[error("unsupported package format version {0:?}")]
    Format(String),
    #[error("more than {0} ar members")]
    TooManyMembers(usize),
    #[error("reading the package: {0}")]
    Io(#[from] std::io::Error),
}

/// How many `ar` members a `.deb` may have (dpkg writes three).
const MAX_AR_MEMBERS: usize = 64;

/// How large the uncompressed `control.tar` may be: it holds the control
/// file, maintainer scripts and `md5sums`, a few MiB for the largest
/// packages. Read into memory, so bounded.
pub const CONTROL_LIMIT: u64 = 64 << 20;

/// Where the bytes of a `.deb` are.
enum Body {
    Memory(Vec<u8>),
    File { file: std::fs::File, len: u64 },
}

impl Body {
    fn len(&self) -> u64 {
        match self {
            Body::Memory(b) => b.len() as u64,
            Body::File { len, .. } => *len,
        }
    }

    fn read_at(&self, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
        match self {
            Body::Memory(b) => {
                let start = (off as usize).min(b.len());
                let n = buf.len().min(b.len() - start);
                buf[..n].copy_from_slice(&b[start..start + n]);
                Ok(n)
            }
            Body::File { file, .. } => std::os::unix::fs::FileExt::read_at(file, buf, off),
        }
    }

    fn read_exact_at(&self, buf: &mut [u8], off: u64) -> std::io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            match self.read_at(&mut buf[done..], off + done as u64) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// One member's bytes, read in place.
struct Section<'a> {
    body: &'a Body,
    pos: u64,
    end: u64,
}

impl Read for Section<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.end - self.pos) as usize;
        if n == 0 {
            return Ok(0);
        }
        let got = self.body.read_at(&mut buf[..n], self.pos)?;
        if got == 0 {
            // The file shrank under us.
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.pos += got as u64;
        Ok(got)
    }
}

/// A `.deb`, in memory or in an open file.
pub struct DebFile {
    body: Body,
    members: Vec<(String, Range<u64>)>,
}

impl DebFile {
    /// A `.deb` held in memory.
    pub fn parse(bytes: Vec<u8>) -> Result<DebFile, DebError> {
        Self::read(Body::Memory(bytes))
    }

    /// A `.deb` in an open file: members are read in place, never whole.
    pub fn from_file(file: std::fs::File) -> Result<DebFile, DebError> {
        let len = file.metadata()?.len();
        Self::read(Body::File { file, len })
    }

    fn read(body: Body) -> Result<DebFile, DebError> {
        let len = body.len();
        let mut magic = [0u8; 8];
        if len < 8 || body.read_exact_at(&mut magic, 0).is_err() || &magic != b"!<arch>\n" {
            return Err(DebError::NotAr);
        }
        let mut members = Vec::new();
        let mut pos = 8u64;
        while pos < len {
            if members.len() == MAX_AR_MEMBERS {
                return Err(DebError::TooManyMembers(MAX_AR_MEMBERS));
            }
            if pos + 60 > len {
                return Err(DebError::Truncated(pos));
            }
            let mut h = [0u8; 60];
            body.read_exact_at(&mut h, pos)?;
            if &h[58..60] != b"`\n" {
                return Err(DebError::BadHeader(pos));
            }
            let name = String::from_utf8_lossy(&h[..16])
                .trim_end()
                .trim_end_matches('/')
                .to_string();
            let size: u64 = std::str::from_utf8(&h[48..58])
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or(DebError::BadHeader(pos))?;
            let start = pos + 60;
            let end = start
                .checked_add(size)
                .filter(|&e| e <= len)
                .ok_or(DebError::Truncated(pos))?;
            members.push((name, start..end));
            pos = end + (size & 1);
        }
        let deb = DebFile { body, members };
        let (_, range) = deb
            .members
            .iter()
            .find(|(n, _)| n == "debian-binary")
            .ok_or(DebError::Missing("debian-binary"))?;
        // "2.0\n"; anything long is not a version.
        let mut version = vec![0u8; (range.end - range.start).min(16) as usize];
        deb.body.read_exact_at(&mut version, range.start)?;
        let v = String::from_utf8_lossy(&version).trim().to_string();
        if !v.starts_with("2.") {
            return Err(DebError::Format(v));
        }
        Ok(deb)
    }

    fn tar(&self, base: &'static str) -> Result<Box<dyn Read + Send + '_>, DebError> {
        let (name, range) = self
            .members
            .iter()
            .find(|(n, _)| n == base || n.starts_with(&format!("{base}.")))
            .ok_or(DebError::Missing(base))?;
        let data = BufReader::with_capacity(
            64 << 10,
            Section {
                body: &self.body,
                pos: range.start,
                end: range.end,
            },
        );
        Ok(match &name[base.len()..] {
            "" => Box::new(data),
            ".xz" => Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(data)),
            ".gz" => Box::new(flate2::bufread::MultiGzDecoder::new(data)),
            ".zst" => Box::new(
                zstd::stream::read::Decoder::with_buffer(data)
                    .map_err(|_| DebError::Compression(name.clone()))?,
            ),
            _ => return Err(DebError::Compression(name.clone())),
        })
    }

    /// The uncompressed `control.tar` stream.
    pub fn control_tar(&self) -> Result<tar::Archive<Box<dyn Read + Send + '_>>, DebError> {
        Ok(tar::Archive::new(self.tar("control.tar")?))
    }

    /// The uncompressed `data.tar` stream. Unbounded: the caller limits
    /// what it reads (see `kiln_rootfs::extract::Limits`).
    pub fn data_tar(&self) -> Result<tar::Archive<Box<dyn Read + Send + '_>>, DebError> {
        Ok(tar::Archive::new(self.data()?))
    }

    /// The uncompressed bytes of `data.tar`, as they stream.
    pub fn data(&self) -> Result<Box<dyn Read + Send + '_>, DebError> {
        self.tar("data.tar")
    }

    /// Every member of `control.tar` (name without `./`, contents, mode).
    /// At most [`CONTROL_LIMIT`] bytes of the uncompressed stream are read.
    pub fn control_files(&self) -> std::io::Result<Vec<(String, Vec<u8>, u32)>> {
        let stream = self.tar("control.tar").map_err(std::io::Error::other)?;
        let mut ar = tar::Archive::new(AtMost {
            inner: stream,
            left: CONTROL_LIMIT,
        });
        let mut out = Vec::new();
        for e in ar.entries()? {
            let mut e = e?;
            if e.header().entry_type() != tar::EntryType::Regular {
                continue;
            }
            let name = e
                .path()?
                .to_string_lossy()
                .trim_start_matches("./")
                .to_string();
            let mode = e.header().mode().unwrap_or(0o644);
            let mut b = Vec::new();
            e.read_to_end(&mut b)?;
            out.push((name, b, mode));
        }
        Ok(out)
    }
}

/// A reader that fails once more than `left` bytes were asked of it.
struct AtMost<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for AtMost<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self.left.checked_sub(n as u64).ok_or_else(|| {
            std::io::Error::other(format!(
                "control.tar is larger than {} MiB uncompressed",
                CONTROL_LIMIT >> 20
            ))
        })?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_non_ar_and_truncated_files() {
        assert!(matches!(
            DebFile::parse(b"hello".to_vec()),
            Err(DebError::NotAr)
        ));
        let mut b =
            b"!<arch>\ndebian-binary   0           0     0     100644  4         `\n2.0".to_vec();
        assert!(matches!(
            DebFile::parse(b.clone()),
            Err(DebError::Truncated(_))
        ));
        b.push(b'\n');
        assert!(DebFile::parse(b).is_ok());
    }

    #[test]
    fn a_file_is_read_in_place_like_memory() {
        let mut b =
            b"!<arch>\ndebian-binary   0           0     0     100644  4         `\n2.0\n".to_vec();
        // An uncompressed data.tar: one empty tar (two zero blocks).
        b.extend_from_slice(
            format!(
                "{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
                "data.tar", 0, 0, 0, 100644, 1024
            )
            .as_bytes(),
        );
        b.extend_from_slice(&[0; 1024]);
        let path = std::env::temp_dir().join(format!("kiln-deb-test-{}.deb", std::process::id()));
        std::fs::write(&path, &b).unwrap();
        let f = std::fs::File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        for deb in [
            DebFile::parse(b.clone()).unwrap(),
            DebFile::from_file(f).unwrap(),
        ] {
            let mut data = Vec::new();
            deb.data().unwrap().read_to_end(&mut data).unwrap();
            assert_eq!(data, vec![0; 1024]);
            assert!(matches!(
                deb.control_tar(),
                Err(DebError::Missing("control.tar"))
            ));
        }
        // A member claiming more bytes than the file has.
        let mut t = b.clone();
        t.truncate(t.len() - 1);
        assert!(matches!(DebFile::parse(t), Err(DebError::Truncated(_))));
    }
}
