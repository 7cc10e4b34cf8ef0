//! Host names as requests, origins and flags carry them (`host`, `host:port`, `[v6]`,
//! `[v6]:port`): the name itself, and whether it is this machine.

use std::net::IpAddr;

/// The name or address in `authority`, without its port or an IPv6 literal's brackets.
pub fn name_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        // [v6]:port
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => authority,
    }
}

/// Whether `authority` names this machine: `localhost` or a loopback address, on any port.
pub fn is_loopback(authority: &str) -> bool {
    let name = name_of(authority);
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_lose_their_port_and_brackets() {
        for (authority, name) in [
            ("example.com", "example.com"),
            ("example.com:8080", "example.com"),
            ("[::1]:3000", "::1"),
            ("[::1]", "::1"),
            ("127.0.0.1:", "127.0.0.1"),
        ] {
            assert_eq!(name_of(authority), name, "{authority}");
        }
    }

    #[test]
    fn loopback_is_localhost_or_a_loopback_address_on_any_port() {
        for local in [
            "localhost",
            "LOCALHOST:5173",
            "127.0.0.1:80",
            "127.9.9.9",
            "[::1]:3000",
        ] {
            assert!(is_loopback(local), "{local}");
        }
        for remote in [
            "10.0.0.2:5000",
            "events.svc:5000",
            "[2001:db8::1]:5000",
            "localhost.evil:1",
            "127.0.0.1.evil.example",
            "[::2]",
        ] {
            assert!(!is_loopback(remote), "{remote}");
        }
    }
}
