//! The server to load: a `ws://` URL, resolved once.

use crate::error::Error;
use std::net::{SocketAddr, ToSocketAddrs};

/// A parsed and resolved `ws://host[:port]/path` URL.
#[derive(Clone, Debug)]
pub struct Target {
    /// The URL as given.
    pub url: String,
    /// The `Host` header value (`host[:port]` as written in the URL).
    pub host_header: String,
    /// Path and query, at least `/`.
    pub path: String,
    /// The address connections go to (the first the host resolves to).
    pub addr: SocketAddr,
}

impl Target {
    /// Parses and resolves `url`.
    ///
    /// # Errors
    /// [`Error::BadUrl`] for anything but `ws://host[:port][/path]`, [`Error::Resolve`] when
    /// the host does not resolve.
    pub fn parse(url: &str) -> Result<Target, Error> {
        let bad = |why: &str| Error::BadUrl {
            url: url.to_owned(),
            why: why.to_owned(),
        };
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(bad("no scheme"));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "ws" => {}
            "wss" => return Err(bad("wss:// (TLS) is not supported; use ws://")),
            "http" | "https" => return Err(bad("an HTTP URL; WebSocket URLs start with ws://")),
            _ => return Err(bad("unknown scheme")),
        }
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_owned()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_owned()),
        };
        // A fragment is never sent (RFC 6455 section 3).
        let path = path.split('#').next().unwrap_or("/").to_owned();
        if authority.is_empty() {
            return Err(bad("no host"));
        }
        if authority.contains('@') {
            return Err(bad("user info is not supported"));
        }
        if path
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(bad("spaces or control characters in the path"));
        }
        // host, [v6], host:port, [v6]:port
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let Some((h, after)) = v6.split_once(']') else {
                return Err(bad("unclosed ["));
            };
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| bad("junk after ]"))?),
            };
            (h, port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port: u16 = match port {
            None => 80,
            Some(p) => p
                .parse()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| bad(&format!("port {p:?} is not a number from 1 to 65535")))?,
        };
        let addr = (host, port)
            .to_socket_addrs()
            .map_err(|e| Error::Resolve {
                host: host.to_owned(),
                why: e.to_string(),
            })?
            .next()
            .ok_or_else(|| Error::Resolve {
                host: host.to_owned(),
                why: "no address".to_owned(),
            })?;
        Ok(Target {
            url: url.to_owned(),
            host_header: authority.to_owned(),
            path,
            addr,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        let t = Target::parse("ws://127.0.0.1:9001/").unwrap();
        assert_eq!(t.addr, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(t.path, "/");
        assert_eq!(t.host_header, "127.0.0.1:9001");
        let t = Target::parse("ws://127.0.0.1:9001").unwrap();
        assert_eq!(t.path, "/");
        let t = Target::parse("ws://127.0.0.1:9001?room=1").unwrap();
        assert_eq!(t.path, "/?room=1");
        let t = Target::parse("ws://[::1]:9/chat?x#frag").unwrap();
        assert_eq!(t.path, "/chat?x");
        assert_eq!(t.addr.port(), 9);
        assert_eq!(Target::parse("ws://127.0.0.1/").unwrap().addr.port(), 80);
    }

    #[test]
    fn rejects_wrong_urls() {
        for u in [
            "127.0.0.1:9001",
            "http://127.0.0.1:9001/",
            "wss://127.0.0.1/",
            "ws://",
            "ws://127.0.0.1:x/",
            "ws://127.0.0.1:0/",
            "ws://127.0.0.1:70000/",
            "ws://[::1/",
            "ws://127.0.0.1/a b",
        ] {
            let e = Target::parse(u).unwrap_err();
            assert!(matches!(e, Error::BadUrl { .. }), "{u}: {e}");
        }
    }
}
