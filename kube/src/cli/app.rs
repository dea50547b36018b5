//! `kube app …`: packs a directory into a .tar.gz (links are packed as links, so the server
//! refuses them by name), streams it with a progress bar, and manages versions.

use std::path::Path;

use anyhow::{Context, bail};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use super::AppCommand;
use super::client::Client;

pub async fn run(c: &Client, command: AppCommand) -> anyhow::Result<()> {
    match command {
        AppCommand::Publish { bundle, name } => publish(c, &bundle, &name).await,
        AppCommand::List => {
            let apps = c.send(c.request(reqwest::Method::GET, "/api/apps")).await?;
            let list = apps.as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!("no apps");
            }
            for a in list {
                let versions: Vec<String> = a["versions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|v| {
                        let mark = if v["version"] == a["current"] {
                            "*"
                        } else {
                            ""
                        };
                        format!("{}{mark}", v["version"])
                    })
                    .collect();
                println!(
                    "{:<20} current v{:<4} versions {:<16} {}",
                    a["name"].as_str().unwrap_or(""),
                    a["current"],
                    versions.join(","),
                    a["url"].as_str().unwrap_or("")
                );
            }
            Ok(())
        }
        AppCommand::Rollback { name, version } => {
            let body = match version {
                Some(v) => json!({"version": v}),
                None => json!({}),
            };
            let r = c
                .send(c.request_json(
                    reqwest::Method::POST,
                    &format!("/api/apps/{name}/rollback"),
                    &body,
                ))
                .await?;
            println!(
                "{name} is at version {} {}",
                r["version"],
                r["url"].as_str().unwrap_or("")
            );
            Ok(())
        }
        AppCommand::Remove { name } => {
            c.send(c.request(reqwest::Method::DELETE, &format!("/api/apps/{name}")))
                .await?;
            println!("removed {name}");
            Ok(())
        }
    }
}

async fn publish(c: &Client, bundle: &Path, name: &str) -> anyhow::Result<()> {
    crate::apps::check_name(name).map_err(anyhow::Error::msg)?;
    let tmp;
    let archive = if bundle.is_dir() {
        tmp = tempfile::NamedTempFile::new().context("creating a temporary file")?;
        let out = tmp.reopen().context("opening the temporary file")?;
        let dir = bundle.to_owned();
        tokio::task::spawn_blocking(move || pack(&dir, out)).await??;
        tmp.path().to_owned()
    } else if bundle.is_file() {
        bundle.to_owned()
    } else {
        bail!(
            "{} is neither a directory nor a .tar.gz file",
            bundle.display()
        );
    };
    let size = std::fs::metadata(&archive)?.len();
    // A signed upload names its body's hash up front: one read of the file before sending.
    let hash = {
        let path = archive.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<String> {
            let mut f = std::fs::File::open(path)?;
            let mut h = sha2::Sha256::default();
            std::io::copy(&mut f, &mut h)?;
            Ok(hex::encode(sha2::Digest::finalize(h)))
        })
        .await??
    };
    let bar = ProgressBar::new(size);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(format!("uploading {name}"));
    let file = tokio::fs::File::open(&archive).await?;
    let progress = bar.clone();
    let stream = tokio_util::io::ReaderStream::new(file).inspect(move |chunk| {
        if let Ok(bytes) = chunk {
            progress.inc(bytes.len() as u64);
        }
    });
    let req = c
        .request_body(reqwest::Method::PUT, &format!("/api/apps/{name}"), &hash)
        .header("content-type", "application/gzip")
        .header("content-length", size)
        .body(reqwest::Body::wrap_stream(stream));
    let result = c.send(req).await;
    bar.finish_and_clear();
    let r: Value = result?;
    println!(
        "published {name} version {} ({} files)\n{}",
        r["version"],
        r["files"],
        r["url"].as_str().unwrap_or("")
    );
    Ok(())
}

/// Packs `dir` as a .tar.gz. Symlinks stay symlinks: the server decides, and says which.
fn pack(dir: &Path, out: std::fs::File) -> anyhow::Result<()> {
    let gz = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    tar.follow_symlinks(false);
    tar.mode(tar::HeaderMode::Deterministic);
    tar.append_dir_all(".", dir)
        .with_context(|| format!("packing {}", dir.display()))?;
    tar.into_inner()?.finish()?.sync_all()?;
    Ok(())
}
