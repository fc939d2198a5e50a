//! Kiln's compressed qcow2 against QEMU's own tools: `qemu-img check`
//! finds no error or leak, `qemu-img compare` finds the raw disk's bytes,
//! and the file is the same bytes on every run and at any thread count.

use std::path::Path;
use std::process::Command;

const MIB: usize = 1 << 20;

fn qemu_img(args: &[&str]) -> (bool, String) {
    let o = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img (qemu-utils) runs");
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// A sparse disk with text-like data, noise (which does not compress), a
/// block of zeros written out, holes, and an odd tail.
fn disk(p: &Path) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(p).unwrap();
    f.set_len((40 * MIB + 12800) as u64).unwrap();
    let text: Vec<u8> = (0..6 * MIB)
        .map(|i| b"kiln fires debian images "[i % 25])
        .collect();
    f.write_all_at(&text, MIB as u64).unwrap();
    let noise = kiln_testkit::noise(3 * MIB, 0x9e37_79b9_7f4a_7c15);
    f.write_all_at(&noise, (9 * MIB + 100) as u64).unwrap();
    f.write_all_at(&vec![0u8; 2 * MIB], (20 * MIB) as u64)
        .unwrap();
    f.write_all_at(b"the end", (40 * MIB + 12000) as u64)
        .unwrap();
}

#[test]
fn qemu_reads_the_disk_back_and_the_bytes_do_not_change() {
    let t = tempfile::tempdir().unwrap();
    let raw = t.path().join("disk.raw");
    disk(&raw);
    let q = t.path().join("disk.qcow2");
    kiln_image::qcow2::write_qcow2(&raw, &q, 2).unwrap();
    let (ok, out) = qemu_img(&["check", q.to_str().unwrap()]);
    assert!(ok && out.contains("No errors were found"), "{out}");
    assert!(out.contains("compressed clusters"), "{out}");
    let (ok, out) = qemu_img(&[
        "compare",
        "-f",
        "raw",
        "-F",
        "qcow2",
        raw.to_str().unwrap(),
        q.to_str().unwrap(),
    ]);
    assert!(ok && out.contains("identical"), "{out}");
    let (ok, info) = qemu_img(&["info", "--output=json", q.to_str().unwrap()]);
    assert!(ok, "{info}");
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(v["virtual-size"], (40 * MIB + 12800) as u64);
    assert_eq!(v["format-specific"]["data"]["compat"], "1.1");
    // Far smaller than the data it holds (the text compresses, the holes
    // and zeros take nothing), larger than the noise alone.
    let size = std::fs::metadata(&q).unwrap().len() as usize;
    assert!(size > 3 * MIB && size < 5 * MIB, "{size}");
    // The same bytes again, with one thread or with many.
    for threads in [1, 7] {
        let again = t.path().join(format!("again-{threads}.qcow2"));
        kiln_image::qcow2::write_qcow2(&raw, &again, threads).unwrap();
        assert!(
            std::fs::read(&q).unwrap() == std::fs::read(&again).unwrap(),
            "{threads} threads"
        );
    }
}
