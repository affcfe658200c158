//! How the PostgreSQL store reaches its server: the URL's `sslmode`, as libpq reads it, over
//! rustls (docs/OPERATIONS.md, "PostgreSQL over TLS").
//!
//! | `sslmode` | TLS | the server's certificate |
//! |---|---|---|
//! | `verify-full` | required | chains to the CA file, and names the host connected to |
//! | `verify-ca` | required | chains to the CA file |
//! | `require` | required | not checked; with a CA file, as `verify-ca` (libpq does the same) |
//! | `prefer` (absent) | when the server offers it | not checked |
//! | `disable` | never | — |
//!
//! The CA file is the URL's `sslrootcert` or `[storage] postgres_ca_file`. `tokio-postgres`
//! parses neither `verify-ca`/`verify-full` nor `sslrootcert`, so both are taken out of the
//! URL here and the rest is handed to it. Every mode but the two `verify-…` ones leaves the
//! host able to pose as the database: the service says so at start. (What crosses the
//! connection is sealed already: TLS here protects the database's password and its
//! answers' integrity, and authenticates the server.)

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::StoreError;

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }
}

/// A connection's settings: the client's configuration and the TLS connector.
pub struct Connect {
    pub config: postgres::Config,
    pub tls: MakeRustlsConnect,
    /// What the connection does not protect against, for the start-up warning (none for
    /// the `verify-…` modes).
    pub weakness: Option<&'static str>,
}

fn invalid(detail: impl std::fmt::Display) -> StoreError {
    // Never the URL itself: it may hold a password.
    StoreError::Aborted(format!("TEE_RISK_DATABASE_URL is invalid: {detail}"))
}

/// Reads `url` (a `postgres://` URL or `key=value` pairs) and makes the connector its
/// `sslmode` asks for; `ca_file` is `[storage] postgres_ca_file`.
pub fn connect(url: &str, ca_file: Option<&Path>) -> Result<Connect, StoreError> {
    let (rest, mode, rootcert) = take_tls_options(url)?;
    let mut config: postgres::Config = rest.parse().map_err(invalid)?;
    let mode = mode.unwrap_or(SslMode::Prefer);
    let ca = rootcert.or_else(|| ca_file.map(Path::to_owned));
    config.ssl_mode(match mode {
        SslMode::Disable => postgres::config::SslMode::Disable,
        SslMode::Prefer => postgres::config::SslMode::Prefer,
        _ => postgres::config::SslMode::Require,
    });
    let roots = match &ca {
        Some(path) => Some(read_roots(path)?),
        None if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) => {
            return Err(invalid(
                "sslmode=verify-ca and verify-full need a CA file: the URL's sslrootcert or \
                 [storage] postgres_ca_file",
            ));
        }
        None => None,
    };
    // ring, not aws-lc-rs: no C toolchain beyond cc and no cmake to build, and a statically
    // linked, reproducible binary. rustls marks it deprecated for lacking post-quantum key
    // exchange, which PostgreSQL's servers (OpenSSL 3.0 in Debian 12) do not offer anyway.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(format!("TLS: {e}")))?;
    let (client, weakness) = match (mode, roots) {
        (SslMode::VerifyFull, Some(roots)) => (builder.with_root_certificates(roots), None),
        (_, Some(roots)) => {
            let chain = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| invalid(format!("CA file: {e}")))?;
            let weakness = match mode {
                SslMode::Disable => DISABLED,
                _ => {
                    "the server's certificate is checked against the CA file but not its name \
                     (sslmode=verify-ca, or require with a CA file): use sslmode=verify-full"
                }
            };
            (
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(ChainOnly(chain))),
                Some(weakness),
            )
        }
        (_, None) => {
            let verifier = Arc::new(Unauthenticated(provider));
            let weakness = match mode {
                SslMode::Disable => DISABLED,
                _ => {
                    "the server is not authenticated (sslmode=prefer or require without a CA \
                     file): the host can pose as the database; use sslmode=verify-full with \
                     [storage] postgres_ca_file"
                }
            };
            (
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(verifier),
                Some(weakness),
            )
        }
    };
    Ok(Connect {
        config,
        tls: MakeRustlsConnect::new(client.with_no_client_auth()),
        weakness,
    })
}

const DISABLED: &str = "the connection to PostgreSQL is not encrypted (sslmode=disable): the \
                        host reads its traffic and can pose as the database";

/// The URL without `sslmode` and `sslrootcert`, and their values.
fn take_tls_options(url: &str) -> Result<(String, Option<SslMode>, Option<PathBuf>), StoreError> {
    let mut mode = None;
    let mut rootcert = None;
    let mut take = |key: &str, value: String| -> Result<bool, StoreError> {
        match key {
            "sslmode" => {
                mode = Some(SslMode::parse(&value).ok_or_else(|| {
                    invalid(format!(
                        "sslmode `{value}` (disable, prefer, require, verify-ca, verify-full)"
                    ))
                })?);
                Ok(true)
            }
            "sslrootcert" => {
                rootcert = Some(PathBuf::from(value));
                Ok(true)
            }
            _ => Ok(false),
        }
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            None => url.to_owned(),
            Some((base, query)) => {
                let mut kept = Vec::new();
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                    if !take(key, percent_decode(value)?)? {
                        kept.push(pair);
                    }
                }
                match kept.is_empty() {
                    true => base.to_owned(),
                    false => format!("{base}?{}", kept.join("&")),
                }
            }
        }
    } else {
        // key=value pairs (values with spaces must be quoted; these two never need it).
        let mut kept = Vec::new();
        for pair in url.split_whitespace() {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if !take(key.trim(), value.trim_matches('\'').to_owned())? {
                kept.push(pair);
            }
        }
        kept.join(" ")
    };
    Ok((rest, mode, rootcert))
}

fn percent_decode(text: &str) -> Result<String, StoreError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| invalid("a bad %-escape in an ssl option"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| invalid("an ssl option is not UTF-8"))
}

/// The CA certificates in a PEM file.
fn read_roots(path: &Path) -> Result<RootCertStore, StoreError> {
    let bytes = std::fs::read(path).map_err(|e| {
        StoreError::Aborted(format!("cannot read the CA file {}: {e}", path.display()))
    })?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&bytes) {
        let cert = cert.map_err(|e| {
            StoreError::Aborted(format!("the CA file {} is not PEM: {e}", path.display()))
        })?;
        roots.add(cert).map_err(|e| {
            StoreError::Aborted(format!("a CA certificate in {}: {e}", path.display()))
        })?;
    }
    if roots.is_empty() {
        return Err(StoreError::Aborted(format!(
            "the CA file {} holds no certificate",
            path.display()
        )));
    }
    Ok(roots)
}

/// `verify-ca`: the chain and its dates as webpki checks them; the name is not compared.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer`/`require` without a CA file (libpq's meaning): encryption, no authentication of
/// the server. The handshake's signatures are still checked, against whatever key the
/// certificate holds.
#[derive(Debug)]
struct Unauthenticated(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unauthenticated {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tls_options_are_taken_out_of_both_url_forms() {
        let (rest, mode, root) = take_tls_options(
            "postgres://u:p@db.internal:5432/risk?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(
            rest,
            "postgres://u:p@db.internal:5432/risk?application_name=x"
        );
        assert_eq!(mode, Some(SslMode::VerifyFull));
        assert_eq!(root, Some(PathBuf::from("/etc/ca.pem")));

        let (rest, mode, root) =
            take_tls_options("host=db port=5432 sslmode=require user=u").unwrap();
        assert_eq!(rest, "host=db port=5432 user=u");
        assert_eq!((mode, root), (Some(SslMode::Require), None));

        let (rest, mode, _) = take_tls_options("postgres://u@db/risk").unwrap();
        assert_eq!((rest.as_str(), mode), ("postgres://u@db/risk", None));
        assert!(take_tls_options("postgres://db/x?sslmode=allow").is_err());
    }

    #[test]
    fn verify_modes_need_a_ca_file_and_only_they_are_silent() {
        let url = "postgres://u@127.0.0.1/x?sslmode=verify-full";
        assert!(matches!(connect(url, None), Err(StoreError::Aborted(_))));
        for (url, weak) in [
            ("postgres://u@127.0.0.1/x?sslmode=disable", true),
            ("postgres://u@127.0.0.1/x", true),
            ("postgres://u@127.0.0.1/x?sslmode=require", true),
        ] {
            assert_eq!(
                connect(url, None).unwrap().weakness.is_some(),
                weak,
                "{url}"
            );
        }
    }
}
