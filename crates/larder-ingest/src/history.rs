//! The run history: one JSON line per batch-lane run, appended to a file beside the registry.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::batch::RunReport;

/// Why the run history could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RunHistoryError {
    /// The history file could not be read or appended to.
    #[error("run history {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The run history of a feature repo: a JSON-lines file, one [`RunReport`] per line, oldest
/// first. Appends are single `write` calls on a file opened for appending, so concurrent
/// runs never interleave within a line; a line cut short by a crash is ignored when read.
#[derive(Debug, Clone)]
pub struct RunHistory {
    path: PathBuf,
}

impl RunHistory {
    /// The history kept in `path` (created on the first append).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The history file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The source-file manifests of the views whose runs this history records, in the
    /// `inputs` folder beside it.
    pub fn input_manifests(&self) -> crate::inputs::InputManifests {
        let folder = self.path.parent().map_or_else(
            || Path::new("inputs").to_path_buf(),
            |parent| parent.join("inputs"),
        );
        crate::inputs::InputManifests::new(folder)
    }

    fn io_error(&self) -> impl FnOnce(std::io::Error) -> RunHistoryError + '_ {
        move |source| RunHistoryError::Io {
            path: self.path.display().to_string(),
            source,
        }
    }

    /// Appends one run.
    pub fn append(&self, report: &RunReport) -> Result<(), RunHistoryError> {
        if let Some(parent) = self.path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).map_err(self.io_error())?;
        }
        let mut line = serde_json::to_string(report).map_err(|error| RunHistoryError::Io {
            path: self.path.display().to_string(),
            source: std::io::Error::other(error),
        })?;
        line.push('\n');
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(self.io_error())?;
        file.write_all(line.as_bytes()).map_err(self.io_error())?;
        file.sync_data().map_err(self.io_error())
    }

    /// Every recorded run, oldest first, of one view (by name) or of all.
    pub fn runs(&self, view: Option<&str>) -> Result<Vec<RunReport>, RunHistoryError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(self.io_error()(error)),
        };
        Ok(text
            .lines()
            .filter_map(|line| serde_json::from_str::<RunReport>(line).ok())
            .filter(|report| view.is_none_or(|name| report.view == name))
            .collect())
    }

    /// Claims the right to run `view`'s batch lane, or `None` while another run of it holds
    /// the claim, in this process or another (a `larder materialize`, a scheduled run of
    /// `larder serve`). The claim is an advisory lock on `locks/<view>.lock` beside the
    /// history, released when the returned guard drops or its process dies.
    pub fn try_lock_view(&self, view: &str) -> Result<Option<ViewRunLock>, RunHistoryError> {
        let folder = self
            .path
            .parent()
            .map_or_else(|| PathBuf::from("locks"), |parent| parent.join("locks"));
        std::fs::create_dir_all(&folder).map_err(self.io_error())?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(folder.join(format!("{view}.lock")))
            .map_err(self.io_error())?;
        match file.try_lock() {
            Ok(()) => Ok(Some(ViewRunLock { _file: file })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(error)) => Err(self.io_error()(error)),
        }
    }

    /// The newest successful run of a view version.
    pub fn last_successful_run(
        &self,
        view: &str,
        version: u32,
    ) -> Result<Option<RunReport>, RunHistoryError> {
        Ok(self
            .runs(Some(view))?
            .into_iter()
            .rev()
            .find(|report| report.version == version && report.succeeded()))
    }
}

/// The claim of [`RunHistory::try_lock_view`]: one run of a view at a time.
#[derive(Debug)]
pub struct ViewRunLock {
    _file: std::fs::File,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn report(view: &str, version: u32, status: &str, rows: u64) -> RunReport {
        RunReport {
            view: view.to_string(),
            version,
            status: status.to_string(),
            rows_scanned: rows,
            ..RunReport::default()
        }
    }

    #[test]
    fn runs_are_read_back_in_order_and_a_torn_line_is_ignored() {
        let folder = tempfile::tempdir().unwrap();
        let history = RunHistory::new(folder.path().join("data/runs.jsonl"));
        assert!(history.runs(None).unwrap().is_empty());
        history.append(&report("a", 1, "succeeded", 10)).unwrap();
        history.append(&report("b", 1, "succeeded", 20)).unwrap();
        history.append(&report("a", 1, "failed", 30)).unwrap();
        let mut file = OpenOptions::new()
            .append(true)
            .open(history.path())
            .unwrap();
        file.write_all(b"{\"view\":\"a\",\"rows_sc").unwrap();
        let runs_of_a: Vec<u64> = history
            .runs(Some("a"))
            .unwrap()
            .iter()
            .map(|run| run.rows_scanned)
            .collect();
        assert_eq!(runs_of_a, vec![10, 30]);
        assert_eq!(history.runs(None).unwrap().len(), 3);
        let last = history.last_successful_run("a", 1).unwrap().unwrap();
        assert_eq!(last.rows_scanned, 10);
        assert!(history.last_successful_run("a", 2).unwrap().is_none());
    }

    #[test]
    fn one_run_of_a_view_at_a_time() {
        let folder = tempfile::tempdir().unwrap();
        let history = RunHistory::new(folder.path().join("runs.jsonl"));
        let held = history
            .try_lock_view("a")
            .unwrap()
            .expect("the first claim");
        assert!(history.try_lock_view("a").unwrap().is_none());
        assert!(history.try_lock_view("b").unwrap().is_some());
        drop(held);
        assert!(history.try_lock_view("a").unwrap().is_some());
    }
}
