//! The board of hosted background steps against a real MongoDB-API server from the sandbox:
//! a job is claimed once at a time, an expired lease is claimed again with a greater epoch
//! and the last checkpoint, the holder that lost it is fenced, and a stop request is
//! answered by the acknowledgement only.

use std::time::Duration;

use handoff_engine::StoreError;
use handoff_engine::hosted::{Job, JobHealth, Jobs, StopReport, StopState};
use handoff_executor::HostedStop;
use handoff_sandbox::{Options, Sandbox, ServiceKind, ServiceSpec};
use handoff_store_mongo::MongoJobs;
use serde_json::json;

/// A job lease short enough to let expire in a test.
const TTL: Duration = Duration::from_millis(300);

fn job() -> Job {
    serde_json::from_value(json!({
        "id": "plan/env/run/sync", "plan": {}, "env": "env", "run": "run", "phase": "one", "step": "sync",
        "uses": "mongo.sync", "with": {"source": {"resource": "a", "collection": "c"}}, "checkpoint": null,
    }))
    .unwrap()
}

#[test]
fn a_job_lease_is_claimed_once_taken_over_after_expiry_and_fences_its_former_holder() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let specs = [ServiceSpec::new("state", ServiceKind::Mongo)];
    let sandbox = runtime.block_on(Sandbox::start(&specs, &Options::default())).expect("the sandbox starts");
    let jobs = MongoJobs::connect(&sandbox.service("state").unwrap().endpoint().url).unwrap();
    let stop = HostedStop { uses: "mongo.stop_sync".to_owned(), with: json!({"sync": "sync"}) };
    assert_eq!(jobs.request_stop("plan/env/run/sync", &stop).unwrap(), StopState::Unknown);

    jobs.post(&job()).unwrap();
    jobs.post(&job()).unwrap(); // a resumed run posts again: one job
    let (claimed, first) = jobs.claim("a/1", TTL).unwrap().expect("a free job is claimed");
    assert_eq!((claimed.step.as_str(), first.epoch, claimed.checkpoint), ("sync", 1, None));
    assert_eq!(jobs.claim("b/2", TTL).unwrap(), None, "a live lease is not claimed");
    jobs.checkpoint(&first, &json!({"applied": 7})).unwrap();
    assert_eq!(jobs.heartbeat(&first, TTL, &JobHealth::default()).unwrap(), None);

    std::thread::sleep(TTL + Duration::from_millis(200)); // let the lease expire
    let (claimed, second) = jobs.claim("b/2", TTL).unwrap().expect("an expired lease is claimed");
    assert_eq!((second.epoch, claimed.checkpoint), (2, Some(json!({"applied": 7}))));
    let fenced = |result: Result<(), StoreError>| matches!(result, Err(StoreError::Fenced { .. }));
    assert!(fenced(jobs.checkpoint(&first, &json!({"applied": 1}))));
    assert!(matches!(jobs.heartbeat(&first, TTL, &JobHealth::default()), Err(StoreError::Fenced { .. })));
    assert!(fenced(jobs.acknowledge(&first, &StopReport::Stopped(json!({"was_running": true})))));

    assert_eq!(jobs.request_stop("plan/env/run/sync", &stop).unwrap(), StopState::Requested);
    assert_eq!(jobs.heartbeat(&second, TTL, &JobHealth::default()).unwrap(), Some(stop.clone()));
    let report = StopReport::Stopped(json!({"was_running": true, "applied": 9}));
    jobs.acknowledge(&second, &report).unwrap();
    assert_eq!(jobs.request_stop("plan/env/run/sync", &stop).unwrap(), StopState::Acknowledged(report));
    let listed = jobs.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].epoch, listed[0].stop_requested, listed[0].done), (2, true, true), "{listed:?}");
    std::thread::sleep(TTL + Duration::from_millis(200));
    assert_eq!(jobs.claim("c/3", TTL).unwrap(), None, "a done job is never claimed again");
    drop(jobs);
    runtime.block_on(sandbox.shutdown());
}
