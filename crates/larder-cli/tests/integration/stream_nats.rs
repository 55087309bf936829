//! The streaming lane end to end: events published to a real nats-server (JetStream) are
//! aggregated by `larder serve` and servable over HTTP within seconds; a `kill -9` of the
//! server in the middle of the stream loses nothing and counts nothing twice.

use std::path::Path;
use std::time::{Duration, Instant};

use larder_testing::NatsServer;
use serde_json::json;

use arrow::array::AsArray;

use crate::stream_util::{expected, served, wait_for};
use crate::util::{Server, larder_ok, read_parquet};

const USERS: i64 = 10;

fn write_stream_repo(root: &Path, nats_url: &str) {
    std::fs::write(
        root.join("larder.yaml"),
        "project: streamtest\nregistry: data/registry.json\nonline_store: {type: embedded, path: data/online.redb}\noffline_store: {type: parquet, path: data/offline}\n",
    )
    .unwrap();
    let definitions = format!(
        r#"entities:
  - name: user
    join_keys: [{{name: user_id, dtype: int64}}]
sources:
  - name: clicks
    type: nats
    url: {nats_url}
    stream: CLICKS
    subject: clicks.>
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
      - {{function: last_n, column: amount, window: 1h, n: 3}}
"#
    );
    std::fs::write(root.join("features.yaml"), definitions).unwrap();
}

/// Publishes events `range` (user = index % USERS, amount = index % 7) with a JetStream ack
/// each, timestamps a few minutes before now and shuffled within a minute.
fn publish(nats_url: &str, range: std::ops::Range<i64>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = async_nats::connect(nats_url).await.unwrap();
        let context = async_nats::jetstream::new(client);
        context
            .get_or_create_stream(async_nats::jetstream::stream::Config {
                name: "CLICKS".into(),
                subjects: vec!["clicks.>".into()],
                ..Default::default()
            })
            .await
            .unwrap();
        let now_ms = chrono::Utc::now().timestamp_millis();
        let mut acks = Vec::new();
        for index in range {
            let event = json!({
                "user": {"id": index % USERS},
                "ts": now_ms - 300_000 + (index * 7_919) % 60_000,
                "amount": (index % 7) as f64,
            });
            let ack = context
                .publish(
                    format!("clicks.{}", index % USERS),
                    event.to_string().into(),
                )
                .await
                .unwrap();
            acks.push(ack);
            if acks.len() >= 2_000 {
                for ack in acks.drain(..) {
                    ack.await.unwrap();
                }
            }
        }
        for ack in acks {
            ack.await.unwrap();
        }
    });
}

/// A stream repo in `repo` applied, 2,000 events published, and `larder serve` started and
/// serving exactly their totals.
fn serving_the_first_events(repo: &Path, nats_url: &str) -> Server {
    write_stream_repo(repo, nats_url);
    larder_ok(repo, &["apply"]);
    publish(nats_url, 0..2_000);
    let server = Server::start(repo);
    wait_for(&server, &expected(2_000, USERS), Duration::from_secs(30));
    server
}

/// `kill -9` at the stream lane's crash points: after a batch's rows are written online but
/// before its state and position are committed, after the commit but before the broker
/// has the acks, in a checkpoint that made the online rows durable but not yet the state
/// (later batches carry their states meanwhile), and right after a checkpoint made the rows
/// and the position durable. The
/// restarted consumer converges to exactly the totals: a double count would exceed them and
/// never match, and rows lost while their position survived would never come back (no event
/// follows the kill).
#[test]
fn a_stream_consumer_killed_between_write_commit_and_ack_counts_nothing_twice() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};

    let Some(nats) = NatsServer::start() else {
        return;
    };
    let temp = tempfile::tempdir().unwrap();
    let repo = temp.path();
    write_stream_repo(repo, &nats.url());
    larder_ok(repo, &["apply"]);
    let mut total = 0;
    for point in [
        "stream.after_online_write",
        "stream.after_state_commit",
        "stream.checkpoint_after_online_sync",
        "stream.after_checkpoint",
    ] {
        publish(&nats.url(), total..total + 5_000);
        total += 5_000;
        let mut killed = Command::new(crate::util::larder_binary())
            .args(["serve", "--port", "0", "--grpc-port", "0"])
            .current_dir(repo)
            .env("LARDER_CRASH_AT", point)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = killed.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                killed.kill().unwrap();
                panic!("{point}: the consumer never reached it");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(status.signal(), Some(9), "{point}: {status:?}");
        let server = Server::start(repo);
        let took = wait_for(&server, &expected(total, USERS), Duration::from_secs(60));
        eprintln!("{point}: killed, restarted, exact totals after {took:?}");
    }
}

/// The broker killed (SIGKILL) in the middle of a stream and restarted on its storage while
/// `larder serve` keeps running: the consumer reconnects and the served values converge to
/// exactly the totals, nothing lost, nothing counted twice.
#[test]
fn a_nats_broker_killed_mid_stream_loses_and_doubles_nothing() {
    let Some(mut nats) = NatsServer::start() else {
        return;
    };
    let temp = tempfile::tempdir().unwrap();
    let server = serving_the_first_events(temp.path(), &nats.url());
    publish(&nats.url(), 2_000..20_000);
    nats.kill();
    std::thread::sleep(Duration::from_secs(2));
    nats.restart();
    publish(&nats.url(), 20_000..25_000);
    let took = wait_for(&server, &expected(25_000, USERS), Duration::from_secs(60));
    eprintln!("exact totals {took:?} after the broker came back");
}

/// The broker hangs (SIGSTOP) for longer than two pull heartbeats while events wait: the
/// consumer notices it is no longer fed, re-creates itself at its committed position once the
/// broker answers again, and converges to exactly the totals. Before, a pull consumer whose
/// count of outstanding messages had drifted waited forever (seen under load in the
/// streaming benchmark: the server had no pull request of it, with 1.1M messages pending).
#[test]
fn a_hung_nats_broker_is_noticed_and_the_consumer_re_created_losing_and_doubling_nothing() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let temp = tempfile::tempdir().unwrap();
    let server = serving_the_first_events(temp.path(), &nats.url());
    publish(&nats.url(), 2_000..6_000);
    nats.pause();
    std::thread::sleep(Duration::from_secs(12));
    nats.resume();
    publish(&nats.url(), 6_000..8_000);
    let took = wait_for(&server, &expected(8_000, USERS), Duration::from_secs(60));
    let restarts = server
        .metrics()
        .lines()
        .find(|line| {
            line.starts_with("larder_stream_consumer_restarts_total{view=\"user_clicks\"}")
        })
        .and_then(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(restarts >= 1.0, "the hung broker went unnoticed");
    eprintln!("exact totals {took:?} after the broker resumed; {restarts} consumer restarts");
}

/// The disk under the repo (online store, stream state, registry) fills up while events keep
/// coming: `larder serve` keeps serving what it has and retries the batch it cannot commit;
/// once space is freed it converges to exactly the totals.
#[test]
fn a_full_disk_during_stream_commits_loses_and_doubles_nothing() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let Some(disk) = crate::faults::SmallDisk::mount(48) else {
        return;
    };
    let repo = disk.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let server = serving_the_first_events(&repo, &nats.url());
    disk.fill_leaving(0);
    publish(&nats.url(), 2_000..6_000);
    std::thread::sleep(Duration::from_secs(3));
    // Still serving, and nothing half-counted shows: the values are the last committed ones
    // or the totals, never more.
    let during = served(&server, USERS);
    for (got, total) in during.iter().zip(expected(6_000, USERS)) {
        assert!(got.0 <= total.0, "counted twice on a full disk: {during:?}");
    }
    disk.empty();
    let took = wait_for(&server, &expected(6_000, USERS), Duration::from_secs(60));
    eprintln!("exact totals {took:?} after space was freed");
}

#[test]
fn nats_events_are_aggregated_servable_within_seconds_and_survive_kill_9() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let temp = tempfile::tempdir().unwrap();
    let repo = temp.path();
    write_stream_repo(repo, &nats.url());
    let applied = larder_ok(repo, &["apply"]);
    assert!(applied.contains("user_clicks"), "{applied}");

    // Servable within seconds.
    publish(&nats.url(), 0..500);
    let server = Server::start(repo);
    let took = wait_for(&server, &expected(500, USERS), Duration::from_secs(30));
    eprintln!("500 events servable after {took:?}");
    let first = 500;
    publish(&nats.url(), first..first + 1_000);
    let took = wait_for(
        &server,
        &expected(first + 1_000, USERS),
        Duration::from_secs(10),
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");

    // kill -9 in the middle of a large stream, then more events while it is down.
    let total_before_kill = first + 1_000 + 30_000;
    publish(&nats.url(), first + 1_000..total_before_kill);
    let partial_deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let served_events: i64 = served(&server, USERS).iter().map(|(count, _)| count).sum();
        if served_events > first + 1_000 || Instant::now() > partial_deadline {
            eprintln!("killing the server after {served_events} of {total_before_kill} events");
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(server); // SIGKILL
    let total = total_before_kill + 2_000;
    publish(&nats.url(), total_before_kill..total);
    let server = Server::start(repo);
    wait_for(&server, &expected(total, USERS), Duration::from_secs(60));

    // Freshness is exported per view.
    let metrics = server.metrics();
    assert!(
        metrics.contains(
            "larder_event_to_servable_duration_seconds_bucket{view=\"user_clicks\",lane=\"stream\""
        ),
        "{metrics}"
    );

    // `larder status` reports the view's freshness against its 5 s SLA: the events were
    // stamped four to five minutes in the past, so the lag is that old and the view is late.
    let status: serde_json::Value =
        serde_json::from_str(&larder_ok(repo, &["status", "--json"])).unwrap();
    let view = &status["views"][0];
    assert_eq!(view["view"], "user_clicks", "{status}");
    assert_eq!(view["source"], "nats", "{status}");
    assert_eq!(view["freshness_sla_seconds"], 5.0, "{status}");
    assert_eq!(view["last_write_lane"], "stream", "{status}");
    let lag_p99 = view["lag_p99_seconds"].as_f64().unwrap();
    assert!((200.0..400.0).contains(&lag_p99), "{status}");
    assert_eq!(view["status"], "late", "{status}");
    let table = larder_ok(repo, &["status"]);
    assert!(
        table.contains("user_clicks:v1") && table.contains("late"),
        "{table}"
    );

    // And a restart replays nothing twice: the served values come back to exactly the
    // totals (a double count would exceed them and never match). The state file is durable
    // at most once a second, so the restarted consumer may first replay the tail of the
    // stream; the values converge once it has.
    drop(server);
    let server = Server::start(repo);
    wait_for(&server, &expected(total, USERS), Duration::from_secs(30));

    // Training sees what serving saw: the backfill of the broker's retained history through
    // the same aggregation code, read point-in-time at each user's served event time, gives
    // the served values.
    let (status, response) = server.post(
        "/get-online-features",
        &json!({"features": ["user_clicks:count_7d"], "entities": {"user_id": (0..USERS).collect::<Vec<_>>()}})
            .to_string(),
    );
    assert_eq!(status, 200, "{response}");
    let served_times: Vec<String> = response["results"][1]["event_timestamps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|time| time.as_str().unwrap().to_string())
        .collect();
    let backfilled = larder_ok(repo, &["stream-backfill", "--view", "user_clicks"]);
    assert!(
        backfilled.contains(&format!("{total} events applied")),
        "{backfilled}"
    );
    let mut entities = String::from("user_id,event_timestamp\n");
    for (user, time) in served_times.iter().enumerate() {
        entities.push_str(&format!("{user},{time}\n"));
    }
    std::fs::write(repo.join("entities.csv"), entities).unwrap();
    larder_ok(
        repo,
        &[
            "training-set",
            "--entities",
            "entities.csv",
            "--features",
            "user_clicks:count_7d,user_clicks:amount_sum_7d",
            "--output",
            "train.parquet",
        ],
    );
    let mut offline = Vec::new();
    for batch in read_parquet(&repo.join("train.parquet")) {
        let count = arrow::compute::cast(
            batch.column_by_name("count_7d").unwrap(),
            &arrow::datatypes::DataType::Int64,
        )
        .unwrap();
        let sum = arrow::compute::cast(
            batch.column_by_name("amount_sum_7d").unwrap(),
            &arrow::datatypes::DataType::Float64,
        )
        .unwrap();
        let count = count.as_primitive::<arrow::datatypes::Int64Type>();
        let sum = sum.as_primitive::<arrow::datatypes::Float64Type>();
        for row in 0..batch.num_rows() {
            offline.push((count.value(row), sum.value(row)));
        }
    }
    assert_eq!(offline, served(&server, USERS));
}

/// A protobuf field key (field number and wire type) as a varint.
fn protobuf_varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// `acme.events.Click { int64 user_id = 1; double amount = 2; google.protobuf.Timestamp ts = 3; }`
/// encoded by hand (wire format), independent of the decoder under test.
fn click_protobuf(user_id: i64, amount: f64, ts_ms: i64) -> Vec<u8> {
    let mut timestamp = Vec::new();
    protobuf_varint(1 << 3, &mut timestamp);
    protobuf_varint((ts_ms / 1_000) as u64, &mut timestamp);
    protobuf_varint(2 << 3, &mut timestamp);
    protobuf_varint(((ts_ms % 1_000) * 1_000_000) as u64, &mut timestamp);
    let mut message = Vec::new();
    protobuf_varint(1 << 3, &mut message);
    protobuf_varint(user_id as u64, &mut message);
    protobuf_varint((2 << 3) | 1, &mut message);
    message.extend_from_slice(&amount.to_le_bytes());
    protobuf_varint((3 << 3) | 2, &mut message);
    protobuf_varint(timestamp.len() as u64, &mut message);
    message.extend_from_slice(&timestamp);
    message
}

#[test]
fn protobuf_messages_are_decoded_with_the_repo_schema() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let temp = tempfile::tempdir().unwrap();
    let repo = temp.path();
    std::fs::write(
        repo.join("larder.yaml"),
        "project: prototest\nregistry: data/registry.json\nonline_store: {type: embedded, path: data/online.redb}\noffline_store: {type: parquet, path: data/offline}\n",
    )
    .unwrap();
    std::fs::create_dir_all(repo.join("protos")).unwrap();
    std::fs::write(
        repo.join("protos/click.proto"),
        "syntax = \"proto3\";\npackage acme.events;\nimport \"google/protobuf/timestamp.proto\";\nmessage Click {\n  int64 user_id = 1;\n  double amount = 2;\n  google.protobuf.Timestamp ts = 3;\n}\n",
    )
    .unwrap();
    std::fs::write(
        repo.join("features.yaml"),
        format!(
            r#"entities:
  - name: user
    join_keys: [{{name: user_id, dtype: int64}}]
sources:
  - name: clicks
    type: nats
    url: {}
    stream: PROTO
    subject: proto.clicks
    message_format: protobuf
    proto_file: protos/click.proto
    proto_message: acme.events.Click
    timestamp_field: ts
    fields: [{{name: amount, dtype: float64}}]
feature_views:
  - name: user_spend
    version: 1
    entities: [user]
    source: clicks
    aggregations:
      - {{function: count, window: 1h}}
      - {{function: sum, column: amount, window: 1h}}
"#,
            nats.url()
        ),
    )
    .unwrap();
    larder_ok(repo, &["apply"]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let now_ms = chrono::Utc::now().timestamp_millis();
    runtime.block_on(async {
        let context = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
        context
            .get_or_create_stream(async_nats::jetstream::stream::Config {
                name: "PROTO".into(),
                subjects: vec!["proto.clicks".into()],
                ..Default::default()
            })
            .await
            .unwrap();
        for index in 0..300i64 {
            let payload = click_protobuf(index % 5, 0.25 * (index % 4) as f64, now_ms - index);
            context
                .publish("proto.clicks", payload.into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
        // Not a Click: skipped and counted, the stream goes on.
        context
            .publish("proto.clicks", vec![0xff, 0xff, 0xff].into())
            .await
            .unwrap()
            .await
            .unwrap();
    });
    let server = Server::start(repo);
    let want: Vec<(i64, f64)> = (0..5)
        .map(|user| {
            let indices: Vec<i64> = (0..300).filter(|index| index % 5 == user).collect();
            let sum = indices.iter().map(|index| 0.25 * (index % 4) as f64).sum();
            (indices.len() as i64, sum)
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, response) = server.post(
            "/get-online-features",
            &json!({"features": ["user_spend:count_1h", "user_spend:amount_sum_1h"],
                    "entities": {"user_id": [0, 1, 2, 3, 4]}})
            .to_string(),
        );
        assert_eq!(status, 200, "{response}");
        let got: Vec<(i64, f64)> = (0..5)
            .map(|row| {
                (
                    response["results"][1]["values"][row].as_i64().unwrap_or(0),
                    response["results"][2]["values"][row]
                        .as_f64()
                        .unwrap_or(0.0),
                )
            })
            .collect();
        if got == want {
            break;
        }
        assert!(Instant::now() < deadline, "got {got:?}, want {want:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The invalid message was published last: it may be consumed after the values above
    // became servable, so wait for its count too.
    let invalid_counted = "larder_stream_events_total{view=\"user_spend\",outcome=\"invalid\"} 1";
    loop {
        let metrics = server.metrics();
        if metrics.contains(invalid_counted) {
            break;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_stream_view_applied_while_serving_starts_consuming_without_a_restart() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let temp = tempfile::tempdir().unwrap();
    let repo = temp.path();
    write_stream_repo(repo, &nats.url());
    // At first the repo has no stream view: only a push view over the same entity.
    let stream_definitions = std::fs::read_to_string(repo.join("features.yaml")).unwrap();
    std::fs::write(
        repo.join("features.yaml"),
        "entities:\n  - name: user\n    join_keys: [{name: user_id, dtype: int64}]\nsources:\n  - {name: scores_push, type: push}\nfeature_views:\n  - name: scores\n    version: 1\n    entities: [user]\n    source: scores_push\n    features: [{name: score, dtype: float64}]\n",
    )
    .unwrap();
    larder_ok(repo, &["apply"]);
    let server = Server::start(repo);
    publish(&nats.url(), 0..300);
    std::fs::write(repo.join("features.yaml"), stream_definitions).unwrap();
    larder_ok(repo, &["apply"]);
    // The server picks the new registry up within a second.
    let known = Instant::now();
    while server
        .post(
            "/get-online-features",
            &json!({"features": ["user_clicks:count_7d"], "entities": {"user_id": [0]}})
                .to_string(),
        )
        .0
        != 200
    {
        assert!(
            known.elapsed() < Duration::from_secs(10),
            "the view never became known"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = wait_for(&server, &expected(300, USERS), Duration::from_secs(30));
    eprintln!("a stream view applied while serving was servable after {took:?}");
}

#[test]
fn forget_erases_stream_tiles_so_windows_do_not_bring_back_old_events() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let temp = tempfile::tempdir().unwrap();
    let repo = temp.path();
    write_stream_repo(repo, &nats.url());
    larder_ok(repo, &["apply"]);
    publish(&nats.url(), 0..100);
    let server = Server::start(repo);
    wait_for(&server, &expected(100, USERS), Duration::from_secs(30));

    let (status, report) = server.post(
        "/forget",
        &json!({"entities": {"user_id": [3]}}).to_string(),
    );
    assert_eq!(status, 200, "{report}");
    assert!(
        report["stores"]["stream_state"]["rows"].as_u64().unwrap() >= 1,
        "{report}"
    );
    assert_eq!(report["stores"]["online"]["rows"], 1, "{report}");
    let (status, left) = server.post(
        "/forget",
        &json!({"entities": {"user_id": [3]}, "verify": true}).to_string(),
    );
    assert_eq!(status, 200, "{left}");
    assert_eq!(left["stores"]["stream_state"], 0, "{left}");
    assert_eq!(left["stores"]["online"], 0, "{left}");
    let mut want = expected(100, USERS);
    want[3] = (0, 0.0);
    wait_for(&server, &want, Duration::from_secs(5));

    // A new event of the erased user starts its windows from nothing: the ten events before
    // the erasure do not come back, here or after a kill -9 and a restart.
    publish(&nats.url(), 103..104);
    want[3] = (1, (103 % 7) as f64);
    wait_for(&server, &want, Duration::from_secs(10));
    drop(server);
    let server = Server::start(repo);
    publish(&nats.url(), 113..114);
    want[3] = (2, (103 % 7 + 113 % 7) as f64);
    wait_for(&server, &want, Duration::from_secs(30));
}
