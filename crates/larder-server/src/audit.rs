//! The audit log of direct writes: one JSON line per accepted write request, naming the
//! token that wrote (never its secret), the transport and the rows per view.
//!
//! Lines are appended with `O_APPEND` and handed to the operating system before the request
//! is answered (not fsynced: the online store's own durability decides what survives a
//! power loss; erasures have their own fsynced audit, see `larder_ingest::erasure`).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::auth::Principal;
use crate::push::PushedView;

/// An append-only JSON Lines file of direct writes.
#[derive(Debug)]
pub struct WriteAudit {
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

impl WriteAudit {
    /// Opens (creating it and its directory) the audit file at `path`.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        if let Some(parent) = path
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
        {
            std::fs::create_dir_all(parent)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    /// The audit file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records one accepted write request of `principal` over `transport`.
    pub fn record(
        &self,
        principal: &Principal,
        transport: &str,
        pushed: &[PushedView],
    ) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(&serde_json::json!({
            "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "token": principal.id(),
            "transport": transport,
            "feature_views": pushed,
        }))
        .map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut file = self
            .file
            .lock()
            .map_err(|_| std::io::Error::other("the write audit's lock is poisoned"))?;
        file.write_all(&line)
    }
}

/// Counts a write in the metrics by token and view, and appends it to the audit (when the
/// server keeps one). An audit that cannot be written is logged, not fatal: the rows are
/// stored already.
pub fn record_write(
    audit: Option<&WriteAudit>,
    principal: &Principal,
    transport: &str,
    pushed: &[PushedView],
) {
    for view in pushed {
        metrics::counter!("larder_direct_write_rows_total", "token" => principal.id().to_string(), "feature_view" => view.feature_view.clone()).increment(view.rows);
    }
    if let Some(audit) = audit
        && let Err(error) = audit.record(principal, transport, pushed)
    {
        tracing::error!(%error, path = %audit.path().display(), "cannot append to the write audit");
    }
}
