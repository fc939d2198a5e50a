//! Data tarballs from a hostile package: the native unpacker never panics
//! and never writes outside the root it is given, whatever links, `..`
//! components, hard links and absolute names the archive holds.
#![no_main]

use std::fs;
use std::path::Path;

use kiln_rootfs::extract::{unpack, Limits};
use libfuzzer_sys::fuzz_target;

/// Every name under `dir`, recursively, without following links.
fn names(dir: &Path, out: &mut Vec<String>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        out.push(p.display().to_string());
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            names(&p, out);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let scratch = tempfile::tempdir().expect("scratch dir");
    let root = scratch.path().join("root");
    let victim = scratch.path().join("victim");
    fs::create_dir(&root).unwrap();
    fs::create_dir(&victim).unwrap();
    fs::write(victim.join("passwd"), b"host\n").unwrap();
    let outside_before = {
        let mut v = Vec::new();
        names(&victim, &mut v);
        v
    };
    // Small limits keep every run short; the limits are what is tested by
    // the unit tests, the placing is what is fuzzed here.
    let limits = Limits::for_package(1 << 20);
    let _ = unpack(data, &root, &limits);
    let mut outside_after = Vec::new();
    names(&victim, &mut outside_after);
    assert_eq!(
        outside_before, outside_after,
        "the unpack created entries outside the root"
    );
    assert_eq!(
        fs::read(victim.join("passwd")).unwrap(),
        b"host\n",
        "the unpack wrote outside the root"
    );
    let top: Vec<_> = fs::read_dir(scratch.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(top.len(), 2, "the unpack created {top:?} beside the root");
});
