//! Findings about the user's config: errors, warnings, and fields accepted but not enforced.
//!
//! Every finding names the file and line, the resource (`Kind/namespace/name`) and the field path,
//! so a user can go straight to the YAML that needs fixing.

use std::fmt;
use std::sync::Arc;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Error,
    Warning,
    /// Parsed and kept, but the data plane does not act on it yet.
    NotEnforced,
    Info,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::NotEnforced => "accepted, not enforced",
            Severity::Info => "info",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: Option<Arc<str>>,
    pub line: Option<usize>,
    /// `Kind/namespace/name`.
    pub resource: Option<String>,
    /// Field path such as `spec.servers[0].tls.mode`.
    pub field: Option<String>,
    pub message: String,
    /// How to fix it, when there is something to say.
    pub fix: Option<String>,
}

impl Diagnostic {
    pub fn new(severity: Severity, message: impl Into<String>) -> Self {
        Diagnostic {
            severity,
            file: None,
            line: None,
            resource: None,
            field: None,
            message: message.into(),
            fix: None,
        }
    }

    pub fn with_fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, "{file}:{line}: ")?,
            (Some(file), None) => write!(f, "{file}: ")?,
            _ => {}
        }
        write!(f, "{}: ", self.severity.as_str())?;
        match (&self.resource, &self.field) {
            (Some(r), Some(p)) => write!(f, "{r} {p}: ")?,
            (Some(r), None) => write!(f, "{r}: ")?,
            (None, Some(p)) => write!(f, "{p}: ")?,
            (None, None) => {}
        }
        f.write_str(&self.message)?;
        if let Some(fix) = &self.fix {
            write!(f, "\n  fix: {fix}")?;
        }
        Ok(())
    }
}
