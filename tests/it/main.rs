//! One integration test binary: the real `kube`, a fresh data dir each, real clients.

mod acme;
mod admin;
mod apps;
mod backup;
mod bench_cluster;
mod bundles;
mod config;
mod deploy;
mod dns;
mod echo;
mod echo_cluster;
mod echo_scale;
mod identity;
mod invite;
mod lifecycle;
mod process_routes;
mod processes;
mod reload;
mod signal;
mod storage;
mod turn;
