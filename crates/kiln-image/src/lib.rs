//! Kiln's output writers. For now: the deterministic root filesystem tarball.

pub mod oci;
pub mod pgzip;
pub mod tar_writer;

pub use tar_writer::{write_tar_file, TarOptions, TarSummary};
