//! The server's background threads: the online master-key rotation sweep, and the periodic
//! tasks (key maintenance, the galleries' sync with the store, forgetting old request ids
//! and attempts), one thread per concern.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::obs::unix_now;
use crate::service::Service;
use crate::service::custody::Gate;
use crate::service::keyset::KeySet;
use crate::store::DEFAULT_BATCH;

/// How often spent request ids past the replay window, and attempts past the velocity
/// window, are forgotten.
const SPENT_RID_PRUNE_SECS: u64 = 60;

/// Re-encrypts under the current key in the background while the service serves; stops
/// between batches when `stop` is set.
pub(super) fn spawn_rotation(
    service: Arc<Service>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("key-rotation".into())
        .spawn(move || {
            let started = Instant::now();
            let mut moved = 0u64;
            let mut last_report = Instant::now();
            let result = service.vault().rotate_until_done(
                DEFAULT_BATCH,
                &|| stop.load(Ordering::Relaxed),
                &mut |n| {
                    moved += n;
                    if last_report.elapsed() >= Duration::from_secs(5) {
                        tracing::info!(moved, "key rotation in progress");
                        last_report = Instant::now();
                    }
                },
            );
            match result {
                Ok(true) => tracing::info!(
                    moved,
                    seconds = started.elapsed().as_secs_f64(),
                    "key rotation complete: run `tee-risk db verify`, then `tee-risk db \
                     retire-key <old id>` with the service stopped"
                ),
                Ok(false) => tracing::info!(moved, "key rotation paused for shutdown"),
                Err(error) => tracing::error!(%error, "key rotation stopped"),
            }
        })
}

/// Issues and wipes encryption keys on time, from the start (a sealed service publishes
/// keys too: custodians seal their shares to them).
pub(super) fn spawn_key_maintenance(
    keys: Arc<KeySet>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    spawn_periodic("key-maintenance", Duration::from_secs(1), stop, move || {
        if let Err(error) = keys.maintain(unix_now()) {
            tracing::error!(%error, "encryption key maintenance failed");
        }
    })
}

/// Custodian mode: after a rekey, retires the previous master key once the sweep is
/// verified (`Gate::finish_rekey`).
pub(super) fn spawn_custody_upkeep(
    gate: Arc<Gate>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    spawn_periodic("custody-upkeep", Duration::from_secs(2), stop, move || {
        gate.finish_rekey(unix_now());
    })
}

/// Runs `job` every `every` until `stop` (checked every second), on a thread of its own.
fn spawn_periodic(
    name: &str,
    every: Duration,
    stop: Arc<AtomicBool>,
    mut job: impl FnMut() + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let mut last: Option<Instant> = None;
            while !stop.load(Ordering::Relaxed) {
                if last.is_none_or(|t| t.elapsed() >= every) {
                    job();
                    last = Some(Instant::now());
                }
                std::thread::sleep(TICK.min(every));
            }
        })
}

/// How often a periodic thread looks at its stop flag.
const TICK: Duration = Duration::from_secs(1);

/// The periodic work of a running service, each on its own thread: syncing the high-water
/// mark; reading the store's change feed into the galleries
/// (enrolments and erasures by other replicas on a shared store); forgetting spent request
/// ids and old attempts.
pub(super) fn spawn_periodic_tasks(
    service: &Arc<Service>,
    stop: &Arc<AtomicBool>,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    let second = Duration::from_secs(1);
    let gallery = service.clone();
    let forget = service.clone();
    let mark = service.clone();
    Ok(vec![
        // The high-water mark is written on every group commit but synced only here, off
        // the request path (docs/adr/0003-high-water-mark-sync.md).
        spawn_periodic("mark-sync", second, stop.clone(), move || {
            if let Err(error) = mark.vault().sync_high_water_mark() {
                tracing::error!(%error, "syncing the high-water mark failed");
            }
        })?,
        spawn_periodic("gallery-sync", second, stop.clone(), move || {
            if let Err(error) = gallery.refresh_gallery(unix_now()) {
                tracing::error!(%error, "reading the store's change feed failed");
            }
        })?,
        spawn_periodic(
            "forget-old",
            Duration::from_secs(SPENT_RID_PRUNE_SECS),
            stop.clone(),
            move || {
                let now = unix_now();
                forget.forget_old_attempts(now);
                if let Err(error) = forget.forget_spent_rids(now) {
                    tracing::error!(%error, "forgetting old request ids failed");
                }
            },
        )?,
    ])
}
