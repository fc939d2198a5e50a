//! `cargo run --release -p kiln-image --example qcow2 -- DISK.raw OUT.qcow2`:
//! Kiln's qcow2 writer alone (for bench/disk.sh and by hand).
fn main() {
    let a: Vec<String> = std::env::args().collect();
    assert!(a.len() == 3, "usage: qcow2 DISK.raw OUT.qcow2");
    kiln_image::disk::make_qcow2(a[1].as_ref(), a[2].as_ref()).unwrap();
}
