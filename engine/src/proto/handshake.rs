//! The opening handshake (RFC 6455 section 4), both roles.
//!
//! Server side, in two steps so a slow head is never re-scanned from the start:
//! 1. [`HeadScanner::find_end`] looks for the blank line that ends the head (memchr), keeping
//!    its position between reads; it answers `Partial`, the head length, or 431.
//! 2. [`parse_request`] parses the complete head with httparse into a [`Request`] that
//!    borrows from the buffer (no allocation), and [`Request::validate`] applies the
//!    WebSocket rules, each failure a [`HandshakeError`] with its HTTP status.
//!
//! Bytes after the head (a client's first frames sent in the same packet) are the caller's:
//! they start at `head_len` and are not touched here.
//!
//! Client side: [`write_client_request`] builds the upgrade request from a random nonce;
//! [`verify_response`] checks the server's 101 and the exact `Sec-WebSocket-Accept`.

use super::error::{ClientHandshakeError, HandshakeError};
use super::Status;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use sha1::{Digest, Sha1};

/// The GUID of RFC 6455 section 1.3, appended to the key before hashing.
pub const WS_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Default limit for a request head: 8 KiB.
pub const DEFAULT_MAX_HEAD: usize = 8 * 1024;

/// Headers a request may carry; more is answered 431.
pub const MAX_HEADERS: usize = 64;

/// An empty header slot, to build the array [`parse_request`] fills.
pub const EMPTY_HEADER: httparse::Header<'static> = httparse::EMPTY_HEADER;

/// Finds the end of an HTTP head across reads, without re-scanning what it has seen.
#[derive(Clone, Copy, Debug, Default)]
pub struct HeadScanner {
    /// Bytes of the buffer already known not to contain the end (minus an overlap of 3).
    /// (u32, saturating: a longer head is rescanned from there, which is only slower.)
    scanned: u32,
}

impl HeadScanner {
    /// A scanner at the start of a request.
    pub fn new() -> Self {
        Self::default()
    }

    /// Looks for `\r\n\r\n` in `buf` (the whole head received so far).
    ///
    /// Returns `Complete(head_len)` (the head including the blank line) or `Partial`.
    ///
    /// # Errors
    /// [`HandshakeError::HeadTooLarge`] once the head is longer than `max_head`.
    pub fn find_end(
        &mut self,
        buf: &[u8],
        max_head: usize,
    ) -> Result<Status<usize>, HandshakeError> {
        let from = (self.scanned.saturating_sub(3) as usize).min(buf.len());
        match memchr::memmem::find(&buf[from..], b"\r\n\r\n") {
            Some(i) => {
                let end = from + i + 4;
                if end > max_head {
                    Err(HandshakeError::HeadTooLarge)
                } else {
                    Ok(Status::Complete(end))
                }
            }
            None if buf.len() > max_head => Err(HandshakeError::HeadTooLarge),
            None => {
                self.scanned = u32::try_from(buf.len()).unwrap_or(u32::MAX);
                Ok(Status::Partial)
            }
        }
    }
}

/// A parsed HTTP request head, borrowed from the receive buffer.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The method (`GET` for an upgrade).
    pub method: &'a str,
    /// The path, without the query.
    pub path: &'a str,
    /// The query string after `?`, if any.
    pub query: Option<&'a str>,
    /// HTTP minor version (1 for HTTP/1.1).
    pub minor_version: u8,
    /// Length of the head in bytes; what follows belongs to the WebSocket stream.
    pub head_len: usize,
    headers: &'a [httparse::Header<'a>],
}

/// Parses a complete request head (as found by [`HeadScanner::find_end`]).
///
/// `headers` is caller-provided storage (`[EMPTY_HEADER; MAX_HEADERS]` on the stack).
///
/// # Errors
/// [`HandshakeError::Malformed`] (400) for anything httparse rejects;
/// [`HandshakeError::HeadTooLarge`] (431) for too many headers.
pub fn parse_request<'a>(
    head: &'a [u8],
    headers: &'a mut [httparse::Header<'a>],
) -> Result<Request<'a>, HandshakeError> {
    let mut req = httparse::Request::new(headers);
    let head_len = match req.parse(head) {
        // httparse also ends a head at a bare-LF blank line; the scanner only at CRLF CRLF.
        // Where they disagree the bytes between would be neither head nor stream: refuse.
        Ok(httparse::Status::Complete(n)) if n != head.len() => {
            return Err(HandshakeError::Malformed)
        }
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err(HandshakeError::Malformed),
        Err(httparse::Error::TooManyHeaders) => return Err(HandshakeError::HeadTooLarge),
        Err(_) => return Err(HandshakeError::Malformed),
    };
    let (Some(method), Some(target), Some(minor_version)) = (req.method, req.path, req.version)
    else {
        return Err(HandshakeError::Malformed);
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    Ok(Request {
        method,
        path,
        query,
        minor_version,
        head_len,
        headers: req.headers,
    })
}

/// Whether `value` (a comma-separated header list) contains `token`, ignoring ASCII case
/// and optional white space around list elements.
pub fn has_token(value: &[u8], token: &str) -> bool {
    split_list(value).any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
}

/// The elements of a comma-separated header list, trimmed, empty ones skipped.
fn split_list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    let mut commas = memchr::memchr_iter(b',', value).chain(std::iter::once(value.len()));
    std::iter::from_fn(move || loop {
        let end = commas.next()?;
        let item = value[start..end].trim_ascii();
        start = end + 1;
        if !item.is_empty() {
            return Some(item);
        }
    })
}

impl<'a> Request<'a> {
    /// All headers, in order, as (name, raw value).
    pub fn headers(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> + 'a {
        self.headers.iter().map(|h| (h.name, h.value))
    }

    /// The first header called `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    /// How many headers are called `name`.
    fn header_count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .count()
    }

    /// The `Origin` header, if present and UTF-8.
    pub fn origin(&self) -> Option<&'a str> {
        self.header("origin")
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The `Host` header, if present and UTF-8.
    pub fn host(&self) -> Option<&'a str> {
        self.header("host")
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Subprotocols the client offers (`Sec-WebSocket-Protocol`, every header, in order).
    pub fn protocols(&self) -> impl Iterator<Item = &'a str> + 'a {
        self.list("sec-websocket-protocol")
    }

    /// Extensions the client offers (`Sec-WebSocket-Extensions`), each with its parameters.
    pub fn extensions(&self) -> impl Iterator<Item = &'a str> + 'a {
        self.list("sec-websocket-extensions")
    }

    fn list(&self, name: &'static str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .flat_map(|h| split_list(h.value))
            .filter_map(|t| std::str::from_utf8(t).ok())
    }

    /// Whether this is a WebSocket upgrade attempt at all (`Upgrade: websocket`).
    pub fn is_upgrade(&self) -> bool {
        self.any_has_token("upgrade", "websocket")
    }

    /// Whether the request carries `Sec-WebSocket-Key` or `Sec-WebSocket-Version`: the
    /// client means a WebSocket handshake, whatever its `Upgrade` says.
    pub fn has_websocket_headers(&self) -> bool {
        self.header("sec-websocket-key").is_some() || self.header("sec-websocket-version").is_some()
    }

    fn version_is_13(&self) -> bool {
        self.header("sec-websocket-version")
            .is_some_and(|v| v.trim_ascii() == b"13")
    }

    /// Whether the request's `Origin` is in `allowed` (ASCII case ignored). True when
    /// `allowed` is empty (no list) or the request has no `Origin` (not from a browser, so
    /// not a cross-site request a browser was tricked into; authenticate such clients in
    /// `Handler::on_upgrade`).
    pub fn origin_allowed(&self, allowed: &[String]) -> bool {
        if allowed.is_empty() {
            return true;
        }
        match self.header("origin") {
            None => true,
            Some(o) => {
                let o = o.trim_ascii();
                allowed.iter().any(|a| a.as_bytes().eq_ignore_ascii_case(o))
            }
        }
    }

    /// Whether any header called `name` lists `token` (a list may span several header
    /// lines: `Connection: keep-alive` then `Connection: Upgrade`).
    fn any_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case(name) && has_token(h.value, token))
    }

    /// Applies the rules of RFC 6455 section 4.2.1 and returns the client's key.
    ///
    /// # Errors
    /// The first rule broken, as a [`HandshakeError`] carrying the HTTP status to answer.
    pub fn validate(&self) -> Result<&'a str, HandshakeError> {
        if self.method != "GET" {
            return Err(HandshakeError::MethodNotGet);
        }
        if self.minor_version < 1 {
            return Err(HandshakeError::HttpVersion);
        }
        match self.header_count("host") {
            0 => return Err(HandshakeError::MissingHost),
            1 => {}
            _ => return Err(HandshakeError::DuplicateHeader),
        }
        if !self.is_upgrade() {
            // A request with WebSocket handshake headers is a failed handshake, never a
            // plain HTTP request to be served a page (RFC 6455 4.2.1: 400, or 426 with the
            // version we speak when its version is not 13).
            let version = self.header("sec-websocket-version");
            return Err(if !self.has_websocket_headers() {
                HandshakeError::NotUpgrade
            } else if version.is_some() && !self.version_is_13() {
                HandshakeError::UnsupportedVersion
            } else {
                HandshakeError::UpgradeNotWebSocket
            });
        }
        if !self.any_has_token("connection", "upgrade") {
            return Err(HandshakeError::MissingConnectionUpgrade);
        }
        if !self.version_is_13() {
            return Err(HandshakeError::UnsupportedVersion);
        }
        if self.header_count("sec-websocket-key") > 1 {
            return Err(HandshakeError::DuplicateHeader);
        }
        let key = self
            .header("sec-websocket-key")
            .ok_or(HandshakeError::InvalidKey)?
            .trim_ascii();
        let mut raw = [0u8; 18];
        match B64.decode_slice(key, &mut raw) {
            Ok(16) => {}
            _ => return Err(HandshakeError::InvalidKey),
        }
        // Base64 is ASCII, so this cannot fail once decoding succeeded.
        std::str::from_utf8(key).map_err(|_| HandshakeError::InvalidKey)
    }
}

/// A `Sec-WebSocket-Accept` value: base64 of a SHA-1, always 28 ASCII bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct AcceptKey([u8; 28]);

impl AcceptKey {
    /// Computes the accept value for a client's `Sec-WebSocket-Key`.
    pub fn from_key(key: &[u8]) -> AcceptKey {
        let mut sha = Sha1::new();
        sha.update(key);
        sha.update(WS_GUID);
        let digest = sha.finalize();
        let mut out = [0u8; 28];
        let n = B64
            .encode_slice(digest, &mut out)
            .expect("20 bytes encode to 28");
        debug_assert_eq!(n, 28);
        AcceptKey(out)
    }

    /// The value as text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("base64 is ASCII")
    }
}

impl std::fmt::Debug for AcceptKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An extra response header that would break the response (CR, LF or a bad name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidHeader(pub String);

impl std::fmt::Display for InvalidHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid response header {:?}", self.0)
    }
}

impl std::error::Error for InvalidHeader {}

fn check_header(name: &str, value: &str) -> Result<(), InvalidHeader> {
    let name_ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':');
    let value_ok = value.bytes().all(|b| b != b'\r' && b != b'\n' && b != 0);
    if name_ok && value_ok {
        Ok(())
    } else {
        Err(InvalidHeader(name.to_owned()))
    }
}

fn write_headers(out: &mut Vec<u8>, extra: &[(&str, &str)]) -> Result<(), InvalidHeader> {
    for (n, v) in extra {
        check_header(n, v)?;
    }
    for (n, v) in extra {
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    Ok(())
}

/// Appends a `101 Switching Protocols` response to `out`.
///
/// # Errors
/// [`InvalidHeader`] if the subprotocol or an extra header contains CR/LF or a bad name;
/// nothing is written then.
pub fn write_accept_response(
    out: &mut Vec<u8>,
    accept: &AcceptKey,
    protocol: Option<&str>,
    extra: &[(&str, &str)],
) -> Result<(), InvalidHeader> {
    if let Some(p) = protocol {
        check_header("Sec-WebSocket-Protocol", p)?;
        if p.is_empty() || p.contains(',') {
            return Err(InvalidHeader("Sec-WebSocket-Protocol".into()));
        }
    }
    let start = out.len();
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
    );
    out.extend_from_slice(&accept.0);
    out.extend_from_slice(b"\r\n");
    if let Some(p) = protocol {
        out.extend_from_slice(b"Sec-WebSocket-Protocol: ");
        out.extend_from_slice(p.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Err(e) = write_headers(out, extra) {
        out.truncate(start);
        return Err(e);
    }
    out.extend_from_slice(b"\r\n");
    Ok(())
}

/// The reason phrase of the statuses the engine answers.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Appends a complete HTTP/1.1 response with `Connection: close` and a body.
///
/// # Errors
/// [`InvalidHeader`] for an extra header with CR/LF; nothing is written then.
pub fn write_http_response(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    extra: &[(&str, &str)],
    body: &[u8],
) -> Result<(), InvalidHeader> {
    check_header("Content-Type", content_type)?;
    let start = out.len();
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        reason_phrase(status),
        body.len()
    );
    out.extend_from_slice(head.as_bytes());
    if let Err(e) = write_headers(out, extra) {
        out.truncate(start);
        return Err(e);
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    Ok(())
}

impl HandshakeError {
    /// Appends the error response for this failure (426 carries `Sec-WebSocket-Version: 13`,
    /// 405 carries `Allow: GET`), a short text body and `Connection: close`.
    pub fn write_response(&self, out: &mut Vec<u8>) {
        let extra: &[(&str, &str)] = match self {
            HandshakeError::UnsupportedVersion | HandshakeError::NotUpgrade => {
                &[("Sec-WebSocket-Version", "13"), ("Upgrade", "websocket")]
            }
            HandshakeError::MethodNotGet => &[("Allow", "GET")],
            _ => &[],
        };
        let body = format!("{}\n", self.reason());
        write_http_response(
            out,
            self.status(),
            "text/plain; charset=utf-8",
            extra,
            body.as_bytes(),
        )
        .expect("static headers are valid");
    }
}

/// The client's side of a handshake in progress: the key it sent.
#[derive(Clone, Copy, Debug)]
pub struct ClientKey {
    key: [u8; 24],
}

impl ClientKey {
    /// The key from a 16-byte random nonce (the caller draws it; the core has no RNG).
    pub fn from_nonce(nonce: [u8; 16]) -> ClientKey {
        let mut key = [0u8; 24];
        B64.encode_slice(nonce, &mut key)
            .expect("16 bytes encode to 24");
        ClientKey { key }
    }

    /// The `Sec-WebSocket-Key` value.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.key).expect("base64 is ASCII")
    }

    /// The `Sec-WebSocket-Accept` the server must answer.
    pub fn expected_accept(&self) -> AcceptKey {
        AcceptKey::from_key(&self.key)
    }
}

/// Appends an upgrade request for `host` (`host[:port]`) and `path` (with any query).
///
/// # Errors
/// [`InvalidHeader`] if `host`, `path` or an extra header would break the request.
pub fn write_client_request(
    out: &mut Vec<u8>,
    host: &str,
    path: &str,
    key: &ClientKey,
    extra: &[(&str, &str)],
) -> Result<(), InvalidHeader> {
    check_header("Host", host)?;
    if path.is_empty()
        || !path.starts_with('/')
        || path
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(InvalidHeader(format!("path {path:?}")));
    }
    let start = out.len();
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n",
        key.as_str()
    );
    out.extend_from_slice(head.as_bytes());
    if let Err(e) = write_headers(out, extra) {
        out.truncate(start);
        return Err(e);
    }
    out.extend_from_slice(b"\r\n");
    Ok(())
}

/// Checks a server's answer to our upgrade request.
///
/// Returns `Complete(head_len)` once a valid 101 head is in `buf` (bytes after it are the
/// server's first frames), or `Partial`.
///
/// # Errors
/// A [`ClientHandshakeError`]: not HTTP, a status other than 101, a missing `Upgrade` or
/// `Connection` token, or a `Sec-WebSocket-Accept` that does not match `key`.
pub fn verify_response(buf: &[u8], key: &ClientKey) -> Result<Status<usize>, ClientHandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() <= DEFAULT_MAX_HEAD => {
            return Ok(Status::Partial)
        }
        _ => return Err(ClientHandshakeError::Malformed),
    };
    let status = resp.code.unwrap_or(0);
    if status != 101 {
        return Err(ClientHandshakeError::Status(status));
    }
    let find = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    if !find("upgrade").is_some_and(|v| has_token(v, "websocket")) {
        return Err(ClientHandshakeError::MissingUpgrade);
    }
    if !find("connection").is_some_and(|v| has_token(v, "upgrade")) {
        return Err(ClientHandshakeError::MissingConnection);
    }
    let expected = key.expected_accept();
    match find("sec-websocket-accept") {
        Some(v) if v.trim_ascii() == expected.0 => Ok(Status::Complete(n)),
        _ => Err(ClientHandshakeError::BadAccept),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RFC_REQ: &[u8] =
        b"GET /chat?room=1 HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n\
Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Origin: http://example.com\r\nSec-WebSocket-Protocol: chat, superchat\r\n\
Sec-WebSocket-Protocol: v2\r\nSec-WebSocket-Version: 13\r\n\r\n";

    fn parse_ok(buf: &[u8]) -> Result<(String, Request<'_>), HandshakeError> {
        let len = match HeadScanner::new().find_end(buf, DEFAULT_MAX_HEAD)? {
            Status::Complete(n) => n,
            Status::Partial => panic!("partial"),
        };
        let headers = Box::leak(Box::new([EMPTY_HEADER; MAX_HEADERS]));
        let req = parse_request(&buf[..len], headers)?;
        let key = req.validate()?;
        Ok((key.to_owned(), req))
    }

    #[test]
    fn rfc_accept_key() {
        assert_eq!(
            AcceptKey::from_key(b"dGhlIHNhbXBsZSBub25jZQ==").as_str(),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn parses_rfc_request() {
        let (key, req) = parse_ok(RFC_REQ).unwrap();
        assert_eq!(key, "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!((req.path, req.query), ("/chat", Some("room=1")));
        assert_eq!(req.origin(), Some("http://example.com"));
        assert_eq!(req.host(), Some("server.example.com"));
        assert_eq!(
            req.protocols().collect::<Vec<_>>(),
            ["chat", "superchat", "v2"]
        );
        assert_eq!(req.head_len, RFC_REQ.len());
        let mut out = Vec::new();
        write_accept_response(
            &mut out,
            &AcceptKey::from_key(key.as_bytes()),
            Some("chat"),
            &[("X-A", "1")],
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(text.contains("Sec-WebSocket-Protocol: chat\r\nX-A: 1\r\n\r\n"));
    }

    #[test]
    fn incremental_scan_and_trailing_bytes_kept() {
        let mut buf = RFC_REQ.to_vec();
        buf.extend_from_slice(&[0x81, 0x85, 1, 2, 3, 4]);
        let mut sc = HeadScanner::new();
        for cut in 0..RFC_REQ.len() {
            assert_eq!(
                sc.find_end(&buf[..cut], DEFAULT_MAX_HEAD),
                Ok(Status::Partial),
                "cut {cut}"
            );
        }
        assert_eq!(
            sc.find_end(&buf, DEFAULT_MAX_HEAD),
            Ok(Status::Complete(RFC_REQ.len()))
        );
        assert_eq!(&buf[RFC_REQ.len()..], &[0x81, 0x85, 1, 2, 3, 4]);
    }

    fn with(replace: &str, by: &str) -> Vec<u8> {
        String::from_utf8(RFC_REQ.to_vec())
            .unwrap()
            .replace(replace, by)
            .into_bytes()
    }

    #[test]
    fn each_rule_has_its_status() {
        let cases: Vec<(Vec<u8>, HandshakeError, u16)> = vec![
            (with("GET", "POST"), HandshakeError::MethodNotGet, 405),
            (
                with("HTTP/1.1", "HTTP/1.0"),
                HandshakeError::HttpVersion,
                400,
            ),
            (
                with("Host: server.example.com\r\n", ""),
                HandshakeError::MissingHost,
                400,
            ),
            (
                with("Upgrade: websocket", "Upgrade: h2c"),
                HandshakeError::UpgradeNotWebSocket,
                400,
            ),
            (
                with("Upgrade: websocket\r\n", ""),
                HandshakeError::UpgradeNotWebSocket,
                400,
            ),
            (
                String::from_utf8(with("Upgrade: websocket", "Upgrade: h2c"))
                    .unwrap()
                    .replace("Version: 13", "Version: 8")
                    .into_bytes(),
                HandshakeError::UnsupportedVersion,
                426,
            ),
            (
                b"GET /chat HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\n\r\n".to_vec(),
                HandshakeError::NotUpgrade,
                426,
            ),
            (
                with("keep-alive, Upgrade", "keep-alive"),
                HandshakeError::MissingConnectionUpgrade,
                400,
            ),
            (
                with("Version: 13", "Version: 8"),
                HandshakeError::UnsupportedVersion,
                426,
            ),
            (
                with("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZQ=="),
                HandshakeError::InvalidKey,
                400,
            ),
            (
                with("dGhlIHNhbXBsZSBub25jZQ==", "!!!!"),
                HandshakeError::InvalidKey,
                400,
            ),
            (
                with("Host: server.example.com\r\n", "Host: a\r\nHost: b\r\n"),
                HandshakeError::DuplicateHeader,
                400,
            ),
            (
                with("GET /chat", "GET\x01/chat"),
                HandshakeError::Malformed,
                400,
            ),
        ];
        for (req, want, status) in cases {
            let got = parse_ok(&req).map(|_| ()).unwrap_err();
            assert_eq!(got, want, "{}", String::from_utf8_lossy(&req));
            assert_eq!(got.status(), status);
            let mut out = Vec::new();
            got.write_response(&mut out);
            let text = String::from_utf8(out).unwrap();
            assert!(text.starts_with(&format!("HTTP/1.1 {status} ")));
            assert!(text.contains("Connection: close\r\n"));
            if status == 426 {
                assert!(text.contains("Sec-WebSocket-Version: 13\r\n"));
            }
        }
    }

    #[test]
    fn origin_allow_list() {
        let (_, req) = parse_ok(RFC_REQ).unwrap();
        assert!(req.origin_allowed(&[]));
        assert!(req.origin_allowed(&["HTTP://Example.com".into()]));
        assert!(!req.origin_allowed(&["https://example.com".into()]));
        let no_origin = with("Origin: http://example.com\r\n", "");
        let (_, req) = parse_ok(&no_origin).unwrap();
        assert!(req.origin_allowed(&["https://example.com".into()]));
    }

    #[test]
    fn tokens_are_case_insensitive_lists() {
        assert!(has_token(b"keep-alive, Upgrade", "upgrade"));
        assert!(has_token(b"UPGRADE", "upgrade"));
        assert!(has_token(b" ,, upgrade ,", "upgrade"));
        assert!(!has_token(b"upgraded", "upgrade"));
        assert!(!has_token(b"", "upgrade"));
        let req = with("Upgrade: websocket", "Upgrade: foo, WebSocket");
        assert!(parse_ok(&req).is_ok());
        let two_lines = "Connection: keep-alive\r\nConnection: Upgrade";
        let req = with("Connection: keep-alive, Upgrade", two_lines);
        assert!(parse_ok(&req).is_ok());
    }

    #[test]
    fn oversized_heads_are_431() {
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', DEFAULT_MAX_HEAD));
        assert_eq!(
            HeadScanner::new().find_end(&big, DEFAULT_MAX_HEAD),
            Err(HandshakeError::HeadTooLarge)
        );
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..(MAX_HEADERS + 1) {
            many.extend(format!("X-{i}: 1\r\n").bytes());
        }
        many.extend(b"\r\n");
        let mut headers = [EMPTY_HEADER; MAX_HEADERS];
        assert_eq!(
            parse_request(&many, &mut headers).unwrap_err(),
            HandshakeError::HeadTooLarge
        );
    }

    #[test]
    fn header_injection_is_refused() {
        let accept = AcceptKey::from_key(b"x");
        let mut out = Vec::new();
        assert!(write_accept_response(&mut out, &accept, None, &[("X", "a\r\nEvil: 1")]).is_err());
        assert!(write_accept_response(&mut out, &accept, Some("a,b"), &[]).is_err());
        assert!(out.is_empty());
    }

    #[test]
    fn client_roundtrip_against_server_side() {
        let key = ClientKey::from_nonce(*b"the sample nonce");
        assert_eq!(key.as_str(), "dGhlIHNhbXBsZSBub25jZQ==");
        let mut req = Vec::new();
        write_client_request(&mut req, "127.0.0.1:9001", "/?id=7", &key, &[]).unwrap();
        let (server_key, parsed) = parse_ok(&req).unwrap();
        assert_eq!(parsed.query, Some("id=7"));
        let mut resp = Vec::new();
        write_accept_response(
            &mut resp,
            &AcceptKey::from_key(server_key.as_bytes()),
            None,
            &[],
        )
        .unwrap();
        let head_len = resp.len();
        resp.extend_from_slice(&[0x81, 0x00]);
        assert_eq!(verify_response(&resp, &key), Ok(Status::Complete(head_len)));
        assert_eq!(verify_response(&resp[..10], &key), Ok(Status::Partial));
        let other = ClientKey::from_nonce([1; 16]);
        assert_eq!(
            verify_response(&resp, &other),
            Err(ClientHandshakeError::BadAccept)
        );
        let mut not_found = Vec::new();
        write_http_response(&mut not_found, 404, "text/plain", &[], b"no").unwrap();
        assert_eq!(
            verify_response(&not_found, &key),
            Err(ClientHandshakeError::Status(404))
        );
    }
}
