//! HTTPS served by `nexus serve` itself (`NEXUS_TLS_CERT`, `NEXUS_TLS_KEY`),
//! for deployments without a proxy in front: rustls with the same crypto
//! provider as the client side (`nexus_loaders::tls`).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The server's TLS configuration from a PEM certificate chain (the
/// server's own first) and its PEM private key; why not, naming the file.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("NEXUS_TLS_CERT {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "NEXUS_TLS_CERT {}: holds no certificate",
            cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("NEXUS_TLS_KEY {}: {e}", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(nexus_loaders::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("NEXUS_TLS_CERT and NEXUS_TLS_KEY: {e}"))?;
    // The router speaks HTTP/1.1 (WebSocket upgrades included).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
