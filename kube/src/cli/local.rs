//! Commands that need no running KUBE: `init`, `config check`, `trust`, `identity`.

use std::path::Path;

use anyhow::{Context, bail};

/// Loads the configuration the way `kube start` does (file, then `KUBE_*` variables), with
/// every service's own checks.
pub fn load(file: Option<&Path>) -> anyhow::Result<config::Loaded> {
    config::load_with(file, std::env::vars(), crate::supervisor::check)
        .map_err(|e| anyhow::anyhow!("invalid configuration:\n{e}"))
}

pub fn init(domain: &str, output: &Path, force: bool) -> anyhow::Result<()> {
    if output.exists() && !force {
        bail!("{} exists; pass --force to overwrite it", output.display());
    }
    // A public server gets an operator key beside its config: the one operator, and the
    // one space admin ECHO serves (closed to strangers' spaces; `kube identity` shows it).
    let operator = if config::is_local_domain(domain) {
        None
    } else {
        let path = output.with_file_name("operator.key");
        let key = if path.exists() {
            crate::identity::load(&path)?
        } else {
            let key = crate::identity::create(&path)?;
            println!(
                "wrote {} (the operator key: kube --key {} …; keep it safe)",
                path.display(),
                path.display()
            );
            key
        };
        Some(halo::did(&key))
    };
    let text = config::template_for(domain, operator.as_deref());
    // The template must load as written; a failure here is a bug, not the user's input.
    if let Err(e) = config::load_str("kube.yml", &text, std::iter::empty()) {
        bail!("the generated configuration does not load: {e}");
    }
    std::fs::write(output, text).with_context(|| format!("writing {}", output.display()))?;
    println!(
        "wrote {} for {domain}; check it with `kube config check -c {}`",
        output.display(),
        output.display()
    );
    Ok(())
}

pub fn config_check(file: Option<&Path>) -> i32 {
    match config::load_with(file, std::env::vars(), crate::supervisor::check) {
        Ok(_) => {
            let name = file.map(|f| f.display().to_string());
            println!("{}: ok", name.as_deref().unwrap_or("embedded defaults"));
            0
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

pub fn trust(file: Option<&Path>) -> anyhow::Result<()> {
    let cfg = load(file)?.config;
    let path = crate::tls::local_ca::LocalCaPaths::new(&cfg.data_dir).ca_cert;
    let pem = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no local CA at {} yet: run `kube start` once first",
            path.display()
        )
    })?;
    print!("{pem}");
    Ok(())
}

/// KUBE's did:key (from `<data_dir>/identity.key`) and the operators the config lists.
pub fn identity(file: Option<&Path>) -> anyhow::Result<()> {
    let cfg = load(file)?.config;
    let path = crate::identity::path(&cfg.data_dir);
    if !path.exists() {
        bail!(
            "no identity at {} yet: `kube start` creates it on first start",
            path.display()
        );
    }
    let key = crate::identity::load(&path)?;
    println!("{}", halo::did(&key));
    if cfg.admin.operators.is_empty() {
        println!("operators: none (admin.operators); the admin token works for local scripts");
    } else {
        println!("operators:");
        for op in &cfg.admin.operators {
            println!("  {op}");
        }
    }
    match &cfg.echo.admit {
        config::Admit::Any => println!("echo.admit: any space admin"),
        config::Admit::Admins(list) => {
            println!("echo.admit:");
            for admin in list {
                println!("  {admin}");
            }
        }
    }
    Ok(())
}

/// `kube identity new FILE`: an operator key.
pub fn new_key(path: &Path) -> anyhow::Result<()> {
    let key = crate::identity::create(path)?;
    println!("{}", halo::did(&key));
    eprintln!(
        "wrote {}; add the key above to admin.operators, then use --key {} (or KUBE_KEY)",
        path.display(),
        path.display()
    );
    Ok(())
}

/// `kube restore FILE`: into the configured data dir, which must be missing or empty.
pub fn restore(file: Option<&Path>, backup: &Path) -> anyhow::Result<()> {
    let cfg = load(file)?.config;
    let input = std::fs::File::open(backup)
        .with_context(|| format!("opening the backup {}", backup.display()))?;
    let m = crate::backup::restore(std::io::BufReader::new(input), &cfg.data_dir)?;
    println!(
        "restored {} into {} (kube {}, identity {}, format {})",
        backup.display(),
        cfg.data_dir.display(),
        m.kube,
        m.identity,
        m.format
    );
    Ok(())
}
