//! Stable diagnostic codes.
//!
//! Architecture invariant: a code, once released, keeps its id and meaning; `docs/lints.md`
//! is generated from [`ALL`] and checked by a test.

use serde::Serialize;

use crate::diagnostic::Severity;

/// A diagnostic code: a stable id, a short name and its documentation.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct Code {
    /// Stable id, e.g. `H201`.
    pub id: &'static str,
    /// Short kebab-case name, e.g. `unknown-executor`.
    pub name: &'static str,
    /// Default severity.
    #[serde(skip)]
    pub severity: Severity,
    /// What the code means and how to fix it (Markdown).
    #[serde(skip)]
    pub explanation: &'static str,
}

macro_rules! codes {
    ($($(#[$doc:meta])* $konst:ident = $id:literal $name:literal $sev:ident $expl:literal;)*) => {
        $($(#[$doc])* pub const $konst: &Code = &Code {
            id: $id,
            name: $name,
            severity: Severity::$sev,
            explanation: $expl,
        };)*
        /// Every code, in id order.
        pub const ALL: &[&Code] = &[$($konst),*];
    };
}

codes! {
    /// The file is not UTF-8 text.
    NOT_UTF8 = "H001" "not-utf8" Error
        "Plans are UTF-8 text. The message gives the byte offset of the first invalid byte; re-save the file as UTF-8.";
    /// The file contains NUL or other binary bytes.
    BINARY = "H002" "binary-content" Error
        "The file contains NUL bytes, so it is not a text file. Check that the path names the plan and not a build artifact or archive.";
    /// The YAML does not parse.
    YAML_SYNTAX = "H003" "yaml-syntax" Error
        "The YAML parser rejected the file at the position shown. Common causes: tabs used for indentation (YAML allows spaces only), an unclosed quote or bracket, or a `key: value` line indented inconsistently.";
    /// A mapping has the same key twice.
    DUPLICATE_KEY = "H004" "duplicate-key" Error
        "A mapping has the same key twice. YAML parsers disagree on which value wins, so handoff rejects it: remove or rename one of them.";
    /// The file exceeds a safety limit.
    LIMIT = "H005" "resource-limit" Error
        "The file exceeds a safety limit: its size, nesting depth, number of nodes, or alias expansions (an \"alias bomb\"). Plans are small documents; split or simplify the file.";
    /// The document is empty.
    EMPTY = "H006" "empty-document" Error
        "The file holds no YAML document. Start from `plans/examples/` or run `handoff schema` to see the expected shape.";
    /// The top level is not a mapping.
    NOT_A_MAPPING = "H007" "not-a-mapping" Error
        "A plan is a YAML mapping with `apiVersion`, `kind`, `metadata` and `phases` at the top level.";
    /// The file holds several YAML documents.
    MULTIPLE_DOCUMENTS = "H008" "multiple-documents" Error
        "A plan file holds exactly one YAML document; remove the extra `---` separators or split the file.";
    /// A value violates the schema in a way not covered by a more precise code.
    SCHEMA = "H100" "schema" Error
        "The value does not match the plan schema (`schemas/plan.schema.json`). Point your editor at the schema for completion: add `# yaml-language-server: $schema=<path>/plan.schema.json` at the top of the plan.";
    /// A key that the schema does not know.
    UNKNOWN_FIELD = "H101" "unknown-field" Error
        "The key is not part of the plan language at this place. It is often a typo; the message lists the keys that are allowed here.";
    /// A required key is missing.
    MISSING_FIELD = "H102" "missing-field" Error
        "A required key is missing from the mapping.";
    /// A value has the wrong type.
    WRONG_TYPE = "H103" "wrong-type" Error
        "The value has the wrong type (for example a list where a mapping is expected, or text where a number is expected).";
    /// A value is not one of the allowed values.
    INVALID_VALUE = "H104" "invalid-value" Error
        "The value is not one of the allowed values; the message lists them. Comparators must be quoted in YAML (`op: \">\"`), because a bare `>` starts a folded block.";
    /// A value does not have the expected format.
    INVALID_FORMAT = "H105" "invalid-format" Error
        "The text does not have the expected format: durations are `300ms`, `5m`, `14d`, `1h 30m`; thresholds are numbers with an optional unit (`99.9%`, `200ms`); ids are lower-case `a-z0-9-_`; dates are `YYYY-MM-DD`.";
    /// A number is out of range.
    OUT_OF_RANGE = "H106" "out-of-range" Error
        "The number is outside its allowed range (for example a traffic weight above 100).";
    /// A list or mapping has too few or too many entries.
    BAD_LENGTH = "H107" "bad-length" Error
        "A list or mapping has too few or too many entries.";
    /// `uses:` names no known executor.
    UNKNOWN_EXECUTOR = "H201" "unknown-executor" Error
        "`uses:` names an executor that is not built in. `handoff executors` lists the built-in executors and their actions.";
    /// `uses:` names no action of a known executor.
    UNKNOWN_ACTION = "H202" "unknown-action" Error
        "The executor exists but has no such action; the message lists its actions.";
    /// An executor rejected a step's parameters.
    INVALID_PARAMS = "H203" "invalid-params" Error
        "The step's `with:` parameters are not valid for its action. `handoff executors` shows each action's parameters; the schema gives editors completion for them.";
    /// A reference to a metric that is not defined.
    UNDEFINED_METRIC = "H204" "undefined-metric" Error
        "A criterion, alert or `monitor:` entry names a metric that is not defined under `metrics:`.";
    /// A reference to a resource that is not defined, or of the wrong kind.
    UNDEFINED_RESOURCE = "H205" "undefined-resource" Error
        "A reference names a resource that is not defined under `resources:`, or one of the wrong kind for the place it is used.";
    /// A resource's endpoint is missing from an environment.
    UNDEFINED_ENDPOINT = "H206" "undefined-endpoint" Error
        "A resource's `endpoint:` must be defined in every environment, so that the plan can run in each of them.";
    /// A reference to a phase or step that is not defined.
    UNDEFINED_PHASE = "H207" "undefined-reference" Error
        "A `depends_on:`, alert `phases:` or step reference names a phase or step that does not exist.";
    /// Two things share an id.
    DUPLICATE_ID = "H208" "duplicate-id" Error
        "Ids must be unique: phase ids in the plan, step ids in the plan (rollback steps included), criterion ids in their phase, alert names in the plan. State, reports and approvals are keyed by them.";
    /// Phases depend on each other in a cycle, or on a later phase.
    DEPENDENCY_CYCLE = "H209" "dependency-order" Error
        "Phases run in the order written, so a phase may depend only on phases before it; a cycle or a forward dependency can never be satisfied.";
    /// A reversible phase has no rollback.
    MISSING_ROLLBACK = "H301" "missing-rollback" Error
        "Every reversible phase needs a `rollback:` with steps. If the phase cannot be undone, say so with `reversible: false` and `restore:` notes.";
    /// A rollback has no time budget.
    MISSING_ROLLBACK_BUDGET = "H302" "missing-rollback-budget" Error
        "A rollback needs `max_duration:`, its time budget: handoff measures every rollback (and every simulated rollback drill) against it.";
    /// An irreversible phase has no verified backup before it.
    IRREVERSIBLE_WITHOUT_BACKUP = "H303" "irreversible-without-backup" Error
        "A point of no return (`reversible: false`, or a destructive step such as `mongo.drop`) must be preceded by a step that takes a verified backup (such as `mongo.archive`), in the same phase or an earlier one, and carry `restore:` notes.";
    /// Canary weights that do not increase or do not end at 100.
    TRAFFIC_WEIGHTS = "H304" "traffic-weights" Error
        "A traffic schedule's weights must strictly increase and end at 100; otherwise the shift either moves traffic back or never completes.";
    /// A criterion without a data source.
    CRITERION_WITHOUT_SOURCE = "H305" "criterion-without-source" Error
        "A criterion needs either a metric with `op:` and `threshold:`, or `confirm:` for a check a person makes; and a metric emitted by an action needs a step with that action in the same phase or an earlier one.";
    /// An alert contradicts a criterion.
    ALERT_CONTRADICTS_CRITERION = "H306" "alert-contradicts-criterion" Warning
        "For some values the criterion passes while the alert fires (or the other way round), so the phase could pass with a critical alert firing. Align the thresholds.";
    /// The timeline has a gap between phases.
    TIMELINE_GAP = "H307" "timeline-gap" Warning
        "Phase schedules leave days between one phase's end and the next one's start. Intended gaps are fine; unintended ones lengthen the migration.";
    /// The timeline has overlapping or misordered phases.
    TIMELINE_OVERLAP = "H308" "timeline-overlap" Error
        "A phase is scheduled to start before the phase it follows has ended, or before the timeline starts. Phases run in order.";
    /// A literal credential in a connection string or parameter.
    LITERAL_CREDENTIAL = "H309" "literal-credential" Error
        "Secrets must not be written into plans: use a `${ENV_VAR}` reference (for example `mongodb://app:${MENU_DB_PASSWORD}@host/menu`), which is resolved at run time and never printed.";
    /// A threshold's unit does not fit its metric.
    UNIT_MISMATCH = "H310" "unit-mismatch" Error
        "The threshold's unit does not fit the metric's unit (for example `5m` for a metric in percent).";
    /// A destructive step in a reversible phase.
    DESTRUCTIVE_IN_REVERSIBLE = "H311" "destructive-in-reversible-phase" Warning
        "A destructive step (for example `mongo.drop`) runs in a phase marked reversible, but its effect cannot be rolled back. Mark the phase `reversible: false` with `restore:` notes.";
    /// A phase with no success criteria.
    NO_CRITERIA = "H312" "no-criteria" Warning
        "A phase without criteria passes as soon as its steps finish. State what must hold for it to pass.";
    /// A `${` that handoff would not expand.
    UNEXPANDED_REFERENCE = "H313" "unexpanded-reference" Error
        "handoff expands `${NAME}` (a letter or `_`, then letters, digits or `_`) from its environment in every string of a step's `with:`, in environment endpoints, metric sources and the `simulation:` section — nowhere else, and nothing else that starts with `${`. A malformed reference (`${}`, `${A-B}`, an unclosed `${`) or a reference in any other field would be used as written. Fix the reference; a shell's own variables are written `$name`.";
    /// Two VirtualServices would claim one host.
    ROUTE_HOST_CLAIMED_TWICE = "H320" "route-host-claimed-twice" Error
        "Two `traffic.shift` routes claim the same host (their route's `host:` service) in different VirtualServices of one environment. Istio applies only one VirtualService per host, so one step's routing would silently not take effect. Point both routes' endpoints at one VirtualService: handoff merges the steps' routes there (header routes first, then reads, then writes, then every other request to the host), and each step's compensation restores only its own part.";
    /// A bare fraction as the threshold of a metric in percent.
    PERCENT_AS_FRACTION = "H321" "percent-as-fraction" Warning
        "A threshold without a unit on a metric measured in percent is read in percent points, so `0.9` (or `\"0.9\"`) means 0.9%, not 90%. A value between 0 and 1 there is most likely a fraction: write `90%`, or `0.9%` if 0.9 percent is meant.";
    /// A simulated Prometheus query selects nothing the simulation publishes.
    QUERY_SELECTS_NOTHING = "H335" "query-selects-nothing" Error
        "In a plan with a `simulation:` section, every Prometheus metric that `simulation.measures` does not measure is queried as written on the sandbox's Prometheus, which holds only the series `simulation.telemetry` declares (the mesh's standard metrics and the application's own series: what production publishes). A selector of the query that no declared series can match — a misspelled metric name, a label the series do not carry, a label value they never have — would select nothing in the simulation and most likely in production too. Fix the query, or declare the series production publishes.";
    /// A Prometheus query that is not PromQL.
    QUERY_UNPARSABLE = "H336" "query-unparsable" Error
        "A Prometheus metric's query does not parse as PromQL (checked in plans with a `simulation:` section, whose queries the simulation runs). Prometheus would refuse it with the same error.";
    /// Analysis names a criterion it cannot sample.
    ANALYSIS_CRITERION = "H314" "analysis-criterion" Error
        "A step's `analysis:` and a phase's `background_analysis:` name criteria of their phase that a metric decides (`metric`, `op`, `threshold`): they are sampled while the steps run. A criterion that is not in the phase, or that a person confirms, cannot be. Name a metric criterion of the phase, or leave the confirmation to the end of the phase.";
    /// A phase runs longer than its schedule.
    PHASE_OVERRUNS_SCHEDULE = "H345" "phase-overruns-schedule" Warning
        "A phase runs at least as long as its steps' planned waits (`wait.soak`, each weight's `soak` in `traffic.shift`; steps of one `group` side by side) followed by its soak gates, and at least as long as its longest criterion `window` (windows end with the phase and overlap the steps). When that is longer than the phase's `schedule.duration`, the run cannot keep the plan's calendar: the message names the excess and the next phase it would run into. Shorten the waits or windows, or lengthen the schedule.";
    /// An alert on a metric that no step of one of its phases emits.
    ALERT_NOT_MEASURED = "H346" "alert-not-measured" Warning
        "An alert on a metric that a step emits (`source: {emitted: {by: …}}`) is judged on what that step measured in the phase: handoff exports the value under the phase it was measured in, and the rendered rule fires only on the active phase's series. In a phase where no step uses that action, the rule can never fire and the run would judge a value left from an earlier phase. List the alert's `phases:` (those that measure it), or add the measuring step to the phase.";
    /// Several steps of a phase emit what a criterion reads, and it does not say which.
    AMBIGUOUS_EMITTER = "H347" "ambiguous-emitter" Warning
        "A criterion on a metric that a step emits reads the latest value any step emitted. When several steps of its phase emit it (a verification before a repair and another after it), which one decides the verdict depends on timing, and a repair can hide the failure the first would have shown. Name the step with `from:`.";
    /// An approval gate's requirement that no set of approvers can meet.
    IMPOSSIBLE_APPROVAL = "H340" "impossible-approval" Error
        "An approval gate's `require:` asks for more distinct approvers than the plan's `approvers:` groups can give: a group that is not defined, a `count` above its members, or requirements that together need more people than their groups hold (nobody counts twice). The gate could never open. Define the group, add members, or lower the count.";
    /// A simulated fault the application model cannot apply.
    INAPPLICABLE_FAULT = "H315" "inapplicable-fault" Error
        "A fault in `simulation.faults` or a scenario names a resource of the right kind that the simulated application does not use: `write_errors` on a store no service writes (`simulation.app.stores`), `service_latency` on a service the model does not run, `cache_flush` of a cache reads do not go through (`simulation.app.cache`). Such a fault would change nothing, so the simulation refuses it rather than report it injected: name what the application uses.";
    /// The simulated application's requests go to a host no route claims.
    UNROUTED_REQUESTS = "H330" "unrouted-simulated-requests" Warning
        "A simulation routes the application's requests by the VirtualService of the host they call (`simulation.app.requests.host`, by default the `owner`), the one `traffic.shift` applies to the host its `mesh` route claims (`host:`). When the plan's routes claim hosts but none claims that one, no traffic step ever moves the simulated requests, and a canary passes without having been exercised. Name the host the routes claim, or make the routes claim the host the clients call.";
}
