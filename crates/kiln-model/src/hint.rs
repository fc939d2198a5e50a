//! Errors that carry what the user should do about them.

/// An error with a hint of its own: shown as `error: MESSAGE`, a blank
/// line, then `hint: HINT`.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Hinted {
    pub message: String,
    pub hint: String,
}

impl Hinted {
    pub fn new(message: impl Into<String>, hint: impl Into<String>) -> Hinted {
        Hinted {
            message: message.into(),
            hint: hint.into(),
        }
    }
}
