//! Named checks: what `check` and `verify` report, one line (or one JSON object) each.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Pass,
    Fail,
    /// The lab cannot show it (no ARP, no real volumes, no containers): never counted as a pass.
    NotCheckableInLab,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    pub fn pass(name: impl Into<String>, reason: impl Into<String>) -> Check {
        Check { name: name.into(), status: Status::Pass, reason: reason.into(), fix: None }
    }

    pub fn fail(name: impl Into<String>, reason: impl Into<String>, fix: impl Into<String>) -> Check {
        Check { name: name.into(), status: Status::Fail, reason: reason.into(), fix: Some(fix.into()) }
    }

    pub fn not_checkable_in_lab(name: impl Into<String>, reason: impl Into<String>) -> Check {
        Check { name: name.into(), status: Status::NotCheckableInLab, reason: reason.into(), fix: None }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Status::Pass => write!(f, "ok    {}: {}", self.name, self.reason)?,
            Status::Fail => write!(f, "FAIL  {}: {}", self.name, self.reason)?,
            Status::NotCheckableInLab => write!(f, "lab   {}: not checkable in the lab: {}", self.name, self.reason)?,
        }
        if let Some(fix) = &self.fix {
            write!(f, "\n      fix: {fix}")?;
        }
        Ok(())
    }
}

/// True when nothing failed (checks the lab cannot make are not failures, nor passes).
pub fn none_failed(checks: &[Check]) -> bool {
    checks.iter().all(|check| check.status != Status::Fail)
}
