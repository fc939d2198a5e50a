//! A detached OpenPGP signature from a hostile channel (`SHA256SUMS.gpg`):
//! checking it never panics and accepts nothing but a signature by the key
//! over exactly the data.
#![no_main]

use libfuzzer_sys::fuzz_target;

const PEM: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIBa5L1T55v8LU+qNQmjri6FsqJiJDQlXaZ7Omo2+R0XB\n-----END PRIVATE KEY-----\n";

fuzz_target!(|data: &[u8]| {
    let key = kiln_attest::SigningKey::from_pem(PEM).unwrap();
    let public = key.verifying_key();
    // The first byte says how long the signature is; the rest is the file.
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = (n as usize).min(rest.len());
    let (sig, file) = rest.split_at(n);
    if kiln_attest::openpgp::verify_detached(&public, file, sig).is_ok() {
        panic!("accepted a signature Kiln did not make");
    }
    // Kiln's own signature of the same bytes is accepted, and any change to
    // the file refuses it.
    let good = kiln_attest::openpgp::detached_signature(&key, file, 1_800_000_000);
    assert!(kiln_attest::openpgp::verify_detached(&public, file, &good).is_ok());
    if let Some((&first, tail)) = file.split_first() {
        let mut changed = vec![first ^ 1];
        changed.extend_from_slice(tail);
        assert!(kiln_attest::openpgp::verify_detached(&public, &changed, &good).is_err());
    }
});
