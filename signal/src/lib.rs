//! WebRTC signaling for KUBE (pure, no I/O): the JSON protocol (`protocol`), the hub that
//! authenticates peers by their HALO key and relays offers, answers and candidates within
//! swarms (`hub`), and the TURN REST credentials handed out with ICE servers (`ice`).
//! The WebSocket driver lives in `kube`; `PROTOCOL.md` beside this crate documents the wire.

pub mod hub;
pub mod ice;
pub mod protocol;

pub use hub::{ConnId, Hub, Limits, Out, Stats};
