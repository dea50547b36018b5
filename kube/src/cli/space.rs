//! `kube space …`: the spaces ECHO replicates, through the admin API.

use std::path::Path;

use anyhow::Context as _;
use reqwest::Method;
use serde_json::Value;

use super::SpaceCommand;
use super::client::Client;

/// A space key as one path segment.
fn seg(key: &str) -> String {
    percent_encoding::utf8_percent_encode(key, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn when(secs: &Value) -> String {
    match secs.as_u64() {
        Some(0) | None => "-".into(),
        Some(s) => {
            httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(s))
        }
    }
}

pub async fn run(c: &Client, command: SpaceCommand) -> anyhow::Result<()> {
    match command {
        SpaceCommand::List => {
            let list = c.send(c.request(Method::GET, "/api/echo/spaces")).await?;
            let spaces = list.as_array().cloned().unwrap_or_default();
            if spaces.is_empty() {
                println!("no spaces");
            }
            for s in spaces {
                println!(
                    "{}  {} documents, {} members, {} bytes, last change {}",
                    s["space"].as_str().unwrap_or(""),
                    s["documents"],
                    s["members"],
                    s["bytes"],
                    when(&s["last_change"])
                );
            }
        }
        SpaceCommand::Show { space: key } => {
            let s = c
                .send(c.request(Method::GET, &format!("/api/echo/spaces/{}", seg(&key))))
                .await?;
            println!("space {}", s["space"].as_str().unwrap_or(""));
            println!("root document {}", s["root"].as_str().unwrap_or(""));
            println!(
                "{} documents, {} bytes, last change {}",
                s["documents"].as_array().map_or(0, Vec::len),
                s["bytes"],
                when(&s["last_change"])
            );
            println!("\nmembers:");
            for m in s["members"].as_array().into_iter().flatten() {
                println!(
                    "  {}  {}  (granted by {})",
                    m["key"].as_str().unwrap_or(""),
                    m["role"].as_str().unwrap_or(""),
                    m["granted_by"].as_str().unwrap_or("")
                );
            }
            if let Some(devices) = s["devices"].as_object().filter(|d| !d.is_empty()) {
                println!("\ndevices:");
                for (device, identity) in devices {
                    println!("  {device}  of {}", identity.as_str().unwrap_or(""));
                }
            }
            println!("\ndocuments:");
            for d in s["documents"].as_array().into_iter().flatten() {
                println!(
                    "  {}  {}  {} bytes, last change {}",
                    d["id"].as_str().unwrap_or(""),
                    d["type"].as_str().unwrap_or(""),
                    d["bytes"],
                    when(&d["last_change"])
                );
            }
        }
        SpaceCommand::Query {
            space: key,
            kind,
            wheres,
        } => {
            let mut path = format!("/api/echo/spaces/{}/query?type={}", seg(&key), seg(&kind));
            for w in &wheres {
                if !w.contains('=') {
                    anyhow::bail!("--where {w}: expected prop=value");
                }
                path.push_str(&format!("&where={}", seg(w)));
            }
            let found = c.send(c.request(Method::GET, &path)).await?;
            println!("{}", serde_json::to_string_pretty(&found)?);
        }
        SpaceCommand::Export { space: key, file } => {
            let e = c
                .send(c.request(
                    Method::GET,
                    &format!("/api/echo/spaces/{}/export", seg(&key)),
                ))
                .await?;
            write_private(&file, &serde_json::to_vec_pretty(&e)?)?;
            println!(
                "exported {} ({} documents) to {}",
                key,
                e["documents"].as_object().map_or(0, |d| d.len()),
                file.display()
            );
        }
        SpaceCommand::Import { file } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let body: Value = serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a space export (JSON)", file.display()))?;
            let r = c
                .send(c.request_json(Method::POST, "/api/echo/import", &body))
                .await?;
            println!("imported {}", r["imported"].as_str().unwrap_or(""));
        }
    }
    Ok(())
}

/// Writes `bytes` to `path` (0600: a space's content is private) through a temporary file.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
