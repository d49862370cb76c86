//! SASL on the SASL_PLAINTEXT and SASL_SSL listeners, as Kafka's `SaslServerAuthenticator`:
//! SaslHandshake (v0: the tokens follow as bare length-prefixed frames; v1: inside
//! SaslAuthenticate), SaslAuthenticate v0-2, the mechanisms PLAIN, SCRAM-SHA-256 and
//! SCRAM-SHA-512 (RFC 5802, RFC 7677), and re-authentication (KIP-368).
//!
//! Before a connection is authenticated it may send ApiVersions, SaslHandshake and
//! SaslAuthenticate only; anything else closes it. A failed authentication is answered with
//! SASL_AUTHENTICATION_FAILED (Kafka's message, never a hint whether the user exists) and the
//! connection closes. With `[sasl] connections_max_reauth_ms`, SaslAuthenticate v1+ tells the
//! client how long its session lasts; a request other than the re-authentication after that
//! closes the connection, and a re-authentication must keep the principal.
//!
//! Credentials come from the controller (`scram_credential`); PLAIN checks the password against
//! the user's SCRAM credential, so there is one user database.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, SaslAuthenticateResponse, SaslHandshakeResponse};
use kafka_protocol::protocol::StrBytes;
use ring::rand::{SecureRandom, SystemRandom};

use crate::agent::client::ControllerClient;
use crate::api::scram::{ScramCredential, ScramMechanism};
use crate::failures::{LOG_INTERVAL, RateLimitedLog};
use crate::metrics::{self, Counter};

const ILLEGAL_SASL_STATE: i16 = 34;
const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
const SASL_AUTHENTICATION_FAILED: i16 = 58;
/// Kafka's `sasl.server.max.receive.size` default: larger tokens close the connection.
pub const TOKEN_BYTES_MAX: usize = 524_288;
/// Kafka's message for a failed SCRAM or PLAIN login (the same whatever went wrong).
const INVALID_CREDENTIALS: &str = "Authentication failed: Invalid username or password";

/// `[sasl]` as the connections use it.
#[derive(Debug, Clone)]
pub struct SaslSettings {
    pub mechanisms: Vec<String>,
    /// 0: sessions do not expire.
    pub reauth_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mechanism {
    Plain,
    Scram(ScramMechanism),
}

impl Mechanism {
    fn from_name(name: &str) -> Option<Self> {
        if name == "PLAIN" { Some(Self::Plain) } else { ScramMechanism::from_name(name).map(Self::Scram) }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::Scram(m) => m.name(),
        }
    }
}

enum State {
    /// Waiting for SaslHandshake.
    Handshake,
    /// The mechanism's first token is next.
    Start(Mechanism),
    /// SCRAM: the server-first message was sent; the client-final one is next.
    ScramFinal { user: String, gs2_header: String, nonce: String, auth_prefix: String, credential: ScramCredential },
    /// Authenticated (a re-authentication starts again with SaslHandshake).
    Done,
}

/// What a SASL step sends back.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// More exchanges follow.
    Challenge(Vec<u8>),
    /// Authenticated as `principal` (`User:name`); `last` is the final server message.
    Done { principal: String, last: Vec<u8> },
}

/// Why an authentication failed: sent to the client as the error message.
#[derive(Debug, PartialEq, Eq)]
pub struct Failed(pub String);

/// One connection's SASL state.
pub struct Sasl {
    settings: Arc<SaslSettings>,
    state: State,
    /// The principal of the first authentication; a re-authentication must keep it.
    principal: Option<String>,
    /// When the session ends (re-authentication due), if sessions expire.
    expires: Option<Instant>,
    /// The user name the client gave in its last attempt, for the failure log.
    attempted_user: Option<String>,
}

impl Sasl {
    pub fn new(settings: Arc<SaslSettings>) -> Self {
        Self { settings, state: State::Handshake, principal: None, expires: None, attempted_user: None }
    }

    pub fn principal(&self) -> Option<&str> {
        self.principal.as_deref()
    }

    /// Whether the session ended without re-authentication.
    pub fn expired(&self, now: Instant) -> bool {
        self.expires.is_some_and(|e| now >= e)
    }

    /// SaslHandshake: picks the mechanism. An error code ends the connection.
    fn handshake(&mut self, mechanism: &str) -> Result<(), i16> {
        if !matches!(self.state, State::Handshake | State::Done) {
            return Err(ILLEGAL_SASL_STATE);
        }
        match Mechanism::from_name(mechanism).filter(|m| self.settings.mechanisms.iter().any(|e| e == m.name())) {
            Some(m) => {
                self.state = State::Start(m);
                Ok(())
            }
            None => Err(UNSUPPORTED_SASL_MECHANISM),
        }
    }

    fn handshake_response(&self, error_code: i16) -> SaslHandshakeResponse {
        SaslHandshakeResponse::default()
            .with_error_code(error_code)
            .with_mechanisms(self.settings.mechanisms.iter().map(|m| StrBytes::from_string(m.clone())).collect())
    }

    /// One token of the exchange.
    pub async fn step(&mut self, controller: &dyn ControllerClient, token: &[u8]) -> Result<Step, Failed> {
        let state = std::mem::replace(&mut self.state, State::Handshake);
        let step = match state {
            State::Start(Mechanism::Plain) => {
                let (user, password) = parse_plain(token)?;
                self.attempted_user = Some(user.clone());
                let credentials = lookup_any(controller, &user).await?;
                if !credentials.iter().any(|c| c.matches_password(&password)) {
                    return Err(Failed(INVALID_CREDENTIALS.into()));
                }
                Step::Done { principal: format!("User:{user}"), last: Vec::new() }
            }
            State::Start(Mechanism::Scram(mechanism)) => {
                let first = ClientFirst::parse(token)?;
                self.attempted_user = Some(first.user.clone());
                let credential = controller
                    .scram_credential(first.user.clone(), mechanism)
                    .await
                    .map_err(|e| Failed(format!("Authentication failed: credentials unavailable ({e})")))?
                    .ok_or_else(|| Failed(INVALID_CREDENTIALS.into()))?;
                let nonce = format!("{}{}", first.nonce, server_nonce());
                let server_first = format!("r={nonce},s={},i={}", B64.encode(&credential.salt), credential.iterations);
                let auth_prefix = format!("{},{server_first}", first.bare);
                self.state = State::ScramFinal { user: first.user, gs2_header: first.gs2_header, nonce, auth_prefix, credential };
                return Ok(Step::Challenge(server_first.into_bytes()));
            }
            State::ScramFinal { user, gs2_header, nonce, auth_prefix, credential } => {
                let last = scram_final(token, &gs2_header, &nonce, &auth_prefix, &credential)?;
                Step::Done { principal: format!("User:{user}"), last }
            }
            State::Handshake | State::Done => return Err(Failed("SaslAuthenticate before SaslHandshake".into())),
        };
        if let Step::Done { principal, .. } = &step {
            if let Some(first) = &self.principal
                && first != principal
            {
                return Err(Failed(format!("cannot change principal during re-authentication from {first} to {principal}")));
            }
            self.principal = Some(principal.clone());
            self.state = State::Done;
            self.expires = (self.settings.reauth_ms > 0).then(|| Instant::now() + Duration::from_millis(self.settings.reauth_ms));
        }
        Ok(step)
    }

    fn mechanism_name(&self) -> &'static str {
        match &self.state {
            State::Start(m) => m.name(),
            State::ScramFinal { credential, .. } => credential.mechanism.name(),
            _ => "",
        }
    }
}

/// The user's credentials of every mechanism (PLAIN checks against any).
async fn lookup_any(controller: &dyn ControllerClient, user: &str) -> Result<Vec<ScramCredential>, Failed> {
    let mut out = Vec::new();
    for m in [ScramMechanism::Sha512, ScramMechanism::Sha256] {
        match controller.scram_credential(user.to_string(), m).await {
            Ok(Some(c)) => out.push(c),
            Ok(None) => {}
            Err(e) => return Err(Failed(format!("Authentication failed: credentials unavailable ({e})"))),
        }
    }
    Ok(out)
}

/// PLAIN (RFC 4616): `authzid NUL authcid NUL password`; an authzid other than the user is
/// refused, as in Kafka.
fn parse_plain(token: &[u8]) -> Result<(String, String), Failed> {
    let bad = || Failed("Invalid SASL/PLAIN response: expected 3 tokens".into());
    let text = std::str::from_utf8(token).map_err(|_| bad())?;
    let mut parts = text.split('\0');
    let (Some(authz), Some(user), Some(password), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    if user.is_empty() || password.is_empty() {
        return Err(Failed("Authentication failed: username and password must not be empty".into()));
    }
    if !authz.is_empty() && authz != user {
        return Err(Failed("Authentication failed: Client requested an authorization id that is different from username".into()));
    }
    Ok((user.to_string(), password.to_string()))
}

/// A SCRAM client-first message.
#[derive(Debug)]
struct ClientFirst {
    gs2_header: String,
    user: String,
    nonce: String,
    /// `client-first-message-bare`, part of the signed auth message.
    bare: String,
}

impl ClientFirst {
    fn parse(token: &[u8]) -> Result<Self, Failed> {
        let bad = |why: &str| Failed(format!("Invalid SCRAM client first message: {why}"));
        let text = std::str::from_utf8(token).map_err(|_| bad("not UTF-8"))?;
        // gs2-header: "n,," or "y,," (no channel binding), optionally with "a=authzid".
        let (cbind, rest) = text.split_once(',').ok_or_else(|| bad("no gs2 header"))?;
        if cbind != "n" && cbind != "y" {
            return Err(bad("channel binding is not supported"));
        }
        let (authz, bare) = rest.split_once(',').ok_or_else(|| bad("no gs2 header"))?;
        let gs2_header = format!("{cbind},{authz},");
        let mut user = None;
        let mut nonce = None;
        for attr in bare.split(',') {
            if let Some(u) = attr.strip_prefix("n=") {
                user = Some(unescape_name(u).ok_or_else(|| bad("bad user name"))?);
            } else if let Some(r) = attr.strip_prefix("r=") {
                nonce = Some(r.to_string());
            } else if attr.starts_with("tokenauth=") {
                return Err(Failed("Authentication failed: delegation tokens are not supported".into()));
            }
        }
        let user = user.filter(|u| !u.is_empty()).ok_or_else(|| bad("no user name"))?;
        let nonce = nonce.filter(|n| !n.is_empty()).ok_or_else(|| bad("no nonce"))?;
        if let Some(a) = authz.strip_prefix("a=")
            && unescape_name(a).as_deref() != Some(user.as_str())
        {
            return Err(Failed("Authentication failed: Invalid user credentials".into()));
        }
        Ok(Self { gs2_header, user, nonce, bare: bare.to_string() })
    }
}

/// SCRAM's `saslname`: `=2C` is `,`, `=3D` is `=`; any other `=` is invalid.
fn unescape_name(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 3)?;
        out.push(match code {
            "2C" => ',',
            "3D" => '=',
            _ => return None,
        });
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Some(out)
}

/// Checks the client-final message's proof; returns the server-final message.
fn scram_final(token: &[u8], gs2_header: &str, nonce: &str, auth_prefix: &str, credential: &ScramCredential) -> Result<Vec<u8>, Failed> {
    let bad = |why: &str| Failed(format!("Invalid SCRAM client final message: {why}"));
    let text = std::str::from_utf8(token).map_err(|_| bad("not UTF-8"))?;
    let (without_proof, proof) = text.rsplit_once(",p=").ok_or_else(|| bad("no proof"))?;
    let mut channel = None;
    let mut got_nonce = None;
    for attr in without_proof.split(',') {
        if let Some(c) = attr.strip_prefix("c=") {
            channel = Some(c);
        } else if let Some(r) = attr.strip_prefix("r=") {
            got_nonce = Some(r);
        }
    }
    if channel.and_then(|c| B64.decode(c).ok()).as_deref() != Some(gs2_header.as_bytes()) {
        return Err(bad("channel binding does not match"));
    }
    if got_nonce != Some(nonce) {
        return Err(bad("nonce does not match"));
    }
    let proof = B64.decode(proof).map_err(|_| bad("proof is not base64"))?;
    let m = credential.mechanism;
    let auth_message = format!("{auth_prefix},{without_proof}");
    let signature = m.hmac(&credential.stored_key, auth_message.as_bytes());
    if proof.len() != signature.len() {
        return Err(Failed(INVALID_CREDENTIALS.into()));
    }
    let client_key: Vec<u8> = proof.iter().zip(&signature).map(|(a, b)| a ^ b).collect();
    if !crate::api::scram::constant_time_eq(&m.hash(&client_key), &credential.stored_key) {
        return Err(Failed(INVALID_CREDENTIALS.into()));
    }
    let server_signature = m.hmac(&credential.server_key, auth_message.as_bytes());
    Ok(format!("v={}", B64.encode(server_signature)).into_bytes())
}

fn server_nonce() -> String {
    let mut bytes = [0u8; 18];
    // The OS's generator; a failure there leaves zeros, still combined with the client's nonce.
    let _ = SystemRandom::new().fill(&mut bytes);
    B64.encode(bytes)
}

/// Every token parser on `token` (the fuzz target `auth_tokens`): each refuses or accepts.
pub fn parse_any_token(token: &[u8]) {
    let _ = ClientFirst::parse(token);
    let _ = parse_plain(token);
    let credential = ScramCredential::from_salted_password(ScramMechanism::Sha256, b"salt".to_vec(), &[0u8; 32], 4096);
    let _ = scram_final(token, "n,,", "nonce", "n=user,r=nonce", &credential);
}

// ---- Kafka messages

/// SaslHandshake on a listener without SASL (Kafka: ILLEGAL_SASL_STATE).
pub fn handshake_refused() -> SaslHandshakeResponse {
    SaslHandshakeResponse::default().with_error_code(ILLEGAL_SASL_STATE)
}

/// SaslAuthenticate on a listener without SASL, or out of turn.
pub fn authenticate_refused() -> SaslAuthenticateResponse {
    SaslAuthenticateResponse::default()
        .with_error_code(ILLEGAL_SASL_STATE)
        .with_error_message(Some(StrBytes::from_static_str("Unexpected SaslAuthenticate request")))
}

/// What the connection does after one SASL request.
pub enum Next {
    /// Send the answer and go on.
    Continue,
    /// Send the answer and go on; the connection is authenticated as `principal`.
    Authenticated(String),
    /// Send the answer (if any), then close.
    Close(String),
}

/// Answers a SaslHandshake or SaslAuthenticate request: the response to send, and what the
/// connection does next.
pub async fn answer(sasl: &mut Sasl, controller: &dyn ControllerClient, request: SaslRequest) -> (Option<AnyResponse>, Next) {
    match request {
        SaslRequest::Handshake { mechanism } => match sasl.handshake(&mechanism) {
            Ok(()) => (Some(AnyResponse::Handshake(sasl.handshake_response(0))), Next::Continue),
            Err(code) => {
                let why = format!("SaslHandshake for {mechanism:?} refused (error {code})");
                (Some(AnyResponse::Handshake(sasl.handshake_response(code))), Next::Close(why))
            }
        },
        SaslRequest::Authenticate { token, version } => {
            let mechanism = sasl.mechanism_name();
            match sasl.step(controller, &token).await {
                Ok(Step::Challenge(bytes)) => (Some(AnyResponse::Authenticate(auth_response(bytes, 0))), Next::Continue),
                Ok(Step::Done { principal, last }) => {
                    authentications(mechanism, "ok").inc();
                    let lifetime = if version >= 1 { sasl.settings.reauth_ms as i64 } else { 0 };
                    (Some(AnyResponse::Authenticate(auth_response(last, lifetime))), Next::Authenticated(principal))
                }
                Err(Failed(why)) => {
                    authentications(mechanism, "failed").inc();
                    log_failure(mechanism, sasl.attempted_user.as_deref(), &why);
                    let resp = SaslAuthenticateResponse::default()
                        .with_error_code(SASL_AUTHENTICATION_FAILED)
                        .with_error_message(Some(StrBytes::from_string(why.clone())));
                    (Some(AnyResponse::Authenticate(resp)), Next::Close(why))
                }
            }
        }
    }
}

/// A raw token (after a v0 handshake): the answer is a bare frame too.
pub async fn answer_raw(sasl: &mut Sasl, controller: &dyn ControllerClient, token: &[u8]) -> Result<(Vec<u8>, Option<String>), String> {
    let mechanism = sasl.mechanism_name();
    match sasl.step(controller, token).await {
        Ok(Step::Challenge(bytes)) => Ok((bytes, None)),
        Ok(Step::Done { principal, last }) => {
            authentications(mechanism, "ok").inc();
            Ok((last, Some(principal)))
        }
        Err(Failed(why)) => {
            authentications(mechanism, "failed").inc();
            log_failure(mechanism, sasl.attempted_user.as_deref(), &why);
            Err(why)
        }
    }
}

fn auth_response(bytes: Vec<u8>, session_lifetime_ms: i64) -> SaslAuthenticateResponse {
    SaslAuthenticateResponse::default()
        .with_auth_bytes(Bytes::from(bytes))
        .with_session_lifetime_ms(session_lifetime_ms)
}

/// A decoded SASL request.
pub enum SaslRequest {
    Handshake { mechanism: String },
    Authenticate { token: Bytes, version: i16 },
}

/// A SASL response to encode.
pub enum AnyResponse {
    Handshake(SaslHandshakeResponse),
    Authenticate(SaslAuthenticateResponse),
}

impl AnyResponse {
    pub fn key(&self) -> ApiKey {
        match self {
            Self::Handshake(_) => ApiKey::SaslHandshake,
            Self::Authenticate(_) => ApiKey::SaslAuthenticate,
        }
    }
}

fn authentications(mechanism: &str, outcome: &'static str) -> Arc<Counter> {
    metrics::counter(
        "sidestream_sasl_authentications_total",
        "SASL authentications (and re-authentications), by mechanism and outcome.",
        &[("mechanism", if mechanism.is_empty() { "none" } else { mechanism }), ("outcome", outcome)],
    )
}

/// The longest user name written to the log, in characters (the name is the client's).
const FAILURE_LOG_USER_CHARS_MAX: usize = 64;

/// Logs a failed authentication at most once a minute per user, mechanism and reason (never a
/// password: the reasons are this module's own sentences; the user name is cut and escaped).
fn log_failure(mechanism: &str, user: Option<&str>, why: &str) {
    static LOG: OnceLock<RateLimitedLog> = OnceLock::new();
    let user: String = user.unwrap_or("").chars().take(FAILURE_LOG_USER_CHARS_MAX).collect();
    let log = LOG.get_or_init(|| RateLimitedLog::new(LOG_INTERVAL));
    if let Some(suppressed) = log.allow(&format!("{user}\0{mechanism}\0{why}"), Instant::now()) {
        tracing::warn!(mechanism, user = ?user, reason = why, suppressed_since_last_line = suppressed,
            "SASL authentication failed (logged once a minute per user and reason)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SCRAM client as RFC 5802 describes it: client-first, then client-final from the
    /// server-first message.
    fn client_final(m: ScramMechanism, password: &str, client_first_bare: &str, server_first: &str) -> (String, Vec<u8>) {
        let mut nonce = "";
        let mut salt = Vec::new();
        let mut iterations = 0;
        for attr in server_first.split(',') {
            if let Some(r) = attr.strip_prefix("r=") {
                nonce = r;
            } else if let Some(s) = attr.strip_prefix("s=") {
                salt = B64.decode(s).unwrap();
            } else if let Some(i) = attr.strip_prefix("i=") {
                iterations = i.parse().unwrap();
            }
        }
        let salted = m.salted_password(password.as_bytes(), &salt, iterations);
        let client_key = m.hmac(&salted, b"Client Key");
        let stored_key = m.hash(&client_key);
        let without_proof = format!("c={},r={nonce}", B64.encode("n,,"));
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let signature = m.hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(&signature).map(|(a, b)| a ^ b).collect();
        let server_key = m.hmac(&salted, b"Server Key");
        let expected = format!("v={}", B64.encode(m.hmac(&server_key, auth_message.as_bytes()))).into_bytes();
        (format!("{without_proof},p={}", B64.encode(proof)), expected)
    }

    fn credential(m: ScramMechanism) -> ScramCredential {
        ScramCredential::from_password(m, "s3cret", b"salt-of-alice".to_vec(), 4096)
    }

    #[test]
    fn a_scram_exchange_proves_the_password_and_the_server() {
        for m in ScramMechanism::ALL {
            let first = ClientFirst::parse(b"n,,n=alice,r=abc123").unwrap();
            assert_eq!((first.user.as_str(), first.nonce.as_str(), first.gs2_header.as_str()), ("alice", "abc123", "n,,"));
            let cred = credential(m);
            let nonce = "abc123SERVER";
            let server_first = format!("r={nonce},s={},i=4096", B64.encode(&cred.salt));
            let auth_prefix = format!("{},{server_first}", first.bare);
            let (good, expected) = client_final(m, "s3cret", &first.bare, &server_first);
            assert_eq!(scram_final(good.as_bytes(), "n,,", nonce, &auth_prefix, &cred).unwrap(), expected);
            let (wrong, _) = client_final(m, "guess", &first.bare, &server_first);
            assert_eq!(scram_final(wrong.as_bytes(), "n,,", nonce, &auth_prefix, &cred), Err(Failed(INVALID_CREDENTIALS.into())));
            // A replayed proof under another nonce is refused.
            assert!(scram_final(good.as_bytes(), "n,,", "other", &auth_prefix, &cred).is_err());
        }
    }

    #[test]
    fn client_first_messages_are_checked() {
        assert!(ClientFirst::parse(b"p=tls-unique,,n=a,r=x").is_err());
        assert!(ClientFirst::parse(b"n,,n=,r=x").is_err());
        assert!(ClientFirst::parse(b"n,,n=a").is_err());
        assert!(ClientFirst::parse(b"n,,n=a,r=x,tokenauth=true").is_err());
        assert!(ClientFirst::parse(b"n,a=b,n=a,r=x").is_err());
        assert_eq!(ClientFirst::parse(b"y,a=a=2Cb,n=a=2Cb,r=x").unwrap().user, "a,b");
        assert!(ClientFirst::parse(&[0xff, 0xfe]).is_err());
        assert_eq!(unescape_name("a=3Db=2C"), Some("a=b,".into()));
        assert_eq!(unescape_name("a=4"), None);
    }

    #[test]
    fn plain_messages_are_checked() {
        assert_eq!(parse_plain(b"\0alice\0pw").unwrap(), ("alice".into(), "pw".into()));
        assert_eq!(parse_plain(b"alice\0alice\0pw").unwrap(), ("alice".into(), "pw".into()));
        assert!(parse_plain(b"bob\0alice\0pw").is_err());
        assert!(parse_plain(b"\0alice").is_err());
        assert!(parse_plain(b"\0alice\0pw\0x").is_err());
        assert!(parse_plain(b"\0\0pw").is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// Arbitrary tokens never panic a parser; they are refused or parsed.
        #[test]
        fn arbitrary_tokens_never_panic(token in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = ClientFirst::parse(&token);
            let _ = parse_plain(&token);
            let cred = credential(ScramMechanism::Sha256);
            let _ = scram_final(&token, "n,,", "abc", "n=a,r=abc", &cred);
        }

        /// SCRAM-shaped tokens with arbitrary attribute values never panic either.
        #[test]
        fn scram_shaped_tokens_never_panic(user in "[a-z=,]{0,8}", nonce in "[ -~]{0,12}", proof in "[A-Za-z0-9+/=]{0,90}") {
            let _ = ClientFirst::parse(format!("n,,n={user},r={nonce}").as_bytes());
            let cred = credential(ScramMechanism::Sha512);
            let _ = scram_final(format!("c=biws,r={nonce},p={proof}").as_bytes(), "n,,", &nonce, "x", &cred);
        }
    }

    #[test]
    fn handshakes_take_only_enabled_mechanisms() {
        let settings = Arc::new(SaslSettings { mechanisms: vec!["SCRAM-SHA-512".into()], reauth_ms: 0 });
        let mut s = Sasl::new(settings);
        assert_eq!(s.handshake("PLAIN"), Err(UNSUPPORTED_SASL_MECHANISM));
        assert_eq!(s.handshake("GSSAPI"), Err(UNSUPPORTED_SASL_MECHANISM));
        assert_eq!(s.handshake("SCRAM-SHA-512"), Ok(()));
        assert_eq!(s.handshake("SCRAM-SHA-512"), Err(ILLEGAL_SASL_STATE));
    }
}
