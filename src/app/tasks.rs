//! The server's background threads: the online master-key rotation sweep, and key
//! maintenance (issuing and wiping encryption keys, forgetting old request ids).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::obs::unix_now;
use crate::service::Service;
use crate::store::DEFAULT_BATCH;

/// How often spent request ids past the replay window are forgotten.
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

/// Issues and wipes encryption keys on time, reads the store's change feed into the
/// gallery, and forgets old request ids, checking every second until `stop`.
pub(super) fn spawn_key_maintenance(
    service: Arc<Service>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("key-maintenance".into())
        .spawn(move || {
            let mut seconds = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if let Err(error) = service.maintain_keys(unix_now()) {
                    tracing::error!(%error, "encryption key maintenance failed");
                }
                // Enrolments and erasures by other replicas on a shared store.
                if let Err(error) = service.refresh_gallery(unix_now()) {
                    tracing::error!(%error, "reading the store's change feed failed");
                }
                if seconds % SPENT_RID_PRUNE_SECS == 0
                    && let Err(error) = service.prune_spent_rids(unix_now())
                {
                    tracing::error!(%error, "forgetting old request ids failed");
                }
                seconds += 1;
                std::thread::sleep(Duration::from_secs(1));
            }
        })
}
