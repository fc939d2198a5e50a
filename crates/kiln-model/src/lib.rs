//! Kiln's shared records. Every stage after the build (verify, test,
//! publish, catalog, watch) reads the typed [`Manifest`] a build wrote;
//! progress travels as typed [`Event`]s through a [`Reporter`]; each build
//! owns its [`Cancel`] handle. No I/O beyond reading and writing these
//! records.

pub mod cancel;
pub mod event;
pub mod fsutil;
pub mod hint;
pub mod manifest;
pub mod owner;

pub use cancel::{Cancel, Cancelled};
pub use event::{Collect, Event, JsonReporter, NullReporter, Reporter, Stage};
pub use hint::Hinted;
pub use manifest::{
    relative_path, Artifact, DiskFacts, Format, LockRef, Manifest, ManifestError, PackageRecord,
    PartitionFact, TestSpec, UsrFacts, INCOMPLETE_MARKER, MANIFEST_FILE, SCHEMA_VERSION,
};
