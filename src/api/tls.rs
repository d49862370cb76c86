//! TLS of the link between agents and controller replicas: the PEM files that
//! `[controller] tls_cert_file`, `tls_key_file` and `tls_ca_file` name, read and checked once at
//! start-up ([`TlsFiles::load`]), and tonic's server and client settings made from them.
//!
//! - **Controller** ([`TlsFiles::server`]): the certificate chain and key are its identity; a CA
//!   makes it require client certificates signed by that CA (mTLS).
//! - **Agent** ([`TlsFiles::client`]): the CA verifies the controller's certificate (a CA makes
//!   the agent dial `https`); the certificate chain and key, if set, are its client certificate.
//!   The name verified is the host part of the address dialled ([`endpoint_uri`]): a configured
//!   address or the one a standby names, so certificates carry each replica's DNS name or IP.
//! - **Failures** ([`handshake_failure`]): a failed handshake is found in a call's error chain
//!   and named (unknown issuer, wrong name, certificate required...), so the agent can say why.
//!
//! Both sides use this file; it imports nothing of the project. Must not touch: the calls and
//! their wire ([`super::rpc`]), or who dials whom.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// How long a TLS handshake may take on either side.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of one PEM file at most (a chain of a few certificates is a few KiB).
const PEM_FILE_BYTES_MAX: u64 = 1 << 20;

/// A PEM file that cannot serve: the key that names it, the file and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {reason}", file.display())]
pub struct PemError {
    /// The key of `[controller]`, e.g. `tls_cert_file`.
    pub key: &'static str,
    pub file: PathBuf,
    pub reason: String,
}

/// The link's TLS material, read from the files (settings as data: nothing is read later).
#[derive(Clone, Default)]
pub struct TlsFiles {
    /// PEM certificate chain and private key: a controller's identity, an agent's client
    /// certificate.
    identity: Option<(Vec<u8>, Vec<u8>)>,
    /// PEM CA certificates: an agent verifies controllers with them, a controller its clients.
    ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("TlsFiles").field("identity", &self.identity.is_some()).field("ca", &self.ca.is_some()).finish()
    }
}

impl TlsFiles {
    /// Reads and checks the files that are set: each holds what its key says (PEM certificates,
    /// one PEM private key), the certificates parse, and the key is the certificate's.
    /// A certificate without its key (or a key without its certificate) is refused.
    pub fn load(cert: Option<&Path>, key: Option<&Path>, ca: Option<&Path>) -> Result<TlsFiles, PemError> {
        let identity = match (cert, key) {
            (None, None) => None,
            (Some(cert), None) => {
                return Err(bad("tls_cert_file", cert, "set tls_key_file too (the certificate's private key)".into()));
            }
            (None, Some(key)) => {
                return Err(bad("tls_key_file", key, "set tls_cert_file too (the key's certificate chain)".into()));
            }
            (Some(cert_path), Some(key_path)) => {
                let (cert_pem, chain) = read_certificates("tls_cert_file", cert_path)?;
                let key_pem = read_file("tls_key_file", key_path)?;
                let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
                    let reason = match e {
                        pem::Error::NoItemsFound => {
                            "holds no PEM private key (BEGIN PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)".into()
                        }
                        e => format!("is not a valid PEM private key: {e}"),
                    };
                    bad("tls_key_file", key_path, reason)
                })?;
                let provider = rustls::crypto::ring::default_provider();
                rustls::sign::CertifiedKey::from_der(chain, key, &provider).map_err(|e| {
                    bad("tls_key_file", key_path, format!("cannot serve with the certificate of {}: {e}", cert_path.display()))
                })?;
                Some((cert_pem, key_pem))
            }
        };
        let ca = match ca {
            None => None,
            Some(path) => {
                let (pem, certs) = read_certificates("tls_ca_file", path)?;
                let mut roots = rustls::RootCertStore::empty();
                for (i, c) in certs.into_iter().enumerate() {
                    roots.add(c).map_err(|e| bad("tls_ca_file", path, format!("certificate {} is not a CA certificate: {e}", i + 1)))?;
                }
                Some(pem)
            }
        };
        Ok(TlsFiles { identity, ca })
    }

    pub fn has_identity(&self) -> bool {
        self.identity.is_some()
    }

    pub fn has_ca(&self) -> bool {
        self.ca.is_some()
    }

    /// The controller's TLS: None without an identity (plaintext). With a CA, clients must
    /// present a certificate it signed.
    pub fn server(&self) -> Option<ServerTlsConfig> {
        let (cert, key) = self.identity.as_ref()?;
        let config = ServerTlsConfig::new().identity(Identity::from_pem(cert, key)).timeout(HANDSHAKE_TIMEOUT);
        Some(match &self.ca {
            Some(ca) => config.client_ca_root(Certificate::from_pem(ca)),
            None => config,
        })
    }

    /// An agent's TLS: None without a CA (plaintext). The identity, if any, is the client
    /// certificate.
    pub fn client(&self) -> Option<ClientTlsConfig> {
        let ca = self.ca.as_ref()?;
        let config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).timeout(HANDSHAKE_TIMEOUT);
        Some(match &self.identity {
            Some((cert, key)) => config.identity(Identity::from_pem(cert, key)),
            None => config,
        })
    }
}

/// The URI an agent dials for `host:port`: `https` with TLS, else `http`. (tonic dials an
/// `http` URI in plaintext even when given a TLS config: the scheme is what decides.) The
/// certificate is verified for the URI's host.
pub fn endpoint_uri(addr: &str, tls: bool) -> String {
    format!("{}://{addr}", if tls { "https" } else { "http" })
}

/// Whether `host` (of a `host:port` address) can be verified in a certificate: a DNS name or
/// an IP address.
pub fn check_server_name(host: &str) -> Result<(), String> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    rustls::pki_types::ServerName::try_from(host)
        .map(|_| ())
        .map_err(|e| format!("{host:?} cannot be verified in a certificate: {e}"))
}

/// The TLS failure behind a failed call over TLS, if that is what it was (e.g. "invalid peer
/// certificate: UnknownIssuer", "received fatal alert: CertificateRequired").
pub fn handshake_failure(status: &tonic::Status) -> Option<String> {
    let mut next = std::error::Error::source(status);
    while let Some(e) = next {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(r.to_string());
        }
        // rustls reports through I/O errors of kind InvalidData: carrying its error while the
        // handshake runs (`source()` skips it, `get_ref()` does not), only its text once HTTP/2
        // has passed it on (an alert the controller sent after the handshake, e.g. for a
        // missing client certificate). Plain TCP and HTTP/2 make no such error.
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::InvalidData
        {
            return Some(io.get_ref().map_or_else(|| io.to_string(), |inner| inner.to_string()));
        }
        next = e.source();
    }
    None
}

fn bad(key: &'static str, file: &Path, reason: String) -> PemError {
    PemError { key, file: file.to_path_buf(), reason }
}

fn read_file(key: &'static str, path: &Path) -> Result<Vec<u8>, PemError> {
    let size = std::fs::metadata(path).map_err(|e| bad(key, path, format!("cannot read it: {e}")))?.len();
    if size > PEM_FILE_BYTES_MAX {
        return Err(bad(key, path, format!("{size} bytes is too large for a PEM file (at most {PEM_FILE_BYTES_MAX})")));
    }
    std::fs::read(path).map_err(|e| bad(key, path, format!("cannot read it: {e}")))
}

/// The file's text and the certificates in it (at least one).
fn read_certificates(key: &'static str, path: &Path) -> Result<(Vec<u8>, Vec<CertificateDer<'static>>), PemError> {
    let pem = read_file(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(key, path, format!("is not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad(key, path, "holds no PEM certificate (BEGIN CERTIFICATE)".into()));
    }
    for (i, c) in certs.iter().enumerate() {
        rustls::server::ParsedCertificate::try_from(c).map_err(|e| bad(key, path, format!("certificate {} does not parse: {e}", i + 1)))?;
    }
    Ok((pem, certs))
}

/// Test certificates, for the tests of both sides.
#[cfg(test)]
pub mod testing {
    use std::path::Path;

    /// The PEM files of a test CA, a server certificate for IP 127.0.0.1 and a client
    /// certificate, made with `openssl` (None where it is not installed).
    pub fn openssl_files(dir: &Path) -> Option<()> {
        let run =
            |args: &[&str]| std::process::Command::new("openssl").args(args).current_dir(dir).output().is_ok_and(|o| o.status.success());
        let ext = dir.join("ext.cnf");
        std::fs::write(&ext, "[srv]\nsubjectAltName=IP:127.0.0.1\n[cli]\nextendedKeyUsage=clientAuth\n").ok()?;
        let ec = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
        let sign = |name: &str, ext: &str| {
            format!(
                "x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out {name}.pem -days 2 -extfile ext.cnf -extensions {ext}"
            )
        };
        let steps = [
            format!("req -x509 {ec} -keyout ca.key -out ca.pem -days 2 -subj /CN=test-ca"),
            format!("req {ec} -keyout server.key -out server.csr -subj /CN=controller"),
            sign("server", "srv"),
            format!("req {ec} -keyout client.key -out client.csr -subj /CN=agent"),
            sign("client", "cli"),
        ];
        steps.iter().all(|s| run(&s.split_whitespace().collect::<Vec<_>>())).then_some(())
    }
}

#[cfg(test)]
mod tests {
    use super::testing::openssl_files;
    use super::*;

    #[test]
    fn files_are_checked_and_errors_name_the_key_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        if openssl_files(d).is_none() {
            eprintln!("openssl not available: skipped");
            return;
        }
        let p = |name: &str| d.join(name);
        let files = TlsFiles::load(Some(&p("server.pem")), Some(&p("server.key")), Some(&p("ca.pem"))).unwrap();
        assert!(files.server().is_some() && files.client().is_some());
        assert!(!format!("{files:?}").contains("PRIVATE"), "the key is never printed");
        let agent = TlsFiles::load(None, None, Some(&p("ca.pem"))).unwrap();
        assert!(agent.server().is_none() && agent.client().is_some());

        let e = TlsFiles::load(Some(&p("missing.pem")), Some(&p("server.key")), None).unwrap_err();
        assert_eq!((e.key, e.file.clone()), ("tls_cert_file", p("missing.pem")));
        assert!(e.reason.contains("cannot read"), "{e}");
        let e = TlsFiles::load(Some(&p("server.pem")), None, None).unwrap_err();
        assert!(e.key == "tls_cert_file" && e.reason.contains("tls_key_file"), "{e}");
        // A key where a certificate belongs, and the other way round.
        let e = TlsFiles::load(Some(&p("server.key")), Some(&p("server.key")), None).unwrap_err();
        assert!(e.key == "tls_cert_file" && e.reason.contains("no PEM certificate"), "{e}");
        let e = TlsFiles::load(Some(&p("server.pem")), Some(&p("server.pem")), None).unwrap_err();
        assert!(e.key == "tls_key_file" && e.reason.contains("no PEM private key"), "{e}");
        // Another certificate's key.
        let e = TlsFiles::load(Some(&p("server.pem")), Some(&p("client.key")), None).unwrap_err();
        assert!(e.key == "tls_key_file" && e.reason.contains("server.pem"), "{e}");
        // Garbage inside the PEM armour.
        std::fs::write(p("bad.pem"), "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n").unwrap();
        let e = TlsFiles::load(None, None, Some(&p("bad.pem"))).unwrap_err();
        assert!(e.key == "tls_ca_file" && e.reason.contains("does not parse"), "{e}");
        std::fs::write(p("empty.pem"), "").unwrap();
        let e = TlsFiles::load(None, None, Some(&p("empty.pem"))).unwrap_err();
        assert!(e.reason.contains("no PEM certificate"), "{e}");
    }

    #[test]
    fn the_scheme_follows_tls_and_hosts_must_be_names_or_ips() {
        assert_eq!(endpoint_uri("127.0.0.1:9093", true), "https://127.0.0.1:9093");
        assert_eq!(endpoint_uri("ctl.example:9093", false), "http://ctl.example:9093");
        for ok in ["127.0.0.1", "[::1]", "controller-1.example"] {
            check_server_name(ok).unwrap();
        }
        assert!(check_server_name("bad host").is_err());
    }
}
