//! The report as JUnit XML, in the shape the strictest common consumer accepts (Jenkins'
//! `junit-10.xsd`: every suite counts its tests, failures, errors and skipped cases), which
//! GitLab and the GitHub test-report actions read too.

use std::fmt::Write as _;

/// How one test case ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CaseOutcome {
    /// It passed.
    Passed,
    /// It failed: a short message, and the details.
    Failed(String, String),
    /// It could not be decided (a provider error): a short message, and the details.
    Error(String, String),
    /// It was not checked (assumed in simulation), and why.
    Skipped(String),
}

/// One test case.
#[derive(Debug, Clone)]
pub(crate) struct Case {
    /// Its name.
    pub(crate) name: String,
    /// How it ended.
    pub(crate) outcome: CaseOutcome,
    /// What it printed (`system-out`), if anything.
    pub(crate) output: Option<String>,
}

impl Case {
    /// A case named `name` that ended so, with no output.
    pub(crate) fn new(name: String, outcome: CaseOutcome) -> Case {
        Case { name, outcome, output: None }
    }
}

/// A suite of test cases (a phase, the loss audit, the rollback drills).
#[derive(Debug, Clone)]
pub(crate) struct Suite {
    /// Its name (and the cases' class name).
    pub(crate) name: String,
    /// Its cases.
    pub(crate) cases: Vec<Case>,
}

/// Tests, failures, errors and skipped cases.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    tests: usize,
    failures: usize,
    errors: usize,
    skipped: usize,
}

impl Counts {
    fn of(cases: &[Case]) -> Counts {
        let mut counts = Counts { tests: cases.len(), ..Counts::default() };
        for case in cases {
            match case.outcome {
                CaseOutcome::Passed => {}
                CaseOutcome::Failed(..) => counts.failures += 1,
                CaseOutcome::Error(..) => counts.errors += 1,
                CaseOutcome::Skipped(_) => counts.skipped += 1,
            }
        }
        counts
    }

    fn add(self, other: Counts) -> Counts {
        Counts {
            tests: self.tests + other.tests,
            failures: self.failures + other.failures,
            errors: self.errors + other.errors,
            skipped: self.skipped + other.skipped,
        }
    }

    /// A suite's count attributes.
    fn attributes(self) -> String {
        format!("{} skipped=\"{}\"", self.totals(), self.skipped)
    }

    /// The count attributes of the whole document (junit-10.xsd allows no `skipped` there).
    fn totals(self) -> String {
        let Counts { tests, failures, errors, .. } = self;
        format!("tests=\"{tests}\" failures=\"{failures}\" errors=\"{errors}\"")
    }
}

/// The XML document of `suites`, under one `testsuites` named `name`.
pub(crate) fn document(name: &str, suites: &[Suite]) -> String {
    let total = suites.iter().map(|s| Counts::of(&s.cases)).fold(Counts::default(), Counts::add);
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(out, "<testsuites name=\"{}\" {}>", escape(name), total.totals());
    for suite in suites {
        let id = escape(&suite.name);
        let _ = writeln!(out, "  <testsuite name=\"{id}\" {}>", Counts::of(&suite.cases).attributes());
        for case in &suite.cases {
            let _ = write!(out, "    <testcase classname=\"{id}\" name=\"{}\">", escape(&case.name));
            match &case.outcome {
                CaseOutcome::Passed => {}
                CaseOutcome::Failed(message, text) => element(&mut out, "failure", message, text),
                CaseOutcome::Error(message, text) => element(&mut out, "error", message, text),
                CaseOutcome::Skipped(message) => {
                    let _ = write!(out, "<skipped message=\"{}\"/>", escape(message));
                }
            }
            if let Some(output) = &case.output {
                let _ = write!(out, "<system-out>{}</system-out>", escape(output));
            }
            out.push_str("</testcase>\n");
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}

fn element(out: &mut String, tag: &str, message: &str, text: &str) {
    let _ = write!(out, "<{tag} message=\"{}\">{}</{tag}>", escape(message), escape(text));
}

/// Text and attribute values escaped; characters XML 1.0 cannot hold at all (control
/// characters but tab and newlines) are dropped.
fn escape(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control() || matches!(c, '\t' | '\n' | '\r'))
        .collect::<String>()
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
