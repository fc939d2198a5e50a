//! Starts the tests' Keystone and Glance for a benchmark or by hand:
//! `cargo run -p kiln-testkit --example openstack -- DIR` writes
//! `DIR/clouds.yaml` (the cloud `lab`), `DIR/glance-url` and `DIR/token`
//! (an admin token), then serves until stdin closes.

use kiln_testkit::openstack::{OpenStack, PASSWORD, REGION};

fn main() {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).expect("usage: openstack DIR"));
    std::fs::create_dir_all(&dir).unwrap();
    let os = OpenStack::start();
    os.clouds_yaml(&dir, "lab", PASSWORD, REGION);
    std::fs::write(dir.join("glance-url"), os.glance_url()).unwrap();
    std::fs::write(
        dir.join("token"),
        os.login("admin", PASSWORD).expect("the admin logs in"),
    )
    .unwrap();
    std::fs::write(dir.join("ready"), "").unwrap();
    let mut sink = String::new();
    let _ = std::io::Read::read_to_string(&mut std::io::stdin(), &mut sink);
}
