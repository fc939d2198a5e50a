//! Kiln's pipeline as a library: a serialisable [`BuildRequest`], the
//! sources it names, a [`Reporter`](kiln_model::Reporter) for progress and
//! a [`Cancel`](kiln_model::Cancel) handle go in; a typed
//! [`Manifest`](kiln_model::Manifest) comes out. Nothing here is
//! process-wide: two builds in one process are independent.
//!
//! recipe ──lock──▶ lock ──fetch──▶ cache ──assemble──▶ root ──outputs──▶ artifacts
//!                                                         └─records──▶ SBOMs, provenance, manifest

pub mod assemble;
pub mod fetch;
pub mod lock;
pub mod output;
pub mod pipeline;
pub mod reclaim;
pub mod records;
pub mod requirements;
pub mod sources;
pub mod verify;

pub use pipeline::{build, epoch_for, BuildRequest};
pub use sources::SourceOptions;
