use std::path::PathBuf;

/// A recipe or lock problem, always naming the file (and line where known).
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}\n{snippet}")]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
        snippet: String,
        suggestion: Option<String>,
    },
    #[error("{path}: {message}")]
    Invalid {
        path: PathBuf,
        message: String,
        hint: Option<String>,
    },
    #[error("{path}: {} unknown keys:\n{}", keys.len(), keys.iter().map(|k| format!("  {}:{}: `{}`{}", k.line, k.column, k.key, k.suggestion.as_ref().map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default())).collect::<Vec<_>>().join("\n"))]
    UnknownKeys {
        path: PathBuf,
        keys: Vec<crate::trace::UnknownKey>,
    },
    #[error("include cycle: {0}")]
    IncludeCycle(String),
    #[error("the lock file {path} does not match its recipe ({detail})")]
    LockMismatch { path: PathBuf, detail: String },
}

impl RecipeError {
    pub fn hint(&self) -> Option<String> {
        match self {
            RecipeError::Syntax { suggestion, .. } => suggestion.clone(),
            RecipeError::Invalid { hint, .. } => hint.clone(),
            RecipeError::IncludeCycle(_) => Some("remove one of the includes".into()),
            RecipeError::LockMismatch { .. } => {
                Some("run `kiln lock RECIPE` to update the lock (without --locked/--check)".into())
            }
            RecipeError::UnknownKeys { .. } => {
                Some("fix or remove them; docs/recipe.md lists every key of every table".into())
            }
            RecipeError::Io { .. } => None,
        }
    }
}
