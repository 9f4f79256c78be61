//! The board of hosted background steps ([`Jobs`]) in MongoDB, beside the run logs:
//!
//! ```text
//! jobs {_id: "<plan>/<env>/<run>/<step>", job: "<Job JSON>", epoch, done,
//!       lease: {holder, expires_ms} | null, checkpoint: "<JSON>" | null,
//!       health: "<JobHealth JSON>", stop: "<HostedStop JSON>" | null, output: "<JSON>" | null}
//! ```
//!
//! The lease follows the log's rule: every claim increments `epoch` with one conditional
//! update (a free or expired lease only), and every write of the holder (heartbeat,
//! checkpoint, acknowledgement, release) matches the job only while `epoch` and the holder
//! are still its own, so a worker whose lease was taken over writes nothing. Expiry is read
//! on the claiming worker's clock (milliseconds since the epoch). JSON values are kept as
//! text so that no key of a step's parameters (`$gte`, `a.b`) is read as an operator.

use std::time::Duration;

use futures_util::TryStreamExt;

use handoff_engine::StoreError;
use handoff_engine::hosted::{Job, JobHealth, JobLease, JobStatus, Jobs, StopReport, StopState};
use handoff_executor::HostedStop;
use mongodb::Collection;
use mongodb::bson::{Bson, Document, doc};
use mongodb::options::ReturnDocument;
use serde_json::Value;

use super::{Inner, MongoStore, int};

/// The jobs of every run kept in one MongoDB store.
pub struct MongoJobs(MongoStore);

impl MongoJobs {
    /// Connects to the store at `url` (its credentials never appear in an error).
    pub fn connect(url: &str) -> Result<MongoJobs, StoreError> {
        MongoStore::connect(url, "jobs", "*").map(MongoJobs)
    }
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl Inner {
    fn jobs(&self) -> Collection<Document> {
        self.db.collection("jobs")
    }

    /// The condition that `lease` still holds its job.
    fn holds(lease: &JobLease) -> Document {
        doc! {"_id": &lease.id, "epoch": int(lease.epoch), "lease.holder": &lease.holder}
    }

    fn text(&self, value: &impl serde::Serialize) -> Result<String, StoreError> {
        serde_json::to_string(value).map_err(|e| self.backend(&e.to_string()))
    }

    fn parse<T: serde::de::DeserializeOwned>(&self, raw: &Document, field: &str) -> Result<Option<T>, StoreError> {
        match raw.get(field) {
            Some(Bson::String(text)) => serde_json::from_str(text)
                .map(Some)
                .map_err(|e| self.backend(&format!("job {:?}, {field}: {e}", raw.get("_id")))),
            _ => Ok(None),
        }
    }

    /// The fencing error of a write under `lease` that matched nothing.
    fn lost(lease: &JobLease) -> StoreError {
        StoreError::Fenced {
            lease: lease.holder.clone(),
            epoch: lease.epoch,
            current: format!("another claim of job {}", lease.id),
        }
    }

    async fn fenced_update(&self, lease: &JobLease, update: Document) -> Result<(), StoreError> {
        let result = self.jobs().update_one(Self::holds(lease), update).await.map_err(|e| self.error(e))?;
        if result.matched_count == 1 { Ok(()) } else { Err(Self::lost(lease)) }
    }

    async fn post_job(&self, job: Job) -> Result<(), StoreError> {
        let new = doc! {
            "job": self.text(&job)?, "epoch": 0_i64, "done": false, "lease": Bson::Null,
            "checkpoint": job.checkpoint.as_ref().map(|c| self.text(c)).transpose()?,
            "stop": Bson::Null, "output": Bson::Null,
        };
        let update = doc! {"$setOnInsert": new};
        self.jobs().update_one(doc! {"_id": &job.id}, update).upsert(true).await.map_err(|e| self.error(e))?;
        Ok(())
    }

    async fn request_stop(&self, id: String, stop: HostedStop) -> Result<StopState, StoreError> {
        let update = doc! {"$set": {"stop": self.text(&stop)?}};
        let jobs = self.jobs();
        jobs.update_one(doc! {"_id": &id, "stop": Bson::Null}, update).await.map_err(|e| self.error(e))?;
        let Some(raw) = jobs.find_one(doc! {"_id": &id}).await.map_err(|e| self.error(e))? else {
            return Ok(StopState::Unknown);
        };
        if raw.get_bool("done").unwrap_or(false) {
            let report = self.parse::<StopReport>(&raw, "output")?;
            return Ok(StopState::Acknowledged(report.unwrap_or_else(|| StopReport::Failed("no report".to_owned()))));
        }
        Ok(StopState::Requested)
    }

    async fn claim_job(&self, holder: String, ttl: Duration) -> Result<Option<(Job, JobLease)>, StoreError> {
        let now = now_ms();
        let filter = doc! {"done": false, "$or": [{"lease": Bson::Null}, {"lease.expires_ms": {"$lt": now}}]};
        let update =
            doc! {"$set": {"lease": {"holder": &holder, "expires_ms": now + millis(ttl)}}, "$inc": {"epoch": 1_i64}};
        let claimed = self
            .jobs()
            .find_one_and_update(filter, update)
            .return_document(ReturnDocument::After)
            .await
            .map_err(|e| self.error(e))?;
        let Some(raw) = claimed else { return Ok(None) };
        let Some(mut job) = self.parse::<Job>(&raw, "job")? else {
            return Err(self.backend(&format!("job {:?} has no job description", raw.get("_id"))));
        };
        job.checkpoint = self.parse(&raw, "checkpoint")?;
        let epoch = raw.get_i64("epoch").ok().or_else(|| raw.get_i32("epoch").ok().map(i64::from)).unwrap_or(0);
        let lease = JobLease { id: job.id.clone(), epoch: u64::try_from(epoch).unwrap_or(0), holder };
        Ok(Some((job, lease)))
    }

    async fn renew_job(
        &self,
        lease: JobLease,
        ttl: Duration,
        health: JobHealth,
    ) -> Result<Option<HostedStop>, StoreError> {
        let update = doc! {"$set": {"lease.expires_ms": now_ms() + millis(ttl), "health": self.text(&health)?}};
        let found = self
            .jobs()
            .find_one_and_update(Self::holds(&lease), update)
            .return_document(ReturnDocument::After)
            .await
            .map_err(|e| self.error(e))?;
        let Some(raw) = found else { return Err(Self::lost(&lease)) };
        self.parse(&raw, "stop")
    }
}

impl Inner {
    async fn list_jobs(&self) -> Result<Vec<JobStatus>, StoreError> {
        let cursor = self.jobs().find(doc! {}).sort(doc! {"_id": 1}).await.map_err(|e| self.error(e))?;
        let raws: Vec<Document> = cursor.try_collect().await.map_err(|e| self.error(e))?;
        raws.iter().map(|raw| self.status(raw)).collect()
    }

    fn status(&self, raw: &Document) -> Result<JobStatus, StoreError> {
        let lease = raw.get_document("lease").ok();
        let epoch = raw.get_i64("epoch").ok().or_else(|| raw.get_i32("epoch").ok().map(i64::from)).unwrap_or(0);
        Ok(JobStatus {
            id: raw.get_str("_id").unwrap_or_default().to_owned(),
            holder: lease.and_then(|l| l.get_str("holder").ok()).map(str::to_owned),
            expires_ms: lease.and_then(|l| l.get_i64("expires_ms").ok()),
            epoch: u64::try_from(epoch).unwrap_or(0),
            health: self.parse(raw, "health")?.unwrap_or_default(),
            stop_requested: matches!(raw.get("stop"), Some(Bson::String(_))),
            done: raw.get_bool("done").unwrap_or(false),
        })
    }
}

impl Jobs for MongoJobs {
    fn list(&self) -> Result<Vec<JobStatus>, StoreError> {
        self.0.call(|inner| async move { inner.list_jobs().await })
    }

    fn post(&self, job: &Job) -> Result<(), StoreError> {
        let job = job.clone();
        self.0.call(|inner| async move { inner.post_job(job).await })
    }

    fn request_stop(&self, id: &str, stop: &HostedStop) -> Result<StopState, StoreError> {
        let (id, stop) = (id.to_owned(), stop.clone());
        self.0.call(|inner| async move { inner.request_stop(id, stop).await })
    }

    fn claim(&self, holder: &str, ttl: Duration) -> Result<Option<(Job, JobLease)>, StoreError> {
        let holder = holder.to_owned();
        self.0.call(|inner| async move { inner.claim_job(holder, ttl).await })
    }

    fn heartbeat(&self, lease: &JobLease, ttl: Duration, health: &JobHealth) -> Result<Option<HostedStop>, StoreError> {
        let (lease, health) = (lease.clone(), health.clone());
        self.0.call(|inner| async move { inner.renew_job(lease, ttl, health).await })
    }

    fn checkpoint(&self, lease: &JobLease, data: &Value) -> Result<(), StoreError> {
        let lease = lease.clone();
        let data = serde_json::to_string(data).map_err(|e| self.0.inner.backend(&e.to_string()))?;
        self.0.call(|inner| async move { inner.fenced_update(&lease, doc! {"$set": {"checkpoint": data}}).await })
    }

    fn acknowledge(&self, lease: &JobLease, report: &StopReport) -> Result<(), StoreError> {
        let lease = lease.clone();
        let output = serde_json::to_string(report).map_err(|e| self.0.inner.backend(&e.to_string()))?;
        let update = doc! {"$set": {"output": output, "done": true, "lease": Bson::Null}};
        self.0.call(|inner| async move { inner.fenced_update(&lease, update).await })
    }

    fn release(&self, lease: &JobLease) -> Result<(), StoreError> {
        let lease = lease.clone();
        self.0.call(|inner| async move { inner.fenced_update(&lease, doc! {"$set": {"lease": Bson::Null}}).await })
    }
}
