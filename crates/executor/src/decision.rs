//! Decision keys: what a person decides on (`handoff approve <key>`), typed.
//!
//! A key's text is `<phase>/<what>`: `<phase>/<step>`, `<phase>/approval-<n>`,
//! `<phase>/<criterion>`, `<phase>/alerts` or `<phase>/irreversible`. The text is what
//! the event log and the command line carry; [`DecisionKey`] is what code builds and
//! compares.

use std::fmt;
use std::str::FromStr;

/// What a decision is about, within its phase.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Subject {
    /// A step or a criterion, by id: the two read alike in a key (`<phase>/<id>`), so a
    /// decision on the one is a decision on the other.
    Named(String),
    /// The phase's approval gate number `n` (from 1, in the order the plan lists them).
    Approval(usize),
    /// The phase's alerts that asked to pause.
    Alerts,
    /// Starting the phase, a point of no return.
    Irreversible,
}

/// What a person decides on: a phase and what in it.
///
/// Its [`Display`](fmt::Display) is the key's text and [`FromStr`] reads it back; two
/// keys are equal exactly when their texts are (a step named `alerts` shares its key with
/// the phase's alerts, as the text does). Its `Debug` is the text quoted, as a string's.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DecisionKey {
    /// Phase id.
    pub phase: String,
    /// What in the phase.
    pub subject: Subject,
}

/// A key's text that is not `<phase>/<what>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a decision key (`<phase>/<step, criterion, approval-N, alerts or irreversible>`)")]
pub struct KeyError(pub String);

impl DecisionKey {
    fn new(phase: &str, subject: Subject) -> DecisionKey {
        DecisionKey { phase: phase.to_owned(), subject }
    }

    /// Whether a step, forward or rollback, may go on (`<phase>/<step>`).
    pub fn step(phase: &str, step: &str) -> DecisionKey {
        DecisionKey::new(phase, Subject::named(step))
    }

    /// Whether a criterion that did not pass may be accepted (`<phase>/<criterion>`).
    pub fn criterion(phase: &str, criterion: &str) -> DecisionKey {
        DecisionKey::new(phase, Subject::named(criterion))
    }

    /// The phase's approval gate number `n`, from 1 (`<phase>/approval-<n>`).
    pub fn approval(phase: &str, n: usize) -> DecisionKey {
        DecisionKey::new(phase, Subject::Approval(n))
    }

    /// Going on after the phase's alerts asked to pause (`<phase>/alerts`).
    pub fn alerts(phase: &str) -> DecisionKey {
        DecisionKey::new(phase, Subject::Alerts)
    }

    /// Starting a point of no return (`<phase>/irreversible`).
    pub fn irreversible(phase: &str) -> DecisionKey {
        DecisionKey::new(phase, Subject::Irreversible)
    }
}

impl Subject {
    /// The subject a name after the phase's `/` reads as.
    fn named(name: &str) -> Subject {
        match name {
            "alerts" => Subject::Alerts,
            "irreversible" => Subject::Irreversible,
            _ => match name.strip_prefix("approval-").and_then(|n| n.parse().ok()) {
                // Only the canonical spelling of a number reads as a gate (`approval-01` is a name).
                Some(n) if name == format!("approval-{n}") => Subject::Approval(n),
                _ => Subject::Named(name.to_owned()),
            },
        }
    }
}

impl fmt::Display for DecisionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let phase = &self.phase;
        match &self.subject {
            Subject::Named(name) => write!(f, "{phase}/{name}"),
            Subject::Approval(n) => write!(f, "{phase}/approval-{n}"),
            Subject::Alerts => write!(f, "{phase}/alerts"),
            Subject::Irreversible => write!(f, "{phase}/irreversible"),
        }
    }
}

impl fmt::Debug for DecisionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_string(), f)
    }
}

impl FromStr for DecisionKey {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<DecisionKey, KeyError> {
        match text.split_once('/') {
            Some((phase, name)) if !phase.is_empty() && !name.is_empty() => {
                Ok(DecisionKey::new(phase, Subject::named(name)))
            }
            _ => Err(KeyError(text.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_read_back_what_they_print() {
        let keys = [
            (DecisionKey::step("copy", "bulk"), "copy/bulk"),
            (DecisionKey::criterion("copy", "lag"), "copy/lag"),
            (DecisionKey::approval("cutover", 2), "cutover/approval-2"),
            (DecisionKey::alerts("canary"), "canary/alerts"),
            (DecisionKey::irreversible("drop"), "drop/irreversible"),
            (DecisionKey::step("p", "approval-01"), "p/approval-01"),
        ];
        for (key, text) in keys {
            assert_eq!(key.to_string(), text);
            assert_eq!(format!("{key:?}"), format!("{text:?}"));
            assert_eq!(text.parse::<DecisionKey>(), Ok(key));
        }
        assert_eq!(DecisionKey::step("p", "alerts"), DecisionKey::alerts("p"), "equal texts are equal keys");
        for bad in ["", "copy", "/bulk", "copy/"] {
            assert_eq!(bad.parse::<DecisionKey>(), Err(KeyError(bad.to_owned())));
        }
    }
}
