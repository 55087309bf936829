//! The Kafka lane end to end against a real Kafka-protocol broker (tansu): two `larder serve`
//! processes share a topic's partitions through one consumer group and write to one Redis;
//! the second to join takes partitions the first consumed (replaying their history into its
//! aggregation state); the first is killed with SIGKILL while events keep coming and comes
//! back in its own place (static membership); every event is counted exactly once throughout.
//! A broker that crashes and comes back empty (tansu keeps everything in memory): serving
//! goes on with the last values meanwhile, and afterwards the events of the re-created topic
//! (whose offsets start again at 0) are all counted, once, on top of the state from before.
//!
//! Not tested here: a member that dies for good. Its partitions move once the broker expires
//! its session, which tansu 0.6 does not do reliably for a member that held partitions.

use std::path::Path;
use std::time::{Duration, Instant};

use larder_testing::{KafkaBroker, RedisServer};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;

use crate::stream_util::{expected, served, wait_for};
use crate::util::{Server, larder_ok};

const USERS: i64 = 40;
const PARTITIONS: i32 = 4;

fn write_repo(root: &Path, bootstrap: &str, redis_url: &str) {
    std::fs::create_dir_all(root).unwrap();
    std::fs::write(
        root.join("larder.yaml"),
        format!(
            "project: kafkatest\nregistry: data/registry.json\nonline_store: {{type: redis, urls: [\"{redis_url}\"], key_prefix: \"k:\"}}\noffline_store: {{type: parquet, path: data/offline}}\n"
        ),
    )
    .unwrap();
    let definitions = format!(
        r#"entities:
  - name: user
    join_keys: [{{name: user_id, dtype: int64}}]
sources:
  - name: clicks
    type: kafka
    brokers: ["{bootstrap}"]
    topic: clicks
    consumer_group: larder
    start_offset: earliest
    timestamp_field: ts
    timestamp_unit: ms
    fields:
      - {{name: user_id, dtype: int64, path: user.id}}
      - {{name: amount, dtype: float64}}
feature_views:
  - name: user_clicks
    version: 1
    entities: [user]
    source: clicks
    allowed_lateness: 1h
    freshness_sla: 5s
    aggregations:
      - {{function: count, window: 7d}}
      - {{function: sum, column: amount, window: 7d}}
"#
    );
    std::fs::write(root.join("features.yaml"), definitions).unwrap();
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn create_topic(bootstrap: &str) {
    runtime().block_on(async {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .create()
            .unwrap();
        let results = admin
            .create_topics(
                &[NewTopic::new(
                    "clicks",
                    PARTITIONS,
                    TopicReplication::Fixed(1),
                )],
                &AdminOptions::new(),
            )
            .await
            .unwrap();
        for result in results {
            result.unwrap();
        }
    });
}

/// Produces events `range` keyed by user (so a user's events share a partition).
fn produce(bootstrap: &str, range: std::ops::Range<i64>) {
    runtime().block_on(async {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("linger.ms", "5")
            .create()
            .unwrap();
        let now_ms = chrono::Utc::now().timestamp_millis();
        let mut deliveries = Vec::new();
        for index in range {
            let user = index % USERS;
            let payload = json!({
                "user": {"id": user},
                "ts": now_ms - 300_000 + (index * 7_919) % 60_000,
                "amount": (index % 7) as f64,
            })
            .to_string();
            let key = user.to_string();
            let record = FutureRecord::to("clicks").key(&key).payload(&payload);
            deliveries.push(producer.send_result(record).unwrap());
        }
        for delivery in deliveries {
            delivery.await.unwrap().unwrap();
        }
    });
}

#[test]
fn two_processes_share_partitions_and_a_kill_9_loses_and_doubles_nothing() {
    let Some(broker) = KafkaBroker::start() else {
        return;
    };
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap);
    let temp = tempfile::tempdir().unwrap();
    let (repo_a, repo_b) = (temp.path().join("a"), temp.path().join("b"));
    for repo in [&repo_a, &repo_b] {
        write_repo(repo, &bootstrap, &redis.url());
        let applied = larder_ok(repo, &["apply"]);
        assert!(applied.contains("user_clicks"), "{applied}");
    }

    produce(&bootstrap, 0..2_000);
    let server_a = Server::start(&repo_a);
    let took = wait_for(&server_a, &expected(2_000, USERS), Duration::from_secs(60));
    eprintln!("2000 events servable after {took:?}");

    // B joins the group: the partitions are shared, and both processes write.
    let server_b = Server::start(&repo_b);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut total = 2_000;
    while stream_rows_written(&repo_b) == 0 {
        assert!(Instant::now() < deadline, "B never got a partition");
        produce(&bootstrap, total..total + 200);
        total += 200;
        std::thread::sleep(Duration::from_millis(500));
    }
    wait_for(&server_b, &expected(total, USERS), Duration::from_secs(60));
    assert!(stream_rows_written(&repo_a) > 0);

    // A dies without a word (SIGKILL) while events keep coming, and comes back with the
    // state it had saved; B keeps consuming its own partitions meanwhile.
    drop(server_a);
    produce(&bootstrap, total..total + 2_000);
    total += 2_000;
    let server_a = Server::start(&repo_a);
    let took = wait_for(&server_a, &expected(total, USERS), Duration::from_secs(90));
    eprintln!("after the kill -9 and restart of one process, all caught up in {took:?}");
    produce(&bootstrap, total..total + 1_000);
    total += 1_000;
    wait_for(&server_b, &expected(total, USERS), Duration::from_secs(90));
}

/// How many rows the stream consumer of the server running over `repo` has written (its
/// `larder status` lag samples), 0 before its first write.
fn stream_rows_written(repo: &Path) -> u64 {
    let status: serde_json::Value =
        serde_json::from_str(&larder_ok(repo, &["status", "--json"])).unwrap();
    status["views"][0]["lag_samples"].as_u64().unwrap_or(0)
}

#[test]
fn a_broker_that_restarts_empty_keeps_serving_and_counts_the_new_topic_once() {
    let Some(mut broker) = KafkaBroker::start() else {
        return;
    };
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap);
    let temp = tempfile::tempdir().unwrap();
    let repo = temp.path().join("repo");
    write_repo(&repo, &bootstrap, &redis.url());
    let applied = larder_ok(&repo, &["apply"]);
    assert!(applied.contains("user_clicks"), "{applied}");

    produce(&bootstrap, 0..1_000);
    let server = Server::start(&repo);
    let took = wait_for(&server, &expected(1_000, USERS), Duration::from_secs(60));
    eprintln!("1000 events servable after {took:?}");

    // The broker dies: reads go on answering 200 with the last values, and the process stays.
    broker.kill();
    let down_since = Instant::now();
    while down_since.elapsed() < Duration::from_secs(8) {
        assert_eq!(served(&server, USERS), expected(1_000, USERS));
        assert_running(&server);
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!(
        "served the last values for {:?} with the broker down",
        down_since.elapsed()
    );

    // It comes back empty: the topic is created again and its offsets start at 0, below the
    // offsets the state already applied. Every new event counts once, on top of the old ones.
    let restarted = Instant::now();
    broker.restart();
    create_topic(&bootstrap);
    produce(&bootstrap, 1_000..1_400);
    let took = wait_for(&server, &expected(1_400, USERS), Duration::from_secs(90));
    eprintln!(
        "the events produced after the restart were served {took:?} after producing them, {:?} after the restart",
        restarted.elapsed()
    );
    produce(&bootstrap, 1_400..1_800);
    let took = wait_for(&server, &expected(1_800, USERS), Duration::from_secs(60));
    eprintln!("then 400 more served after {took:?}");
    // Nothing is counted again later (a late replay would push the totals past the events).
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(served(&server, USERS), expected(1_800, USERS));
    assert_running(&server);
}

/// Fails if the server process has exited (an unreaped child shows as a zombie).
fn assert_running(server: &Server) {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", server.pid()))
        .expect("the server process exists");
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next());
    assert!(
        matches!(state, Some(state) if state != 'Z' && state != 'X'),
        "larder serve exited: {stat}"
    );
}
