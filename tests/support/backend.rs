//! Where an end-to-end test keeps its runs' state: the embedded directory store, or the
//! shared MongoDB store on a real MongoDB-API server from the sandbox. The crash and lock
//! tests run against both.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use handoff_engine::{DirStore, LockRecord, Store};
use handoff_sandbox::{Options, Sandbox, ServiceKind, ServiceSpec};
use handoff_store_mongo::MongoStore;

/// The stores a crash or lock test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `--state-dir DIR`.
    Dir,
    /// `--state mongodb://…`.
    Mongo,
}

/// Both kinds, for a test that checks each.
pub const BOTH: [Kind; 2] = [Kind::Dir, Kind::Mongo];

/// A state store for one test.
pub struct Backend {
    kind: Kind,
    dir: tempfile::TempDir,
    mongo: Option<(tokio::runtime::Runtime, Option<Sandbox>, String)>,
    /// Stores opened, by plan and environment (a test polls them often).
    opened: Mutex<BTreeMap<(String, String), Arc<dyn Store>>>,
}

impl Backend {
    /// A new, empty store of `kind`.
    pub fn new(kind: Kind) -> Backend {
        let dir = tempfile::tempdir().unwrap();
        let mongo = (kind == Kind::Mongo).then(|| {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
            let specs =
                [ServiceSpec { database: Some("state".to_owned()), ..ServiceSpec::new("state", ServiceKind::Mongo) }];
            let sandbox = runtime.block_on(Sandbox::start(&specs, &Options::default())).expect("the sandbox starts");
            let url = sandbox.service("state").unwrap().endpoint().url.clone();
            (runtime, Some(sandbox), url)
        });
        Backend { kind, dir, mongo, opened: Mutex::default() }
    }

    /// Which kind it is.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The state directory (of the directory store).
    pub fn dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The connection string of the MongoDB store.
    pub fn url(&self) -> Option<&str> {
        self.mongo.as_ref().map(|(_, _, url)| url.as_str())
    }

    /// The arguments that choose this store.
    pub fn args(&self) -> Vec<String> {
        match &self.mongo {
            Some((_, _, url)) => vec!["--state".to_owned(), url.clone()],
            None => vec!["--state-dir".to_owned(), self.dir().display().to_string()],
        }
    }

    /// The store of `plan` in `env`, as the binary opens it.
    pub fn store(&self, plan: &str, env: &str) -> Arc<dyn Store> {
        let mut opened = self.opened.lock().unwrap();
        let store = opened.entry((plan.to_owned(), env.to_owned())).or_insert_with(|| match &self.mongo {
            Some((_, _, url)) => Arc::new(MongoStore::connect(url, plan, env).unwrap()),
            None => Arc::new(DirStore::new(&self.dir(), plan, env)),
        });
        store.clone()
    }

    /// The records of the latest run of `plan` in `env` as JSON (none before it has one;
    /// a torn or uncommitted last record left out).
    pub fn records(&self, plan: &str, env: &str) -> Vec<serde_json::Value> {
        let store = self.store(plan, env);
        let Ok(Some(run)) = store.latest_run() else { return Vec::new() };
        let records = store.load(&run).unwrap_or_default();
        records.iter().map(|r| serde_json::to_value(r).unwrap()).collect()
    }

    /// The lock of `plan` in `env`.
    pub fn lock(&self, plan: &str, env: &str) -> Option<LockRecord> {
        self.store(plan, env).current_lock().unwrap()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.opened.lock().unwrap().clear();
        if let Some((runtime, sandbox, _)) = &mut self.mongo
            && let Some(sandbox) = sandbox.take()
        {
            runtime.block_on(sandbox.shutdown());
        }
    }
}
