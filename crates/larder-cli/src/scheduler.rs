//! `larder serve`'s scheduler: runs each batch feature view's materialization on the cron
//! `schedule` of its definition.
//!
//! Once a second the scheduler reads the registry the server serves (so `larder apply` adds,
//! changes and removes schedules without a restart) and starts every run that is due. A view
//! has at most one run at a time, here and across processes ([`larder_ingest::RunHistory::
//! try_lock_view`]); occurrences that pass while a run is still going are skipped, not
//! queued. At start-up, a view whose latest scheduled time passed without a run of its
//! current version since (the server was down) runs once at once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use larder_core::{CronSchedule, FeatureView, Timestamp};
use larder_registry::Registry;
use larder_server::RegistryHandle;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::context::RepoContext;
use crate::materialize::{MaterializeRequest, RunWindow, ServeMaterializer};

/// How often the scheduler looks for due runs.
const TICK: Duration = Duration::from_secs(1);

/// The views of `registry` that have a schedule (batch views only; apply refuses others).
pub fn scheduled_views(registry: &Registry) -> Vec<&FeatureView> {
    registry
        .feature_views
        .values()
        .filter(|view| view.schedule.is_some() && (view.online || view.offline))
        .collect()
}

/// One view's schedule as the scheduler tracks it.
struct ViewSchedule {
    schedule: CronSchedule,
    version: u32,
    next_due: Option<Timestamp>,
    running: Option<JoinHandle<()>>,
}

/// Runs the scheduler until `stop` turns true; a run in progress is abandoned then (a batch
/// run is safe to interrupt: the next run converges).
pub fn spawn_scheduler(
    context: Arc<RepoContext>,
    registry: Arc<RegistryHandle>,
    materializer: Arc<ServeMaterializer>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut views: BTreeMap<String, ViewSchedule> = BTreeMap::new();
        loop {
            let snapshot = registry.snapshot();
            refresh(&context, &snapshot, &mut views);
            let now = Timestamp::now();
            for (name, view) in &mut views {
                if view.running.as_ref().is_some_and(JoinHandle::is_finished) {
                    view.running = None;
                    // Occurrences that passed during the run are skipped.
                    view.next_due = view.schedule.next_after(Timestamp::now());
                }
                let due = view.next_due.is_some_and(|due| due <= now);
                if due && view.running.is_none() {
                    view.running = Some(tokio::spawn(run_once(
                        Arc::clone(&materializer),
                        name.clone(),
                    )));
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

/// Brings the tracked schedules in line with the registry: new views (with the start-up
/// catch-up), changed schedules or versions, removed schedules.
fn refresh(context: &RepoContext, registry: &Registry, views: &mut BTreeMap<String, ViewSchedule>) {
    let scheduled = scheduled_views(registry);
    // A removed schedule stops; a run in progress finishes on its own.
    views.retain(|name, _| {
        let keep = scheduled.iter().any(|view| &view.name == name);
        if !keep {
            println!("Schedule of feature view '{name}' removed.");
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
            .filter(|due| last_run_started(context, view).is_none_or(|started| started < *due));
        let next_due = missed.map(|_| now).or_else(|| schedule.next_after(now));
        match (&missed, next_due) {
            (Some(_), _) => println!(
                "Scheduled feature view '{}' ({}): a scheduled run was missed, running now.",
                view.name,
                schedule.as_str()
            ),
            (None, Some(next)) => println!(
                "Scheduled feature view '{}' ({}): next run at {}.",
                view.name,
                schedule.as_str(),
                next.to_rfc3339()
            ),
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
fn last_run_started(context: &RepoContext, view: &FeatureView) -> Option<Timestamp> {
    let runs = match context.run_history().runs(Some(&view.name)) {
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

/// One scheduled run: a full run of the view with change detection, like
/// `larder materialize --views VIEW`; its report goes to the run history and the metrics.
async fn run_once(materializer: Arc<ServeMaterializer>, view: String) {
    let request = MaterializeRequest {
        only_views: vec![view.clone()],
        window: RunWindow::Fixed(larder_offline::TimeWindow::default()),
        full_refresh: false,
        show_progress: false,
    };
    if let Err(error) = materializer.run(&request).await {
        println!("Scheduled run of feature view '{view}' failed: {error:#}");
    }
}
