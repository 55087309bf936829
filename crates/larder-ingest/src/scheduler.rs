//! The scheduler: runs each batch feature view's materialization on the cron `schedule` of
//! its definition.
//!
//! Once a second the scheduler asks for the views as currently applied (so `larder apply`
//! adds, changes and removes schedules without a restart) and starts every run that is due.
//! A view has at most one run at a time, here and across processes
//! ([`RunHistory::try_lock_view`]); occurrences that pass while a run is still going are
//! skipped, not queued. At start-up, a view whose latest scheduled time passed without a run
//! of its current version since (the process was down) runs once at once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use larder_core::{CronSchedule, FeatureView, Timestamp};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::history::RunHistory;

/// How often the scheduler looks for due runs.
const TICK: Duration = Duration::from_secs(1);

/// What the scheduler drives: where the views come from, how a run starts, and where its
/// notices go.
pub trait ScheduledRuns: Send + Sync + 'static {
    /// The views as currently applied (the scheduler keeps those with a schedule).
    fn views(&self) -> Vec<FeatureView>;
    /// One full run of `view` with change detection; its failure is the implementation's to
    /// report.
    fn run_view(&self, view: String) -> BoxFuture<'static, ()>;
    /// A line for the operator: a schedule added, changed, removed or missed.
    fn notice(&self, message: &str);
}

/// Whether `view` runs on a schedule (batch views only; apply refuses others).
pub fn is_scheduled(view: &FeatureView) -> bool {
    view.schedule.is_some() && (view.online || view.offline)
}

/// One view's schedule as the scheduler tracks it.
struct ViewSchedule {
    schedule: CronSchedule,
    version: u32,
    next_due: Option<Timestamp>,
    running: Option<JoinHandle<()>>,
}

/// Runs the scheduler until `stop` turns true; a run in progress is abandoned then (a batch
/// run is safe to interrupt: the next run converges). `history` tells which scheduled runs
/// were missed.
pub fn spawn_scheduler(
    runs: Arc<dyn ScheduledRuns>,
    history: RunHistory,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut views: BTreeMap<String, ViewSchedule> = BTreeMap::new();
        loop {
            refresh(runs.as_ref(), &history, &mut views);
            let now = Timestamp::now();
            for (name, view) in &mut views {
                if view.running.as_ref().is_some_and(JoinHandle::is_finished) {
                    view.running = None;
                    // Occurrences that passed during the run are skipped.
                    view.next_due = view.schedule.next_after(Timestamp::now());
                }
                let due = view.next_due.is_some_and(|due| due <= now);
                if due && view.running.is_none() {
                    view.running = Some(tokio::spawn(runs.run_view(name.clone())));
                }
            }
            tokio::select! {
                () = tokio::time::sleep(TICK) => {}
                _ = stop.wait_for(|stop| *stop) => break,
            }
        }
        for view in views.into_values() {
            if let Some(running) = view.running {
                running.abort();
            }
        }
    })
}

/// Brings the tracked schedules in line with the applied views: new views (with the
/// start-up catch-up), changed schedules or versions, removed schedules.
fn refresh(
    runs: &dyn ScheduledRuns,
    history: &RunHistory,
    views: &mut BTreeMap<String, ViewSchedule>,
) {
    let scheduled: Vec<FeatureView> = runs.views().into_iter().filter(is_scheduled).collect();
    // A removed schedule stops; a run in progress finishes on its own.
    views.retain(|name, _| {
        let keep = scheduled.iter().any(|view| &view.name == name);
        if !keep {
            runs.notice(&format!("Schedule of feature view '{name}' removed."));
        }
        keep
    });
    for view in scheduled {
        let Some(text) = view.schedule.as_deref() else {
            continue;
        };
        let unchanged = views.get(&view.name).is_some_and(|tracked| {
            tracked.schedule.as_str() == text.trim() && tracked.version == view.version
        });
        if unchanged {
            continue;
        }
        let schedule = match CronSchedule::parse(text) {
            Ok(schedule) => schedule,
            Err(message) => {
                tracing::error!(view = %view.name, "{message}");
                continue;
            }
        };
        let now = Timestamp::now();
        let missed = schedule
            .latest_at_or_before(now)
            .filter(|due| last_run_started(history, &view).is_none_or(|started| started < *due));
        let next_due = missed.map(|_| now).or_else(|| schedule.next_after(now));
        match (&missed, next_due) {
            (Some(_), _) => runs.notice(&format!(
                "Scheduled feature view '{}' ({}): a scheduled run was missed, running now.",
                view.name,
                schedule.as_str()
            )),
            (None, Some(next)) => runs.notice(&format!(
                "Scheduled feature view '{}' ({}): next run at {}.",
                view.name,
                schedule.as_str(),
                next.to_rfc3339()
            )),
            (None, None) => {}
        }
        let running = views.remove(&view.name).and_then(|tracked| tracked.running);
        views.insert(
            view.name.clone(),
            ViewSchedule {
                schedule,
                version: view.version,
                next_due,
                running,
            },
        );
    }
}

/// When the newest recorded run of the view's current version started.
fn last_run_started(history: &RunHistory, view: &FeatureView) -> Option<Timestamp> {
    let runs = match history.runs(Some(&view.name)) {
        Ok(runs) => runs,
        Err(error) => {
            tracing::warn!(%error, "cannot read the run history");
            return None;
        }
    };
    runs.iter()
        .rev()
        .find(|run| run.version == view.version)
        .and_then(|run| Timestamp::parse(&run.started_at))
}
