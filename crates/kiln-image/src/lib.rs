//! Kiln's output writers: the deterministic root filesystem tarball, OCI
//! image layouts and GPT disk images.

pub mod cloud;
pub mod disk;
pub mod gpt;
pub mod oci;
pub mod pgzip;
pub mod qcow2;
pub mod tar_writer;

pub use tar_writer::{write_tar_file, TarOptions, TarSummary};
