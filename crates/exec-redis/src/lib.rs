//! The `redis` executor: warm the cache from the new owner, invalidate without blocking the
//! server, and measure the cache hit ratio.

use handoff_executor::{Action, BoxFuture, Call, Context, Executor, StepError, params};
use handoff_plan::Effect;
use handoff_plan::lint::{ParamIssue, Site, resource_ref};
use handoff_plan::model::{Id, ResourceKind};
use handoff_plan::units::Duration;
use schemars::JsonSchema;
use serde::Deserialize;

mod run;

/// `redis.warm`: load hot keys from a MongoDB collection into the cache.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Warm {
    /// The `redis` resource.
    pub cache: Id,
    /// The `mongodb` resource documents are read from.
    pub source: Id,
    /// Collection read.
    pub collection: String,
    /// Cache key of a document; `{field}` is replaced by the document's field.
    pub key: String,
    /// Number of documents warmed (most recently updated first).
    #[schemars(range(min = 1))]
    pub hot_keys: u64,
    /// Field whose highest values are warmed first (default `updated_at`).
    #[serde(default)]
    pub order_by: Option<String>,
    /// Time to live of each key.
    pub ttl: Duration,
}

/// `redis.invalidate`: delete keys matching a pattern, with SCAN (never KEYS).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Invalidate {
    /// The `redis` resource.
    pub cache: Id,
    /// Glob pattern of the keys deleted (`menu:*`).
    pub pattern: String,
    /// Keys scanned per round trip.
    #[serde(default)]
    #[schemars(range(min = 1, max = 100000))]
    pub batch: Option<u32>,
}

/// `redis.observe`: emit the cache hit ratio from the server's own counters.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Observe {
    /// The `redis` resource.
    pub cache: Id,
    /// Hit ratio is computed over windows of this length.
    pub window: Duration,
}

/// The `redis` executor.
pub struct Redis;

impl Executor for Redis {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn summary(&self) -> &'static str {
        "Warms, invalidates and observes a Redis cache."
    }

    fn actions(&self) -> &'static [Action] {
        const ACTIONS: &[Action] = &[
            Action::new::<Warm>("warm", "Load hot keys from MongoDB into the cache.", Effect::Change),
            Action::new::<Invalidate>("invalidate", "Delete keys matching a pattern with SCAN.", Effect::Change),
            Action::new::<Observe>("observe", "Emit cache_hit_ratio from the server's counters.", Effect::Observe)
                .emitting(&["cache_hit_ratio"]),
        ];
        ACTIONS
    }

    fn executes(&self, _: &str) -> bool {
        true
    }

    fn describe(&self, call: Call<'_>) -> String {
        let text = |key: &str| call.with.get(key).and_then(serde_json::Value::as_str).unwrap_or("?").to_owned();
        match call.action {
            "warm" => format!(
                "warm `{}` with the {} most recently updated documents of `{}.{}` as `{}` (TTL {})",
                text("cache"),
                call.with.get("hot_keys").and_then(serde_json::Value::as_u64).unwrap_or(0),
                text("source"),
                text("collection"),
                text("key"),
                text("ttl")
            ),
            "invalidate" => {
                format!("delete the keys of `{}` matching `{}` (SCAN + UNLINK)", text("cache"), text("pattern"))
            }
            _ => format!("measure the hit ratio of `{}` over {}", text("cache"), text("window")),
        }
    }

    fn execute<'a>(&'a self, call: Call<'a>, cx: &'a Context) -> BoxFuture<'a, Result<serde_json::Value, StepError>> {
        Box::pin(async move {
            match call.action {
                "warm" => run::warm(&call.params()?, cx).await,
                "invalidate" => run::invalidate(&call.params()?, cx).await,
                "observe" => run::observe(&call.params()?, cx).await,
                other => Err(StepError::Refused(format!("redis has no action `{other}`"))),
            }
        })
    }

    fn check(&self, action: &str, with: &serde_json::Value, site: &Site<'_>) -> Vec<ParamIssue> {
        let plan = site.plan;
        let cache = |id: &Id| resource_ref(plan, "/cache", id, &[ResourceKind::Redis]);
        let prefix = |id: &Id| plan.resources.get(id).and_then(|r| r.key_prefix.clone());
        match action {
            "warm" => match params::<Warm>(with) {
                Ok(p) => {
                    let mut issues: Vec<ParamIssue> = cache(&p.cache)
                        .into_iter()
                        .chain(resource_ref(plan, "/source", &p.source, &[ResourceKind::Mongodb]))
                        .collect();
                    if let Some(prefix) = prefix(&p.cache).filter(|prefix| !p.key.starts_with(prefix.as_str())) {
                        issues.push(ParamIssue::invalid(
                            "/key",
                            format!("keys of `{}` start with `{prefix}`; start the key with it", p.cache),
                        ));
                    }
                    issues
                }
                Err(issues) => issues,
            },
            "invalidate" => match params::<Invalidate>(with) {
                Ok(p) => {
                    let mut issues: Vec<ParamIssue> = cache(&p.cache).into_iter().collect();
                    if p.pattern.trim_matches('*').is_empty() {
                        issues.push(ParamIssue::invalid(
                            "/pattern",
                            "this pattern would empty the whole cache; name the plan's key prefix (e.g. `menu:*`)",
                        ));
                    }
                    issues
                }
                Err(issues) => issues,
            },
            _ => match params::<Observe>(with) {
                Ok(p) => cache(&p.cache).into_iter().collect(),
                Err(issues) => issues,
            },
        }
    }
}
