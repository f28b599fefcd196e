//! Addresses that are not on the public Internet: what `allow_private_targets = false` refuses.
//!
//! A public relay tester must not become a way to reach the networks behind it (its own
//! loopback, the provider's private ranges, link-local metadata services) nor to aim traffic at
//! ranges no mail server lives in. The table follows the IANA special-purpose address
//! registries (RFC 6890 and later), taking every block that is not globally reachable; for IPv6
//! everything outside global unicast (2000::/3) is refused. IPv4-mapped IPv6 addresses are
//! judged as the IPv4 address they carry, and the prefixes that embed IPv4 addresses (NAT64,
//! 6to4, Teredo) are refused with the advice to test the IPv4 address itself, so nobody reaches
//! 127.0.0.1 by spelling it `64:ff9b::7f00:1`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why `ip` is not a public Internet address, in words for the refusal ("a loopback address
/// (RFC 1122)"); `None` for a public address.
pub fn non_public(ip: IpAddr) -> Option<String> {
    match ip.to_canonical() {
        IpAddr::V4(v4) => non_public_v4(v4).map(str::to_string),
        IpAddr::V6(v6) => non_public_v6(v6),
    }
}

/// IPv4 blocks that are not globally reachable: (network, prefix length, description).
const V4_BLOCKS: &[([u8; 4], u8, &str)] = &[
    ([0, 0, 0, 0], 8, "a \"this network\" address (RFC 791)"),
    ([10, 0, 0, 0], 8, "a private address (RFC 1918)"),
    (
        [100, 64, 0, 0],
        10,
        "a carrier-grade NAT address (shared address space, RFC 6598)",
    ),
    ([127, 0, 0, 0], 8, "a loopback address (RFC 1122)"),
    ([169, 254, 0, 0], 16, "a link-local address (RFC 3927)"),
    ([172, 16, 0, 0], 12, "a private address (RFC 1918)"),
    (
        [192, 0, 0, 0],
        24,
        "an IETF protocol assignment address (RFC 6890)",
    ),
    (
        [192, 0, 2, 0],
        24,
        "a documentation address (TEST-NET-1, RFC 5737)",
    ),
    (
        [192, 88, 99, 0],
        24,
        "a 6to4 relay anycast address (RFC 7526)",
    ),
    ([192, 168, 0, 0], 16, "a private address (RFC 1918)"),
    ([198, 18, 0, 0], 15, "a benchmarking address (RFC 2544)"),
    (
        [198, 51, 100, 0],
        24,
        "a documentation address (TEST-NET-2, RFC 5737)",
    ),
    (
        [203, 0, 113, 0],
        24,
        "a documentation address (TEST-NET-3, RFC 5737)",
    ),
    ([224, 0, 0, 0], 4, "a multicast address (RFC 5771)"),
    (
        [240, 0, 0, 0],
        4,
        "a reserved address (RFC 1112; 255.255.255.255 is broadcast)",
    ),
];

fn non_public_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let bits = u32::from(ip);
    V4_BLOCKS.iter().find_map(|&(net, len, why)| {
        let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
        (bits & mask == u32::from(Ipv4Addr::from(net))).then_some(why)
    })
}

/// IPv6 blocks named before the catch-all "outside 2000::/3".
const V6_BLOCKS: &[(u128, u8, &str)] = &[
    (
        0x0064_ff9b_0001 << 80,
        48,
        "a local-use NAT64 address (RFC 8215)",
    ),
    (0x0100 << 112, 64, "a discard-only address (RFC 6666)"),
    (0x2001_0db8 << 96, 32, "a documentation address (RFC 3849)"),
    (
        0x2001 << 112,
        23,
        "an IETF protocol assignment address (RFC 2928)",
    ),
    (0x3fff << 112, 20, "a documentation address (RFC 9637)"),
    (0x5f00 << 112, 16, "an SRv6 SID address (RFC 9602)"),
    (0xfc00 << 112, 7, "a unique local address (RFC 4193)"),
    (0xfe80 << 112, 10, "a link-local address (RFC 4291)"),
    (0xfec0 << 112, 10, "a site-local address (RFC 3879)"),
    (0xff00 << 112, 8, "a multicast address (RFC 4291)"),
];

fn in_block(bits: u128, net: u128, len: u8) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
    bits & mask == net
}

fn non_public_v6(ip: Ipv6Addr) -> Option<String> {
    let bits = u128::from(ip);
    match bits {
        0 => return Some("the unspecified address (RFC 4291)".to_string()),
        1 => return Some("a loopback address (RFC 4291)".to_string()),
        _ => {}
    }
    // Prefixes that carry an IPv4 address: reaching it this way would bypass the IPv4 rules.
    if in_block(bits, 0x0064_ff9b << 96, 96) {
        return Some(embedded("a NAT64 address (RFC 6052)", bits as u32));
    }
    if in_block(bits, 0x2002 << 112, 16) {
        return Some(embedded("a 6to4 address (RFC 3056)", (bits >> 80) as u32));
    }
    if in_block(bits, 0x2001 << 112, 32) {
        return Some(embedded("a Teredo address (RFC 4380)", !(bits as u32)));
    }
    if in_block(bits, 0, 96) {
        return Some(embedded(
            "an IPv4-compatible address (deprecated, RFC 4291)",
            bits as u32,
        ));
    }
    if let Some(&(_, _, why)) = V6_BLOCKS
        .iter()
        .find(|&&(net, len, _)| in_block(bits, net, len))
    {
        return Some(why.to_string());
    }
    (!in_block(bits, 0x2000 << 112, 3))
        .then(|| "a reserved address (outside global unicast 2000::/3, RFC 4291)".to_string())
}

fn embedded(what: &str, v4: u32) -> String {
    format!(
        "{what} standing for the IPv4 address {}; test that address itself",
        Ipv4Addr::from(v4)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn why(text: &str) -> Option<String> {
        non_public(text.parse().expect("address"))
    }

    #[test]
    fn every_special_purpose_block_is_refused_with_its_name() {
        for (addr, needle) in [
            ("0.0.0.0", "this network"),
            ("10.0.0.1", "private"),
            ("100.64.1.1", "carrier-grade NAT"),
            ("127.0.0.1", "loopback"),
            ("127.255.255.254", "loopback"),
            ("169.254.169.254", "link-local"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.0.0.8", "IETF protocol"),
            ("192.0.2.1", "TEST-NET-1"),
            ("192.88.99.1", "6to4 relay"),
            ("192.168.1.1", "private"),
            ("198.18.0.1", "benchmarking"),
            ("198.19.255.255", "benchmarking"),
            ("198.51.100.7", "TEST-NET-2"),
            ("203.0.113.9", "TEST-NET-3"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("240.0.0.1", "reserved"),
            ("255.255.255.255", "broadcast"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:10.1.2.3", "private"),
            ("::127.0.0.1", "IPv4-compatible"),
            ("64:ff9b::7f00:1", "NAT64"),
            ("64:ff9b:1::1", "local-use NAT64"),
            ("100::1", "discard-only"),
            ("2001:db8::1", "documentation"),
            ("2001::1", "Teredo"),
            ("2001:10::1", "IETF protocol"),
            ("2002:7f00:1::1", "6to4"),
            ("3fff::1", "documentation"),
            ("5f00::1", "SRv6"),
            ("fc00::1", "unique local"),
            ("fd12:3456::1", "unique local"),
            ("fe80::1", "link-local"),
            ("fec0::1", "site-local"),
            ("ff02::1", "multicast"),
            ("4000::1", "outside global unicast"),
            ("::2", "IPv4-compatible"),
        ] {
            let got = why(addr).unwrap_or_else(|| panic!("{addr} was taken for public"));
            assert!(got.contains(needle), "{addr}: {got}");
        }
    }

    #[test]
    fn embedded_ipv4_addresses_are_named() {
        assert_eq!(
            why("64:ff9b::7f00:1").as_deref(),
            Some(
                "a NAT64 address (RFC 6052) standing for the IPv4 address 127.0.0.1; test that address itself"
            )
        );
        assert!(why("2002:c000:0201::1").unwrap().contains("192.0.2.1"));
    }

    #[test]
    fn public_addresses_pass() {
        for addr in [
            "1.1.1.1",
            "8.8.8.8",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.255",
            "192.0.3.0",
            "192.167.255.255",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "::ffff:8.8.8.8",
            "2001:4860:4860::8888",
            "2a00:1450:4001:80b::200e",
            "2606:4700::1111",
        ] {
            assert_eq!(why(addr), None, "{addr}");
        }
    }
}
