//! Stream load generator: publishes JSON click events to a NATS JetStream subject, as fast as
//! the broker acknowledges them or paced at a fixed rate, each stamped with its publish time
//! as event time (so the server's event-to-servable lag is the whole pipeline's latency).
//!
//! `larder-stream-load --nats nats://127.0.0.1:4222 --stream CLICKS --subject clicks.all
//!  --events 1000000 --keys 1000000 --rate 50000`

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use futures::StreamExt;

#[derive(Parser, Debug)]
struct Args {
    /// NATS server URL.
    #[arg(long)]
    nats: String,
    /// JetStream stream (created when missing, over `subject`).
    #[arg(long, default_value = "CLICKS")]
    stream: String,
    /// Subject to publish on.
    #[arg(long, default_value = "clicks.all")]
    subject: String,
    /// How many events.
    #[arg(long)]
    events: u64,
    /// Distinct user ids (events go to users in a scrambled order).
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    /// Events per second; 0 publishes as fast as the broker acknowledges.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// First event index (to continue a previous run's numbering).
    #[arg(long, default_value_t = 0)]
    offset: u64,
    /// Instead of publishing, pull `events` messages from the stream with a fresh consumer
    /// and acknowledge them in batches, doing nothing else: the broker's raw delivery rate,
    /// the limit any consumer works under.
    #[arg(long)]
    consume: bool,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let client = async_nats::connect(args.nats.as_str())
        .await
        .with_context(|| format!("connecting to {}", args.nats))?;
    let jetstream = async_nats::jetstream::new(client);
    jetstream
        .get_or_create_stream(async_nats::jetstream::stream::Config {
            name: args.stream.clone(),
            subjects: vec![args.subject.clone()],
            ..Default::default()
        })
        .await
        .context("creating the stream")?;
    if args.consume {
        return consume(&jetstream, &args).await;
    }
    let started = Instant::now();
    let mut pending = Vec::with_capacity(4_096);
    const TICK: u64 = 1_000;
    for index in args.offset..args.offset + args.events {
        if args.rate > 0 && (index - args.offset).is_multiple_of(TICK) {
            // Pace in ticks of 1000 events: wait until this tick's start time.
            let due = Duration::from_secs_f64((index - args.offset) as f64 / args.rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        let user = index.wrapping_mul(2_654_435_761) % args.keys;
        let now_ms = chrono::Utc::now().timestamp_millis();
        let payload = format!(
            r#"{{"user_id":{user},"ts":{now_ms},"amount":{}.5}}"#,
            index % 100
        );
        let ack = jetstream
            .publish(args.subject.clone(), payload.into())
            .await
            .context("publishing")?;
        pending.push(ack);
        if pending.len() >= 4_096 {
            for ack in pending.drain(..) {
                ack.await.context("waiting for an acknowledgement")?;
            }
        }
    }
    for ack in pending {
        ack.await.context("waiting for an acknowledgement")?;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "published {} events in {seconds:.2} s ({:.0} events/s)",
        args.events,
        args.events as f64 / seconds
    );
    Ok(())
}

async fn consume(jetstream: &async_nats::jetstream::Context, args: &Args) -> Result<()> {
    use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
    use larder_stream::nats::{MAX_ACK_PENDING, PULL_BATCH, PULL_HEARTBEAT};
    let stream = jetstream
        .get_stream(args.stream.as_str())
        .await
        .context("opening the stream")?;
    let started = Instant::now();
    let mut received = 0u64;
    let mut last_sequence = 0u64;
    // Pulled as `larder serve` pulls; like it, a consumer that stops being fed (missed
    // heartbeats) is replaced by one that starts after the last message received.
    'consumers: while received < args.events {
        let consumer = stream
            .create_consumer(pull::Config {
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: last_sequence + 1,
                },
                ack_policy: AckPolicy::All,
                max_ack_pending: MAX_ACK_PENDING,
                ..Default::default()
            })
            .await
            .context("creating a consumer")?;
        let mut messages = consumer
            .stream()
            .max_messages_per_batch(PULL_BATCH)
            .heartbeat(PULL_HEARTBEAT)
            .messages()
            .await
            .context("pulling")?;
        while received < args.events {
            let Some(message) = messages.next().await else {
                bail!("the message stream ended after {received} messages");
            };
            let message = match message {
                Ok(message) => message,
                Err(error) if error.kind() == pull::MessagesErrorKind::MissingHeartbeat => {
                    eprintln!("missed heartbeats after {received} messages: a new consumer");
                    continue 'consumers;
                }
                Err(error) => bail!("receiving: {error}"),
            };
            last_sequence = message
                .info()
                .map_err(|error| anyhow::anyhow!("reading message metadata: {error}"))?
                .stream_sequence;
            received += 1;
            if received.is_multiple_of(5_000) || received == args.events {
                message
                    .ack()
                    .await
                    .map_err(|error| anyhow::anyhow!("acknowledging: {error}"))?;
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "consumed {received} events in {seconds:.2} s ({:.0} events/s, no processing)",
        received as f64 / seconds
    );
    Ok(())
}
