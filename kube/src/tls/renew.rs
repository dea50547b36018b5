//! What keeps certificates fresh while KUBE runs: the local leaf's periodic check, the
//! `files` watcher, and the ACME loop (renew when due, back off on failure, keep serving
//! the last good certificate, fall back to the second directory).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::TlsHandle;
use super::acme::{self, plan};
use super::shared;
use crate::metrics::Metrics;
use crate::service::Tasks;
use crate::storage::{ObjectStore, lease};

/// How often a running KUBE checks whether its local certificate is due.
const LOCAL_CHECK: Duration = Duration::from_secs(6 * 3600);
/// How often `files` mode looks at the files' modification times.
const FILES_CHECK: Duration = Duration::from_secs(2);

fn every(
    period: Duration,
    handle: TlsHandle,
    what: &'static str,
    check: fn(&TlsHandle) -> Result<(), super::TlsError>,
) -> Tasks {
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    let mut tasks = Tasks::new("tls", cancel);
    tasks.spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
            }
            let h = handle.clone();
            match tokio::task::spawn_blocking(move || check(&h)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "{what} failed; serving the last good certificate")
                }
                Err(e) => tracing::error!(error = %e, "{what} task failed"),
            }
        }
    });
    tasks
}

/// The local leaf is reissued while KUBE runs (a laptop KUBE may run for months).
pub fn local(handle: TlsHandle) -> Tasks {
    every(LOCAL_CHECK, handle, "local certificate renewal", |h| {
        h.refresh_local(None)
    })
}

/// `files` mode: a replaced pair of files is served from the next handshake.
pub fn files(handle: TlsHandle) -> Tasks {
    every(FILES_CHECK, handle, "certificate file reload", |h| {
        h.reload_files().map(|_| ())
    })
}

/// ACME's state as operators see it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AcmeStatus {
    /// `waiting` (no certificate yet), `valid`, `ordering`, `failing`.
    pub state: &'static str,
    pub directory: String,
    pub failures: u32,
    pub last_error: Option<String>,
    /// Unix seconds of the next renewal or retry.
    pub next_attempt: Option<u64>,
    pub last_success: Option<u64>,
}

/// What the ACME loop shares with the handle.
#[derive(Debug)]
pub struct AcmeShared {
    status: RwLock<AcmeStatus>,
    wake: Notify,
    force: AtomicBool,
    apps: Mutex<Vec<String>>,
    ready: watch::Sender<bool>,
}

impl AcmeShared {
    pub fn new(directory: &str, apps: Vec<String>, have_certificate: bool) -> Arc<AcmeShared> {
        Arc::new(AcmeShared {
            status: RwLock::new(AcmeStatus {
                state: if have_certificate { "valid" } else { "waiting" },
                directory: directory.to_owned(),
                ..AcmeStatus::default()
            }),
            wake: Notify::new(),
            force: AtomicBool::new(false),
            apps: Mutex::new(apps),
            ready: watch::channel(false).0,
        })
    }

    pub fn status(&self) -> AcmeStatus {
        self.status
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn update(&self, f: impl FnOnce(&mut AcmeStatus)) {
        f(&mut self.status.write().unwrap_or_else(|p| p.into_inner()));
    }

    pub fn set_apps(&self, apps: Vec<String>) {
        *self.apps.lock().unwrap_or_else(|p| p.into_inner()) = apps;
        self.wake.notify_one();
    }

    pub fn force(&self) {
        self.force.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    pub fn listeners_ready(&self) {
        self.ready.send_replace(true);
    }
}

pub fn acme(
    handle: TlsHandle,
    shared: Arc<AcmeShared>,
    ctx: acme::Ctx,
    domain: String,
    metrics: Arc<Metrics>,
) -> Tasks {
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    let mut tasks = Tasks::new("tls", cancel);
    tasks.spawn(async move {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = acme_loop(handle, shared, ctx, domain, metrics) => {}
        }
    });
    tasks
}

async fn acme_loop(
    handle: TlsHandle,
    shared: Arc<AcmeShared>,
    ctx: acme::Ctx,
    domain: String,
    metrics: Arc<Metrics>,
) {
    // Challenges are answered by the HTTP and HTTPS listeners: wait for them.
    let mut ready = shared.ready.subscribe();
    while !*ready.borrow_and_update() {
        if ready.changed().await.is_err() {
            return;
        }
    }
    let mut failures: u32 = 0;
    let mut retry_at = SystemTime::now();
    let mut checked_ari = false;
    let mut pick = (String::new(), 0.0);
    loop {
        let apps = shared
            .apps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let dns01 = plan::dns01_possible(&ctx.section.challenges, ctx.dns.is_some());
        let names = plan::names(&domain, dns01, &apps);
        let mut stored = acme::load(&ctx.paths, &names);
        // In a cluster: the certificate another KUBE ordered, when it is newer than `local`.
        let from_store = async |local: Option<&Stored>| match &ctx.storage {
            Some(store) => {
                adopt(
                    &handle, &shared, &ctx, store, &domain, &names, local, &metrics,
                )
                .await
            }
            None => None,
        };
        if let Some(s) = from_store(stored.as_ref()).await {
            stored = Some(s);
            // Another KUBE's order is this one's too: nothing left to retry.
            failures = 0;
        }
        let now = SystemTime::now();
        let forced = shared.force.swap(false, Ordering::SeqCst);
        if let Some((chain, _, _, meta)) = &stored
            && !checked_ari
        {
            // Once per run: the directory may want this certificate renewed early.
            checked_ari = true;
            if let Some(w) = acme::renewal_window(&ctx, &meta.directory, chain).await {
                let mut m = meta.clone();
                m.ari_window = Some(w);
                if let Err(e) = acme::save_meta(&ctx.paths, &m) {
                    tracing::warn!(error = %e, "cannot store the renewal window");
                }
                continue;
            }
        }
        let due = match (&stored, forced) {
            (Some((_, _, info, meta)), false) => {
                let ari = meta
                    .ari_window
                    .map(|(a, b)| (acme::from_unix(a), acme::from_unix(b)));
                // One point of the renewal window per certificate, however often the
                // loop wakes (every storage.poll_secs in a cluster).
                if pick.0 != info.serial {
                    pick = (info.serial.clone(), rand::random::<f64>());
                }
                plan::renew_at(info.not_before, info.not_after, ari, pick.1)
            }
            _ => now,
        };
        let at = if failures > 0 && !forced {
            retry_at.max(now)
        } else {
            due
        };
        if at > now {
            // In a cluster another KUBE may renew first: the store is looked at meanwhile.
            let wake = match &ctx.storage {
                Some(store) => at.min(now + store.poll),
                None => at,
            };
            shared.update(|s| s.next_attempt = Some(acme::unix(at)));
            tokio::select! {
                _ = tokio::time::sleep(wake.duration_since(now).unwrap_or_default()) => {}
                _ = shared.wake.notified() => {}
            }
            continue;
        }
        // In a cluster, only the holder of the lease orders.
        let mut held = None;
        if let Some(store) = &ctx.storage {
            let secondary = ctx.dns.as_ref().is_some_and(|d| d.is_secondary());
            let why = if dns01 && secondary {
                Some(
                    "this KUBE is a DNS secondary: it takes the certificate its primary orders"
                        .to_owned(),
                )
            } else {
                let taken = match shared::token(store, &domain).await {
                    Ok(floor) => {
                        lease::acquire(
                            store,
                            &shared::lock_key(&domain),
                            acme::unix(now),
                            shared::LEASE_SECS,
                            floor,
                        )
                        .await
                    }
                    Err(e) => Err(e),
                };
                match taken {
                    Ok(Ok(h)) => {
                        held = Some(h);
                        None
                    }
                    Ok(Err(other)) => Some(format!(
                        "{} is ordering (lease token {})",
                        other.holder, other.token
                    )),
                    // The store, not the CA, failed: no order was tried, so nothing
                    // counts against the directory; asked again at the next poll.
                    Err(e) => Some(format!("object store: {e}")),
                }
            };
            if let Some(why) = why {
                // `kube cert renew` waits for the lease rather than being dropped.
                if forced {
                    shared.force.store(true, Ordering::SeqCst);
                }
                shared.update(|s| {
                    s.state = "waiting";
                    s.last_error = Some(why);
                    s.next_attempt = Some(acme::unix(now + store.poll));
                });
                tokio::select! {
                    _ = tokio::time::sleep(store.poll) => {}
                    _ = shared.wake.notified() => {}
                }
                continue;
            }
            // The last holder may have just written a fresh one.
            if !forced && from_store(stored.as_ref()).await.is_some() {
                if let Some(h) = held.take()
                    && let Err(e) = lease::release(store, h).await
                {
                    tracing::warn!(error = %e, "cannot release the ACME lease; it expires by itself");
                }
                continue;
            }
        }
        let directory = plan::directory(
            &ctx.section.directory,
            ctx.section.fallback_directory.as_deref(),
            failures,
        )
        .to_owned();
        shared.update(|s| {
            s.state = "ordering";
            s.directory = directory.clone();
        });
        let started = std::time::Instant::now();
        let order = async {
            let (chain, key) = match acme::issue(&ctx, &directory, &names).await {
                Ok(pair) => pair,
                Err(e) => return Outcome::Failed(e.to_string()),
            };
            let ari_window = acme::renewal_window(&ctx, &directory, &chain).await;
            let meta = acme::Meta {
                names: names.clone(),
                directory: directory.clone(),
                ari_window,
            };
            if let (Some(store), Some(h)) = (&ctx.storage, &held) {
                let now = crate::service::unix_now();
                match shared::save(store, &domain, h, &chain, &key, &meta, now).await {
                    Ok(()) => {}
                    Err(shared::SaveError::Fenced) => return Outcome::Fenced,
                    Err(e) => return Outcome::Failed(format!("object store: {e}")),
                }
            }
            // Served even when it cannot be kept on disk; the failure is reported.
            let stored = acme::save(&ctx.paths, &chain, &key, &meta);
            let installed = handle.install(&chain, &key);
            match (stored, installed) {
                (Ok(()), Ok(())) => Outcome::Served,
                (Err(e), _) => Outcome::Failed(e.to_string()),
                (_, Err(e)) => Outcome::Failed(e.to_string()),
            }
        };
        // In a cluster the lease is kept renewed until the certificate is in the store. An
        // order whose lease could not be renewed still finishes (so it takes its challenge
        // answers down), and `shared::save` then stores it only if the lease is still
        // this KUBE's.
        let mut keeper = held.clone();
        let outcome = match (&ctx.storage, keeper.as_mut()) {
            (Some(store), Some(h)) => {
                tokio::pin!(order);
                tokio::select! {
                    o = &mut order => o,
                    e = shared::keep(store, h) => {
                        tracing::warn!(error = %e, "cannot renew the ACME lease; the order finishes and is stored only if the lease is still this KUBE's");
                        order.await
                    }
                }
            }
            _ => order.await,
        };
        if keeper.is_some() {
            held = keeper;
        }
        if let (Some(store), Some(h)) = (&ctx.storage, held.take())
            && let Err(e) = lease::release(store, h).await
        {
            tracing::warn!(error = %e, "cannot release the ACME lease; it expires by itself");
        }
        match outcome {
            Outcome::Served => {
                failures = 0;
                metrics.acme_orders.with_label_values(&["success"]).inc();
                tracing::info!(names = ?names, %directory, took_ms = started.elapsed().as_millis() as u64, "certificate issued and swapped in");
                shared.update(|s| {
                    s.state = "valid";
                    s.failures = 0;
                    s.last_error = None;
                    s.last_success = Some(acme::unix(SystemTime::now()));
                });
            }
            // The newer holder's certificate is taken on the next turn (which resets the
            // failures); until then this counts as a failure, so nothing orders at once.
            Outcome::Fenced => fail(
                &shared,
                &metrics,
                &mut failures,
                &mut retry_at,
                "another KUBE wrote a certificate under a newer lease".into(),
            ),
            Outcome::Failed(e) => fail(&shared, &metrics, &mut failures, &mut retry_at, e),
        }
    }
}

/// A certificate as `acme::load` returns it: chain, key, what it says, its metadata.
type Stored = (String, String, super::CertInfo, acme::Meta);

/// How one order under the lease ended.
enum Outcome {
    /// Stored (in the store too, in a cluster) and served.
    Served,
    /// A holder with a newer token wrote first: its certificate is taken on the next turn.
    Fenced,
    Failed(String),
}

/// Takes the cluster's certificate from the object store when it names `names` and lasts
/// longer than the one served here; returns it as stored here.
#[allow(clippy::too_many_arguments)]
async fn adopt(
    handle: &TlsHandle,
    status: &AcmeShared,
    ctx: &acme::Ctx,
    store: &ObjectStore,
    domain: &str,
    names: &[String],
    local: Option<&Stored>,
    metrics: &Metrics,
) -> Option<Stored> {
    let (stored, info) = match shared::load(store, domain, names).await {
        Ok(Some((Some(found), _))) => found,
        Ok(_) => return None,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the cluster's certificate from the object store");
            return None;
        }
    };
    let newer =
        local.is_none_or(|(chain, _, l, _)| *chain != stored.chain && info.not_after > l.not_after);
    if !newer || info.not_after <= SystemTime::now() {
        return None;
    }
    if let Err(e) = acme::save(&ctx.paths, &stored.chain, &stored.key, &stored.meta)
        .map_err(|e| e.to_string())
        .and_then(|()| {
            handle
                .install(&stored.chain, &stored.key)
                .map_err(|e| e.to_string())
        })
    {
        tracing::warn!(error = %e, "cannot serve the certificate from the object store");
        return None;
    }
    metrics.acme_adopted.inc();
    tracing::info!(names = ?names, serial = %info.serial, "certificate from the object store swapped in");
    status.update(|s| {
        s.state = "valid";
        s.last_error = None;
    });
    Some((stored.chain, stored.key, info, stored.meta))
}

fn fail(
    shared: &AcmeShared,
    metrics: &Metrics,
    failures: &mut u32,
    retry_at: &mut SystemTime,
    error: String,
) {
    *failures += 1;
    let wait = plan::backoff(*failures, rand::random::<f64>());
    *retry_at = SystemTime::now() + wait;
    metrics.acme_orders.with_label_values(&["failure"]).inc();
    tracing::warn!(error = %error, failures = *failures, retry_in_secs = wait.as_secs(), "certificate order failed; serving the last good certificate");
    let n = *failures;
    let next = acme::unix(*retry_at);
    shared.update(|s| {
        s.state = "failing";
        s.failures = n;
        s.last_error = Some(error);
        s.next_attempt = Some(next);
    });
}
