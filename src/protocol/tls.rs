//! TLS for the SSL and SASL_SSL listeners (rustls with the ring provider; TLS 1.2 and 1.3).
//!
//! [`Tls`] holds the server configuration built from `[tls]`. [`Tls::reload`] rebuilds it from
//! the files (SIGHUP, and [`Tls::watch`] when a file's modification time changes): connections
//! accepted afterwards get the new certificate, open ones keep their session. A reload that fails
//! (a half-written file, a key that does not match) keeps the old certificate and says so in the
//! log and on `/metrics`.
//!
//! The principal of a connection with a client certificate is `User:<subject>`, the subject as
//! Kafka's default `ssl.principal.mapping.rules` gives it: RFC 2253 (`CN=app,OU=eng,O=Example`,
//! most specific first).

use std::path::PathBuf;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, SystemTime};

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::{ClientAuth, TlsConfig};
use crate::metrics::{self, Counter};

/// How often [`Tls::watch`] looks at the files' modification times.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("[tls] {key} {path}: {source}")]
    File { key: &'static str, path: PathBuf, source: std::io::Error },
    #[error("[tls] {key} {path}: {reason}")]
    Pem { key: &'static str, path: PathBuf, reason: String },
    #[error("[tls] cert_file and key_file: {0}")]
    Config(#[from] rustls::Error),
    #[error("[tls] client_ca_file: {0}")]
    ClientCa(String),
    #[error("[tls] cert_file and key_file must both be set for a TLS listener")]
    Missing,
}

fn reloads(outcome: &'static str) -> &'static Counter {
    static C: OnceLock<[Arc<Counter>; 2]> = OnceLock::new();
    let c = C.get_or_init(|| {
        ["ok", "failed"].map(|o| {
            metrics::counter("sidestream_tls_reloads_total", "Reloads of the TLS certificate files, by outcome.", &[("outcome", o)])
        })
    });
    &c[usize::from(outcome != "ok")]
}

/// The TLS side of the agent's listeners: the current acceptor, and how to rebuild it.
pub struct Tls {
    config: TlsConfig,
    acceptor: RwLock<TlsAcceptor>,
}

impl Tls {
    /// Builds the first configuration; a missing or bad file is an error (start-up stops).
    pub fn new(config: &TlsConfig) -> Result<Arc<Self>, TlsError> {
        let acceptor = TlsAcceptor::from(Arc::new(server_config(config)?));
        Ok(Arc::new(Self { config: config.clone(), acceptor: RwLock::new(acceptor) }))
    }

    /// The acceptor for a new connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Rebuilds the configuration from the files; on failure the old one stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        match server_config(&self.config) {
            Ok(c) => {
                *self.acceptor.write().unwrap_or_else(|p| p.into_inner()) = TlsAcceptor::from(Arc::new(c));
                reloads("ok").inc();
                tracing::info!(cert_file = ?self.config.cert_file, "TLS certificate reloaded");
                Ok(())
            }
            Err(e) => {
                reloads("failed").inc();
                tracing::error!(error = %e, "TLS certificate not reloaded; the previous one stays in use");
                Err(e)
            }
        }
    }

    /// Reloads whenever a file's modification time changes, until `stop`.
    pub fn watch(self: Arc<Self>, stop: CancellationToken) {
        tokio::spawn(async move {
            let mut seen = self.mtimes();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(WATCH_INTERVAL) => {}
                    _ = stop.cancelled() => return,
                }
                let now = self.mtimes();
                if now != seen {
                    seen = now;
                    let _ = self.reload();
                }
            }
        });
    }

    fn mtimes(&self) -> Vec<Option<SystemTime>> {
        [&self.config.cert_file, &self.config.key_file, &self.config.client_ca_file]
            .into_iter()
            .map(|f| f.as_ref().and_then(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok()))
            .collect()
    }
}

fn read(key: &'static str, path: &PathBuf) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::File { key, path: path.clone(), source })
}

fn certificates(key: &'static str, path: &PathBuf) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>().map_err(|e| TlsError::Pem {
        key,
        path: path.clone(),
        reason: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(TlsError::Pem { key, path: path.clone(), reason: "no PEM certificate in the file".into() });
    }
    Ok(certs)
}

/// The rustls server configuration `[tls]` describes.
pub fn server_config(config: &TlsConfig) -> Result<ServerConfig, TlsError> {
    let (Some(cert_file), Some(key_file)) = (&config.cert_file, &config.key_file) else {
        return Err(TlsError::Missing);
    };
    let chain = certificates("cert_file", cert_file)?;
    let key_pem = read("key_file", key_file)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
        key: "key_file",
        path: key_file.clone(),
        reason: format!("no private key: {e}"),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match (&config.client_ca_file, config.client_auth) {
        (Some(ca_file), auth) if auth != ClientAuth::None => {
            let mut roots = RootCertStore::empty();
            for cert in certificates("client_ca_file", ca_file)? {
                roots.add(cert).map_err(|e| TlsError::ClientCa(e.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if auth == ClientAuth::Requested { verifier.allow_unauthenticated() } else { verifier };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| TlsError::ClientCa(e.to_string()))?)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut server = builder.with_single_cert(chain, key)?;
    // Kafka clients speak no ALPN; leave it empty.
    server.alpn_protocols.clear();
    Ok(server)
}

/// The subject of a DER certificate in RFC 2253 form (`CN=app,O=Example,C=US`), as Java's
/// `X500Principal.getName()` writes it; `None` if the certificate does not parse.
pub fn subject_name(cert: &[u8]) -> Option<String> {
    // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version?, serial, signature,
    // issuer, validity, subject, ... }, ... }
    let (_, cert_body, _) = der(cert)?;
    let (_, mut tbs, _) = der(cert_body)?;
    let mut skipped = 0;
    let mut first = true;
    loop {
        let (tag, body, rest) = der(tbs)?;
        tbs = rest;
        if first && tag == 0xa0 {
            first = false;
            continue; // the explicit version
        }
        first = false;
        skipped += 1;
        if skipped < 5 {
            continue; // serial, signature algorithm, issuer, validity
        }
        return rdn_sequence(body);
    }
}

/// Reads one DER element: (tag, contents, what follows).
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        (rest[..n].iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b)), &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

fn rdn_sequence(mut body: &[u8]) -> Option<String> {
    let mut rdns = Vec::new();
    while !body.is_empty() {
        let (_, set, rest) = der(body)?;
        body = rest;
        let mut attrs = Vec::new();
        let mut set = set;
        while !set.is_empty() {
            let (_, atv, rest) = der(set)?;
            set = rest;
            let (_, oid, value_der) = der(atv)?;
            let (value_tag, value, _) = der(value_der)?;
            let text = match value_tag {
                // UTF8String, PrintableString, IA5String, TeletexString (as Latin-1), BMPString
                0x0c | 0x13 | 0x16 => String::from_utf8_lossy(value).into_owned(),
                0x14 => value.iter().map(|b| char::from(*b)).collect(),
                0x1e => String::from_utf16_lossy(
                    &value.chunks(2).map(|c| u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])).collect::<Vec<_>>(),
                ),
                _ => {
                    let hex: String = value_der.iter().map(|b| format!("{b:02x}")).collect();
                    attrs.push(format!("{}=#{hex}", oid_name(oid)));
                    continue;
                }
            };
            attrs.push(format!("{}={}", oid_name(oid), escape(&text)));
        }
        rdns.push(attrs.join("+"));
    }
    rdns.reverse();
    Some(rdns.join(","))
}

/// The keyword RFC 2253 (and Java) uses for an attribute, else its dotted OID.
fn oid_name(oid: &[u8]) -> String {
    match oid {
        [0x55, 0x04, 0x03] => "CN".into(),
        [0x55, 0x04, 0x06] => "C".into(),
        [0x55, 0x04, 0x07] => "L".into(),
        [0x55, 0x04, 0x08] => "ST".into(),
        [0x55, 0x04, 0x09] => "STREET".into(),
        [0x55, 0x04, 0x0a] => "O".into(),
        [0x55, 0x04, 0x0b] => "OU".into(),
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19] => "DC".into(),
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01] => "UID".into(),
        _ => dotted(oid),
    }
}

fn dotted(oid: &[u8]) -> String {
    let mut parts = Vec::new();
    let mut value: u64 = 0;
    for (i, b) in oid.iter().enumerate() {
        value = (value << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if parts.is_empty() && i < oid.len() {
                let first = (value / 40).min(2);
                parts.push(first);
                parts.push(value - first * 40);
            } else {
                parts.push(value);
            }
            value = 0;
        }
    }
    parts.iter().map(u64::to_string).collect::<Vec<_>>().join(".")
}

/// RFC 2253 escaping of an attribute value.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i + 1 == v.chars().count() && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj
    /// "/C=US/O=Example, Inc./OU=eng/CN=app"`, as DER.
    fn test_cert() -> Vec<u8> {
        let pem = include_str!("testdata/subject.pem");
        CertificateDer::pem_slice_iter(pem.as_bytes()).next().unwrap().unwrap().to_vec()
    }

    #[test]
    fn subjects_are_written_as_java_writes_them() {
        assert_eq!(subject_name(&test_cert()).unwrap(), "CN=app,OU=eng,O=Example\\, Inc.,C=US");
    }

    #[test]
    fn bad_der_gives_none_not_a_panic() {
        let cert = test_cert();
        for cut in 0..cert.len() {
            let _ = subject_name(&cert[..cut]);
        }
        assert_eq!(subject_name(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
    }

    #[test]
    fn escaping_and_oids() {
        assert_eq!(escape(" a,b "), "\\ a\\,b\\ ");
        assert_eq!(dotted(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01]), "1.2.840.113549.1.9.1");
    }
}
