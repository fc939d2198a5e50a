//! Parallel gzip: the stream is cut into fixed-size chunks, each compressed
//! on its own core as a separate gzip member, and the members are written
//! in order. A multi-member gzip file is valid gzip (RFC 1952) and every
//! container runtime's reader accepts it; the output depends only on the
//! input and the chunk size, not on scheduling, so layers stay reproducible.

use std::io::Write;
use std::sync::mpsc;

const CHUNK: usize = 4 << 20;

pub struct ParallelGz<W: Write> {
    out: W,
    level: u32,
    buf: Vec<u8>,
    /// Chunks handed to workers, in order, each with the receiver of its result.
    pending: std::collections::VecDeque<mpsc::Receiver<std::io::Result<Vec<u8>>>>,
    max_pending: usize,
}

impl<W: Write> ParallelGz<W> {
    pub fn new(out: W, level: u32) -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        ParallelGz {
            out,
            level,
            buf: Vec::with_capacity(CHUNK),
            pending: Default::default(),
            max_pending: cores + 1,
        }
    }

    fn dispatch(&mut self) -> std::io::Result<()> {
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        let (tx, rx) = mpsc::channel();
        let level = self.level;
        std::thread::spawn(move || {
            let mut enc = flate2::GzBuilder::new().mtime(0).write(
                Vec::with_capacity(chunk.len() / 2),
                flate2::Compression::new(level),
            );
            let r = enc.write_all(&chunk).and_then(|()| enc.finish());
            let _ = tx.send(r);
        });
        self.pending.push_back(rx);
        while self.pending.len() > self.max_pending {
            self.drain_one()?;
        }
        Ok(())
    }

    fn drain_one(&mut self) -> std::io::Result<()> {
        if let Some(rx) = self.pending.pop_front() {
            let member = rx
                .recv()
                .map_err(|_| std::io::Error::other("compression worker died"))??;
            self.out.write_all(&member)?;
        }
        Ok(())
    }

    /// Compresses what is left and returns the inner writer.
    pub fn finish(mut self) -> std::io::Result<W> {
        if !self.buf.is_empty() || self.pending.is_empty() {
            self.dispatch()?;
        }
        while !self.pending.is_empty() {
            self.drain_one()?;
        }
        Ok(self.out)
    }
}

impl<W: Write> Write for ParallelGz<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let room = CHUNK - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.dispatch()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn round_trips_and_is_deterministic() {
        let data: Vec<u8> = (0..(CHUNK * 2 + 12345))
            .map(|i| (i % 251) as u8 ^ (i / 7919) as u8)
            .collect();
        let compress = || {
            let mut z = ParallelGz::new(Vec::new(), 4);
            z.write_all(&data).unwrap();
            z.finish().unwrap()
        };
        let a = compress();
        assert_eq!(a, compress());
        let mut back = Vec::new();
        flate2::read::MultiGzDecoder::new(&a[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
        // Empty input is still a valid gzip file.
        let e = ParallelGz::new(Vec::new(), 4).finish().unwrap();
        let mut back = Vec::new();
        flate2::read::MultiGzDecoder::new(&e[..])
            .read_to_end(&mut back)
            .unwrap();
        assert!(back.is_empty());
    }
}
