//! Readiness probes, with the same clients the executors use: MongoDB `hello`, Kafka
//! metadata, Redis `PING`.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::ServiceKind;

/// One attempt to talk to the service at `url`; `Err` says what failed.
pub(crate) async fn probe(kind: ServiceKind, url: &str) -> Result<(), String> {
    match kind {
        ServiceKind::Mongo => mongo(url).await,
        ServiceKind::Kafka => kafka(url).await,
        ServiceKind::Redis => redis(url).await,
    }
}

async fn mongo(url: &str) -> Result<(), String> {
    let mut options = mongodb::options::ClientOptions::parse(url).await.map_err(|e| e.to_string())?;
    options.server_selection_timeout = Some(Duration::from_millis(500));
    options.connect_timeout = Some(Duration::from_millis(500));
    let client = mongodb::Client::with_options(options).map_err(|e| e.to_string())?;
    let reply =
        client.database("admin").run_command(mongodb::bson::doc! { "hello": 1 }).await.map_err(|e| e.to_string());
    client.shutdown().await;
    reply.map(drop)
}

async fn kafka(bootstrap: &str) -> Result<(), String> {
    let bootstrap = bootstrap.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("socket.timeout.ms", "1000")
            .set("log_level", "0")
            .create()
            .map_err(|e| e.to_string())?;
        let metadata = consumer.fetch_metadata(None, Duration::from_millis(1500)).map_err(|e| e.to_string())?;
        if metadata.brokers().is_empty() { Err("the broker lists no brokers".to_owned()) } else { Ok(()) }
    })
    .await
    .map_err(|e| e.to_string())?
}

async fn redis(url: &str) -> Result<(), String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let mut connection = client.get_multiplexed_async_connection().await.map_err(|e| e.to_string())?;
    let pong: String = redis::cmd("PING").query_async(&mut connection).await.map_err(|e| e.to_string())?;
    if pong == "PONG" { Ok(()) } else { Err(format!("PING answered {pong}")) }
}

/// Creates `topics` (one partition each) unless they exist.
pub(crate) async fn create_topics(bootstrap: &str, topics: &[String]) -> Result<(), String> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        rdkafka::ClientConfig::new().set("bootstrap.servers", bootstrap).create().map_err(|e| e.to_string())?;
    let new: Vec<NewTopic<'_>> = topics.iter().map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(1))).collect();
    let results = admin.create_topics(&new, &AdminOptions::new()).await.map_err(|e| e.to_string())?;
    for result in results {
        match result {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(format!("{topic}: {code}")),
        }
    }
    Ok(())
}
