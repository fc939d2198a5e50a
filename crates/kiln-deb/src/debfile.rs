//! Reading `.deb` files: the `ar` container, the control and data tarballs
//! and their compression (xz, zstd, gzip or none).

use std::io::Read;
use std::ops::Range;

/// Problems reading a `.deb`.
#[derive(Debug, thiserror::Error)]
pub enum DebError {
    #[error("not a Debian package (no ar archive magic)")]
    NotAr,
    #[error("truncated ar archive (member header at byte {0})")]
    Truncated(usize),
    #[error("malformed ar member header at byte {0}")]
    BadHeader(usize),
    #[error("no {0} member")]
    Missing(&'static str),
    #[error("unsupported compression of member {0}")]
    Compression(String),
    #[error("unsupported package format version {0:?}")]
    Format(String),
}

/// A `.deb` held in memory.
pub struct DebFile {
    bytes: Vec<u8>,
    members: Vec<(String, Range<usize>)>,
}

impl DebFile {
    pub fn parse(bytes: Vec<u8>) -> Result<DebFile, DebError> {
        if !bytes.starts_with(b"!<arch>\n") {
            return Err(DebError::NotAr);
        }
        let mut members = Vec::new();
        let mut pos = 8;
        while pos < bytes.len() {
            if pos + 60 > bytes.len() {
                return Err(DebError::Truncated(pos));
            }
            let h = &bytes[pos..pos + 60];
            if &h[58..60] != b"`\n" {
                return Err(DebError::BadHeader(pos));
            }
            let name = String::from_utf8_lossy(&h[..16])
                .trim_end()
                .trim_end_matches('/')
                .to_string();
            let size: usize = std::str::from_utf8(&h[48..58])
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or(DebError::BadHeader(pos))?;
            let start = pos + 60;
            let end = start
                .checked_add(size)
                .filter(|&e| e <= bytes.len())
                .ok_or(DebError::Truncated(pos))?;
            members.push((name, start..end));
            pos = end + (size & 1);
        }
        let deb = DebFile { bytes, members };
        let version = deb
            .member("debian-binary")
            .ok_or(DebError::Missing("debian-binary"))?;
        let v = String::from_utf8_lossy(version).trim().to_string();
        if !v.starts_with("2.") {
            return Err(DebError::Format(v));
        }
        Ok(deb)
    }

    fn member(&self, name: &str) -> Option<&[u8]> {
        self.members
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, r)| &self.bytes[r.clone()])
    }

    fn tar(&self, base: &'static str) -> Result<Box<dyn Read + '_>, DebError> {
        let (name, range) = self
            .members
            .iter()
            .find(|(n, _)| n == base || n.starts_with(&format!("{base}.")))
            .ok_or(DebError::Missing(base))?;
        let data = &self.bytes[range.clone()];
        Ok(match &name[base.len()..] {
            "" => Box::new(data),
            ".xz" => Box::new(liblzma::read::XzDecoder::new_multi_decoder(data)),
            ".gz" => Box::new(flate2::read::MultiGzDecoder::new(data)),
            ".zst" => Box::new(
                zstd::stream::read::Decoder::with_buffer(data)
                    .map_err(|_| DebError::Compression(name.clone()))?,
            ),
            _ => return Err(DebError::Compression(name.clone())),
        })
    }

    /// The uncompressed `control.tar` stream.
    pub fn control_tar(&self) -> Result<tar::Archive<Box<dyn Read + '_>>, DebError> {
        Ok(tar::Archive::new(self.tar("control.tar")?))
    }

    /// The uncompressed `data.tar` stream.
    pub fn data_tar(&self) -> Result<tar::Archive<Box<dyn Read + '_>>, DebError> {
        Ok(tar::Archive::new(self.tar("data.tar")?))
    }

    /// Every member of `control.tar` (name without `./`, contents, mode).
    pub fn control_files(&self) -> std::io::Result<Vec<(String, Vec<u8>, u32)>> {
        let mut out = Vec::new();
        let mut ar = self.control_tar().map_err(std::io::Error::other)?;
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
}
