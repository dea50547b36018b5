//! An S3-compatible object store for the tests: `s3s-fs` (the s3s project's file-system
//! back-end) served in this process on a loopback port, checking SigV4 against one key pair.
//!
//! s3s-fs checks a write's condition (`If-None-Match`, `If-Match`) and then writes, two
//! steps; S3 and MinIO do both at once. The server here runs one write at a time, so the
//! tests see the atomic conditional writes KUBE relies on.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};

pub const ACCESS_KEY: &str = "kube-test";
pub const SECRET_KEY: &str = "kube-test-secret-key";
pub const BUCKET: &str = "kube";

pub struct S3 {
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl S3 {
    /// Starts a store with one empty bucket.
    pub fn start() -> S3 {
        S3::start_with(true)
    }

    /// With `conditional` false, a store that ignores `If-None-Match` and `If-Match`.
    pub fn start_with(conditional: bool) -> S3 {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join(BUCKET)).expect("bucket dir");
        let fs = s3s_fs::FileSystem::new(dir.path()).expect("s3s-fs root");
        let mut builder = s3s::service::S3ServiceBuilder::new(fs);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let writes = Arc::new(tokio::sync::Mutex::new(()));
                loop {
                    let socket = tokio::select! {
                        _ = &mut stopped => return,
                        accepted = listener.accept() => match accepted {
                            Ok((s, _)) => s,
                            Err(_) => continue,
                        },
                    };
                    let (service, writes) = (service.clone(), writes.clone());
                    let svc = hyper::service::service_fn(
                        move |mut req: http::Request<hyper::body::Incoming>| {
                            let (service, writes) = (service.clone(), writes.clone());
                            if !conditional {
                                req.headers_mut().remove(http::header::IF_NONE_MATCH);
                                req.headers_mut().remove(http::header::IF_MATCH);
                            }
                            async move {
                                let _one = if req.method() == http::Method::PUT {
                                    Some(writes.lock_owned().await)
                                } else {
                                    None
                                };
                                hyper::service::Service::call(&service, req).await
                            }
                        },
                    );
                    tokio::spawn(async move {
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(socket), svc)
                            .await;
                    });
                }
            });
        });
        S3 {
            addr,
            dir,
            stop: Some(stop),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The credentials a KUBE using this store needs in its environment.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()),
        ]
    }

    /// The `storage` section of kube.yml for this store.
    pub fn config(&self, poll_secs: u64) -> String {
        format!(
            "storage:\n  endpoint: {}\n  bucket: {BUCKET}\n  poll_secs: {poll_secs}\n",
            self.endpoint()
        )
    }

    /// Where object `key` lies on disk (to look at or tamper with).
    pub fn path(&self, key: &str) -> PathBuf {
        self.dir.path().join(BUCKET).join(key)
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
