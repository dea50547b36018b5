//! ECHO: the replica of the spaces a KUBE was admitted to. It speaks automerge-repo's sync
//! protocol (see `PROTOCOL.md`), lets through only what the spaces' HALO credentials allow,
//! and keeps every document on disk before acknowledging a change.
//!
//! - [`wire`]: the automerge-repo messages (CBOR), decoded totally.
//! - [`auth`]: the signed token a peer connects with.
//! - [`space`]: how a space's root and object documents are read.
//! - [`repo`]: the peer itself, a state machine without I/O.
//! - [`bound`]: how much a peer's compressed Automerge bytes inflate to, checked first.
//! - [`store`]: the files under `<data_dir>/echo/`.

pub mod auth;
pub mod bound;
pub mod repo;
pub mod space;
pub mod store;
pub mod wire;

pub use repo::{Action, ConnId, Echo, Limits};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
