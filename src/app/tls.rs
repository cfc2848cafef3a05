//! HTTPS for the HTTP edge: PEM files from `http.tls_cert`/`http.tls_key`, or a
//! self-signed certificate generated with rcgen into `certs/` on first start
//! (`http.tls_self_signed`), so `getUserMedia` works from a LAN address.

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const SELF_SIGNED_DIR: &str = "certs";
pub const SELF_SIGNED_CERT: &str = "confer-dev.crt";
pub const SELF_SIGNED_KEY: &str = "confer-dev.key";

/// A rustls server config from PEM files.
pub fn server_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read http.tls_cert {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("http.tls_cert {} is not a PEM certificate chain", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("http.tls_cert {} holds no certificate", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("http.tls_key {} is not a PEM private key", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not match")?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The names the dev certificate was made for, one per line, beside it.
pub const SELF_SIGNED_NAMES: &str = "confer-dev.names";

/// The dev certificate in `dir` for `localhost`, the loopback addresses and
/// `ips` (every address a browser may come in on: `--lan` puts each
/// interface's). Generated on first use, and again when an address is not
/// in the one there (a new interface, a DHCP lease). Returns (cert path,
/// key path).
pub fn self_signed(dir: &Path, ips: &[IpAddr]) -> anyhow::Result<(PathBuf, PathBuf)> {
    let cert = dir.join(SELF_SIGNED_CERT);
    let key = dir.join(SELF_SIGNED_KEY);
    let listed = dir.join(SELF_SIGNED_NAMES);
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    for ip in ips {
        if !ip.is_unspecified() && !names.contains(&ip.to_string()) {
            names.push(ip.to_string());
        }
    }
    if cert.exists() && key.exists() {
        // A certificate from before the names file covers the loopback names only.
        let had = std::fs::read_to_string(&listed).unwrap_or_else(|_| names[..3].join("\n"));
        if names.iter().all(|n| had.lines().any(|l| l == n)) {
            return Ok((cert, key));
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let generated =
        rcgen::generate_simple_self_signed(names.clone()).context("generating a self-signed certificate")?;
    std::fs::write(&cert, generated.cert.pem()).with_context(|| format!("cannot write {}", cert.display()))?;
    crate::auth::write_private(&key, generated.signing_key.serialize_pem().as_bytes())
        .with_context(|| format!("cannot write {}", key.display()))?;
    std::fs::write(&listed, names.join("\n")).with_context(|| format!("cannot write {}", listed.display()))?;
    tracing::info!(cert = %cert.display(), names = ?names, "generated a self-signed certificate; browsers will ask you to accept it");
    Ok((cert, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let (c, k) = self_signed(dir.path(), &[ip]).unwrap();
        let first = std::fs::read(&c).unwrap();
        let (c2, _) = self_signed(dir.path(), &[ip]).unwrap();
        assert_eq!(first, std::fs::read(&c2).unwrap(), "reused, not regenerated");
        let (c3, _) = self_signed(dir.path(), &[ip, "198.18.0.1".parse().unwrap()]).unwrap();
        assert_ne!(first, std::fs::read(&c3).unwrap(), "a new address makes a new certificate");
        server_config(&c, &k).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&k).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert!(server_config(&k, &c).is_err(), "swapped files are refused");
    }
}
