//! What a step reports: a named [`Check`] (from `check` and `verify`) or a [`Change`] to one
//! object (from `plan` and `apply`), as a line for people or a JSON object for scripts. The
//! ground floor of kit: it imports nothing else of it, so every layer above can use it.

use std::fmt;
use std::io::Write;

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

/// One object a stage would change (plan) or did change (apply).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Change {
    /// `Kind namespace/name`, or `Kind name` for cluster-scoped objects.
    pub object: String,
    pub action: Action,
    /// A readable field diff, where there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Created,
    Configured,
    Unchanged,
    /// In the cluster, applied by this stage once, and no longer in its bundle (a release that
    /// dropped an object, a renamed one). `plan` reports it; `apply` leaves it, since deleting
    /// what a bundle no longer names is a choice for the person (a CRD takes its data with it).
    Leftover,
}

impl Action {
    /// Created or configured: what `apply` changes.
    pub fn changes_something(self) -> bool {
        matches!(self, Action::Created | Action::Configured)
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let action = match self.action {
            Action::Created => "created",
            Action::Configured => "configured",
            Action::Unchanged => "unchanged",
            Action::Leftover => "leftover",
        };
        write!(f, "{action:<11} {}", self.object)?;
        if let Some(diff) = &self.diff {
            for line in diff.lines() {
                write!(f, "\n            {line}")?;
            }
        }
        Ok(())
    }
}

/// Writes one JSON object per line, the form scripts read with `jq -c` or line by line.
pub fn write_json_lines<T: Serialize>(items: &[T], out: &mut impl Write) -> anyhow::Result<()> {
    for item in items {
        serde_json::to_writer(&mut *out, item)?;
        writeln!(out)?;
    }
    Ok(())
}
