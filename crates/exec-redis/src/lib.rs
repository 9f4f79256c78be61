//! The `redis` executor: warm the cache from the new owner, invalidate without blocking the
//! server, and measure the cache hit ratio.

use handoff_executor::{Action, Context, Declaration, Executor, StepError, StepOutput};
use handoff_plan::Effect;
use handoff_plan::lint::{ParamIssue, Site, resource_ref};
use handoff_plan::model::{Id, Plan, ResourceKind};
use handoff_plan::units::Duration;
use schemars::JsonSchema;
use serde::Deserialize;

mod run;

pub use run::{InvalidateOutput, ObserveOutput, WarmOutput};

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
pub fn executor() -> Executor {
    Executor::new("redis", "Warms, invalidates and observes a Redis cache.")
        .with(WarmCache)
        .with(InvalidateKeys)
        .with(ObserveHits)
}

/// The `redis` resource a step names.
fn cache(plan: &Plan, id: &Id) -> Option<ParamIssue> {
    resource_ref(plan, "/cache", id, &[ResourceKind::Redis])
}

/// `redis.warm`.
pub struct WarmCache;

impl Action for WarmCache {
    type Params = Warm;
    type Output = WarmOutput;
    const DECLARATION: Declaration =
        Declaration::new::<Warm>("warm", "Load hot keys from MongoDB into the cache.", Effect::Change);

    fn check(&self, p: &Warm, site: &Site<'_>) -> Vec<ParamIssue> {
        let plan = site.plan;
        let mut issues: Vec<ParamIssue> = cache(plan, &p.cache)
            .into_iter()
            .chain(resource_ref(plan, "/source", &p.source, &[ResourceKind::Mongodb]))
            .collect();
        let prefix = plan.resources.get(&p.cache).and_then(|r| r.key_prefix.clone());
        if let Some(prefix) = prefix.filter(|prefix| !p.key.starts_with(prefix.as_str())) {
            issues.push(ParamIssue::invalid(
                "/key",
                format!("keys of `{}` start with `{prefix}`; start the key with it", p.cache),
            ));
        }
        issues
    }

    fn describe(&self, p: &Warm) -> String {
        format!(
            "warm `{}` with the {} most recently updated documents of `{}.{}` as `{}` (TTL {})",
            p.cache, p.hot_keys, p.source, p.collection, p.key, p.ttl
        )
    }

    async fn execute(&self, p: Warm, cx: &Context) -> Result<StepOutput<WarmOutput>, StepError> {
        run::warm(&p, cx).await.map(StepOutput::new)
    }
}

/// `redis.invalidate`.
pub struct InvalidateKeys;

impl Action for InvalidateKeys {
    type Params = Invalidate;
    type Output = InvalidateOutput;
    const DECLARATION: Declaration =
        Declaration::new::<Invalidate>("invalidate", "Delete keys matching a pattern with SCAN.", Effect::Change);

    fn check(&self, p: &Invalidate, site: &Site<'_>) -> Vec<ParamIssue> {
        let mut issues: Vec<ParamIssue> = cache(site.plan, &p.cache).into_iter().collect();
        if p.pattern.trim_matches('*').is_empty() {
            issues.push(ParamIssue::invalid(
                "/pattern",
                "this pattern would empty the whole cache; name the plan's key prefix (e.g. `menu:*`)",
            ));
        }
        issues
    }

    fn describe(&self, p: &Invalidate) -> String {
        format!("delete the keys of `{}` matching `{}` (SCAN + UNLINK)", p.cache, p.pattern)
    }

    async fn execute(&self, p: Invalidate, cx: &Context) -> Result<StepOutput<InvalidateOutput>, StepError> {
        run::invalidate(&p, cx).await.map(StepOutput::new)
    }
}

/// `redis.observe`.
pub struct ObserveHits;

impl Action for ObserveHits {
    type Params = Observe;
    type Output = ObserveOutput;
    const DECLARATION: Declaration =
        Declaration::new::<Observe>("observe", "Emit cache_hit_ratio from the server's counters.", Effect::Observe)
            .emitting(&["cache_hit_ratio"]);

    fn check(&self, p: &Observe, site: &Site<'_>) -> Vec<ParamIssue> {
        cache(site.plan, &p.cache).into_iter().collect()
    }

    fn describe(&self, p: &Observe) -> String {
        format!("measure the hit ratio of `{}` over {}", p.cache, p.window)
    }

    async fn execute(&self, p: Observe, cx: &Context) -> Result<StepOutput<ObserveOutput>, StepError> {
        run::observe(&p, cx).await.map(StepOutput::new)
    }
}
