//! The sandbox against its real servers: data round-trips through every service with the
//! real Rust clients, every fault control acts on what a client sees, and nothing is left
//! behind.

use std::time::{Duration, Instant};

use handoff_sandbox::{Options, Sandbox, ServiceKind, ServiceSpec};
use mongodb::bson::doc;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message};

fn specs() -> Vec<ServiceSpec> {
    vec![
        ServiceSpec { database: Some("restaurant".to_owned()), ..ServiceSpec::new("old_db", ServiceKind::Mongo) },
        ServiceSpec { database: Some("menu".to_owned()), ..ServiceSpec::new("new_db", ServiceKind::Mongo) },
        ServiceSpec::new("events", ServiceKind::Kafka),
        ServiceSpec::new("cache", ServiceKind::Redis),
    ]
}

async fn mongo(url: &str) -> mongodb::Client {
    let mut options = mongodb::options::ClientOptions::parse(url).await.unwrap();
    options.server_selection_timeout = Some(Duration::from_secs(2));
    mongodb::Client::with_options(options).unwrap()
}

async fn redis(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap()
}

async fn ping(connection: &mut redis::aio::MultiplexedConnection) -> Result<String, String> {
    match tokio::time::timeout(Duration::from_secs(2), redis::cmd("PING").query_async::<String>(connection)).await {
        Ok(reply) => reply.map_err(|e| e.to_string()),
        Err(_) => Err("timed out".to_owned()),
    }
}

/// Every port the sandbox used is closed (within ten seconds: the kernel releases them
/// after the processes are reaped) and no server process of it remains.
fn assert_gone(ports: &[u16], dir: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    for port in ports {
        while std::net::TcpStream::connect(("127.0.0.1", *port)).is_ok() {
            assert!(Instant::now() < deadline, "port {port} is still open");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert!(!dir.exists(), "{} was not removed", dir.display());
    let ps = std::process::Command::new("ps").args(["-eo", "args"]).output().unwrap();
    let listing = String::from_utf8_lossy(&ps.stdout);
    let dir = dir.display().to_string();
    assert!(!listing.lines().any(|l| l.contains(&dir)), "a server of {dir} still runs:\n{listing}");
}

#[tokio::test(flavor = "multi_thread")]
async fn data_round_trips_through_every_service() {
    let sandbox = Sandbox::start(&specs(), &Options::default()).await.unwrap();
    let ports: Vec<u16> = sandbox.endpoints().iter().flat_map(|e| [e.port, e.server_port]).collect();
    let dir = sandbox.dir().to_owned();

    // MongoDB: two independent servers, a change stream sees an insert.
    let old = mongo(&sandbox.service("old_db").unwrap().endpoint().url).await;
    let new = mongo(&sandbox.service("new_db").unwrap().endpoint().url).await;
    let items = old.database("restaurant").collection::<mongodb::bson::Document>("menu_items");
    let mut stream = items.watch().await.unwrap();
    items.insert_one(doc! { "_id": 1, "name": "margherita", "price": 9.5 }).await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(event) = stream.next_if_any().await.unwrap() {
                return event;
            }
        }
    })
    .await
    .expect("the change stream delivers the insert");
    assert_eq!(event.full_document.unwrap().get_str("name").unwrap(), "margherita");
    let on_new = new.database("menu").collection::<mongodb::bson::Document>("menu_items");
    assert_eq!(on_new.count_documents(doc! {}).await.unwrap(), 0, "the new owner's server is separate");

    // Kafka: a topic, a keyed message, a consumer group that commits its offset.
    let bootstrap = sandbox.service("events").unwrap().endpoint().url.clone();
    let admin: AdminClient<_> = ClientConfig::new().set("bootstrap.servers", &bootstrap).create().unwrap();
    let topic = NewTopic::new("menu-events", 1, TopicReplication::Fixed(1));
    let created = admin.create_topics([&topic], &AdminOptions::new()).await.unwrap();
    assert!(created.iter().all(Result::is_ok), "{created:?}");
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", &bootstrap).create().unwrap();
    producer
        .send(FutureRecord::to("menu-events").key("item-1").payload("{\"v\":1}"), Duration::from_secs(10))
        .await
        .unwrap();
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "search-indexer")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    // Partitions are assigned by hand: the group commits offsets without a join, because
    // Tansu 0.6 never completes a member's LeaveGroup and librdkafka's close waits for it.
    let mut assignment = rdkafka::TopicPartitionList::new();
    assignment.add_partition_offset("menu-events", 0, rdkafka::Offset::Beginning).unwrap();
    consumer.assign(&assignment).unwrap();
    let message =
        tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await.expect("a message arrives").unwrap();
    assert_eq!(message.key(), Some(&b"item-1"[..]));
    consumer.commit_message(&message, CommitMode::Sync).unwrap();
    let committed = consumer.committed(Duration::from_secs(10)).unwrap();
    assert_eq!(committed.elements()[0].offset(), rdkafka::Offset::Offset(1));

    // Redis.
    let mut cache = redis(&sandbox.service("cache").unwrap().endpoint().url).await;
    let _: () = redis::cmd("SET").arg("menu:1").arg("margherita").query_async(&mut cache).await.unwrap();
    let value: String = redis::cmd("GET").arg("menu:1").query_async(&mut cache).await.unwrap();
    assert_eq!(value, "margherita");

    drop((old, new, producer, admin));
    // librdkafka's consumer close waits for the group coordinator, which Tansu 0.6 never
    // answers: close it on a thread of its own and let the broker's shutdown end it.
    std::thread::spawn(move || drop(consumer));
    sandbox.shutdown().await;
    assert_gone(&ports, &dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_fault_is_visible_to_a_real_client() {
    let sandbox = Sandbox::start(
        &[ServiceSpec::new("cache", ServiceKind::Redis), ServiceSpec::new("db", ServiceKind::Mongo)],
        &Options::default(),
    )
    .await
    .unwrap();
    let cache = sandbox.service("cache").unwrap();
    let mut connection = redis(&cache.endpoint().url).await;
    assert_eq!(ping(&mut connection).await.unwrap(), "PONG");

    // Pause freezes the server: the connection stays open but nothing answers.
    cache.pause().await.unwrap();
    assert!(ping(&mut connection).await.is_err(), "a paused server does not answer");
    cache.resume().await.unwrap();
    let mut connection = redis(&cache.endpoint().url).await;
    assert_eq!(ping(&mut connection).await.unwrap(), "PONG");

    // Latency on the network path, in both directions (kept under the client's 500 ms
    // response timeout).
    let proxy = cache.proxy().unwrap();
    proxy.set_latency(Duration::from_millis(150));
    let started = Instant::now();
    assert_eq!(ping(&mut connection).await.unwrap(), "PONG");
    assert!(started.elapsed() >= Duration::from_millis(300), "latency is added both ways ({:?})", started.elapsed());
    proxy.heal();

    // Cut connections: the open connection breaks.
    proxy.cut_connections();
    assert!(ping(&mut connection).await.is_err(), "a cut connection fails");

    // Refuse: new connections fail until healed.
    proxy.set_refuse(true);
    assert!(
        redis::Client::open(cache.endpoint().url.as_str()).unwrap().get_multiplexed_async_connection().await.is_err()
    );
    proxy.heal();
    let mut connection = redis(&cache.endpoint().url).await;
    assert_eq!(ping(&mut connection).await.unwrap(), "PONG");

    // Stop and restart: down in between, data kept across the restart.
    let db = sandbox.service("db").unwrap();
    let client = mongo(&db.endpoint().url).await;
    let items = client.database("menu").collection::<mongodb::bson::Document>("items");
    items.insert_one(doc! { "_id": 1 }).await.unwrap();
    db.stop().await.unwrap();
    assert!(
        client.database("admin").run_command(doc! { "ping": 1 }).await.is_err(),
        "a stopped server does not answer"
    );
    db.restart(Duration::from_secs(60)).await.unwrap();
    let client = mongo(&db.endpoint().url).await;
    let items = client.database("menu").collection::<mongodb::bson::Document>("items");
    assert_eq!(items.count_documents(doc! {}).await.unwrap(), 1, "data survives a restart");

    let dir = sandbox.dir().to_owned();
    let ports: Vec<u16> = sandbox.endpoints().iter().flat_map(|e| [e.port, e.server_port]).collect();
    drop(sandbox);
    assert_gone(&ports, &dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn sandboxes_of_dead_owners_are_reaped() {
    let root = tempfile::tempdir().unwrap();
    // A leftover: a process group whose owner (a pid that cannot exist) is gone.
    let mut leftover = std::process::Command::new("sleep");
    std::os::unix::process::CommandExt::process_group(&mut leftover, 0);
    let mut leftover = leftover.arg("600").spawn().unwrap();
    let dead = root.path().join("dead-owner");
    std::fs::create_dir_all(&dead).unwrap();
    // Another process whose pid the record names with another start time: the process
    // the record meant is gone and its pid reused, so this one is left alone.
    let mut bystander = std::process::Command::new("sleep");
    std::os::unix::process::CommandExt::process_group(&mut bystander, 0);
    let mut bystander = bystander.arg("600").spawn().unwrap();
    let started = |pid: u32| -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        stat[stat.rfind(')').unwrap() + 1..].split_whitespace().nth(19).unwrap().parse().unwrap()
    };
    let record = serde_json::json!({
        "owner_pid": i32::MAX, "keep": false, "process_groups": [leftover.id(), bystander.id()],
        "started": {leftover.id().to_string(): started(leftover.id()), bystander.id().to_string(): started(bystander.id()) + 1},
    });
    std::fs::write(dead.join("sandbox.json"), record.to_string()).unwrap();

    let options = Options { root: root.path().to_owned(), ..Options::default() };
    let sandbox = Sandbox::start(&[ServiceSpec::new("cache", ServiceKind::Redis)], &options).await.unwrap();
    assert!(leftover.wait().unwrap().code().is_none(), "the leftover process was killed");
    assert!(bystander.try_wait().unwrap().is_none(), "a process that only shares a recorded pid was killed");
    bystander.kill().unwrap();
    assert!(!dead.exists(), "the leftover sandbox directory was removed");
    sandbox.shutdown().await;
}
