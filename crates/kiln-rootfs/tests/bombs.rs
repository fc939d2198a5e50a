//! Decompression bombs: a real `.deb` (built with dpkg-deb) declaring
//! `Installed-Size: 1` whose payload is 128 MiB of zeros (a few hundred KiB
//! compressed) is refused by the native unpacker full builds use for the
//! Essential set, by the distroless assembler and by the measuring pass
//! that guards dpkg, with no more than its limit ever written; an honest
//! package that understates its size a little still unpacks. No root needed.

use std::path::Path;
use std::sync::Arc;

use kiln_rootfs::distroless::{assemble, Trim};
use kiln_rootfs::extract::{ExtractError, Room};
use kiln_rootfs::install::{extract_natively, measure};
use kiln_rootfs::{PackageFile, RootfsError};
use kiln_testkit::{build_deb, Pkg};

const MIB: u64 = 1 << 20;

/// The bomb's limit: 4 × 1 KiB + 64 MiB.
const BOUND: u64 = 4 * 1024 + 64 * MIB;

/// 4 files of 32 MiB of zeros, declaring 1 KiB.
fn bomb() -> Pkg {
    let mut p = Pkg::new("bomb", "1").file("usr/share/doc/bomb/copyright", b"c\n");
    for i in 0..4 {
        p = p.zeros(&format!("usr/share/bomb/{i}"), 32 * MIB);
    }
    p
}

/// 70 MiB of zeros, declaring 32 MiB: more than declared and more than the
/// slack alone allows, but within 4 × 32 MiB + 64 MiB.
fn honest() -> Pkg {
    Pkg::new("honest", "1")
        .installed_size(32 * 1024)
        .zeros("usr/lib/honest/data", 70 * MIB)
        .file("usr/bin/honest", b"#!/bin/true\n")
}

fn file(p: &Pkg, dir: &Path, declared_kib: u64) -> PackageFile {
    PackageFile {
        name: p.name.clone(),
        version: p.version.clone(),
        arch: p.arch.clone(),
        essential_phase: true,
        deb: build_deb(p, dir),
        installed_size: declared_kib * 1024,
    }
}

fn trim() -> Trim {
    Trim {
        keep_locales: vec![],
        host_arch: false,
    }
}

/// File bytes below `dir` (links not followed).
fn bytes_below(dir: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = std::fs::symlink_metadata(e.path()).unwrap();
        if m.is_dir() {
            n += bytes_below(&e.path());
        } else if m.is_file() {
            n += m.len();
        }
    }
    n
}

fn assert_bomb(e: &RootfsError) {
    let text = e.to_string();
    assert!(text.starts_with("unpacking bomb: "), "{text}");
    assert!(text.contains("likely decompression bomb"), "{text}");
    assert!(text.contains("Installed-Size: 1 (1.0 KiB)"), "{text}");
    assert!(text.contains("more than 64.0 MiB"), "{text}");
    match e {
        RootfsError::Extract {
            package,
            source: ExtractError::TooLarge { limit, written, .. },
        } => {
            assert_eq!(package, "bomb");
            assert_eq!(*limit, BOUND);
            assert!(*written <= BOUND, "{written} written");
        }
        other => panic!("not refused as a bomb: {other}"),
    }
    let hint = e.hint().expect("a hint");
    assert!(hint.contains("KILN_UNPACK_LIMIT"), "{hint}");
}

#[test]
fn the_native_unpack_refuses_a_bomb_before_it_lands() {
    let d = tempfile::tempdir().unwrap();
    let pf = file(&bomb(), &d.path().join("debs"), 1);
    // A few hundred KiB for 128 MiB of payload.
    assert!(std::fs::metadata(&pf.deb).unwrap().len() < MIB);
    let root = d.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let e = extract_natively(&root, &[&pf], 2, None).unwrap_err();
    assert_bomb(&e);
    let landed = bytes_below(&root);
    assert!(landed <= BOUND, "{landed} bytes landed");
    // Two whole files fit the limit; the third was stopped and removed.
    assert_eq!(landed, 64 * MIB);
    // What guards the root's dpkg refuses it too, writing nothing.
    assert_bomb(&measure(&[&pf], 1, None).unwrap_err());
}

#[test]
fn a_distroless_assembly_refuses_a_bomb_before_it_lands() {
    let d = tempfile::tempdir().unwrap();
    let pf = file(&bomb(), &d.path().join("debs"), 1);
    let area = d.path().join("area");
    let root = area.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let e = assemble(&root, &area.join("stage"), &[pf], &trim(), &[], None).unwrap_err();
    assert_bomb(&e);
    // The staged files, the stopped one included, are all that was written.
    let landed = bytes_below(&area);
    assert!(landed <= BOUND, "{landed} bytes landed");
    assert!(landed >= 64 * MIB, "{landed}");
}

#[test]
fn an_honest_package_that_understates_its_size_a_little_unpacks() {
    let d = tempfile::tempdir().unwrap();
    let pf = file(&honest(), &d.path().join("debs"), 32 * 1024);
    let area = d.path().join("area");
    let root = area.join("root");
    std::fs::create_dir_all(&root).unwrap();
    assemble(
        &root,
        &area.join("stage"),
        std::slice::from_ref(&pf),
        &trim(),
        &[],
        None,
    )
    .unwrap();
    let len = |p: &Path| std::fs::metadata(p).unwrap().len();
    assert_eq!(len(&root.join("usr/lib/honest/data")), 70 * MIB);
    assert!(!area.join("stage").exists());
    let native = d.path().join("native");
    std::fs::create_dir(&native).unwrap();
    extract_natively(&native, &[&pf], 2, None).unwrap();
    assert_eq!(len(&native.join("usr/lib/honest/data")), 70 * MIB);
    assert_eq!(measure(&[&pf], 1, None).unwrap(), 70 * MIB + 12);
}

#[test]
fn packages_within_their_limits_can_still_outgrow_the_room_in_ram() {
    let d = tempfile::tempdir().unwrap();
    let pf = file(&honest(), &d.path().join("debs"), 32 * 1024);
    let root = d.path().join("root");
    std::fs::create_dir(&root).unwrap();
    // A room smaller than the payload: the area would outgrow its RAM.
    let room = Arc::new(Room::new(50 * MIB));
    let e = extract_natively(&root, &[&pf], 2, Some(room.clone())).unwrap_err();
    assert!(
        matches!(
            e,
            RootfsError::Extract {
                source: ExtractError::RoomExceeded { .. },
                ..
            }
        ),
        "{e}"
    );
    assert!(bytes_below(&root) <= 50 * MIB);
    assert!(room.used() <= 50 * MIB);
}
