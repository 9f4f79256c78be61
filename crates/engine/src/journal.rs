//! The journal: the single writer of a run's event log. Every record is durable before
//! it is applied to the in-memory state and announced to subscribers.

use std::sync::{Arc, Mutex};

use handoff_executor::{Clock, Decision, DecisionKey, HostedReply, HostedStop, Lifecycle, LifecycleFeed, Sink};
use serde_json::Value;
use tokio::sync::broadcast;

use crate::events::{Event, Notice, Record};
use crate::metrics::Emitted;
use crate::state::RunState;
use crate::store::{Lease, Store, StoreError};

/// Writes a run's records.
pub(crate) struct Journal {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) run: String,
    /// The lease every append is made under (fenced by the store).
    lease: Lease,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) notices: broadcast::Sender<Notice>,
    pub(crate) emitted: Emitted,
    /// Who decides every question automatically (simulations), if anyone.
    pub(crate) auto_decide: Option<String>,
    state: Mutex<RunState>,
    /// The first append that failed outside a `Result` path (metrics from a sink).
    failure: Mutex<Option<String>>,
    lifecycle: Mutex<Lifecycles>,
    /// The board background steps are posted to, when a worker hosts them.
    pub(crate) hosted: std::sync::OnceLock<crate::hosted::Hosted>,
}

/// The lifecycle so far and its subscribers; closed when the run stops in this process.
struct Lifecycles {
    history: Vec<Lifecycle>,
    /// `None` once closed.
    open: Option<(broadcast::Sender<Lifecycle>, tokio::sync::mpsc::Sender<()>)>,
    /// Ends when every subscriber has dropped its `done` sender.
    drained: Option<tokio::sync::mpsc::Receiver<()>>,
}

/// How long the end of a run waits for lifecycle subscribers to handle the last event.
const LIFECYCLE_DRAIN: std::time::Duration = std::time::Duration::from_secs(15);

impl Journal {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        run: String,
        lease: Lease,
        state: RunState,
        clock: Arc<dyn Clock>,
        notices: broadcast::Sender<Notice>,
        auto_decide: Option<String>,
    ) -> Journal {
        let emitted = Emitted::with(state.metrics.clone());
        Journal {
            store,
            run,
            lease,
            clock,
            notices,
            emitted,
            auto_decide,
            state: Mutex::new(state),
            failure: Mutex::new(None),
            lifecycle: Mutex::new({
                let (done, drained) = tokio::sync::mpsc::channel(1);
                Lifecycles {
                    history: Vec::new(),
                    open: Some((broadcast::channel(256).0, done)),
                    drained: Some(drained),
                }
            }),
            hosted: std::sync::OnceLock::new(),
        }
    }

    /// Ends the lifecycle feed (the run stopped in this process) and waits, a bounded
    /// time, for its subscribers to handle the last event.
    pub(crate) async fn close_lifecycle(&self) {
        let drained = {
            let mut lifecycle = self.lifecycle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            lifecycle.open = None;
            lifecycle.drained.take()
        };
        if let Some(mut drained) = drained
            && tokio::time::timeout(LIFECYCLE_DRAIN, drained.recv()).await.is_err()
        {
            tracing::warn!("a lifecycle subscriber did not finish within {LIFECYCLE_DRAIN:?}");
        }
    }

    fn announce_lifecycle(&self, record: &Record) {
        let Some((event, phase, detail)) = record.event.lifecycle() else { return };
        let change = Lifecycle { seq: record.seq, at: record.at, event, phase, detail };
        let mut lifecycle = self.lifecycle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((sender, _)) = &lifecycle.open {
            let _ = sender.send(change.clone());
            lifecycle.history.push(change);
        }
    }

    /// Appends an event durably, then applies and announces it.
    pub(crate) fn record(&self, event: Event) -> Result<Record, StoreError> {
        if let Some(failure) = self.failure.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone() {
            return Err(StoreError::Io { path: self.run.clone().into(), source: std::io::Error::other(failure) });
        }
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let record = Record { seq: state.next_seq, at: self.clock.now(), event };
        if let Err(error) = self.store.append(&self.run, &self.lease, &record) {
            drop(state);
            self.fail(&error);
            return Err(error);
        }
        state.apply(&record);
        drop(state);
        tracing::debug!(seq = record.seq, event = ?record.event, "recorded");
        self.announce_lifecycle(&record);
        let _ = self.notices.send(Notice::Record(record.clone()));
        Ok(record)
    }

    /// A copy of the current state.
    pub(crate) fn state(&self) -> RunState {
        self.read(RunState::clone)
    }

    /// Reads the current state without copying it.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&RunState) -> T) -> T {
        f(&self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Whether every question is decided automatically (a simulation).
    pub(crate) fn decides_automatically(&self) -> bool {
        self.auto_decide.is_some()
    }

    /// A person's (or the simulation's) decision on `key`.
    pub(crate) fn decision(&self, key: &DecisionKey) -> Result<Option<Decision>, StoreError> {
        self.decided(&key.to_string())
    }

    /// The decision recorded under a key's text (what executors ask with), else the
    /// simulation's.
    fn decided(&self, key: &str) -> Result<Option<Decision>, StoreError> {
        if let Some(decision) = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).decisions.get(key)
        {
            return Ok(Some(decision.clone()));
        }
        let Some(by) = &self.auto_decide else { return Ok(None) };
        let decision = Decision { approved: true, by: by.clone(), comment: None, digest: None };
        self.record(Event::Decided { key: key.to_owned(), decision: decision.clone() })?;
        Ok(Some(decision))
    }

    fn fail(&self, error: &StoreError) {
        tracing::error!(%error, "cannot write the event log; the run stops");
        self.failure.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get_or_insert(error.to_string());
    }
}

impl Sink for Journal {
    fn checkpoint(&self, phase: &str, step: &str, data: &Value) -> std::io::Result<()> {
        self.record(Event::Checkpoint { phase: phase.to_owned(), step: step.to_owned(), data: data.clone() })
            .map(drop)
            .map_err(std::io::Error::other)
    }

    fn metric(&self, phase: &str, step: &str, name: &str, value: f64) {
        self.emitted.record(name, value);
        let event = Event::Metric { phase: phase.to_owned(), step: step.to_owned(), name: name.to_owned(), value };
        if let Err(error) = self.record(event) {
            self.fail(&error);
        }
    }

    fn progress(&self, phase: &str, step: &str, message: &str, fraction: Option<f64>) {
        tracing::info!(phase, step, fraction, "{message}");
        let _ = self.notices.send(Notice::Progress {
            phase: phase.to_owned(),
            step: step.to_owned(),
            message: message.to_owned(),
            fraction,
        });
    }

    fn output(&self, step: &str) -> Option<handoff_executor::StepOutput> {
        self.read(|s| s.phases.iter().find_map(|p| p.steps.get(step).filter(|s| s.finished).map(|s| s.output.clone())))
    }

    fn lifecycle(&self) -> Option<LifecycleFeed> {
        let lifecycle = self.lifecycle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (sender, done) = lifecycle.open.as_ref()?;
        Some(LifecycleFeed { history: lifecycle.history.clone(), events: sender.subscribe(), done: done.clone() })
    }

    fn stop_hosted(&self, step: &str, stop: &HostedStop) -> Option<HostedReply> {
        self.hosted.get()?.stop(step, stop)
    }

    fn decision(&self, key: &str) -> Option<Decision> {
        self.decided(key).unwrap_or_else(|error| {
            self.fail(&error);
            None
        })
    }
}
