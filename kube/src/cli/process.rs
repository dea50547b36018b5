//! `kube ps`, `kube process …` and `kube logs`: the supervised processes, through the admin
//! API.

use reqwest::Method;
use serde_json::Value;

use super::ProcessCommand;
use super::client::Client;

pub async fn run(c: &Client, command: ProcessCommand) -> anyhow::Result<()> {
    match command {
        ProcessCommand::List => list(c).await,
        ProcessCommand::Show { name } => {
            let s = c
                .send(c.request(Method::GET, &format!("/api/processes/{name}")))
                .await?;
            println!("{}", serde_json::to_string_pretty(&s)?);
            Ok(())
        }
        ProcessCommand::Start { name } => action(c, &name, "start").await,
        ProcessCommand::Stop { name } => action(c, &name, "stop").await,
        ProcessCommand::Restart { name } => action(c, &name, "restart").await,
    }
}

/// One line per process: name, state, readiness, pid, port, restarts, last exit.
pub async fn list(c: &Client) -> anyhow::Result<()> {
    let s = c.send(c.request(Method::GET, "/api/processes")).await?;
    let procs = s["processes"].as_array().cloned().unwrap_or_default();
    if procs.is_empty() {
        println!("no processes (declare them under `processes:` in kube.yml)");
        return Ok(());
    }
    println!(
        "{:<20} {:<9} {:<5} {:>8} {:>6} {:>8}  LAST EXIT",
        "NAME", "STATE", "READY", "PID", "PORT", "RESTARTS"
    );
    for p in procs {
        println!("{}", line(&p));
    }
    Ok(())
}

fn line(p: &Value) -> String {
    let text = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    let pid = p["pid"].as_u64().map_or("-".into(), |p| p.to_string());
    let state = match p["next_start_ms"].as_u64() {
        Some(ms) => format!("{} ({ms} ms)", text(&p["state"])),
        None => text(&p["state"]),
    };
    let ready = match p["ready"].as_bool() {
        Some(true) => "yes",
        Some(false) => "no",
        None => "-",
    };
    let port = p["port"].as_u64().map_or("-".into(), |p| p.to_string());
    format!(
        "{:<20} {:<9} {:<5} {:>8} {:>6} {:>8}  {}",
        text(&p["name"]),
        state,
        ready,
        pid,
        port,
        p["restarts"].as_u64().unwrap_or(0),
        text(&p["last_exit"])
    )
}

async fn action(c: &Client, name: &str, what: &str) -> anyhow::Result<()> {
    let s = c
        .send(c.request(Method::POST, &format!("/api/processes/{name}/{what}")))
        .await?;
    println!("{}", line(&s));
    Ok(())
}

/// Prints `name`'s log, the lines since `since` (RFC 3339, or seconds ago like `10m`,
/// `2h`); with `follow`, then every new line until interrupted.
pub async fn logs(
    c: &Client,
    name: &str,
    since: Option<&str>,
    lines: usize,
    follow: bool,
) -> anyhow::Result<()> {
    let mut since_ms = match since {
        Some(s) => Some(parse_since(s)?),
        None => None,
    };
    let mut printed: Vec<String> = Vec::new();
    loop {
        let mut path = format!("/api/processes/{name}/logs?lines={lines}");
        if let Some(ms) = since_ms {
            path.push_str(&format!("&since={ms}"));
        }
        let s = c.send(c.request(Method::GET, &path)).await?;
        let got: Vec<String> = s["lines"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l.as_str().map(str::to_owned))
            .collect();
        // Lines of the last millisecond already printed come again: skip them.
        for l in got.iter().filter(|l| !printed.contains(l)) {
            println!("{l}");
        }
        if !follow {
            return Ok(());
        }
        if let Some(last) = got.last() {
            since_ms = crate::processes::logs::parse_stamp(last).or(since_ms);
            printed = got
                .iter()
                .filter(|l| crate::processes::logs::parse_stamp(l) == since_ms)
                .cloned()
                .collect();
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// `2026-12-03T07:00:00Z`, or a duration ago: `30s`, `10m`, `2h`, `1d`.
fn parse_since(s: &str) -> anyhow::Result<u64> {
    if let Ok(t) = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return Ok(u64::try_from(t.unix_timestamp_nanos() / 1_000_000)?);
    }
    let (n, unit) = s.split_at(s.len().saturating_sub(1));
    let n: u64 = n
        .parse()
        .map_err(|_| anyhow::anyhow!("--since {s:?}: expected RFC 3339 or 30s, 10m, 2h, 1d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => anyhow::bail!("--since {s:?}: expected RFC 3339 or 30s, 10m, 2h, 1d"),
    };
    let now = crate::service::unix_now();
    Ok(now.saturating_sub(secs) * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_time_or_a_duration_ago() {
        assert_eq!(
            parse_since("2026-12-03T07:00:00Z").unwrap(),
            1_796_281_200_000
        );
        let now = crate::service::unix_now() * 1000;
        let ten_min = parse_since("10m").unwrap();
        assert!(now - ten_min >= 600_000 && now - ten_min < 602_000);
        assert!(parse_since("10x").is_err());
        assert!(parse_since("soon").is_err());
        assert_eq!(
            crate::processes::logs::parse_stamp("2026-12-03T07:00:00.250Z out hello"),
            Some(1_796_281_200_250)
        );
    }
}
