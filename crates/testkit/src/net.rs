//! Ports on loopback. MX hosts carry no port (`mx_port` is one number for every host), so a
//! test with several MX hosts needs one port free on several loopback addresses.

use std::net::{IpAddr, TcpListener};

/// Listeners on one port shared by every address, all kept bound, so no other test can take
/// the port in between. Serve them with [`crate::smtp_server`].
pub fn listeners_on_one_port<I: Copy + Into<IpAddr>>(ips: &[I]) -> (u16, Vec<TcpListener>) {
    let ips: Vec<IpAddr> = ips.iter().map(|&ip| ip.into()).collect();
    'port: for _ in 0..100 {
        let first = TcpListener::bind((ips[0], 0)).expect("bind");
        let port = first.local_addr().expect("address").port();
        let mut all = vec![first];
        for ip in &ips[1..] {
            match TcpListener::bind((*ip, port)) {
                Ok(listener) => all.push(listener),
                Err(_) => continue 'port,
            }
        }
        return (port, all);
    }
    panic!("no port free on all of {ips:?}");
}

/// A port free on every given address right now, for a peer the test does not bind itself
/// (an external program, or an address where nothing may listen). Best effort: another
/// process may take it before it is used.
pub fn common_port<I: Copy + Into<IpAddr>>(ips: &[I]) -> u16 {
    listeners_on_one_port(ips).0
}
