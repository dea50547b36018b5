//! Which HTTPS requests go to which process: the table the supervisor writes (a route per
//! routed process, pointing at the instance that is ready) and the HTTPS listener reads on
//! every request. A back-end counts the requests that hold it, so a zero-downtime restart
//! knows when the old instance has drained.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

/// One running instance's port, as the proxy sees it.
#[derive(Debug)]
pub struct Backend {
    pub port: u16,
    ready: AtomicBool,
}

impl Backend {
    pub fn new(port: u16) -> Arc<Backend> {
        Arc::new(Backend {
            port,
            ready: AtomicBool::new(false),
        })
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Requests in flight through it (every holder but the instance itself).
    pub fn in_flight(self: &Arc<Self>) -> usize {
        Arc::strong_count(self).saturating_sub(1)
    }
}

/// Where a request goes.
pub enum Lookup {
    /// To no process: the app's bundle, or nothing.
    None,
    /// To a process that is not running or not ready.
    NotReady { process: String },
    Proxy {
        process: String,
        backend: Arc<Backend>,
    },
}

#[derive(Default)]
pub struct Routes {
    entries: RwLock<Vec<Entry>>,
}

struct Entry {
    process: String,
    /// The first label of the host name.
    host: String,
    /// `/` for every path, or a prefix such as `/api/`.
    prefix: String,
    /// The instance requests go to, while one runs.
    backend: Option<Arc<Backend>>,
}

impl Routes {
    /// Adds or changes `process`'s route (keeping its back-end), or removes it with `None`.
    pub fn declare(&self, process: &str, route: Option<&config::ProcessRoute>) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        let backend = entries
            .iter()
            .find(|e| e.process == process)
            .and_then(|e| e.backend.clone());
        entries.retain(|e| e.process != process);
        if let Some(route) = route {
            let mut prefix = route.path.clone();
            if !prefix.ends_with('/') {
                prefix.push('/');
            }
            entries.push(Entry {
                process: process.to_owned(),
                host: route.app.clone().unwrap_or_else(|| process.to_owned()),
                prefix,
                backend,
            });
        }
    }

    /// Points `process`'s route at `backend` (or at nothing).
    pub fn set_backend(&self, process: &str, backend: Option<Arc<Backend>>) {
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = entries.iter_mut().find(|e| e.process == process) {
            e.backend = backend;
        }
    }

    /// The route for a request to `<host>.<domain><path>`: the longest prefix wins.
    pub fn find(&self, host: &str, path: &str) -> Lookup {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        let best = entries
            .iter()
            .filter(|e| e.host == host && matches(&e.prefix, path))
            .max_by_key(|e| e.prefix.len());
        match best {
            None => Lookup::None,
            Some(e) => match &e.backend {
                Some(b) if b.is_ready() => Lookup::Proxy {
                    process: e.process.clone(),
                    backend: b.clone(),
                },
                _ => Lookup::NotReady {
                    process: e.process.clone(),
                },
            },
        }
    }

    /// Every host name label with a route, for certificates.
    pub fn hosts(&self) -> Vec<String> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        let mut hosts: Vec<String> = entries.iter().map(|e| e.host.clone()).collect();
        hosts.sort();
        hosts.dedup();
        hosts
    }
}

/// Whether `path` is under `prefix` (which ends with `/`): `/api/` takes `/api` and
/// `/api/x`, not `/apix`.
fn matches(prefix: &str, path: &str) -> bool {
    path.starts_with(prefix) || path == &prefix[..prefix.len() - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(app: Option<&str>, path: &str) -> config::ProcessRoute {
        config::ProcessRoute {
            app: app.map(str::to_owned),
            path: path.into(),
        }
    }

    fn target(l: Lookup) -> String {
        match l {
            Lookup::None => "none".into(),
            Lookup::NotReady { process } => format!("{process} not ready"),
            Lookup::Proxy { process, backend } => format!("{process}:{}", backend.port),
        }
    }

    #[test]
    fn longest_prefix_on_the_host_wins_and_readiness_gates() {
        let r = Routes::default();
        r.declare("api", Some(&route(Some("notes"), "/api/")));
        r.declare("v2", Some(&route(Some("notes"), "/api/v2")));
        r.declare("chat", Some(&route(None, "/")));
        assert_eq!(target(r.find("notes", "/api/x")), "api not ready");
        let b = Backend::new(4000);
        r.set_backend("api", Some(b.clone()));
        assert_eq!(target(r.find("notes", "/api/x")), "api not ready");
        b.set_ready(true);
        assert_eq!(target(r.find("notes", "/api")), "api:4000");
        assert_eq!(target(r.find("notes", "/api/x?y")), "api:4000");
        assert_eq!(target(r.find("notes", "/apix")), "none");
        assert_eq!(target(r.find("notes", "/index.html")), "none");
        assert_eq!(target(r.find("notes", "/api/v2/z")), "v2 not ready");
        assert_eq!(target(r.find("chat", "/anything")), "chat not ready");
        assert_eq!(target(r.find("api", "/")), "none");
        assert_eq!(r.hosts(), ["chat", "notes"]);
        // A held request counts until it is dropped.
        let held = match r.find("notes", "/api/") {
            Lookup::Proxy { backend, .. } => backend,
            _ => unreachable!(),
        };
        assert_eq!(b.in_flight(), 2, "the table's and the request's");
        r.set_backend("api", None);
        assert_eq!(b.in_flight(), 1);
        drop(held);
        assert_eq!(b.in_flight(), 0);
        // A changed route keeps its back-end; a removed one is gone.
        r.set_backend("api", Some(b.clone()));
        r.declare("api", Some(&route(Some("notes"), "/v1/")));
        assert_eq!(target(r.find("notes", "/v1/a")), "api:4000");
        r.declare("api", None);
        assert_eq!(target(r.find("notes", "/v1/a")), "none");
    }
}
