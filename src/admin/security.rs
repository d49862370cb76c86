//! The CLI's side of a secured listener: `--command-config FILE`, the same client properties
//! file Kafka's own tools take (`kafka-topics.sh --command-config`), read for
//! `security.protocol`, TLS (`ssl.*`) and SASL (`sasl.*`), and the client half of TLS
//! (rustls, ring) and of SASL PLAIN and SCRAM-SHA-256/512 (RFC 5802, RFC 7677).
//!
//! Both spellings are understood, so one file serves the Java tools and librdkafka clients:
//! the CA as `ssl.ca.location` or `ssl.truststore.location` with `ssl.truststore.type=PEM`;
//! a client certificate as `ssl.certificate.location` + `ssl.key.location` or a PEM
//! `ssl.keystore.location` holding both; the user as `sasl.username` / `sasl.password` or in
//! `sasl.jaas.config` (`username="..." password="..."`). Stores in JKS or PKCS12, GSSAPI and
//! OAUTHBEARER are refused with a message saying so.
//!
//! Must not touch: server internals; it shares only SCRAM's arithmetic ([`crate::api::scram`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::rand::{SecureRandom, SystemRandom};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::AdminError;
use crate::api::scram::{ITERATIONS_MAX, ITERATIONS_MIN, ScramMechanism, constant_time_eq};

/// Largest properties file or PEM file read.
const FILE_BYTES_MAX: u64 = 1 << 20;

/// A connection's byte stream, plain or TLS.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// The SASL mechanisms the CLI speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Scram(ScramMechanism),
}

impl Mechanism {
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Scram(m) => m.name(),
        }
    }
}

/// A SASL login: mechanism, user, password.
#[derive(Clone)]
pub struct Login {
    pub mechanism: Mechanism,
    pub user: String,
    password: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login").field("mechanism", &self.mechanism).field("user", &self.user).finish_non_exhaustive()
    }
}

/// How the CLI secures its connections: TLS when `tls` is set, SASL when `login` is.
#[derive(Debug, Clone, Default)]
pub struct Security {
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub login: Option<Login>,
}

impl Security {
    /// Reads a client properties file (`--command-config`).
    pub fn from_file(path: &Path) -> Result<Security, AdminError> {
        let text = read_file(path, "--command-config")?;
        let text = String::from_utf8(text).map_err(|_| bad(path, "not UTF-8 text"))?;
        Security::from_properties(path, &parse_properties(&text))
    }

    fn from_properties(path: &Path, props: &BTreeMap<String, String>) -> Result<Security, AdminError> {
        let get = |k: &str| props.get(k).map(String::as_str).filter(|v| !v.is_empty());
        let protocol = get("security.protocol").unwrap_or("PLAINTEXT").to_ascii_uppercase();
        let (tls, sasl) = match protocol.as_str() {
            "PLAINTEXT" => (false, false),
            "SSL" => (true, false),
            "SASL_PLAINTEXT" => (false, true),
            "SASL_SSL" => (true, true),
            other => {
                return Err(bad(path, &format!("security.protocol={other}: expected PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")));
            }
        };
        let tls = if tls { Some(Arc::new(tls_config(path, &get)?)) } else { None };
        let login = if sasl { Some(login(path, &get)?) } else { None };
        Ok(Security { tls, login })
    }

    /// Opens the TLS session (when set) over `tcp`, checking the broker's certificate for the
    /// host of `addr`.
    pub async fn wrap(&self, addr: &str, tcp: TcpStream) -> Result<Box<dyn Stream>, AdminError> {
        let Some(config) = &self.tls else { return Ok(Box::new(tcp)) };
        let host = host_of(addr);
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| AdminError::Connect { addr: addr.to_string(), reason: format!("'{host}' is not a host name for TLS") })?;
        let tls = TlsConnector::from(config.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| AdminError::Connect { addr: addr.to_string(), reason: format!("TLS handshake failed: {e}") })?;
        Ok(Box::new(tls))
    }
}

/// `host` of `host:port` or `[v6]:port`.
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

fn bad(path: &Path, why: &str) -> AdminError {
    AdminError::Invalid(format!("--command-config {}: {why}", path.display()))
}

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>, AdminError> {
    let meta = std::fs::metadata(path).map_err(|e| AdminError::Invalid(format!("{what} {}: {e}", path.display())))?;
    if meta.len() > FILE_BYTES_MAX {
        return Err(AdminError::Invalid(format!("{what} {}: larger than {FILE_BYTES_MAX} bytes", path.display())));
    }
    std::fs::read(path).map_err(|e| AdminError::Invalid(format!("{what} {}: {e}", path.display())))
}

/// Java properties as Kafka's tools write them: `key=value` or `key: value`, `#` and `!`
/// comments, blanks around keys and values trimmed, a trailing `\` joining the next line.
pub fn parse_properties(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut pending = String::new();
    for line in text.lines() {
        let line = line.trim_start();
        if pending.is_empty() && (line.is_empty() || line.starts_with('#') || line.starts_with('!')) {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            pending.push_str(head);
            continue;
        }
        pending.push_str(line);
        let entry = std::mem::take(&mut pending);
        let split = entry.find(['=', ':']).unwrap_or(entry.len());
        let (key, value) = entry.split_at(split);
        let value = value.get(1..).unwrap_or("");
        out.insert(key.trim().to_string(), value.trim().to_string());
    }
    out
}

fn tls_config<'a>(path: &Path, get: &impl Fn(&str) -> Option<&'a str>) -> Result<rustls::ClientConfig, AdminError> {
    let pem_only = |key: &str| match get(key) {
        Some(t) if !t.eq_ignore_ascii_case("PEM") => {
            Err(bad(path, &format!("{key}={t}: only PEM files are read (convert with keytool or openssl)")))
        }
        _ => Ok(()),
    };
    pem_only("ssl.truststore.type")?;
    pem_only("ssl.keystore.type")?;
    let ca = get("ssl.ca.location").or_else(|| get("ssl.truststore.location")).ok_or_else(|| {
        bad(
            path,
            "TLS needs the CA of the brokers' certificates: ssl.ca.location (or ssl.truststore.location with ssl.truststore.type=PEM)",
        )
    })?;
    let mut roots = RootCertStore::empty();
    for cert in certificates(ca)? {
        roots.add(cert).map_err(|e| AdminError::Invalid(format!("{ca}: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| AdminError::Invalid(format!("TLS: {e}")))?
        .with_root_certificates(roots);
    let (cert, key) = match (get("ssl.certificate.location"), get("ssl.key.location"), get("ssl.keystore.location")) {
        (Some(c), Some(k), _) => (Some(c), Some(k)),
        (None, None, Some(both)) => (Some(both), Some(both)),
        (None, None, None) => (None, None),
        _ => return Err(bad(path, "a client certificate needs both ssl.certificate.location and ssl.key.location")),
    };
    match (cert, key) {
        (Some(cert), Some(key)) => {
            let chain = certificates(cert)?;
            let pem = read_file(Path::new(key), "ssl.key.location")?;
            let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| AdminError::Invalid(format!("{key}: no private key: {e}")))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| AdminError::Invalid(format!("client certificate: {e}")))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

fn certificates(file: &str) -> Result<Vec<CertificateDer<'static>>, AdminError> {
    let pem = read_file(&PathBuf::from(file), "certificate file")?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| AdminError::Invalid(format!("{file}: {e}")))?;
    if certs.is_empty() {
        return Err(AdminError::Invalid(format!("{file}: no PEM certificate in it")));
    }
    Ok(certs)
}

fn login<'a>(path: &Path, get: &impl Fn(&str) -> Option<&'a str>) -> Result<Login, AdminError> {
    let name = get("sasl.mechanism").unwrap_or("GSSAPI").to_ascii_uppercase();
    let mechanism = match name.as_str() {
        "PLAIN" => Mechanism::Plain,
        other => match ScramMechanism::from_name(other) {
            Some(m) => Mechanism::Scram(m),
            None => return Err(bad(path, &format!("sasl.mechanism={other}: the CLI speaks PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512"))),
        },
    };
    let jaas = get("sasl.jaas.config").map(jaas_options).unwrap_or_default();
    let user = get("sasl.username").map(str::to_string).or_else(|| jaas.get("username").cloned());
    let password = get("sasl.password").map(str::to_string).or_else(|| jaas.get("password").cloned());
    match (user, password) {
        (Some(user), Some(password)) => Ok(Login { mechanism, user, password }),
        _ => Err(bad(path, "SASL needs a user and a password: sasl.username and sasl.password, or sasl.jaas.config")),
    }
}

/// The `key="value"` options of a JAAS line (`... required username="alice" password="...";`).
fn jaas_options(line: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = line;
    while let Some(eq) = rest.find("=\"") {
        let key = rest[..eq].rsplit(|c: char| c.is_whitespace()).next().unwrap_or("").to_string();
        let after = &rest[eq + 2..];
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(n);
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(key, value);
        rest = &after[end.min(after.len())..];
    }
    out
}

/// A SASL exchange, one token at a time: the first token, then an answer to each challenge
/// until the server's last message is checked.
pub struct Exchange {
    login: Login,
    state: ExchangeState,
}

enum ExchangeState {
    Start,
    /// SCRAM with `m`: client-first sent.
    ScramFirst {
        m: ScramMechanism,
        nonce: String,
        bare: String,
    },
    /// SCRAM: client-final sent; the server's signature is expected.
    ScramFinal {
        server_signature: Vec<u8>,
    },
    Done,
}

/// What to send next.
#[derive(Debug, PartialEq, Eq)]
pub enum Token {
    Send(Vec<u8>),
    /// Authenticated; nothing more to send.
    Done,
}

impl Exchange {
    pub fn new(login: Login) -> Exchange {
        Exchange { login, state: ExchangeState::Start }
    }

    /// The next token, given the server's last one (empty at the start).
    pub fn step(&mut self, server: &[u8]) -> Result<Token, String> {
        match std::mem::replace(&mut self.state, ExchangeState::Done) {
            ExchangeState::Start => match self.login.mechanism {
                Mechanism::Plain => Ok(Token::Send(format!("\0{}\0{}", self.login.user, self.login.password).into_bytes())),
                Mechanism::Scram(m) => {
                    let nonce = client_nonce()?;
                    let bare = format!("n={},r={nonce}", sasl_name(&self.login.user));
                    let first = format!("n,,{bare}").into_bytes();
                    self.state = ExchangeState::ScramFirst { m, nonce, bare };
                    Ok(Token::Send(first))
                }
            },
            ExchangeState::ScramFirst { m, nonce, bare } => {
                let (final_message, server_signature) = scram_final(m, &self.login.password, &nonce, &bare, server)?;
                self.state = ExchangeState::ScramFinal { server_signature };
                Ok(Token::Send(final_message))
            }
            ExchangeState::ScramFinal { server_signature } => {
                let text = std::str::from_utf8(server).map_err(|_| "the server's final message is not UTF-8".to_string())?;
                if let Some(e) = text.strip_prefix("e=") {
                    return Err(format!("the server refused: {e}"));
                }
                let v = text.strip_prefix("v=").ok_or("the server's final message has no signature")?;
                let got = B64.decode(v.split(',').next().unwrap_or("")).map_err(|_| "a bad server signature".to_string())?;
                if !constant_time_eq(&got, &server_signature) {
                    return Err("the server's signature does not match: it does not know this user's credential".into());
                }
                Ok(Token::Done)
            }
            ExchangeState::Done => Ok(Token::Done),
        }
    }

    /// Whether the exchange waits for no more server tokens (PLAIN: after the first).
    pub fn finished_after_send(&self) -> bool {
        matches!(self.state, ExchangeState::Done) && self.login.mechanism == Mechanism::Plain
    }
}

/// `saslname` of RFC 5802: ',' and '=' escaped.
fn sasl_name(user: &str) -> String {
    user.replace('=', "=3D").replace(',', "=2C")
}

fn client_nonce() -> Result<String, String> {
    let mut bytes = [0u8; 24];
    SystemRandom::new().fill(&mut bytes).map_err(|_| "no random bytes for the SCRAM nonce".to_string())?;
    Ok(B64.encode(bytes))
}

/// The client-final message for `server_first`, and the server signature to expect.
fn scram_final(m: ScramMechanism, password: &str, nonce: &str, bare: &str, server_first: &[u8]) -> Result<(Vec<u8>, Vec<u8>), String> {
    let text = std::str::from_utf8(server_first).map_err(|_| "the server's first message is not UTF-8".to_string())?;
    let (mut r, mut s, mut i) = (None, None, None);
    for part in text.split(',') {
        match part.split_at_checked(2) {
            Some(("r=", v)) => r = Some(v),
            Some(("s=", v)) => s = Some(v),
            Some(("i=", v)) => i = Some(v),
            _ => {}
        }
    }
    let (Some(r), Some(s), Some(i)) = (r, s, i) else { return Err(format!("a bad SCRAM server-first message: {text}")) };
    if !r.starts_with(nonce) || r.len() == nonce.len() {
        return Err("the server's nonce does not extend the client's".into());
    }
    let salt = B64.decode(s).map_err(|_| "a bad salt in the server's first message".to_string())?;
    let iterations: u32 = i.parse().map_err(|_| format!("a bad iteration count {i}"))?;
    if !(ITERATIONS_MIN..=ITERATIONS_MAX).contains(&iterations) {
        return Err(format!("iteration count {iterations} outside {ITERATIONS_MIN}..={ITERATIONS_MAX}"));
    }
    let salted = m.salted_password(password.as_bytes(), &salt, iterations);
    let client_key = m.hmac(&salted, b"Client Key");
    let stored_key = m.hash(&client_key);
    let without_proof = format!("c={},r={r}", B64.encode("n,,"));
    let auth_message = format!("{bare},{text},{without_proof}");
    let signature = m.hmac(&stored_key, auth_message.as_bytes());
    let proof: Vec<u8> = client_key.iter().zip(&signature).map(|(a, b)| a ^ b).collect();
    let server_key = m.hmac(&salted, b"Server Key");
    let server_signature = m.hmac(&server_key, auth_message.as_bytes());
    Ok((format!("{without_proof},p={}", B64.encode(proof)).into_bytes(), server_signature))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::scram::ScramCredential;

    #[test]
    fn properties_files_as_kafka_tools_write_them() {
        let p = parse_properties(
            "# comment\n! also\nsecurity.protocol = SASL_SSL\nsasl.mechanism:SCRAM-SHA-512\n\
             sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required \\\n  \
             username=\"alice\" password=\"a \\\"b\\\" c\";\n",
        );
        assert_eq!(p["security.protocol"], "SASL_SSL");
        assert_eq!(p["sasl.mechanism"], "SCRAM-SHA-512");
        let jaas = jaas_options(&p["sasl.jaas.config"]);
        assert_eq!((jaas["username"].as_str(), jaas["password"].as_str()), ("alice", "a \"b\" c"));
    }

    #[test]
    fn settings_name_what_is_missing() {
        let path = Path::new("client.properties");
        let props = |text: &str| parse_properties(text);
        let err = Security::from_properties(path, &props("security.protocol=SASL_PLAINTEXT\nsasl.mechanism=GSSAPI\n")).unwrap_err();
        assert!(err.to_string().contains("PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512"), "{err}");
        let err = Security::from_properties(path, &props("security.protocol=SASL_PLAINTEXT\nsasl.mechanism=PLAIN\n")).unwrap_err();
        assert!(err.to_string().contains("needs a user and a password"), "{err}");
        let err = Security::from_properties(path, &props("security.protocol=SSL\n")).unwrap_err();
        assert!(err.to_string().contains("ssl.ca.location"), "{err}");
        let err = Security::from_properties(path, &props("security.protocol=SSL\nssl.truststore.type=JKS\n")).unwrap_err();
        assert!(err.to_string().contains("only PEM"), "{err}");
        let s = Security::from_properties(
            path,
            &props("security.protocol=SASL_PLAINTEXT\nsasl.mechanism=PLAIN\nsasl.username=u\nsasl.password=p\n"),
        )
        .unwrap();
        assert!(s.tls.is_none() && s.login.as_ref().unwrap().user == "u");
        assert!(!format!("{:?}", s.login).contains("\"p\""), "the password stays out of Debug");
    }

    #[test]
    fn hosts_of_addresses() {
        assert_eq!(host_of("localhost:9092"), "localhost");
        assert_eq!(host_of("127.0.0.1:9094"), "127.0.0.1");
        assert_eq!(host_of("[::1]:9094"), "::1");
    }

    /// A full SCRAM exchange against the server's own check ([`ScramCredential`]'s keys),
    /// both mechanisms, and a server signature that does not match.
    #[test]
    fn scram_exchange_proves_the_password_and_checks_the_server() {
        for m in ScramMechanism::ALL {
            let cred = ScramCredential::from_password(m, "secret", b"0123456789abcdef".to_vec(), 4096);
            let mut ex = Exchange::new(Login { mechanism: Mechanism::Scram(m), user: "al,ice".into(), password: "secret".into() });
            let Token::Send(first) = ex.step(b"").unwrap() else { panic!("a first message") };
            let first = String::from_utf8(first).unwrap();
            let bare = first.strip_prefix("n,,").unwrap().to_string();
            assert!(bare.starts_with("n=al=2Cice,r="), "{bare}");
            let nonce = format!("{}SERVER", bare.split(",r=").nth(1).unwrap());
            let server_first = format!("r={nonce},s={},i=4096", B64.encode(&cred.salt));
            let Token::Send(last) = ex.step(server_first.as_bytes()).unwrap() else { panic!("a final message") };
            let last = String::from_utf8(last).unwrap();
            let (without_proof, proof) = last.rsplit_once(",p=").unwrap();
            let auth = format!("{bare},{server_first},{without_proof}");
            let signature = m.hmac(&cred.stored_key, auth.as_bytes());
            let client_key: Vec<u8> = B64.decode(proof).unwrap().iter().zip(&signature).map(|(a, b)| a ^ b).collect();
            assert_eq!(m.hash(&client_key), cred.stored_key, "the proof proves the password");
            let server_sig = m.hmac(&cred.server_key, auth.as_bytes());
            assert_eq!(ex.step(format!("v={}", B64.encode(&server_sig)).as_bytes()).unwrap(), Token::Done);

            let mut ex = Exchange::new(Login { mechanism: Mechanism::Scram(m), user: "a".into(), password: "secret".into() });
            let Token::Send(first) = ex.step(b"").unwrap() else { panic!() };
            let nonce = format!("{}X", String::from_utf8(first).unwrap().split(",r=").nth(1).unwrap());
            ex.step(format!("r={nonce},s={},i=4096", B64.encode(&cred.salt)).as_bytes()).unwrap();
            assert!(ex.step(format!("v={}", B64.encode([0u8; 32])).as_bytes()).unwrap_err().contains("does not match"));
        }
    }

    #[test]
    fn scram_refuses_a_server_that_does_not_extend_the_nonce_or_asks_too_many_iterations() {
        let login = Login { mechanism: Mechanism::Scram(ScramMechanism::Sha256), user: "a".into(), password: "p".into() };
        let mut ex = Exchange::new(login.clone());
        ex.step(b"").unwrap();
        assert!(ex.step(b"r=other,s=AAAA,i=4096").unwrap_err().contains("nonce"));
        let mut ex = Exchange::new(login);
        let Token::Send(first) = ex.step(b"").unwrap() else { panic!() };
        let nonce = format!("{}X", String::from_utf8(first).unwrap().split(",r=").nth(1).unwrap());
        assert!(ex.step(format!("r={nonce},s=AAAA,i=100000000").as_bytes()).unwrap_err().contains("iteration count"));
    }
}
