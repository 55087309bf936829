//! `larder-static-http`: the transport floor of `POST /get-online-features`.
//!
//! Serves one fixed response body (a file, e.g. a real 100-entity answer captured from
//! `larder serve`) to every `POST /get-online-features`, on the same stack as `larder serve`
//! (axum on hyper HTTP/1.1 with keep-alive, `TCP_NODELAY`, tokio's multi-threaded runtime),
//! after reading the request body whole. Under the same wrk load, the gap between it and
//! `larder serve` is what reading the store and encoding the answer cost; what it takes itself
//! is the floor no feature server on this stack and machine can go under. Loopback only.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::body::Bytes;
use axum::http::header;
use axum::routing::post;
use clap::Parser;

#[derive(Debug, Parser)]
struct Arguments {
    /// The response body to serve (JSON).
    #[arg(long)]
    body: PathBuf,
    /// Loopback address to listen on, e.g. 127.0.0.1:16700.
    #[arg(long)]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> Result<()> {
    let arguments = Arguments::parse();
    if !arguments.listen.ip().is_loopback() {
        bail!("--listen must be a loopback address");
    }
    let body = Bytes::from(
        std::fs::read(&arguments.body)
            .with_context(|| format!("reading {}", arguments.body.display()))?,
    );
    let app = Router::new().route(
        "/get-online-features",
        post(move |_request: Bytes| {
            let body = body.clone();
            async move { ([(header::CONTENT_TYPE, "application/json")], body) }
        }),
    );
    let listener = tokio::net::TcpListener::bind(arguments.listen)
        .await
        .with_context(|| format!("binding {}", arguments.listen))?;
    loop {
        let (stream, _) = listener.accept().await.context("accepting a connection")?;
        stream.set_nodelay(true).context("setting TCP_NODELAY")?;
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let connection = hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
        tokio::spawn(async move {
            let _ended = connection.await;
        });
    }
}
