//! The `redis` executor: warm the cache from the new owner, invalidate without blocking the
//! server, and measure the cache hit ratio.

use handoff_executor::{Action, Executor, params};
use handoff_plan::Effect;
use handoff_plan::lint::{ParamIssue, Site, resource_ref};
use handoff_plan::model::{Id, ResourceKind};
use handoff_plan::units::Duration;
use schemars::JsonSchema;
use serde::Deserialize;

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

    fn check(&self, action: &str, with: &serde_json::Value, site: &Site<'_>) -> Vec<ParamIssue> {
        let plan = site.plan;
        let cache = |id: &Id| resource_ref(plan, "/cache", id, &[ResourceKind::Redis]);
        match action {
            "warm" => match params::<Warm>(with) {
                Ok(p) => cache(&p.cache)
                    .into_iter()
                    .chain(resource_ref(plan, "/source", &p.source, &[ResourceKind::Mongodb]))
                    .collect(),
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
