//! One check's outcome.

use serde::Serialize;

/// One check's outcome: passed, failed (with why) or skipped (with why).
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    /// `static` or `boot`.
    pub group: &'static str,
    pub name: String,
    /// None: passed (or skipped); Some: why it failed.
    pub failure: Option<String>,
    /// Some: why it was not run.
    pub skipped: Option<String>,
    pub seconds: f64,
}

impl Outcome {
    pub fn pass(group: &'static str, name: &str) -> Outcome {
        Outcome {
            group,
            name: name.into(),
            failure: None,
            skipped: None,
            seconds: 0.0,
        }
    }

    /// Passes without problems; else fails naming the first eight.
    pub fn check(group: &'static str, name: &str, problems: Vec<String>) -> Outcome {
        let mut o = Outcome::pass(group, name);
        if !problems.is_empty() {
            let shown: Vec<String> = problems.iter().take(8).cloned().collect();
            let more = if problems.len() > 8 {
                format!(" (and {} more)", problems.len() - 8)
            } else {
                String::new()
            };
            o.failure = Some(format!("{}{more}", shown.join("; ")));
        }
        o
    }

    pub fn fail(group: &'static str, name: &str, why: String) -> Outcome {
        Outcome::check(group, name, vec![why])
    }

    pub fn skip(group: &'static str, name: &str, why: &str) -> Outcome {
        let mut o = Outcome::pass(group, name);
        o.skipped = Some(why.into());
        o
    }

    pub fn failed(&self) -> bool {
        self.failure.is_some()
    }

    /// `pass`, `fail` or `skip`.
    pub fn result(&self) -> &'static str {
        if self.failure.is_some() {
            "fail"
        } else if self.skipped.is_some() {
            "skip"
        } else {
            "pass"
        }
    }

    /// Why it failed or was skipped.
    pub fn message(&self) -> Option<&str> {
        self.failure.as_deref().or(self.skipped.as_deref())
    }
}
