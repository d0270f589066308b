//! Tangle's own traffic, which Tangle never traces: spans on their way to
//! the collector, scrapes of the agent's metrics, and whatever Tangle's
//! own processes (a collector on this node, another agent) send or serve.
//! A service map that shows its own tool is wrong, and tracing the export
//! would feed on itself.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs as _};

use crate::identity::{executable_file, is_tangle};

/// The addresses of a collector endpoint (`http://host:port`), resolved now.
/// Unresolvable: none (the export says so itself).
pub fn collector_endpoints(endpoint: &str) -> Vec<SocketAddr> {
    let Ok(uri) = endpoint.parse::<http::Uri>() else {
        return Vec::new();
    };
    let Some(host) = uri.host() else {
        return Vec::new();
    };
    let default_port = if uri.scheme_str() == Some("https") {
        443
    } else {
        80
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (host, uri.port_u16().unwrap_or(default_port))
        .to_socket_addrs()
        .map(|a| a.collect())
        .unwrap_or_default()
}

/// The addresses a listener on `addr` answers on: itself, or every local
/// address when it listens on all of them.
pub fn listening_addresses(addr: SocketAddr) -> Vec<SocketAddr> {
    if !addr.ip().is_unspecified() {
        return vec![addr];
    }
    let mut ips = vec![
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ];
    ips.extend(interface_addresses());
    ips.sort();
    ips.dedup();
    ips.into_iter()
        .map(|ip| SocketAddr::new(ip, addr.port()))
        .collect()
}

/// The IP addresses of this host's interfaces.
fn interface_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return out;
    }
    let mut at = list;
    while !at.is_null() {
        // SAFETY: `at` is a node of the list getifaddrs returned, alive until freed.
        let ifa = unsafe { &*at };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: a non-null address of the family it says.
            let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
            if family == libc::AF_INET {
                // SAFETY: an AF_INET address is a sockaddr_in.
                let sin = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
                out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    sin.sin_addr.s_addr,
                ))));
            } else if family == libc::AF_INET6 {
                // SAFETY: an AF_INET6 address is a sockaddr_in6.
                let sin6 = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in6>() };
                out.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
            }
        }
        at = ifa.ifa_next;
    }
    // SAFETY: the list getifaddrs gave, freed once.
    unsafe { libc::freeifaddrs(list) };
    out
}

/// Tangle's processes running now (a collector, other agents), not this one.
pub fn tangle_processes() -> Vec<u32> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|&pid| executable_file(pid).is_some_and(|f| is_tangle(&f)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_resolve_with_their_port() {
        let a = collector_endpoint_ports("http://127.0.0.1:4317");
        assert_eq!(a, ["127.0.0.1:4317"]);
        let a = collector_endpoint_ports("https://[::1]");
        assert_eq!(a, ["[::1]:443"]);
        assert!(
            collector_endpoint_ports("http://localhost:4317").contains(&"127.0.0.1:4317".into())
        );
        assert!(collector_endpoint_ports("not a url").is_empty());
        let all = listening_addresses("0.0.0.0:9465".parse().unwrap());
        assert!(all.contains(&"127.0.0.1:9465".parse().unwrap()));
    }

    fn collector_endpoint_ports(e: &str) -> Vec<String> {
        collector_endpoints(e)
            .iter()
            .map(|a| a.to_string())
            .collect()
    }
}
