//! Who the client is. Behind a reverse proxy every connection comes from
//! the proxy, so rate limits, login throttling and the audit log would see
//! one user. A proxy the operator trusts (`NEXUS_TRUSTED_PROXIES`) may say
//! whom it forwards for, in `Forwarded` (RFC 7239) or `X-Forwarded-For`;
//! anyone else's headers are ignored, since a client can write them.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use ipnet::IpNet;

use crate::api::AppState;

/// The client's address: the peer's, or the one trusted proxies forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr::of(
            &parts.extensions,
            &parts.headers,
            &state.config.trusted_proxies,
        ))
    }
}

impl ClientAddr {
    /// From a request's connection and headers.
    pub fn of(extensions: &axum::http::Extensions, headers: &HeaderMap, trusted: &[IpNet]) -> Self {
        let peer = extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
        ClientAddr(resolve(peer, headers, trusted))
    }
}

/// Walks the forwarded hops from the nearest back while each one is a
/// trusted proxy: the first address that is not is the client. A hop that
/// is no address (`unknown`, an obfuscated name) ends the walk at the
/// proxy that named it. `Forwarded` is read when present, else
/// `X-Forwarded-For`.
pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::to_string)
            .collect()
    };
    let forwarded: Vec<Option<IpAddr>> = values("forwarded")
        .iter()
        .map(|element| {
            element
                .split(';')
                .filter_map(|pair| pair.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("for"))
                .and_then(|(_, v)| node(v))
        })
        .collect();
    let hops = if forwarded.is_empty() {
        values("x-forwarded-for").iter().map(|v| node(v)).collect()
    } else {
        forwarded
    };
    let mut client = peer;
    for hop in hops.iter().rev() {
        match hop {
            Some(ip) => {
                client = *ip;
                if !is_trusted(ip) {
                    break;
                }
            }
            None => break,
        }
    }
    client
}

/// An address as proxies write it: bare, quoted, with a port, IPv6 in
/// brackets.
fn node(v: &str) -> Option<IpAddr> {
    let v = v.trim().trim_matches('"');
    if let Some(rest) = v.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    v.parse().ok().or_else(|| {
        let (host, port) = v.rsplit_once(':')?;
        port.parse::<u16>().ok()?;
        host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_trusted;

    fn client(peer: &str, headers: &[(&str, &str)], trusted: &str) -> String {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        resolve(peer.parse().unwrap(), &h, &parse_trusted(trusted).unwrap()).to_string()
    }

    #[test]
    fn only_trusted_proxies_are_believed() {
        let xff = [("x-forwarded-for", "203.0.113.7")];
        // Nobody trusted, or a peer outside the list: headers ignored.
        assert_eq!(client("10.0.0.1", &xff, ""), "10.0.0.1");
        assert_eq!(client("192.0.2.9", &xff, "10.0.0.0/8"), "192.0.2.9");
        assert_eq!(client("10.0.0.1", &xff, "10.0.0.0/8"), "203.0.113.7");
        // A client's own X-Forwarded-For entries before the proxy's are
        // not believed: the nearest untrusted hop is the client.
        let spoofed = [("x-forwarded-for", "1.2.3.4, 203.0.113.7, 10.0.0.2")];
        assert_eq!(client("10.0.0.1", &spoofed, "10.0.0.0/8"), "203.0.113.7");
        // Every hop trusted: the farthest one.
        let inner = [("x-forwarded-for", "10.0.0.3, 10.0.0.2")];
        assert_eq!(client("10.0.0.1", &inner, "10.0.0.0/8"), "10.0.0.3");
        // No header: the proxy itself.
        assert_eq!(client("10.0.0.1", &[], "10.0.0.1"), "10.0.0.1");
        // Split over two header lines, in order.
        let split = [
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-for", "10.0.0.2"),
        ];
        assert_eq!(client("10.0.0.1", &split, "10.0.0.0/8"), "203.0.113.7");
    }

    #[test]
    fn forwarded_wins_and_reads_as_rfc_7239_writes() {
        let h = [
            ("x-forwarded-for", "198.51.100.1"),
            (
                "forwarded",
                r#"for="[2001:db8::17]:4711";proto=https, For="192.0.2.60:8080";by=10.0.0.2"#,
            ),
        ];
        assert_eq!(client("10.0.0.1", &h, "10.0.0.0/8"), "192.0.2.60");
        let h = [("forwarded", r#"for="[2001:db8::17]:4711""#)];
        assert_eq!(client("::1", &h, "::1"), "2001:db8::17");
        // An obfuscated or unknown hop ends the walk at its proxy.
        let h = [("forwarded", "for=_hidden, for=10.0.0.2")];
        assert_eq!(client("10.0.0.1", &h, "10.0.0.0/8"), "10.0.0.2");
        let h = [("x-forwarded-for", "unknown")];
        assert_eq!(client("10.0.0.1", &h, "10.0.0.0/8"), "10.0.0.1");
    }

    #[test]
    fn the_setting_takes_cidrs_and_addresses() {
        let nets = parse_trusted("10.0.0.0/8, 127.0.0.1 ,::1,fd00::/8").unwrap();
        assert_eq!(nets.len(), 4);
        assert!(nets[1].contains(&"127.0.0.1".parse::<IpAddr>().unwrap()));
        let e = parse_trusted("10.0.0.0/8,proxy.local").unwrap_err();
        assert!(e.contains("proxy.local"), "{e}");
    }
}
