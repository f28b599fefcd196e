//! "Mail loops back to myself": never hand a message to one of our own listeners.
//!
//! An MX record, a `[[route]]` or the smart host that names this server would make the runner
//! deliver to its own session, which queues the message again — round and round, one
//! `Received:` header per hop (the session refuses a message past 50 hops, but that is the
//! last line). Like Postfix, the runner checks each address it is about to connect to against
//! the addresses its listeners are bound to; a listener on `0.0.0.0` or `[::]` stands for every
//! address of this host, which is any address a socket can bind to here.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::{Arc, PoisonError, RwLock};

/// The addresses the server's listeners are bound to. Shared: `serve` sets it after binding
/// (and again after a reload added or removed listeners); the runner reads it.
#[derive(Debug, Clone, Default)]
pub struct OwnListeners(Arc<RwLock<Vec<SocketAddr>>>);

impl OwnListeners {
    pub fn set(&self, addresses: Vec<SocketAddr>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = addresses;
    }

    /// Whether connecting to `target` would reach one of our own listeners. A connection to
    /// the unspecified address (`0.0.0.0`, `::`: an MX record's A or AAAA may say so) goes to
    /// this host's loopback address, so that is what it is compared as.
    pub fn contains(&self, target: SocketAddr) -> bool {
        let target_ip = match target.ip().to_canonical() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let listeners = self.0.read().unwrap_or_else(PoisonError::into_inner);
        listeners.iter().any(|listener| {
            listener.port() == target.port()
                && (listener.ip().to_canonical() == target_ip
                    || (listener.ip().is_unspecified() && is_this_host(target_ip)))
        })
    }
}

/// Whether `ip` belongs to this host: loopback, or an address a socket can be bound to.
fn is_this_host(ip: IpAddr) -> bool {
    ip.is_loopback() || UdpSocket::bind((ip, 0)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_addresses_and_wildcards() {
        let own = OwnListeners::default();
        assert!(!own.contains("127.0.0.1:25".parse().unwrap()));
        own.set(vec![
            "127.0.0.1:2525".parse().unwrap(),
            "0.0.0.0:25".parse().unwrap(),
        ]);
        assert!(own.contains("127.0.0.1:2525".parse().unwrap()));
        assert!(own.contains("[::ffff:127.0.0.1]:2525".parse().unwrap()));
        assert!(!own.contains("127.0.0.1:2526".parse().unwrap()));
        // The wildcard listener on port 25 is every local address, loopback included...
        assert!(own.contains("127.0.0.9:25".parse().unwrap()));
        // ...but not a documentation address no interface of a test machine has.
        assert!(!own.contains("192.0.2.77:25".parse().unwrap()));
        assert!(!own.contains("127.0.0.2:2525".parse().unwrap()));
        // A connection to the unspecified address lands on loopback.
        assert!(own.contains("0.0.0.0:2525".parse().unwrap()));
        assert!(own.contains("[::ffff:0.0.0.0]:2525".parse().unwrap()));
        assert!(!own.contains("0.0.0.0:2526".parse().unwrap()));
        own.set(vec!["[::1]:2525".parse().unwrap()]);
        assert!(own.contains("[::]:2525".parse().unwrap()));
    }
}
