//! Supply-chain records for a Kiln image build.
//!
//! - SBOMs of the packages in an image: [`spdx_json`] (SPDX 2.3) and
//!   [`cyclonedx_json`] (CycloneDX 1.5), with licences read from Debian
//!   copyright files by [`license_from_copyright`].
//! - SLSA v1 build provenance: [`statement`] makes the in-toto Statement,
//!   [`sign_envelope`] wraps it in a DSSE envelope signed with an Ed25519
//!   [`SigningKey`] (or [`unsigned_envelope`] without a key), and
//!   [`verify_envelope`] + [`parse_statement`] read it back.
//!
//! Everything is deterministic: the same input gives the same bytes.
//!
//! A signed provenance can be checked without Kiln, with `jq`, `base64` and
//! openssl (the signature is over the DSSE pre-authentication encoding,
//! [`pae`]):
//!
//! ```sh
//! jq -j .payload image.intoto.json | base64 -d > payload.json
//! jq -j '.signatures[0].sig' image.intoto.json | base64 -d > sig.bin
//! T=application/vnd.in-toto+json
//! printf 'DSSEv1 %d %s %d ' ${#T} "$T" "$(stat -c %s payload.json)" > pae.bin
//! cat payload.json >> pae.bin
//! openssl pkeyutl -verify -pubin -inkey key.pub -rawin -in pae.bin -sigfile sig.bin
//! ```

mod dsse;
mod error;
mod license;
pub mod openpgp;
mod provenance;
mod sbom;
mod util;

pub use dsse::{
    pae, sign_envelope, sign_envelope_as, unsigned_envelope, verify_envelope, verify_envelope_as,
    SigningKey, VerifyingKey, PAYLOAD_TYPE,
};
pub use error::AttestError;
pub use license::license_from_copyright;
pub use provenance::{
    parse_statement, statement, ProvenanceInput, ResolvedDependency, Subject, SLSA_PROVENANCE_V1,
    STATEMENT_TYPE,
};
pub use sbom::{
    cyclonedx_json, deb_purl, spdx_json, ImageKind, OsRelease, SbomInput, SbomPackage,
    SPDX_NAMESPACE_BASE,
};
