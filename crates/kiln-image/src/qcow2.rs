//! A compressed qcow2 (version 3) written in-process, its clusters
//! compressed on every core and written in order, so the output is the
//! same bytes on every run and every machine.
//!
//! Layout: the header (cluster 0), the L1 table, every L2 table the disk
//! needs, the data (compressed clusters packed byte after byte; a cluster
//! that does not shrink is stored as it is, cluster-aligned), then the
//! refcount blocks and the refcount table. Clusters of zeros are left
//! unallocated (they read as zeros), and the raw disk's holes are never
//! read (`SEEK_DATA`). Compressed clusters are raw deflate with a 4 KiB
//! window, as QEMU reads them.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

const CLUSTER_BITS: u32 = 16;
const CLUSTER: u64 = 1 << CLUSTER_BITS;
const L2_ENTRIES: u64 = CLUSTER / 8;
const REFCOUNTS_PER_BLOCK: u64 = CLUSTER / 2; // 16-bit refcounts
const COPIED: u64 = 1 << 63;
const COMPRESSED: u64 = 1 << 62;
/// Clusters read and compressed at once (per round, over all threads).
const BATCH: usize = 512;

/// What one cluster became.
enum Stored {
    Zero,
    Raw(Vec<u8>),
    Deflated(Vec<u8>),
}

fn deflate(data: &[u8]) -> std::io::Result<Vec<u8>> {
    use flate2::{Compress, Compression, FlushCompress, Status};
    // Raw deflate, a 4 KiB window (QEMU inflates with windowBits -12).
    let mut c = Compress::new_with_window_bits(Compression::new(6), false, 12);
    let mut out = Vec::with_capacity(data.len());
    loop {
        let before = c.total_in() as usize;
        let st = c
            .compress_vec(&data[before..], &mut out, FlushCompress::Finish)
            .map_err(std::io::Error::other)?;
        if st == Status::StreamEnd {
            return Ok(out);
        }
        if out.len() >= data.len() {
            // It does not shrink: the caller stores the cluster as it is.
            return Ok(out);
        }
        out.reserve(data.len());
    }
}

fn is_zero(b: &[u8]) -> bool {
    let (pre, words, post) = unsafe { b.align_to::<u64>() };
    pre.iter().all(|&x| x == 0) && words.iter().all(|&x| x == 0) && post.iter().all(|&x| x == 0)
}

/// The data extents of `f` (`SEEK_DATA`/`SEEK_HOLE`), as cluster ranges.
fn data_clusters(f: &File, size: u64) -> Vec<bool> {
    use std::os::fd::AsRawFd;
    let n = size.div_ceil(CLUSTER) as usize;
    let mut has = vec![false; n];
    let fd = f.as_raw_fd();
    let mut at: i64 = 0;
    loop {
        let start = unsafe { libc::lseek(fd, at, libc::SEEK_DATA) };
        if start < 0 || start as u64 >= size {
            break;
        }
        let end = unsafe { libc::lseek(fd, start, libc::SEEK_HOLE) };
        let end = if end < 0 {
            size as i64
        } else {
            end.min(size as i64)
        };
        let (a, b) = (
            (start as u64 / CLUSTER) as usize,
            (end as u64).div_ceil(CLUSTER) as usize,
        );
        for h in &mut has[a..b.min(n)] {
            *h = true;
        }
        if end as u64 >= size {
            break;
        }
        at = end;
    }
    // A file system without SEEK_DATA says all data; that is still right.
    has
}

/// Writes `raw` as a compressed qcow2 at `out` with `threads` compressors.
pub fn write_qcow2(raw: &Path, out: &Path, threads: usize) -> std::io::Result<()> {
    let src = File::open(raw)?;
    let size = src.metadata()?.len();
    let n = size.div_ceil(CLUSTER);
    let l2_tables = n.div_ceil(L2_ENTRIES);
    let l1_clusters = (l2_tables * 8).div_ceil(CLUSTER).max(1);
    let l1_offset = CLUSTER;
    let l2_offset = l1_offset + l1_clusters * CLUSTER;
    let data_start = l2_offset + l2_tables * CLUSTER;
    let has = data_clusters(&src, size);

    let dst = File::create(out)?;
    let mut w = BufWriter::with_capacity(4 << 20, &dst);
    w.seek(SeekFrom::Start(data_start))?;
    let mut at = data_start;
    let mut l2 = vec![0u64; (l2_tables * L2_ENTRIES) as usize];
    // Host cluster → refcount, for the data region.
    let mut refs: Vec<u16> = Vec::new();
    let bump = |refs: &mut Vec<u16>, from: u64, len: u64| {
        let (a, b) = (from / CLUSTER, (from + len - 1) / CLUSTER);
        if refs.len() <= b as usize {
            refs.resize(b as usize + 1, 0);
        }
        for c in a..=b {
            refs[c as usize] += 1;
        }
    };
    let threads = threads.max(1);
    let mut next = 0u64;
    while next < n {
        let ids: Vec<u64> = (next..n).take(BATCH).collect();
        next += ids.len() as u64;
        let stored: Vec<std::io::Result<Stored>> = std::thread::scope(|s| {
            let chunks: Vec<&[u64]> = ids.chunks(ids.len().div_ceil(threads)).collect();
            let handles: Vec<_> = chunks
                .into_iter()
                .map(|chunk| {
                    let src = &src;
                    let has = &has;
                    s.spawn(move || {
                        let mut buf = vec![0u8; CLUSTER as usize];
                        chunk
                            .iter()
                            .map(|&c| {
                                if !has[c as usize] {
                                    return Ok(Stored::Zero);
                                }
                                let off = c * CLUSTER;
                                let len = (size - off).min(CLUSTER) as usize;
                                buf[len..].fill(0);
                                src.read_exact_at(&mut buf[..len], off)?;
                                if is_zero(&buf) {
                                    return Ok(Stored::Zero);
                                }
                                let d = deflate(&buf)?;
                                // Worth it only when it saves a sector.
                                Ok(if d.len() + 512 < CLUSTER as usize {
                                    Stored::Deflated(d)
                                } else {
                                    Stored::Raw(buf.clone())
                                })
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("a compressing thread"))
                .collect()
        });
        for (&c, st) in ids.iter().zip(stored) {
            match st? {
                Stored::Zero => {}
                Stored::Deflated(d) => {
                    let len = d.len() as u64;
                    let sectors = ((at + len - 1) >> 9) - (at >> 9);
                    let x = 62 - (CLUSTER_BITS - 8);
                    l2[c as usize] = COMPRESSED | (sectors << x) | at;
                    w.write_all(&d)?;
                    bump(&mut refs, at, len);
                    at += len;
                }
                Stored::Raw(b) => {
                    let aligned = at.div_ceil(CLUSTER) * CLUSTER;
                    w.write_all(&vec![0u8; (aligned - at) as usize])?;
                    w.write_all(&b)?;
                    l2[c as usize] = COPIED | aligned;
                    bump(&mut refs, aligned, CLUSTER);
                    at = aligned + CLUSTER;
                }
            }
        }
    }
    // Refcount blocks and the table after the data, sized to count
    // themselves too.
    let data_end = at.div_ceil(CLUSTER);
    let (mut blocks, mut table) = (1u64, 1u64);
    loop {
        let total = data_end + blocks + table;
        let nb = total.div_ceil(REFCOUNTS_PER_BLOCK);
        let nt = (nb * 8).div_ceil(CLUSTER);
        if nb == blocks && nt == table {
            break;
        }
        (blocks, table) = (nb, nt);
    }
    let blocks_at = data_end * CLUSTER;
    let table_at = blocks_at + blocks * CLUSTER;
    let total = data_end + blocks + table;
    let mut rc = vec![0u16; (blocks * REFCOUNTS_PER_BLOCK) as usize];
    for c in 0..(data_start / CLUSTER) {
        rc[c as usize] = 1;
    }
    for (c, &r) in refs.iter().enumerate() {
        if c as u64 >= data_start / CLUSTER {
            rc[c] = r;
        }
    }
    for c in data_end..total {
        rc[c as usize] = 1;
    }
    let pad = blocks_at - at;
    w.write_all(&vec![0u8; pad as usize])?;
    let mut blk = Vec::with_capacity(rc.len() * 2);
    for r in &rc {
        blk.extend_from_slice(&r.to_be_bytes());
    }
    w.write_all(&blk)?;
    let mut t = vec![0u8; (table * CLUSTER) as usize];
    for b in 0..blocks {
        let off = blocks_at + b * CLUSTER;
        t[(b * 8) as usize..(b * 8 + 8) as usize].copy_from_slice(&off.to_be_bytes());
    }
    w.write_all(&t)?;

    // The metadata before the data.
    w.seek(SeekFrom::Start(0))?;
    let mut h = vec![0u8; CLUSTER as usize];
    let put32 = |h: &mut [u8], o: usize, v: u32| h[o..o + 4].copy_from_slice(&v.to_be_bytes());
    let put64 = |h: &mut [u8], o: usize, v: u64| h[o..o + 8].copy_from_slice(&v.to_be_bytes());
    h[..4].copy_from_slice(b"QFI\xfb");
    put32(&mut h, 4, 3);
    put32(&mut h, 20, CLUSTER_BITS);
    // QEMU counts in 512-byte sectors: a size between them is rounded up
    // (the rest reads as zeros) rather than losing the tail.
    put64(&mut h, 24, size.div_ceil(512) * 512);
    put32(&mut h, 36, l2_tables as u32);
    put64(&mut h, 40, l1_offset);
    put64(&mut h, 48, table_at);
    put32(&mut h, 56, table as u32);
    put32(&mut h, 96, 4);
    put32(&mut h, 100, 104);
    w.write_all(&h)?;
    let mut l1 = vec![0u8; (l1_clusters * CLUSTER) as usize];
    for t in 0..l2_tables {
        let used = l2[(t * L2_ENTRIES) as usize..((t + 1) * L2_ENTRIES) as usize]
            .iter()
            .any(|&e| e != 0);
        if used {
            put64(
                &mut l1,
                (t * 8) as usize,
                COPIED | (l2_offset + t * CLUSTER),
            );
        }
    }
    w.write_all(&l1)?;
    let mut tables = Vec::with_capacity(l2.len() * 8);
    for e in &l2 {
        tables.extend_from_slice(&e.to_be_bytes());
    }
    w.write_all(&tables)?;
    w.flush()?;
    drop(w);
    dst.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_clusters_deflate_with_a_small_window() {
        let data: Vec<u8> = (0..CLUSTER as usize).map(|i| (i / 7 % 13) as u8).collect();
        let d = deflate(&data).unwrap();
        assert!(d.len() < 4096, "{}", d.len());
        let mut z = flate2::Decompress::new_with_window_bits(false, 12);
        let mut out = Vec::with_capacity(CLUSTER as usize);
        z.decompress_vec(&d, &mut out, flate2::FlushDecompress::Finish)
            .unwrap();
        assert_eq!(out, data);
        assert!(is_zero(&[0u8; 77]) && !is_zero(&[0, 0, 1]));
    }
}
