//! Which site a request is for (pure): the apex, an app below the domain, or nothing of ours.

/// The target of a request by its host name.
#[derive(Debug, PartialEq, Eq)]
pub enum Site<'a> {
    Apex,
    App(&'a str),
    Unknown,
}

/// Strips the port and a trailing dot, and matches against `domain` (case-insensitively;
/// `host` must already be lowercase ASCII to match an app).
pub fn route<'a>(host: &'a str, domain: &str) -> Site<'a> {
    let name = strip_port(host).trim_end_matches('.');
    if name.eq_ignore_ascii_case(domain) {
        return Site::Apex;
    }
    if name.len() > domain.len() + 1 {
        let (label, rest) = name.split_at(name.len() - domain.len() - 1);
        if rest[1..].eq_ignore_ascii_case(domain) && rest.starts_with('.') && !label.contains('.') {
            return Site::App(label);
        }
    }
    Site::Unknown
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// The landing page at the apex: the KUBE and its apps, each linked; a fresh KUBE says in
/// one paragraph what to do next.
pub fn landing_page(domain: &str, port_suffix: &str, apps: &[String]) -> String {
    let body = if apps.is_empty() {
        format!(
            "<p>Nothing is published here yet. To see KUBE at work, publish the sample app, a task \
list two browsers share peer to peer: run <code>examples/tasks/publish</code> in KUBE's source \
tree, then open <a href=\"https://tasks.{domain}{port_suffix}/\">tasks.{domain}</a> in two \
windows. To publish your own: <code>kube app publish DIR --name NAME</code>, or drop the folder \
on the Apps page of the operator console (on KUBE's admin address, <code>kube status</code> \
shows it).</p>\n"
        )
    } else {
        let mut items = String::new();
        for app in apps {
            // App names are DNS labels (checked at publish), so they need no escaping.
            items.push_str(&format!(
                "<li><a href=\"https://{app}.{domain}{port_suffix}/\">{app}</a></li>\n"
            ));
        }
        format!("<p>The apps published here:</p>\n<ul>\n{items}</ul>\n")
    };
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>KUBE {domain}</title>\n\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
<style>body{{font-family:system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem;line-height:1.5}}</style></head>\n\
<body><h1>KUBE at {domain}</h1>\n{body}<p><small>KUBE {version}</small></p>\n</body></html>\n",
        version = env!("CARGO_PKG_VERSION"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("localhost:8443", "localhost"), Site::Apex);
        assert_eq!(route("LOCALHOST.", "localhost"), Site::Apex);
        assert_eq!(route("demo.localhost:8443", "localhost"), Site::App("demo"));
        assert_eq!(route("a.b.localhost", "localhost"), Site::Unknown);
        assert_eq!(route("evil-localhost", "localhost"), Site::Unknown);
        assert_eq!(route("demo.example.com", "example.com"), Site::App("demo"));
        assert_eq!(route("[::1]:8443", "localhost"), Site::Unknown);
        assert_eq!(route(".localhost", "localhost"), Site::Unknown);
    }

    #[test]
    fn a_fresh_landing_page_says_what_to_do_next() {
        let page = landing_page("localhost", ":8443", &[]);
        assert!(page.contains("Nothing is published"), "{page}");
        assert!(page.contains("examples/tasks/publish"), "{page}");
        assert!(
            page.contains("href=\"https://tasks.localhost:8443/\""),
            "{page}"
        );
        let page = landing_page("localhost", ":8443", &["tasks".into()]);
        assert!(!page.contains("Nothing is published"), "{page}");
        assert!(
            page.contains("href=\"https://tasks.localhost:8443/\""),
            "{page}"
        );
    }
}
