//! What the JSON API answers, as types: the server writes them, and
//! `tangle-collector report` (and any Rust client) reads them back, so the
//! two cannot drift apart.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::findings::Finding;

/// `GET /api/findings`: every symptom the model shows now, with how the
/// calls behind them were linked.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FindingsPage<'a> {
    /// Borrowed where the server writes them, owned where they are read.
    pub findings: Cow<'a, [Finding]>,
    /// Absent from an older collector's answer.
    #[serde(default)]
    pub links: Option<Links>,
}

/// Calls linked to the request they serve, by how.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Links {
    /// By propagated context, the thread rule or the wire join.
    pub exact: u64,
    /// By a heuristic (`tangle.link.inferred`).
    pub inferred: u64,
}
