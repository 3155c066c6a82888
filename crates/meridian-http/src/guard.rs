//! The address guard for tenant-supplied URLs (server-side request forgery).
//!
//! A webhook URL chosen by a tenant must not make Meridian call something only it can
//! reach: loopback, private networks, link-local (cloud metadata at 169.254.169.254),
//! carrier-grade NAT, multicast and the like. Names are checked where the connection is
//! made, by [`GuardedResolver`], on every address they resolve to, so a name that resolves
//! to a public address when registered and to a private one later is still refused. URLs
//! with a literal address never reach a resolver; [`check_url`] covers them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Whether tenant URLs may reach non-public addresses (`MERIDIAN_WEBHOOK_ALLOW_PRIVATE`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddressGuard {
    pub allow_private: bool,
}

impl AddressGuard {
    /// Refuses non-public addresses (the production setting).
    pub const STRICT: AddressGuard = AddressGuard {
        allow_private: false,
    };
    /// Allows every address (a deployment whose webhook receivers sit on its own network).
    pub const ALLOW_PRIVATE: AddressGuard = AddressGuard {
        allow_private: true,
    };

    /// Checks a URL's host when it is a literal address or a name that is loopback by
    /// definition (`localhost`). Other names are checked when they are resolved.
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), String> {
        if self.allow_private {
            return Ok(());
        }
        check_url(url)
    }
}

/// Refuses a URL whose host is a non-public literal address or `localhost`. (The URL
/// parser has already normalised forms like `0x7f000001` to `127.0.0.1`.)
pub fn check_url(url: &reqwest::Url) -> Result<(), String> {
    let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
        return Err("has no host".into());
    };
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = literal.parse::<IpAddr>() {
        return if is_public(ip) {
            Ok(())
        } else {
            Err(format!("{ip} is not a public address"))
        };
    }
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    if name == "localhost" || name.ends_with(".localhost") {
        return Err(format!("{name} is a loopback name"));
    }
    Ok(())
}

/// True for an address on the public internet; false for loopback, unspecified, private
/// (RFC 1918, IPv6 unique local), link-local (cloud metadata), carrier-grade NAT,
/// benchmarking, documentation, multicast, broadcast and reserved ranges. IPv4 addresses
/// inside IPv6 (mapped, compatible, NAT64, 6to4) are judged by the IPv4 address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let seg = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    // IPv4-compatible (::a.b.c.d), NAT64 (64:ff9b::/96) and 6to4 (2002::/16) carry an
    // IPv4 address that the packet may end up at.
    if seg[..6] == [0, 0, 0, 0, 0, 0] && !ip.is_loopback() && !ip.is_unspecified() {
        return is_public_v4(Ipv4Addr::from(((seg[6] as u32) << 16) | seg[7] as u32));
    }
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_public_v4(Ipv4Addr::from(((seg[6] as u32) << 16) | seg[7] as u32));
    }
    if seg[0] == 0x2002 {
        return is_public_v4(Ipv4Addr::from(((seg[1] as u32) << 16) | seg[2] as u32));
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (seg[0] & 0xfe00) == 0xfc00 // unique local, fc00::/7 (AWS metadata fd00:ec2::254)
        || (seg[0] & 0xffc0) == 0xfe80 // link-local
        || (seg[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (seg[0] == 0x2001 && seg[1] == 0x0db8) // documentation
        || (seg[0] == 0x0100 && seg[1..4] == [0, 0, 0])) // discard-only
}

/// A DNS resolver that answers only with public addresses: a name whose addresses are all
/// non-public fails to resolve, naming why; non-public ones among public ones are dropped.
#[derive(Clone, Copy, Debug, Default)]
pub struct GuardedResolver;

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| is_public(a.ip()))
                .collect();
            if public.is_empty() {
                let addrs: Vec<String> = found.iter().map(|a| a.ip().to_string()).collect();
                tracing::warn!(host, addresses = ?addrs, "refused a non-public webhook address");
                return Err(Box::new(NotPublic { host, addrs }) as _);
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// A name resolved only to addresses the guard refuses.
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves only to non-public addresses ({})", addrs.join(", "))]
pub struct NotPublic {
    pub host: String,
    pub addrs: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_public() {
        for public in [
            "93.184.216.34",
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
        for private in [
            "127.0.0.1",
            "127.1.2.3",
            "0.0.0.0",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "198.18.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.0.170",
            "192.0.2.1",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "2002:a00:1::",
            "ff02::1",
            "2001:db8::1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
    }

    #[test]
    fn literal_and_loopback_hosts_are_checked() {
        let url = |s: &str| reqwest::Url::parse(s).unwrap();
        for bad in [
            "http://127.0.0.1:8080/hook",
            "http://[::1]/hook",
            "http://169.254.169.254/latest/meta-data",
            "https://10.1.2.3/",
            "http://localhost:9000/",
            "http://api.localhost/",
            "http://0x7f000001/",
            "http://2130706433/",
        ] {
            assert!(AddressGuard::STRICT.check_url(&url(bad)).is_err(), "{bad}");
            assert!(AddressGuard::ALLOW_PRIVATE.check_url(&url(bad)).is_ok());
        }
        for good in ["https://hooks.example.com/x", "http://93.184.216.34/"] {
            assert!(AddressGuard::STRICT.check_url(&url(good)).is_ok(), "{good}");
        }
    }
}
