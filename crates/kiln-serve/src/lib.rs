//! The image finder: one self-contained page over the catalog that answers
//! "which images ship openssl, at which version, did they pass their tests
//! and where do I get them".
//!
//! Two ways to host it, one page for both:
//! - [`serve`]: a small HTTP/1.1 server (std only, a thread per connection,
//!   bounded) with a JSON API that filters in the catalog;
//! - [`export`]: the same page and the unfiltered JSON as static files to
//!   put beside a download tree; the page then filters in the browser.
//!
//! Catalog strings are outside data: the server only ever sends them as
//! JSON, and the page inserts them as text, never as markup.

mod api;
mod export;
mod http;
mod page;

use std::path::PathBuf;

pub use api::SCHEMA_VERSION;
pub use export::{export, ExportReport};
pub use http::serve;

/// The catalog for reading: opened (created or migrated) when this user
/// may write it, else read-only, so a catalog owned by the build user can
/// be served by another.
pub(crate) fn open_catalog(
    path: &std::path::Path,
) -> Result<kiln_catalog::Catalog, kiln_catalog::CatalogError> {
    kiln_catalog::Catalog::open_read_only(path).or_else(|_| kiln_catalog::Catalog::open(path))
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Catalog(#[from] kiln_catalog::CatalogError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Refused {
        path: PathBuf,
        message: String,
        hint: String,
    },
}

impl ServeError {
    /// What the user can do about it, for the `hint:` line.
    pub fn hint(&self) -> Option<String> {
        match self {
            ServeError::Catalog(e) => e.hint(),
            ServeError::Bind { .. } => {
                Some("give another address, e.g. --listen 127.0.0.1:0 for any free port".into())
            }
            ServeError::Io { .. } => None,
            ServeError::Refused { hint, .. } => Some(hint.clone()),
        }
    }
}
