//! `larder-soak`: a bounded soak of a running `larder serve` over its HTTP API: paced reads
//! (`/get-online-features`, a feature service for `--entities` random users) and direct writes
//! (`/write-to-online-store`), and paced stream events published to NATS JetStream, for
//! `--seconds`; optionally an overload phase of `--overload-connections` closed-loop clients
//! sending large reads. Every second it prints one JSON line: requests, latency percentiles
//! and status counts per kind, events published, and the server's RSS (from `/proc`).
//!
//! Open loop: requests start on a fixed schedule whatever the answers take, so a slow server
//! shows as latency, not as a lower offered rate. Loopback only.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Parser)]
struct Arguments {
    /// `larder serve`'s HTTP address, host:port (loopback).
    #[arg(long)]
    http: String,
    /// The server's process id, for its RSS.
    #[arg(long)]
    pid: u32,
    /// Soak length.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Reads per second.
    #[arg(long, default_value_t = 200)]
    read_rate: u64,
    /// Users per read.
    #[arg(long, default_value_t = 20)]
    entities: usize,
    /// Feature service read.
    #[arg(long, default_value = "ranking_model")]
    feature_service: String,
    /// Direct writes per second (one row each).
    #[arg(long, default_value_t = 50)]
    write_rate: u64,
    /// Feature view written, with an int64 feature `score`.
    #[arg(long, default_value = "soak_scores")]
    write_view: String,
    /// Users are drawn from [0, users).
    #[arg(long, default_value_t = 100_000)]
    users: u64,
    /// NATS server URL for stream events (none: no stream load).
    #[arg(long)]
    nats: Option<String>,
    /// JetStream stream of the events (created when missing, over `subject`).
    #[arg(long, default_value = "SOAK")]
    stream: String,
    /// Subject of the stream events (JSON `{user_id, amount, ts}`, ts in ms).
    #[arg(long, default_value = "soak.clicks")]
    subject: String,
    /// Stream events per second.
    #[arg(long, default_value_t = 1_000)]
    stream_rate: u64,
    /// Second at which the overload phase starts (none: no overload).
    #[arg(long)]
    overload_at: Option<u64>,
    /// Length of the overload phase.
    #[arg(long, default_value_t = 20)]
    overload_seconds: u64,
    /// Closed-loop clients during the overload phase.
    #[arg(long, default_value_t = 160)]
    overload_connections: usize,
    /// Users per read during the overload phase.
    #[arg(long, default_value_t = 1_000)]
    overload_entities: usize,
}

/// One second's observations of one kind of request.
#[derive(Debug, Default)]
struct Kind {
    latencies_us: Vec<u64>,
    ok: u64,
    shed: u64,
    errors: u64,
    /// The first failure of the second, for the report.
    first_error: Option<String>,
}

impl Kind {
    fn record(&mut self, started: Instant, status: Result<u16>) {
        self.latencies_us.push(started.elapsed().as_micros() as u64);
        match status {
            Ok(200) => self.ok += 1,
            Ok(503) => self.shed += 1,
            other => {
                self.errors += 1;
                if self.first_error.is_none() {
                    self.first_error = Some(match other {
                        Ok(status) => format!("HTTP {status}"),
                        Err(error) => error.to_string(),
                    });
                }
            }
        }
    }

    fn summary(&mut self) -> serde_json::Value {
        self.latencies_us.sort_unstable();
        let at = |quantile: f64| {
            let count = self.latencies_us.len();
            if count == 0 {
                return serde_json::Value::Null;
            }
            let index = ((count as f64 * quantile).ceil() as usize).clamp(1, count) - 1;
            serde_json::json!(self.latencies_us[index] as f64 / 1_000.0)
        };
        serde_json::json!({
            "n": self.latencies_us.len(), "ok": self.ok, "shed_503": self.shed, "errors": self.errors,
            "p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": at(1.0), "first_error": self.first_error,
        })
    }
}

#[derive(Debug, Default)]
struct Second {
    reads: Kind,
    writes: Kind,
    overload: Kind,
    published: u64,
    publish_errors: u64,
}

type Shared = Arc<Mutex<Second>>;

fn with<T>(shared: &Shared, update: impl FnOnce(&mut Second) -> T) -> T {
    let mut guard = shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    update(&mut guard)
}

/// A keep-alive HTTP/1.1 connection that sends one POST at a time.
struct Connection {
    address: String,
    stream: Option<TcpStream>,
    buffer: Vec<u8>,
}

impl Connection {
    fn new(address: &str) -> Self {
        Self {
            address: address.to_string(),
            stream: None,
            buffer: Vec::with_capacity(64 * 1024),
        }
    }

    /// POSTs `body` to `path`; the status (the body is read whole and dropped). Like any
    /// HTTP client, a request on a kept-alive connection that the server had already closed
    /// (it closes idle ones) is sent again once on a new connection.
    async fn post(&mut self, path: &str, body: &str) -> Result<u16> {
        let reused = self.stream.is_some();
        let mut result = self.exchange(path, body).await;
        if result.is_err() {
            self.stream = None;
            if reused && self.buffer.is_empty() {
                result = self.exchange(path, body).await;
                if result.is_err() {
                    self.stream = None;
                }
            }
        }
        result
    }

    async fn exchange(&mut self, path: &str, body: &str) -> Result<u16> {
        self.buffer.clear();
        if self.stream.is_none() {
            let stream = TcpStream::connect(&self.address).await?;
            stream.set_nodelay(true)?;
            self.stream = Some(stream);
        }
        let Some(stream) = self.stream.as_mut() else {
            bail!("not connected");
        };
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.address,
            body.len()
        );
        stream.write_all(request.as_bytes()).await?;
        let header_end = loop {
            if let Some(end) = find(&self.buffer, b"\r\n\r\n") {
                break end + 4;
            }
            let mut chunk = [0u8; 16 * 1024];
            let read = stream.read(&mut chunk).await?;
            if read == 0 {
                bail!("the server closed the connection");
            }
            self.buffer.extend_from_slice(&chunk[..read]);
        };
        let head = std::str::from_utf8(&self.buffer[..header_end])?.to_ascii_lowercase();
        let status: u16 = head
            .get(9..12)
            .context("no status line")?
            .parse()
            .context("no status code")?;
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .map(|value| value.trim().parse())
            .transpose()?
            .context("no content-length")?;
        while self.buffer.len() < header_end + length {
            let mut chunk = [0u8; 64 * 1024];
            let read = stream.read(&mut chunk).await?;
            if read == 0 {
                bail!("the server closed the connection mid-body");
            }
            self.buffer.extend_from_slice(&chunk[..read]);
        }
        if head.contains("connection: close") {
            self.stream = None;
        }
        Ok(status)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// A small xorshift generator per task.
struct Random(u64);

impl Random {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound.max(1)
    }
}

fn read_body(arguments: &Arguments, random: &mut Random, entities: usize) -> String {
    let users: Vec<u64> = (0..entities)
        .map(|_| random.below(arguments.users))
        .collect();
    serde_json::json!({"feature_service": arguments.feature_service, "entities": {"user_id": users}})
        .to_string()
}

/// Runs `work` `rate` times a second until `deadline`, each on a connection of a pool.
async fn paced<Work, Future>(rate: u64, deadline: Instant, work: Work)
where
    Work: Fn(u64) -> Future,
    Future: std::future::Future<Output = ()> + Send + 'static,
{
    if rate == 0 {
        return;
    }
    let mut ticker = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut number = 0;
    while Instant::now() < deadline {
        ticker.tick().await;
        tokio::spawn(work(number));
        number += 1;
    }
}

/// `rate` POSTs a second to `path` until `deadline`, the body of the n-th from `body_of(n)`,
/// each on a free connection of a shared pool (or a new one), each answer recorded in the
/// second's `kind_of`.
async fn paced_posts(
    rate: u64,
    deadline: Instant,
    address: &str,
    path: &'static str,
    shared: Shared,
    body_of: impl Fn(u64) -> String + Send + Sync + 'static,
    kind_of: fn(&mut Second) -> &mut Kind,
) {
    let pool: Arc<Mutex<Vec<Connection>>> = Arc::default();
    let body_of = Arc::new(body_of);
    let address = address.to_string();
    paced(rate, deadline, move |number| {
        let (pool, shared, body_of) =
            (Arc::clone(&pool), Arc::clone(&shared), Arc::clone(&body_of));
        let mut connection = pool
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop()
            .unwrap_or_else(|| Connection::new(&address));
        async move {
            let body = body_of(number);
            let sent = Instant::now();
            let status = connection.post(path, &body).await;
            with(&shared, |second| kind_of(second).record(sent, status));
            pool.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(connection);
        }
    })
    .await;
}

/// The sums of the server's stream-state gauges (`larder_stream_state_entities` and
/// `larder_stream_state_tiles` over every view and partition), read from `/metrics`.
async fn stream_state(address: &str) -> Option<(f64, f64)> {
    let mut stream = TcpStream::connect(address).await.ok()?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let sum = |name: &str| -> f64 {
        response
            .lines()
            .filter(|line| line.starts_with(name) && line[name.len()..].starts_with('{'))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    Some((
        sum("larder_stream_state_entities"),
        sum("larder_stream_state_tiles"),
    ))
}

fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[tokio::main]
async fn main() -> Result<()> {
    let arguments = Arc::new(Arguments::parse());
    if !arguments.http.starts_with("127.0.0.1:") && !arguments.http.starts_with("localhost:") {
        bail!("--http must be a loopback address");
    }
    let shared: Shared = Arc::default();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(arguments.seconds);
    let reads = {
        let body_arguments = Arc::clone(&arguments);
        paced_posts(
            arguments.read_rate,
            deadline,
            &arguments.http,
            "/get-online-features",
            Arc::clone(&shared),
            move |number| {
                read_body(
                    &body_arguments,
                    &mut Random(number * 2 + 1),
                    body_arguments.entities,
                )
            },
            |second| &mut second.reads,
        )
    };
    let writes = {
        let body_arguments = Arc::clone(&arguments);
        paced_posts(
            arguments.write_rate,
            deadline,
            &arguments.http,
            "/write-to-online-store",
            Arc::clone(&shared),
            move |number| {
                let user = Random(number * 2 + 3).below(body_arguments.users);
                serde_json::json!({
                    "feature_view_name": body_arguments.write_view,
                    "df": {"user_id": [user], "event_timestamp": [chrono::Utc::now().to_rfc3339()], "score": [number]},
                })
                .to_string()
            },
            |second| &mut second.writes,
        )
    };
    let stream = {
        let (arguments, shared) = (Arc::clone(&arguments), Arc::clone(&shared));
        async move {
            let Some(url) = &arguments.nats else {
                return Ok::<_, anyhow::Error>(());
            };
            let client = async_nats::connect(url.as_str())
                .await
                .with_context(|| format!("connecting to {url}"))?;
            let jetstream = async_nats::jetstream::new(client);
            jetstream
                .get_or_create_stream(async_nats::jetstream::stream::Config {
                    name: arguments.stream.clone(),
                    subjects: vec![arguments.subject.clone()],
                    ..Default::default()
                })
                .await
                .context("creating the stream")?;
            let mut ticker = tokio::time::interval(Duration::from_millis(10));
            let per_tick = (arguments.stream_rate / 100).max(1);
            let mut number = 0u64;
            let mut random = Random(0x9E37_79B9_7F4A_7C15);
            while Instant::now() < deadline {
                ticker.tick().await;
                let mut acks = Vec::new();
                for _ in 0..per_tick {
                    let event = serde_json::json!({
                        "user_id": random.below(arguments.users),
                        "amount": (number % 7) as f64,
                        "ts": chrono::Utc::now().timestamp_millis(),
                    });
                    number += 1;
                    match jetstream
                        .publish(arguments.subject.clone(), event.to_string().into())
                        .await
                    {
                        Ok(ack) => acks.push(ack),
                        Err(_) => with(&shared, |second| second.publish_errors += 1),
                    }
                }
                for ack in acks {
                    let acked = ack.await.is_ok();
                    with(&shared, |second| {
                        if acked {
                            second.published += 1;
                        } else {
                            second.publish_errors += 1;
                        }
                    });
                }
            }
            Ok(())
        }
    };
    let overload = {
        let (arguments, shared) = (Arc::clone(&arguments), Arc::clone(&shared));
        async move {
            let Some(at) = arguments.overload_at else {
                return;
            };
            tokio::time::sleep_until((started + Duration::from_secs(at)).into()).await;
            let until = Instant::now() + Duration::from_secs(arguments.overload_seconds);
            let clients: Vec<_> = (0..arguments.overload_connections)
                .map(|client| {
                    let (arguments, shared) = (Arc::clone(&arguments), Arc::clone(&shared));
                    tokio::spawn(async move {
                        let mut connection = Connection::new(&arguments.http);
                        let mut random = Random(client as u64 * 7 + 11);
                        while Instant::now() < until {
                            let body =
                                read_body(&arguments, &mut random, arguments.overload_entities);
                            let sent = Instant::now();
                            let status = connection.post("/get-online-features", &body).await;
                            with(&shared, |second| second.overload.record(sent, status));
                        }
                    })
                })
                .collect();
            for client in clients {
                let _ = client.await;
            }
        }
    };
    let reporter = {
        let (arguments, shared) = (Arc::clone(&arguments), Arc::clone(&shared));
        async move {
            let mut ticker = tokio::time::interval(Duration::from_secs(1));
            ticker.tick().await;
            while Instant::now() < deadline + Duration::from_secs(1) {
                ticker.tick().await;
                let mut second = with(&shared, std::mem::take);
                let state = stream_state(&arguments.http).await;
                let line = serde_json::json!({
                    "t": started.elapsed().as_secs(),
                    "reads": second.reads.summary(),
                    "writes": second.writes.summary(),
                    "overload": second.overload.summary(),
                    "published": second.published,
                    "publish_errors": second.publish_errors,
                    "rss_mib": rss_mib(arguments.pid),
                    "stream_state_entities": state.map(|(entities, _)| entities),
                    "stream_state_tiles": state.map(|(_, tiles)| tiles),
                });
                println!("{line}");
            }
        }
    };
    let ((), (), published, (), ()) = tokio::join!(reads, writes, stream, overload, reporter);
    published
}
