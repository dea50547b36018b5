//! One integration test binary: the real `kube`, a fresh data dir each, real clients.

mod acme;
mod admin;
mod apps;
mod bundles;
mod config;
mod dns;
mod identity;
mod invite;
mod lifecycle;
mod signal;
mod turn;
