//! Kiln recipes (TOML, composed from classes) and lock files.

pub mod error;
pub mod lock;
pub mod recipe;
pub mod trace;

pub use error::RecipeError;
pub use lock::{Lock, LockedPackage, LockedRelease, Reason};
pub use recipe::{
    did_you_mean, host_architecture, lock_path_for, parse_size, valid_image_version, Customize,
    Disk, FileContent, FileEntry, Group, Headroom, Image, Output, Packages, Priority,
    PublishTarget, Recipe, SignedBy, SourceSpec, TestEntry, Update, User,
};
