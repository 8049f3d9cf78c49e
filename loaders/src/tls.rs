//! TLS to PostgreSQL as libpq's `sslmode` and `sslrootcert` ask for it,
//! with rustls (no OpenSSL). tokio-postgres reads `disable|prefer|require`
//! only and nothing of certificates, so a database URL's TLS words are read
//! here and the rest is left to the driver: every connection Nexus opens
//! (control, COPY writers, pool, event listener) is made from a
//! [`Database`].
//!
//! Without `sslmode` Nexus does not encrypt (libpq would try TLS without
//! checking the server, which protects against nothing an attacker on the
//! path cannot undo, at a cost on every COPY byte): ask for
//! `require`, `verify-ca` or `verify-full`.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::Config;
use tokio_postgres::config::SslMode as DriverMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode` values (`allow` is read as `prefer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl std::fmt::Display for SslMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        })
    }
}

impl SslMode {
    fn parse(word: &str) -> Option<SslMode> {
        Some(match word {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }
}

/// Settings every session of Nexus starts with, so that what the server
/// prints for it does not depend on the server's configuration: the
/// cache's rows are `row_to_json` as such a session prints them, whether
/// read back or made from a batch (nexus_pipeline's `row_json`). A writer
/// sets its load's `TimeZone` after them, for the values it has the
/// server read.
pub const PINNED_OUTPUT: &str = "-c TimeZone=UTC -c extra_float_digits=1 -c bytea_output=hex";

/// Adds session settings (`-c name=value …`) after those already given:
/// the later setting of a name wins.
pub fn add_options(config: &mut Config, ours: &str) {
    let options = match config.get_options() {
        Some(given) => format!("{given} {ours}"),
        None => ours.to_string(),
    };
    config.options(&options);
}

/// A database URL read: the driver's configuration and the TLS it asks for.
#[derive(Clone)]
pub struct Database {
    pub config: Config,
    pub tls: MakeRustlsConnect,
    pub mode: SslMode,
}

impl Database {
    /// Reads `url` (a `postgres://` URL or libpq's `key=value` words).
    /// A certificate file that cannot be read is not an error here (the
    /// driver's error type has no room for it) but the reason every TLS
    /// handshake of this database then fails with, without a retry.
    pub fn parse(url: &str) -> Result<Database, tokio_postgres::Error> {
        let (rest, words) = take_tls_words(url);
        // An sslmode no one knows stays in the URL, for the driver to
        // refuse with its own message.
        let (rest, mode) = match words.mode.as_deref().map(|m| (m, SslMode::parse(m))) {
            None => (rest, SslMode::Disable),
            Some((_, Some(mode))) => (rest, mode),
            Some((word, None)) => (add_word(&rest, "sslmode", word), SslMode::Disable),
        };
        let mut config: Config = rest.parse()?;
        add_options(&mut config, PINNED_OUTPUT);
        config.ssl_mode(match mode {
            SslMode::Disable => DriverMode::Disable,
            SslMode::Prefer => DriverMode::Prefer,
            _ => DriverMode::Require,
        });
        let tls = MakeRustlsConnect::new(client_config(mode, words.root_cert.as_deref()));
        Ok(Database { config, tls, mode })
    }

    /// Opens a connection and drives it on the runtime.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, conn) = self.config.connect(self.tls.clone()).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "postgres connection closed");
            }
        });
        Ok(client)
    }
}

/// Whether a connection failed because TLS refused the server (its
/// certificate, or a certificate file of ours): no retry changes that.
pub fn refused(e: &tokio_postgres::Error) -> bool {
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        if c.is::<rustls::Error>() {
            return true;
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
        {
            return true;
        }
        cause = c.source();
    }
    false
}

/// The TLS words of a URL.
#[derive(Debug, Default, PartialEq)]
struct TlsWords {
    mode: Option<String>,
    root_cert: Option<String>,
}

/// `url` without its `sslmode` and `sslrootcert`, and their values.
fn take_tls_words(url: &str) -> (String, TlsWords) {
    let mut words = TlsWords::default();
    let mut take = |key: &str, value: String| match key {
        "sslmode" => {
            words.mode = Some(value);
            true
        }
        "sslrootcert" => {
            words.root_cert = Some(value);
            true
        }
        _ => false,
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            None => url.to_string(),
            Some((base, query)) => {
                let kept: Vec<&str> = query
                    .split('&')
                    .filter(|pair| {
                        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                        let v = percent_encoding::percent_decode_str(v).decode_utf8_lossy();
                        !take(k, v.into_owned())
                    })
                    .collect();
                if kept.is_empty() {
                    base.to_string()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        url.split_ascii_whitespace()
            .filter(|word| {
                let (k, v) = word.split_once('=').unwrap_or((word, ""));
                !take(k, v.trim_matches('\'').to_string())
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    (rest, words)
}

/// `url` with `key=value` added back.
fn add_word(url: &str, key: &str, value: &str) -> String {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let join = if url.contains('?') { '&' } else { '?' };
        let value =
            percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC);
        format!("{url}{join}{key}={value}")
    } else {
        format!("{url} {key}={value}")
    }
}

/// The one crypto provider of every TLS connection (ring: it builds fast).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes [`provider`] the process's default as well, for the clients that
/// take theirs from there (object storage, `nexus load https://…`).
pub fn install_default() {
    // Already installed (a second call) is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The rustls configuration for a mode: `prefer` and `require` encrypt
/// without checking the server (unless a CA file is named: then, as with
/// libpq, `require` checks the chain like `verify-ca`); `verify-ca` checks
/// the chain up to the CA file; `verify-full` the chain and that the
/// certificate names the host connected to. The CA file defaults to
/// libpq's `~/.postgresql/root.crt`.
fn client_config(mode: SslMode, root_cert: Option<&str>) -> rustls::ClientConfig {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions");
    let mode = match (mode, root_cert) {
        (SslMode::Require, Some(_)) => SslMode::VerifyCa,
        (mode, _) => mode,
    };
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => {
            Arc::new(Judge::Unchecked(provider))
        }
        SslMode::VerifyCa | SslMode::VerifyFull => match roots(root_cert, &provider) {
            Ok(webpki) if mode == SslMode::VerifyFull => webpki,
            Ok(webpki) => Arc::new(Judge::ChainOnly(webpki)),
            Err(reason) => Arc::new(Judge::Refuse(reason, provider)),
        },
    };
    builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth()
}

/// A WebPKI verifier trusting the certificates of the CA file.
fn roots(
    root_cert: Option<&str>,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ServerCertVerifier>, String> {
    let path = match root_cert {
        Some(path) => std::path::PathBuf::from(path),
        None => std::env::home_dir()
            .unwrap_or_default()
            .join(".postgresql/root.crt"),
    };
    let shown = path.display();
    let mut store = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(&path).map_err(|e| {
        format!("sslrootcert {shown}: cannot read the CA certificates: {e} (verify-ca and verify-full need sslrootcert=<CA file>)")
    })?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("sslrootcert {shown}: not PEM certificates: {e}"))?;
        store
            .add(cert)
            .map_err(|e| format!("sslrootcert {shown}: a certificate rustls cannot use: {e}"))?;
    }
    if store.is_empty() {
        return Err(format!("sslrootcert {shown}: holds no certificate"));
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
        .build()
        .map(|v| v as Arc<dyn ServerCertVerifier>)
        .map_err(|e| format!("sslrootcert {shown}: {e}"))
}

/// How a server's certificate is judged, where rustls's WebPKI verifier
/// alone (`verify-full`) is not what the mode asks.
#[derive(Debug)]
enum Judge {
    /// `prefer`/`require`: encrypts, believes any certificate.
    Unchecked(Arc<CryptoProvider>),
    /// `verify-ca`: the chain up to the CA, whatever name the certificate
    /// has.
    ChainOnly(Arc<dyn ServerCertVerifier>),
    /// A CA file that cannot be used: every handshake fails with why.
    Refuse(String, Arc<CryptoProvider>),
}

impl ServerCertVerifier for Judge {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self {
            Judge::Unchecked(_) => Ok(ServerCertVerified::assertion()),
            Judge::ChainOnly(webpki) => {
                match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
                    Err(rustls::Error::InvalidCertificate(
                        CertificateError::NotValidForName
                        | CertificateError::NotValidForNameContext { .. },
                    )) => Ok(ServerCertVerified::assertion()),
                    other => other,
                }
            }
            Judge::Refuse(reason, _) => Err(rustls::Error::General(reason.clone())),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        match self {
            Judge::ChainOnly(webpki) => webpki.verify_tls12_signature(message, cert, dss),
            Judge::Unchecked(p) | Judge::Refuse(_, p) => {
                verify_tls12_signature(message, cert, dss, &p.signature_verification_algorithms)
            }
        }
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        match self {
            Judge::ChainOnly(webpki) => webpki.verify_tls13_signature(message, cert, dss),
            Judge::Unchecked(p) | Judge::Refuse(_, p) => {
                verify_tls13_signature(message, cert, dss, &p.signature_verification_algorithms)
            }
        }
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        match self {
            Judge::ChainOnly(webpki) => webpki.supported_verify_schemes(),
            Judge::Unchecked(p) | Judge::Refuse(_, p) => {
                p.signature_verification_algorithms.supported_schemes()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_words_are_taken_from_both_url_forms() {
        let (rest, words) = take_tls_words(
            "postgres://u@h:5/db?application_name=x&sslmode=verify-full&sslrootcert=%2Ftmp%2Fca%20b.pem",
        );
        assert_eq!(rest, "postgres://u@h:5/db?application_name=x");
        assert_eq!(
            words,
            TlsWords {
                mode: Some("verify-full".into()),
                root_cert: Some("/tmp/ca b.pem".into())
            }
        );
        let (rest, words) = take_tls_words("postgres://u@h/db?sslmode=require");
        assert_eq!(
            (rest.as_str(), words.mode.as_deref()),
            ("postgres://u@h/db", Some("require"))
        );
        let (rest, words) = take_tls_words("host=h user=u sslmode=verify-ca sslrootcert='/c.pem'");
        assert_eq!(rest, "host=h user=u");
        assert_eq!(words.root_cert.as_deref(), Some("/c.pem"));
    }

    #[test]
    fn modes_reach_the_driver_and_unknown_ones_are_refused_by_it() {
        let mode = |url: &str| Database::parse(url).map(|d| (d.mode, d.config.get_ssl_mode()));
        assert_eq!(
            mode("postgres://h/db").unwrap(),
            (SslMode::Disable, DriverMode::Disable)
        );
        assert_eq!(
            mode("postgres://h/db?sslmode=prefer").unwrap(),
            (SslMode::Prefer, DriverMode::Prefer)
        );
        assert_eq!(
            mode("host=h sslmode=verify-full").unwrap(),
            (SslMode::VerifyFull, DriverMode::Require)
        );
        let e = mode("postgres://h/db?sslmode=always").expect_err("refused");
        assert!(format!("{e:?}").contains("sslmode"), "{e:?}");
    }
}
