//! The stored certificates as a crash or a backup can leave them: each file of a renewal
//! from before or after it, in any mix. Every mix must load a certificate with its own key,
//! as stored, without ordering or issuing again.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{acme, local_ca};

/// The bytes of `files`, missing ones as None.
fn snapshot(files: &[&Path]) -> Vec<Option<Vec<u8>>> {
    files.iter().map(|f| std::fs::read(f).ok()).collect()
}

/// Puts file `i` back as the generation picked by bit `i` of `mix` had it.
fn put(files: &[PathBuf], gens: &[Vec<Option<Vec<u8>>>], mix: u32) {
    for (i, f) in files.iter().enumerate() {
        let from = &gens[(mix >> i) as usize & 1][i];
        match from {
            Some(bytes) => std::fs::write(f, bytes).unwrap(),
            None => {
                let _ = std::fs::remove_file(f);
            }
        }
    }
}

fn issue(names: &[String]) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(names.to_vec()).unwrap();
    (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
}

#[test]
fn acme_files_from_either_side_of_a_renewal_load_a_matching_pair() {
    let dir = tempfile::tempdir().unwrap();
    let paths = acme::Paths::new(dir.path());
    let names = vec!["example.org".to_string(), "*.example.org".to_string()];
    let meta = acme::Meta {
        names: names.clone(),
        directory: "https://ca.test/directory".into(),
        ari_window: None,
    };
    let files = [paths.cert.clone(), paths.key.clone(), paths.meta.clone()];
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let (old, new) = (issue(&names), issue(&names));
    acme::save(&paths, &old.0, &old.1, &meta).unwrap();
    let before = snapshot(&refs);
    acme::save(&paths, &new.0, &new.1, &meta).unwrap();
    let after = snapshot(&refs);
    let gens = [before, after];
    for mix in 0..1 << files.len() {
        put(&files, &gens, mix);
        let (chain, key, _, _) = acme::load(&paths, &names)
            .unwrap_or_else(|| panic!("mix {mix:03b}: the stored pair is lost"));
        let pair = (chain, key);
        assert!(pair == old || pair == new, "mix {mix:03b}");
    }
}

#[test]
fn local_files_from_either_side_of_a_reissue_are_served_as_stored() {
    let dir = tempfile::tempdir().unwrap();
    let paths = local_ca::LocalCaPaths::new(dir.path());
    let files = [paths.leaf_cert.clone(), paths.leaf_key.clone()];
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let now = SystemTime::now();
    let (chain, key, _) = local_ca::ensure(&paths, "localhost", &[], now).unwrap();
    let old = (chain, key);
    let before = snapshot(&refs);
    // A leaf issued later, both valid at `later`.
    let later = now + Duration::from_secs(10 * 24 * 3600);
    for f in &files {
        std::fs::remove_file(f).unwrap();
    }
    let (chain, key, _) = local_ca::ensure(&paths, "localhost", &[], later).unwrap();
    let new = (chain, key);
    assert_ne!(old, new);
    let after = snapshot(&refs);
    let gens = [before, after];
    for mix in 0..1 << files.len() {
        put(&files, &gens, mix);
        let (chain, key, _) = local_ca::ensure(&paths, "localhost", &[], later).unwrap();
        let pair = (chain, key);
        assert!(pair == old || pair == new, "mix {mix:02b}: reissued");
    }
}

#[test]
fn a_ca_interrupted_while_being_written_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let paths = local_ca::LocalCaPaths::new(dir.path());
    let now = SystemTime::now();
    local_ca::ensure(&paths, "localhost", &[], now).unwrap();
    let ca = std::fs::read(&paths.ca_cert).unwrap();
    // The key is written first: a crash before the certificate leaves the key alone.
    std::fs::remove_file(&paths.ca_cert).unwrap();
    local_ca::ensure(&paths, "localhost", &[], now).expect("the CA is recovered");
    assert_eq!(std::fs::read(&paths.ca_cert).unwrap(), ca, "the same CA");
}
