//! The vector selectors of a PromQL query (parsed by GreptimeTeam's `promql-parser`), and
//! whether a series with a given name and labels is one a selector selects. A simulation
//! checks the plan's queries against the series its telemetry declares with these, offline
//! (the `validate` lint) and on its Prometheus.

use std::collections::BTreeMap;
use std::fmt;

use promql_parser::label::Matcher;

use crate::codes;
use crate::diagnostic::Diagnostic;
use crate::model::{Id, MetricSource, Plan};
use crate::simulation::{Simulation, Telemetry};
use promql_parser::parser::{self, Expr, VectorSelector};

/// One vector selector of a query (`istio_requests_total{response_code=~"5.."}`).
#[derive(Debug, Clone)]
pub struct Selector(VectorSelector);

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Without `offset`/`@`: the selector as it selects series.
        let mut plain = self.0.clone();
        plain.offset = None;
        plain.at = None;
        write!(f, "{plain}")
    }
}

/// The vector selectors of `query`, in the order written; the parser's message when it is
/// not PromQL.
pub fn selectors(query: &str) -> Result<Vec<Selector>, String> {
    let expr = parser::parse(query)?;
    let mut out = Vec::new();
    collect(&expr, &mut out);
    Ok(out)
}

fn collect(expr: &Expr, out: &mut Vec<Selector>) {
    match expr {
        Expr::VectorSelector(vs) => out.push(Selector(vs.clone())),
        Expr::MatrixSelector(ms) => out.push(Selector(ms.vs.clone())),
        Expr::Aggregate(a) => {
            collect(&a.expr, out);
            if let Some(param) = &a.param {
                collect(param, out);
            }
        }
        Expr::Unary(u) => collect(&u.expr, out),
        Expr::Binary(b) => {
            collect(&b.lhs, out);
            collect(&b.rhs, out);
        }
        Expr::Paren(p) => collect(&p.expr, out),
        Expr::Subquery(s) => collect(&s.expr, out),
        Expr::Call(c) => c.args.args.iter().for_each(|arg| collect(arg, out)),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

impl Selector {
    /// Whether it selects the series `name{labels}` (a label the series lacks is the
    /// empty string, as in Prometheus).
    pub fn selects(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        let value = |label: &str| if label == "__name__" { name } else { labels.get(label).map_or("", String::as_str) };
        let all = |matchers: &[Matcher]| matchers.iter().all(|m| m.is_match(value(&m.name)));
        let named = self.0.name.as_deref().is_none_or(|n| n == name);
        let matchers = &self.0.matchers;
        named
            && all(&matchers.matchers)
            && (matchers.or_matchers.is_empty() || matchers.or_matchers.iter().any(|m| all(m)))
    }

    /// The metric name it selects by, when it names one.
    pub fn name(&self) -> Option<&str> {
        self.0.name.as_deref()
    }

    /// Its label matchers' label names (but `__name__`).
    pub fn labels(&self) -> impl Iterator<Item = &str> {
        let matchers = &self.0.matchers;
        matchers
            .matchers
            .iter()
            .chain(matchers.or_matchers.iter().flatten())
            .map(|m| m.name.as_str())
            .filter(|n| *n != "__name__")
    }
}

/// The published series of `simulation`'s telemetry, each as its name and labels.
pub fn declared(simulation: &Simulation) -> Vec<(String, BTreeMap<String, String>)> {
    simulation.telemetry.iter().flat_map(Telemetry::series).flat_map(|s| s.published()).collect()
}

/// The plan's metrics a simulation queries on its Prometheus: Prometheus metrics that
/// `simulation.measures` does not measure, with their queries.
pub fn simulated_queries<'p>(plan: &'p Plan, simulation: &'p Simulation) -> impl Iterator<Item = (&'p Id, &'p str)> {
    plan.metrics.iter().filter(|(id, _)| !simulation.measures.contains_key(*id)).filter_map(
        |(id, metric)| match &metric.source {
            MetricSource::Prometheus { query, .. } => Some((id, query.as_str())),
            _ => None,
        },
    )
}

/// Why no declared series matches `selector`, in words.
pub fn why_nothing(selector: &Selector, declared: &[(String, BTreeMap<String, String>)]) -> String {
    let Some(name) = selector.name() else {
        return "no declared series has labels matching it".to_owned();
    };
    let same: Vec<&BTreeMap<String, String>> = declared.iter().filter(|(n, _)| n == name).map(|(_, l)| l).collect();
    if same.is_empty() {
        let names: std::collections::BTreeSet<&str> = declared.iter().map(|(n, _)| n.as_str()).collect();
        return format!("no declared series is named `{name}`{}", crate::lint::suggestion(name, names));
    }
    let known: std::collections::BTreeSet<&str> = same.iter().flat_map(|l| l.keys()).map(String::as_str).collect();
    match selector.labels().find(|l| !known.contains(l)) {
        Some(label) => format!(
            "the `{name}` series have no label `{label}`{} (they have {})",
            crate::lint::suggestion(label, known.iter().copied()),
            known.iter().map(|l| format!("`{l}`")).collect::<Vec<_>>().join(", ")
        ),
        None => format!("no `{name}` series has label values that match it"),
    }
}

/// H335/H336: every selector of every simulated query selects a declared series.
pub(crate) fn lint(plan: &Plan, simulation: &Simulation, out: &mut Vec<Diagnostic>) {
    let declared = declared(simulation);
    for (id, query) in simulated_queries(plan, simulation) {
        let at = format!("/metrics/{id}/source/prometheus/query");
        let selectors = match selectors(query) {
            Ok(selectors) => selectors,
            Err(error) => {
                let message = format!("metric `{id}`: query `{query}` is not PromQL: {}", error.trim());
                out.push(Diagnostic::new(codes::QUERY_UNPARSABLE, at, message));
                continue;
            }
        };
        for selector in selectors.iter().filter(|s| !declared.iter().any(|(n, l)| s.selects(n, l))) {
            let message = format!(
                "metric `{id}`: selector `{selector}` of query `{query}` selects no series the simulation publishes: {}; declare the series production publishes under `simulation.telemetry`, or measure the metric under `simulation.measures`",
                why_nothing(selector, &declared)
            );
            out.push(Diagnostic::new(codes::QUERY_SELECTS_NOTHING, at.clone(), message));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    /// Each query's selectors, and which of them select `istio_requests_total{code="503"}`.
    fn check(query: &str, expect: &[(&str, bool)]) {
        let series = labels(&[("response_code", "503"), ("destination_service_name", "menu-service")]);
        let found: Vec<(String, bool)> = selectors(query)
            .unwrap()
            .iter()
            .map(|s| (s.to_string(), s.selects("istio_requests_total", &series)))
            .collect();
        let expect: Vec<(String, bool)> = expect.iter().map(|(s, b)| ((*s).to_owned(), *b)).collect();
        assert_eq!(found, expect, "{query}");
    }

    #[test]
    fn selectors_are_found_and_matched() {
        check(
            r#"100 * sum(rate(istio_requests_total{response_code=~"5.."}[5m])) / sum(rate(istio_requests_total[5m]))"#,
            &[(r#"istio_requests_total{response_code=~"5.."}"#, true), ("istio_requests_total", true)],
        );
        check(r#"istio_request_total{response_code="503"}"#, &[(r#"istio_request_total{response_code="503"}"#, false)]);
        check(
            r#"istio_requests_total{destination_service="menu-service"}"#,
            &[(r#"istio_requests_total{destination_service="menu-service"}"#, false)],
        );
        check(
            r#"sum(istio_requests_total{request_method!="GET"}) or vector(0)"#,
            &[(r#"istio_requests_total{request_method!="GET"}"#, true)],
        );
        check(r#"histogram_quantile(0.95, sum by (le) (rate(x_bucket[5m] offset 1h)))"#, &[("x_bucket", false)]);
        check(r#"{__name__="istio_requests_total"}"#, &[(r#"{__name__="istio_requests_total"}"#, true)]);
        assert!(selectors("rate(x[").is_err());
    }
}
