//! Tiered validation of a plan file: YAML → schema → semantic lints.
//!
//! Every tier collects all its problems; a later tier runs only when the earlier ones found
//! no error (lints need a well-typed plan).

use jsonschema::ValidationError;
use jsonschema::error::{TypeKind, ValidationErrorKind};
use serde::Serialize;
use serde_json::Value;

use crate::codes::{self, Code};
use crate::diagnostic::{Diagnostic, Severity};
use crate::lint::{self, suggestion};
use crate::model::Plan;
use crate::simulation::Scenario;
use crate::source::{self, Document};
use crate::{Catalog, schema, units};

/// Errors building a checker (a bug in the generated schema, never bad input).
#[derive(Debug, thiserror::Error)]
pub enum CheckerError {
    /// The generated schema does not compile.
    #[error("the generated plan schema is invalid: {0}")]
    Schema(String),
}

/// Validates plan files (and scenario files against a plan) against their schemas and
/// the lints, with one catalog of executors.
pub struct Checker<'c> {
    catalog: &'c dyn Catalog,
    plan: Compiled,
    scenario: Compiled,
}

/// A schema with its compiled validator; its errors become diagnostics.
struct Compiled {
    schema: Value,
    validator: jsonschema::Validator,
    /// What the file is, in messages about its top level (`the plan`).
    top: &'static str,
}

/// Counts reported for a valid plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Phases.
    pub phases: usize,
    /// Steps of the phases (rollback steps not counted).
    pub steps: usize,
    /// Success criteria.
    pub criteria: usize,
    /// Phases with a rollback.
    pub rollbacks: usize,
}

/// The outcome of checking one file.
#[derive(Debug)]
pub struct Report {
    /// The file's text (empty when it could not be decoded).
    pub text: String,
    /// Every problem found, in file order.
    pub diagnostics: Vec<Diagnostic>,
    /// The typed plan, when the file passed the schema.
    pub plan: Option<Plan>,
    /// Byte ranges of literal secrets, masked in every rendering.
    pub secrets: Vec<(usize, usize)>,
}

impl Report {
    /// Number of diagnostics of a severity.
    pub fn count(&self, severity: Severity) -> usize {
        self.diagnostics.iter().filter(|d| d.severity == severity).count()
    }

    /// Whether the plan is valid: no errors (and no warnings when they are denied).
    pub fn is_valid(&self, deny_warnings: bool) -> bool {
        self.count(Severity::Error) == 0 && (!deny_warnings || self.count(Severity::Warning) == 0)
    }

    /// Counts of the plan's parts, when it parsed.
    pub fn summary(&self) -> Option<Summary> {
        let plan = self.plan.as_ref()?;
        let counts = lint::counts(plan);
        Some(Summary {
            phases: counts["phases"],
            steps: counts["steps"],
            criteria: counts["criteria"],
            rollbacks: counts["rollbacks"],
        })
    }
}

impl<'c> Checker<'c> {
    /// Builds the schema for `catalog` and compiles it, with the scenario schema.
    pub fn new(catalog: &'c dyn Catalog) -> Result<Checker<'c>, CheckerError> {
        let plan = Compiled::new(schema::generate(&catalog.schemas()), "the plan")?;
        let scenario = Compiled::new(schema::scenario(), "the scenario")?;
        Ok(Checker { catalog, plan, scenario })
    }

    /// The generated plan schema.
    pub fn schema(&self) -> &Value {
        &self.plan.schema
    }

    /// Checks one plan file's bytes.
    pub fn check(&self, bytes: &[u8]) -> Report {
        let help = "a plan starts with `apiVersion: handoff.dev/v1alpha1` and `kind: MigrationPlan`";
        let (mut report, document) = match self.plan.load(bytes, help) {
            Ok(loaded) => loaded,
            Err(report) => return *report,
        };
        if report.diagnostics.is_empty() {
            match serde_json::from_value::<Plan>(document.value.clone()) {
                Ok(plan) => {
                    report.diagnostics = lint::lint(&plan, &document.value, self.catalog);
                    report.diagnostics.extend(calendar_overflow(&plan));
                    report.plan = Some(plan);
                }
                Err(e) => report.diagnostics.push(Diagnostic::new(codes::SCHEMA, "", e.to_string())),
            }
        }
        finished(report, &document)
    }

    /// Checks one scenario file's bytes against the (valid) plan it is simulated with:
    /// its schema, then that every phase, resource and service it names exists and that
    /// each fault can be applied. The report holds no plan; the scenario is returned when
    /// it passed the schema.
    pub fn check_scenario(&self, bytes: &[u8], plan: &Plan) -> (Report, Option<Scenario>) {
        let help = "a scenario has a `name`, `faults` (each a `phase` and a `fault`) and optionally `expect_rollback`";
        let (mut report, document) = match self.scenario.load(bytes, help) {
            Ok(loaded) => loaded,
            Err(report) => return (*report, None),
        };
        let mut scenario = None;
        if report.diagnostics.is_empty() {
            match serde_json::from_value::<Scenario>(document.value.clone()) {
                Ok(typed) => {
                    report.diagnostics = lint::scenario(plan, &typed);
                    scenario = Some(typed);
                }
                Err(e) => report.diagnostics.push(Diagnostic::new(codes::SCHEMA, "", e.to_string())),
            }
        }
        (finished(report, &document), scenario)
    }
}

/// Places every diagnostic in the file, masks literal secrets, and orders them by position.
fn finished(mut report: Report, document: &Document) -> Report {
    for diagnostic in &mut report.diagnostics {
        if diagnostic.span.is_none() {
            diagnostic.span = document.span(&diagnostic.pointer);
        }
        if diagnostic.code == codes::LITERAL_CREDENTIAL
            && let Some(span) = document.value_span(&diagnostic.pointer)
        {
            report.secrets.push((span.start, span.end));
        }
    }
    report.diagnostics.sort_by_key(|d| d.span.map_or((0, 0), |s| (s.start, s.end)));
    report.diagnostics.dedup();
    redacted(report)
}

impl Compiled {
    /// Compiles `schema`.
    fn new(schema: Value, top: &'static str) -> Result<Compiled, CheckerError> {
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .with_format(units::DURATION_FORMAT, units::Duration::within_bounds)
            .build(&schema)
            .map_err(|e| CheckerError::Schema(e.to_string()))?;
        Ok(Compiled { schema, validator, top })
    }

    /// `pointer` in words: `` `phases[0].steps` ``, or what the file is at its top level.
    fn describe(&self, pointer: &str) -> String {
        if pointer.is_empty() { self.top.to_owned() } else { describe(pointer) }
    }

    /// The first tiers: YAML, a mapping at the top (else `help` says what belongs there),
    /// the schema. A file that does not load is returned as the error.
    fn load(&self, bytes: &[u8], help: &str) -> Result<(Report, Document), Box<Report>> {
        let (text, document) = match source::load(bytes) {
            Ok(loaded) => loaded,
            Err(diagnostic) => {
                let text = std::str::from_utf8(bytes).map(str::to_owned).unwrap_or_default();
                return Err(Box::new(redacted(Report {
                    text,
                    diagnostics: vec![diagnostic],
                    plan: None,
                    secrets: Vec::new(),
                })));
            }
        };
        let mut report = Report { text: text.to_owned(), diagnostics: Vec::new(), plan: None, secrets: Vec::new() };
        if !document.value.is_object() {
            report.diagnostics.push(
                Diagnostic::new(
                    codes::NOT_A_MAPPING,
                    "",
                    format!("the top level is {}, not a mapping", type_name(&document.value)),
                )
                .at(document.value_span(""))
                .with_help(help),
            );
            return Err(Box::new(redacted(report)));
        }
        for error in self.validator.iter_errors(&document.value) {
            self.schema_error(&error, &document, &mut report.diagnostics);
        }
        Ok((report, document))
    }

    fn schema_error(&self, error: &ValidationError<'_>, document: &Document, out: &mut Vec<Diagnostic>) {
        let pointer = error.instance_path().to_string();
        let instance = error.instance();
        // An empty value (`key:` or a bare `>`) has no text of its own: point at its key.
        let blank = instance.is_null() || instance.as_str() == Some("");
        let span = if blank { document.key_span(&pointer) } else { document.span(&pointer) };
        let at = |code: &'static Code, message: String| Diagnostic::new(code, pointer.clone(), message).at(span);
        let place = self.describe(&pointer);
        match error.kind() {
            ValidationErrorKind::AdditionalProperties { unexpected }
            | ValidationErrorKind::UnevaluatedProperties { unexpected } => {
                let allowed = self.allowed_keys(error.schema_path().as_str());
                out.extend(unexpected.iter().map(|key| unknown_key(key, (&pointer, &place), &allowed, document)));
            }
            ValidationErrorKind::Required { property } => {
                let name = property.as_str().unwrap_or_default();
                out.push(
                    Diagnostic::new(
                        codes::MISSING_FIELD,
                        pointer.clone(),
                        format!("{place} is missing the required field `{name}`"),
                    )
                    .at(document.key_span(&pointer)),
                );
            }
            ValidationErrorKind::Type { kind } => {
                let expected = expected_types(kind);
                out.push(at(codes::WRONG_TYPE, format!("{place} must be {expected}, not {}", type_name(instance))));
            }
            ValidationErrorKind::Enum { options } => {
                let options: Vec<Value> = options.as_array().cloned().unwrap_or_default();
                out.push(self.not_one_of(&place, instance, &options, at(codes::INVALID_VALUE, String::new())));
            }
            ValidationErrorKind::Constant { expected_value } => {
                out.push(at(
                    codes::INVALID_VALUE,
                    format!("{place} must be {}, not {}", short(expected_value), short(instance)),
                ));
            }
            ValidationErrorKind::Pattern { pattern } => {
                out.push(at(codes::INVALID_FORMAT, pattern_message(&place, instance, pattern)))
            }
            ValidationErrorKind::Format { format } if format == units::DURATION_FORMAT => {
                let text = instance.as_str().unwrap_or_default();
                out.push(at(codes::OUT_OF_RANGE, format!("{place}: {}", units::too_long(text))));
            }
            ValidationErrorKind::Format { format } => {
                out.push(at(codes::INVALID_FORMAT, format!("{place}: {} is not a valid {format}", short(instance))));
            }
            ValidationErrorKind::Minimum { limit } | ValidationErrorKind::ExclusiveMinimum { limit } => {
                out.push(at(codes::OUT_OF_RANGE, format!("{place} is {}, below the minimum {limit}", short(instance))));
            }
            ValidationErrorKind::Maximum { limit } | ValidationErrorKind::ExclusiveMaximum { limit } => {
                out.push(at(codes::OUT_OF_RANGE, format!("{place} is {}, above the maximum {limit}", short(instance))));
            }
            ValidationErrorKind::MinItems { limit } | ValidationErrorKind::MinProperties { limit } => {
                out.push(at(codes::BAD_LENGTH, format!("{place} needs at least {limit} {}", entries(*limit))));
            }
            ValidationErrorKind::MaxItems { limit } | ValidationErrorKind::MaxProperties { limit } => {
                out.push(at(codes::BAD_LENGTH, format!("{place} takes at most {limit} {}", entries(*limit))));
            }
            ValidationErrorKind::MinLength { limit } => {
                out.push(at(codes::BAD_LENGTH, format!("{place} needs at least {limit} characters")));
            }
            ValidationErrorKind::MaxLength { limit } => {
                out.push(at(codes::BAD_LENGTH, format!("{place} takes at most {limit} characters")));
            }
            ValidationErrorKind::OneOfNotValid { context } | ValidationErrorKind::AnyOf { context } => {
                match best_branch(&pointer, context) {
                    Some(branch) => {
                        for inner in branch {
                            self.schema_error(inner, document, out);
                        }
                    }
                    None => out.push(self.no_branch(error, context, at(codes::SCHEMA, String::new()))),
                }
            }
            _ => out.push(at(codes::SCHEMA, format!("{place}: {}", error.masked()))),
        }
    }

    /// A `oneOf`/`anyOf` none of whose branches is close: the constants it allows, the
    /// variants it must have exactly one of, or that it matches no form; `diagnostic`
    /// carries pointer and span.
    fn no_branch(
        &self,
        error: &ValidationError<'_>,
        context: &[Vec<ValidationError<'static>>],
        diagnostic: Diagnostic,
    ) -> Diagnostic {
        let (instance, place) = (error.instance(), self.describe(&diagnostic.pointer));
        match (constants(context), self.variants(error.schema_path().as_str())) {
            (Some(options), _) => {
                let diagnostic = Diagnostic { code: codes::INVALID_VALUE, ..diagnostic };
                self.not_one_of(&place, instance, &options, diagnostic)
            }
            (None, Some(variants)) => {
                let found: Vec<String> =
                    instance.as_object().into_iter().flat_map(|o| o.keys()).map(|k| format!("`{k}`")).collect();
                let found = if found.is_empty() { "none".to_owned() } else { found.join(", ") };
                let message = format!("{place} must have exactly one of {}; it has {found}", variants.join(", "));
                Diagnostic { message, ..diagnostic }
            }
            (None, None) => Diagnostic { message: format!("{place} matches none of the allowed forms"), ..diagnostic },
        }
    }

    /// "`x` is not one of a, b, c (did you mean …)"; `diagnostic` carries code and span.
    fn not_one_of(&self, place: &str, instance: &Value, options: &[Value], mut diagnostic: Diagnostic) -> Diagnostic {
        let shown: Vec<String> = options.iter().map(short).collect();
        let texts = options.iter().filter_map(Value::as_str);
        diagnostic.message = format!(
            "{place}: {} is not one of {}{}",
            short(instance),
            shown.join(", "),
            suggestion(instance.as_str().unwrap_or_default(), texts)
        );
        if instance.as_str() == Some("") && options.iter().any(|o| o.as_str() == Some(">")) {
            diagnostic =
                diagnostic.with_help("comparators must be quoted: `op: \">\"` (a bare `>` starts a YAML folded block)");
        }
        diagnostic
    }

    /// When every branch of the `oneOf` at `schema_path` requires exactly one key (an
    /// externally tagged enum such as a metric source or a gate), those keys.
    fn variants(&self, schema_path: &str) -> Option<Vec<String>> {
        self.schema
            .pointer(schema_path)?
            .as_array()?
            .iter()
            .map(|branch| match branch.get("required")?.as_array()?.as_slice() {
                [only] => only.as_str().map(|key| format!("`{key}`")),
                _ => None,
            })
            .collect()
    }

    /// Property names allowed by the schema object that holds `.../additionalProperties`.
    fn allowed_keys(&self, schema_path: &str) -> Vec<String> {
        let parent = schema_path.rsplit_once('/').map_or("", |(p, _)| p);
        self.schema
            .pointer(parent)
            .and_then(|s| s.get("properties"))
            .and_then(Value::as_object)
            .map(|props| props.keys().cloned().collect())
            .unwrap_or_default()
    }
}

/// Masks every literal secret: in the text shown in snippets, and in messages (which may
/// quote values).
fn redacted(mut report: Report) -> Report {
    report.secrets.extend(crate::redact::scan(&report.text));
    for diagnostic in &mut report.diagnostics {
        diagnostic.message = crate::redact::redact(&diagnostic.message);
        diagnostic.help = diagnostic.help.as_deref().map(crate::redact::redact);
    }
    report
}

/// Of the branches of a failed `oneOf`/`anyOf`, the one the author evidently meant: the
/// only one whose failures are all below `pointer` or not about the value's shape.
fn best_branch<'e>(
    pointer: &str,
    branches: &'e [Vec<ValidationError<'static>>],
) -> Option<&'e [ValidationError<'static>]> {
    let score = |errors: &[ValidationError<'_>]| -> usize {
        errors
            .iter()
            .map(|e| {
                let at = e.instance_path().to_string();
                let here = at == pointer;
                let child = at.strip_prefix(pointer).is_some_and(|rest| rest.matches('/').count() == 1);
                match e.kind() {
                    ValidationErrorKind::Type { .. } if here => 1000,
                    ValidationErrorKind::Required { .. } | ValidationErrorKind::AdditionalProperties { .. } if here => {
                        100
                    }
                    ValidationErrorKind::Constant { .. } | ValidationErrorKind::Enum { .. } if here || child => 100,
                    _ => 1,
                }
            })
            .sum()
    };
    let scored: Vec<(usize, &[ValidationError<'static>])> = branches.iter().map(|b| (score(b), b.as_slice())).collect();
    let best = scored.iter().map(|(s, _)| *s).min()?;
    let mut winners = scored.iter().filter(|(s, _)| *s == best);
    let (_, branch) = winners.next()?;
    (winners.next().is_none() && !branch.is_empty()).then_some(branch)
}

/// When every branch of a `oneOf` is a `const` (an enum with documented variants), the
/// allowed values.
fn constants(branches: &[Vec<ValidationError<'static>>]) -> Option<Vec<Value>> {
    branches
        .iter()
        .map(|branch| match branch.as_slice() {
            [only] => match only.kind() {
                ValidationErrorKind::Constant { expected_value } => Some(Value::clone(expected_value)),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// An unknown key of the mapping at `pointer`, with the keys allowed there.
fn unknown_key(key: &str, (pointer, place): (&str, &str), allowed: &[String], document: &Document) -> Diagnostic {
    let key_pointer = crate::source::child(pointer, key);
    let message = format!("unknown field `{key}` in {place}{}", suggestion(key, allowed.iter().map(String::as_str)));
    let diagnostic =
        Diagnostic::new(codes::UNKNOWN_FIELD, key_pointer.clone(), message).at(document.key_span(&key_pointer));
    if allowed.is_empty() { diagnostic } else { diagnostic.with_help(format!("allowed here: {}", allowed.join(", "))) }
}

/// A phase whose planned end falls past the calendar's last day.
fn calendar_overflow(plan: &Plan) -> Option<Diagnostic> {
    let p = plan.calendar_overflow()?;
    Some(Diagnostic::new(
        codes::OUT_OF_RANGE,
        format!("/phases/{p}/schedule/duration"),
        format!("phase `{}` would end after 9999-12-31, the last day of the calendar", plan.phases[p].id),
    ))
}

fn pattern_message(place: &str, instance: &Value, pattern: &str) -> String {
    let value = short(instance);
    let expected = if pattern == units::DURATION_PATTERN {
        "a duration; write e.g. `300ms`, `5m`, `14d` or `1h 30m`".to_owned()
    } else if pattern == units::QUANTITY_PATTERN {
        "a threshold; write a number with an optional unit: `99.9%`, `200ms`, `5m`, `10`".to_owned()
    } else if pattern == schema::USES_PATTERN {
        "`executor.action` (e.g. `mongo.copy`)".to_owned()
    } else if pattern.starts_with("^[a-z][a-z0-9_-]") {
        "a valid id: lower-case letters, digits, `-` and `_`, starting with a letter".to_owned()
    } else if pattern.starts_with("^[0-9]{4}") {
        "a date (`YYYY-MM-DD`)".to_owned()
    } else {
        format!("text matching `{pattern}`")
    };
    format!("{place}: {value} is not {expected}")
}

/// `/phases/0/steps/2/with` → `` `phases[0].steps[2].with` ``; `""` → `the plan`.
pub fn describe(pointer: &str) -> String {
    if pointer.is_empty() {
        return "the plan".to_owned();
    }
    let mut out = String::new();
    for token in pointer.split('/').skip(1) {
        let token = token.replace("~1", "/").replace("~0", "~");
        if !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{token}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&token);
        }
    }
    format!("`{out}`")
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "empty (null)",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// A JSON Schema type in the words of YAML authors.
/// The YAML names of a JSON Schema `type`: `a mapping or a list`.
fn expected_types(kind: &TypeKind) -> String {
    match kind {
        TypeKind::Single(t) => yaml_type(*t).to_owned(),
        TypeKind::Multiple(set) => set.iter().map(yaml_type).collect::<Vec<_>>().join(" or "),
    }
}

fn yaml_type(json_type: jsonschema::JsonType) -> &'static str {
    use jsonschema::JsonType;
    match json_type {
        JsonType::Null => "empty (null)",
        JsonType::Boolean => "a boolean (true or false)",
        JsonType::Integer => "a whole number",
        JsonType::Number => "a number",
        JsonType::String => "text",
        JsonType::Array => "a list",
        JsonType::Object => "a mapping",
    }
}

fn entries(n: u64) -> &'static str {
    if n == 1 { "entry" } else { "entries" }
}

/// A value for messages: `` `text` `` or compact JSON, at most 60 characters.
fn short(value: &Value) -> String {
    let text = match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let cut: String = text.chars().take(60).collect();
    if cut.len() < text.len() { format!("`{cut}…`") } else { format!("`{cut}`") }
}
