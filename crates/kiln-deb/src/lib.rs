//! Debian's own data formats, as pure functions over text.
//!
//! Kiln reads archive indices and package metadata and must interpret them
//! exactly as dpkg and apt do: the same version ordering, the same control
//! file syntax, the same relationship grammar. Keeping these formats here,
//! with no network access and no file opened by path (a `.deb` is read from
//! memory or from a file the caller opened), lets the fetching and resolving crates
//! share one faithful implementation that is cheap to test exhaustively.
//!
//! - [`version`]: version parsing and dpkg's ordering.
//! - [`deb822`]: zero-copy parser for control files and archive indices.
//! - [`relation`]: `Depends`-style relationship fields.

pub mod deb822;
pub mod debfile;
pub mod relation;
pub mod version;

pub use deb822::{multiline_lines, paragraphs, Deb822Error, Paragraph, Paragraphs};
pub use relation::{fmt_group, parse_provides, parse_relations, Dep, Op, RelationError};
pub use version::{compare, Version, VersionError, VersionErrorKind};
