//! The MongoDB store against a real MongoDB-API server from the sandbox: leases, take-overs,
//! fencing of a holder that lost its lease (an uncommitted record stays invisible and is
//! overwritten by the next holder), `lock break`, and credentials kept out of messages.

use std::time::Duration;

use handoff_engine::{Acquired, BreakTarget, Event, LockRecord, LockRequest, Record, Store, StoreError};
use handoff_sandbox::{Options, Sandbox, ServiceKind, ServiceSpec};
use handoff_store_mongo::{MongoStore, mask};
use serde_json::Value;

fn record(seq: u64) -> Record {
    Record { seq, at: jiff::Timestamp::UNIX_EPOCH, event: Event::PhaseStarted { phase: format!("p{seq}") } }
}

fn take(store: &MongoStore, record: &LockRecord, force_unlock: Option<&str>) -> Result<Acquired, StoreError> {
    store.lock(&LockRequest { record: record.clone(), force_unlock: force_unlock.map(str::to_owned) })
}

/// A sandbox MongoDB and its URL; the runtime must outlive the sandbox.
fn server() -> (tokio::runtime::Runtime, Sandbox, String) {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let specs = [ServiceSpec::new("state", ServiceKind::Mongo)];
    let sandbox = runtime.block_on(Sandbox::start(&specs, &Options::default())).expect("the sandbox starts");
    let url = sandbox.service("state").unwrap().endpoint().url.clone();
    (runtime, sandbox, url)
}

#[test]
fn the_mongodb_store_fences_appends_and_takes_over_only_stale_or_named_locks() {
    let (runtime, sandbox, url) = server();
    let store = MongoStore::connect(&url, "plan", "env").unwrap();
    let mine = LockRecord::for_this_process("test", Duration::from_secs(60));
    assert_eq!(take(&store, &mine, None).unwrap().previous, None);
    store.create_run("r1", &Value::Null).unwrap();
    assert!(matches!(store.load("r1"), Err(StoreError::EmptyLog { .. })));
    let first = store.current_lock().unwrap().unwrap().lease();
    store.append("r1", &first, &record(1)).unwrap();

    // A live lock is refused; a named one is taken over with a greater epoch.
    let other = LockRecord { id: "other".to_owned(), host: "elsewhere".to_owned(), ..mine.clone() };
    assert!(matches!(take(&store, &other, None), Err(StoreError::Locked(ref held)) if held.id == mine.id));
    assert!(matches!(take(&store, &other, Some("nope")), Err(StoreError::WrongLock { .. })));
    let second = take(&store, &other, Some(&mine.id)).unwrap();
    assert_eq!(second.previous.map(|r| r.id), Some(mine.id.clone()));
    let second = second.lease;
    assert!(second.epoch > first.epoch);

    // The fenced holder's append is refused and leaves nothing visible.
    let refused = store.append("r1", &first, &record(2)).unwrap_err();
    assert!(matches!(refused, StoreError::Fenced { ref current, .. } if current.starts_with("other")), "{refused}");
    assert!(!store.heartbeat(&first).unwrap());
    assert_eq!(store.load("r1").unwrap(), vec![record(1)]);
    // The new holder writes over the fenced holder's uncommitted record; the stale one can
    // never write over the new holder's.
    let newer = Record { event: Event::PhaseStarted { phase: "mine".to_owned() }, ..record(2) };
    store.append("r1", &second, &newer).unwrap();
    assert!(matches!(store.append("r1", &first, &record(3)), Err(StoreError::Fenced { .. })));
    assert_eq!(store.load("r1").unwrap(), vec![record(1), newer]);
    assert!(store.heartbeat(&second).unwrap());

    // An expired lock is stale; a break keeps its epoch issued.
    let expired = LockRecord {
        id: "expired".to_owned(),
        heartbeat_at: jiff::Timestamp::now() - jiff::SignedDuration::from_secs(61),
        ..other.clone()
    };
    let expired_lease = take(&store, &expired, Some("other")).unwrap().lease;
    assert_eq!(take(&store, &other, None).unwrap().previous.map(|r| r.id), Some("expired".to_owned()));
    let broken = store.break_lock(&BreakTarget::Id("other".to_owned())).unwrap().unwrap();
    assert!(broken.epoch > expired_lease.epoch);
    assert!(matches!(store.break_lock(&BreakTarget::Id("other".to_owned())), Err(StoreError::WrongLock { .. })));
    assert!(matches!(store.break_lock(&BreakTarget::Damaged), Err(StoreError::WrongLock { .. })));
    assert_eq!(store.current_lock().unwrap(), None);
    let third = take(&store, &mine, None).unwrap().lease;
    assert!(third.epoch > broken.epoch);
    // The fenced holder's record 3 was written but never committed: a repair removes it.
    assert_eq!(store.repair("r1", &third).unwrap(), 1);
    assert_eq!(store.repair("r1", &third).unwrap(), 0);
    assert_eq!(store.load("r1").unwrap().len(), 2);
    store.unlock(&third).unwrap();
    assert_eq!(store.latest_run().unwrap().as_deref(), Some("r1"));
    drop(store);
    runtime.block_on(sandbox.shutdown());
}

#[test]
fn credentials_never_appear_in_the_location_or_an_error() {
    assert_eq!(mask("mongodb://ada:s3cret@db-1:27017,db-2/handoff?tls=true"), "mongodb://***@db-1:27017,db-2/handoff");
    assert_eq!(mask("mongodb+srv://cluster.example"), "mongodb+srv://cluster.example");
    // Nothing listens on port 9: the connection fails, and says so without the password.
    let url = "mongodb://ada:s3cret@127.0.0.1:9/state?serverSelectionTimeoutMS=200";
    let store = MongoStore::connect(url, "plan", "env").unwrap();
    assert!(!store.location().contains("s3cret"));
    let error = store.current_lock().unwrap_err().to_string();
    assert!(error.contains("127.0.0.1:9") && !error.contains("s3cret"), "{error}");
    let bad = MongoStore::connect("mongodb://ada:s3cret@/", "plan", "env").err().unwrap().to_string();
    assert!(!bad.contains("s3cret"), "{bad}");
}
