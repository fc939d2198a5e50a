//! `.deb` files from a hostile repository: reading the ar container, the
//! control members and the data tarball never panics and never reads past
//! the limits, whatever the member headers, compressions and sizes claim.
#![no_main]

use std::io::Read;

use kiln_deb::debfile::DebFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(deb) = DebFile::parse(data.to_vec()) else {
        return;
    };
    if let Ok(files) = deb.control_files() {
        let total: u64 = files.iter().map(|(_, body, _)| body.len() as u64).sum();
        assert!(
            total <= kiln_deb::debfile::CONTROL_LIMIT,
            "control members hold {total} bytes"
        );
    }
    if let Ok(mut tar) = deb.data_tar() {
        if let Ok(entries) = tar.entries() {
            for entry in entries.take(10_000) {
                let Ok(mut entry) = entry else { break };
                let _ = entry.path();
                let _ = entry.link_name();
                let mut sink = Vec::new();
                let _ = entry.by_ref().take(1 << 20).read_to_end(&mut sink);
            }
        }
    };
});
