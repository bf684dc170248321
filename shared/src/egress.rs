//! The egress policy: whether a worker may contact an outbound address (an agent's endpoint or the
//! Omni Gateway). An agent's answer becomes a task result anyone with the API key can read, so an
//! endpoint aimed at a cloud metadata service would hand out the host's credentials.
//!
//! Refused by default: link-local ranges (169.254.0.0/16 and fe80::/10, where cloud metadata
//! services live), known metadata addresses outside them, unspecified, multicast, broadcast and
//! reserved addresses. Private ranges (10/8, 172.16/12, 192.168/16, unique-local fc00::/7) and
//! loopback stay allowed: agents often run in the same cluster or on the same host. An IPv6
//! address that embeds an IPv4 one (IPv4-mapped, IPv4-compatible, IPv4-translated, NAT64 64:ff9b::/96,
//! 6to4 2002::/16) is judged by both addresses.
//!
//! `BGAGENT_EGRESS_DENY` and `BGAGENT_EGRESS_ALLOW` take comma-separated CIDRs, IP addresses and
//! host names (a name matches itself and every subdomain). Deny wins over allow; allow re-opens
//! what is refused by default. The API checks endpoints at registration; workers check again on
//! every resolved address at connect time, so DNS rebinding cannot get around the policy.

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::{Error, Result};

/// Settings of the egress policy (flattened into the API's and the workers' settings).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct EgressConfig {
    /// Outbound addresses (agent endpoints, the Omni Gateway) allowed although the default policy
    /// refuses them: comma-separated CIDRs, IP addresses and host names (a name also matches its
    /// subdomains).
    #[arg(long, env = "BGAGENT_EGRESS_ALLOW", default_value = "", hide_default_value = true,
          value_parser = parse_allow)]
    pub egress_allow: Rules,
    /// Outbound addresses never contacted, written as for the allow list; deny wins over allow.
    #[arg(long, env = "BGAGENT_EGRESS_DENY", default_value = "", hide_default_value = true,
          value_parser = parse_deny)]
    pub egress_deny: Rules,
}

impl EgressConfig {
    /// The policy these settings describe.
    pub fn policy(&self) -> EgressPolicy {
        EgressPolicy::new(self.egress_allow.clone(), self.egress_deny.clone())
    }
}

fn parse_allow(value: &str) -> Result<Rules, String> {
    Rules::parse(value).map_err(|e| format!("BGAGENT_EGRESS_ALLOW: {e}"))
}

fn parse_deny(value: &str) -> Result<Rules, String> {
    Rules::parse(value).map_err(|e| format!("BGAGENT_EGRESS_DENY: {e}"))
}

/// One allow or deny list: networks and host names.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rules {
    nets: Vec<IpNet>,
    /// Lower case, without a trailing dot.
    names: Vec<String>,
}

impl Rules {
    /// Parse a comma-separated list of CIDRs, IP addresses and host names. Addresses are read as
    /// a URL host would be (`0xA9FEA9FE` is 169.254.169.254; `[::1]` is ::1), so an entry means
    /// what the same spelling in an endpoint means.
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut rules = Self::default();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if entry.contains('/') {
                let net: IpNet = entry
                    .trim_start_matches('[')
                    .replace("]/", "/")
                    .parse()
                    .map_err(|_| format!("{entry:?} is not a CIDR such as 10.0.0.0/8"))?;
                rules.nets.push(net.trunc());
                continue;
            }
            if let Ok(ip) = entry.parse::<IpAddr>() {
                rules.nets.push(IpNet::from(ip));
                continue;
            }
            match url::Host::parse(entry) {
                Ok(url::Host::Ipv4(ip)) => rules.nets.push(IpNet::from(IpAddr::V4(ip))),
                Ok(url::Host::Ipv6(ip)) => rules.nets.push(IpNet::from(IpAddr::V6(ip))),
                Ok(url::Host::Domain(name)) => rules.names.push(normalise_name(&name)),
                Err(_) => {
                    return Err(format!(
                        "{entry:?} is not a CIDR, an IP address or a host name"
                    ));
                }
            }
        }
        Ok(rules)
    }

    fn matches_ip(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|net| net.contains(&ip))
    }

    fn matches_name(&self, name: &str) -> bool {
        let name = normalise_name(name);
        self.names.iter().any(|rule| {
            name == *rule
                || name
                    .strip_suffix(rule.as_str())
                    .is_some_and(|head| head.ends_with('.'))
        })
    }
}

fn normalise_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Why an address may not be contacted. The message names the host or address, never the URL
/// (its path or query may carry secrets).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("egress refused: {0}")]
pub struct Refused(String);

/// The egress policy: the default refusals plus the configured allow and deny lists.
#[derive(Clone, Debug, Default)]
pub struct EgressPolicy {
    allow: Rules,
    deny: Rules,
}

/// Host names of metadata services, refused before they are even resolved (the resolved address
/// is refused anyway; this gives a clear answer at registration).
const METADATA_NAMES: &[&str] = &["metadata.google.internal", "instance-data.ec2.internal"];

/// Metadata and platform addresses outside the link-local ranges.
const METADATA_V4: &[Ipv4Addr] = &[
    Ipv4Addr::new(100, 100, 100, 200), // Alibaba Cloud
    Ipv4Addr::new(192, 0, 0, 192),     // Oracle Cloud (classic)
    Ipv4Addr::new(168, 63, 129, 16),   // Azure WireServer
];
const METADATA_V6: &[Ipv6Addr] = &[
    Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254), // AWS IMDS
    Ipv6Addr::new(0xfd20, 0xce, 0, 0, 0, 0, 0, 0x254),  // Google Cloud
];

impl EgressPolicy {
    /// The default policy plus `allow` and `deny`.
    pub fn new(allow: Rules, deny: Rules) -> Self {
        Self { allow, deny }
    }

    /// Check a URL's host: an IP literal by its address, a name by the name lists (its
    /// addresses are checked when it is resolved, with [`EgressPolicy::check_addr`]).
    pub fn check_url(&self, url: &url::Url) -> Result<(), Refused> {
        match url.host() {
            Some(url::Host::Ipv4(ip)) => self.check_addr(None, IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => self.check_addr(None, IpAddr::V6(ip)),
            Some(url::Host::Domain(name)) => self.check_name(name),
            None => Err(Refused("the URL has no host".into())),
        }
    }

    /// Check a host name before it is resolved.
    pub fn check_name(&self, name: &str) -> Result<(), Refused> {
        if self.deny.matches_name(name) {
            return Err(Refused(format!(
                "host {name} is denied by BGAGENT_EGRESS_DENY"
            )));
        }
        if self.allow.matches_name(name) {
            return Ok(());
        }
        let normal = normalise_name(name);
        if METADATA_NAMES.contains(&normal.as_str()) {
            return Err(Refused(format!(
                "host {name} is a cloud metadata service (allow it with BGAGENT_EGRESS_ALLOW)"
            )));
        }
        Ok(())
    }

    /// Check an address about to be connected to; `name` is the host name it was resolved from,
    /// if any, so a name on the allow or deny list applies to its addresses.
    pub fn check_addr(&self, name: Option<&str>, ip: IpAddr) -> Result<(), Refused> {
        if let Some(name) = name {
            self.check_name(name)?;
        }
        let both = [Some(ip), embedded_v4(ip).map(IpAddr::V4)];
        let mut candidates = both.iter().flatten().copied();
        if let Some(hit) = candidates.clone().find(|ip| self.deny.matches_ip(*ip)) {
            return Err(Refused(format!(
                "address {hit} is denied by BGAGENT_EGRESS_DENY"
            )));
        }
        if name.is_some_and(|n| self.allow.matches_name(n))
            || candidates.clone().any(|ip| self.allow.matches_ip(ip))
        {
            return Ok(());
        }
        match candidates.find_map(|ip| default_refusal(ip).map(|why| (ip, why))) {
            Some((hit, why)) => Err(Refused(format!(
                "address {hit} is {why} (allow it with BGAGENT_EGRESS_ALLOW)"
            ))),
            None => Ok(()),
        }
    }
}

/// Why the default policy refuses `ip`, if it does.
fn default_refusal(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            if a == 0 {
                Some("unspecified (0.0.0.0/8)")
            } else if a == 169 && b == 254 {
                Some("link-local (169.254.0.0/16), where cloud metadata services live")
            } else if METADATA_V4.contains(&v4) {
                Some("a cloud metadata address")
            } else if v4.is_multicast() {
                Some("multicast (224.0.0.0/4)")
            } else if a >= 240 {
                Some("broadcast or reserved (240.0.0.0/4)")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            if v6.is_unspecified() {
                Some("unspecified (::)")
            } else if first & 0xffc0 == 0xfe80 {
                Some("link-local (fe80::/10)")
            } else if METADATA_V6.contains(&v6) {
                Some("a cloud metadata address")
            } else if v6.is_multicast() {
                Some("multicast (ff00::/8)")
            } else {
                None
            }
        }
    }
}

/// The IPv4 address an IPv6 one carries, for the forms that reach it: IPv4-mapped
/// (::ffff:a.b.c.d), IPv4-compatible (::a.b.c.d, deprecated), IPv4-translated
/// (::ffff:0:a.b.c.d), NAT64 (64:ff9b::a.b.c.d) and 6to4 (2002:aabb:ccdd::/48).
fn embedded_v4(ip: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else { return None };
    let o = v6.octets();
    let low = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    match v6.segments() {
        // ::ffff:a.b.c.d
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(low),
        // :: and ::1 are the IPv6 unspecified and loopback addresses, not IPv4-compatible ones.
        [0, 0, 0, 0, 0, 0, 0, 0 | 1] => None,
        [0, 0, 0, 0, 0, 0, _, _] | [0, 0, 0, 0, 0xffff, 0, _, _] => Some(low),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low),
        [0x2002, ..] => Some(Ipv4Addr::new(o[2], o[3], o[4], o[5])),
        _ => None,
    }
}

/// Check an endpoint at registration, as a validation error on `field`.
pub fn check_endpoint(policy: &EgressPolicy, field: &'static str, url: &url::Url) -> Result<()> {
    policy.check_url(url).map_err(|refused| {
        Error::invalid(
            field,
            format!("is refused by the egress policy: {}", refused.0),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &str, deny: &str) -> EgressPolicy {
        EgressPolicy::new(
            Rules::parse(allow).unwrap_or_default(),
            Rules::parse(deny).unwrap_or_default(),
        )
    }

    fn url_ok(policy: &EgressPolicy, url: &str) -> bool {
        let url = url::Url::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        policy.check_url(&url).is_ok()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn url_normalises_every_ipv4_spelling_to_one_address() {
        // The `url` crate follows WHATWG: these all name 169.254.169.254.
        for spelling in [
            "http://169.254.169.254/",
            "http://2852039166/",
            "http://0xA9FEA9FE/",
            "http://0xa9.0xfe.0xa9.0xfe/",
            "http://0251.0376.0251.0376/",
            "http://0251.254.43518/",
            "http://169.16689662/",
            "http://169.254.169.254./",
            "HTTP://169.254.169.254:80/latest/meta-data",
        ] {
            let url = url::Url::parse(spelling).unwrap_or_else(|e| panic!("{spelling}: {e}"));
            assert_eq!(
                url.host(),
                Some(url::Host::Ipv4(Ipv4Addr::new(169, 254, 169, 254))),
                "{spelling}"
            );
            assert!(!url_ok(&EgressPolicy::default(), spelling), "{spelling}");
        }
    }

    #[test]
    fn metadata_and_link_local_are_refused_in_every_spelling() {
        let p = EgressPolicy::default();
        for refused in [
            "http://169.254.169.254/latest/meta-data/",
            "http://169.254.170.2/v2/credentials",
            "http://169.254.0.1/",
            "http://[::ffff:169.254.169.254]/",
            "http://[::ffff:a9fe:a9fe]/",
            "http://[0:0:0:0:0:ffff:169.254.169.254]/",
            "http://[::169.254.169.254]/",
            "http://[::ffff:0:169.254.169.254]/",
            "http://[64:ff9b::169.254.169.254]/",
            "http://[2002:a9fe:a9fe::1]/",
            "http://[fe80::1]/",
            "http://[febf::1]/",
            "http://[fd00:ec2::254]/",
            "http://[fd20:ce::254]/",
            "http://100.100.100.200/",
            "http://168.63.129.16/",
            "http://metadata.google.internal/computeMetadata/v1/",
            "http://METADATA.google.internal./",
        ] {
            assert!(!url_ok(&p, refused), "{refused}");
        }
        // Zone ids cannot be spelled in a URL at all.
        assert!(url::Url::parse("http://[fe80::1%25eth0]/").is_err());
    }

    #[test]
    fn unspecified_multicast_and_broadcast_are_refused() {
        let p = EgressPolicy::default();
        for refused in [
            "0.0.0.0",
            "0.1.2.3",
            "::",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "240.0.0.1",
            "ff02::1",
            "::ffff:0.0.0.0",
            "::ffff:255.255.255.255",
        ] {
            assert!(p.check_addr(None, ip(refused)).is_err(), "{refused}");
        }
    }

    #[test]
    fn private_loopback_and_public_stay_allowed_by_default() {
        let p = EgressPolicy::default();
        for allowed in [
            "127.0.0.1",
            "::1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "fd12:3456::1",
            "fc00::1",
            "fd00:ec2::253",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
            "93.184.216.34",
            "2606:2800:220:1::1",
        ] {
            assert_eq!(p.check_addr(None, ip(allowed)), Ok(()), "{allowed}");
        }
        assert!(url_ok(&p, "http://127.0.0.1:9000/run"));
        assert!(url_ok(&p, "http://[::1]:9000/run"));
        assert!(url_ok(&p, "https://agent.example/x"));
        assert!(url_ok(&p, "http://2130706433/"), "127.0.0.1 in decimal");
    }

    #[test]
    fn deny_wins_over_allow_and_allow_reopens_defaults() {
        let p = policy("169.254.169.254", "");
        assert_eq!(p.check_addr(None, ip("169.254.169.254")), Ok(()));
        assert!(p.check_addr(None, ip("169.254.169.253")).is_err());
        assert!(url_ok(&p, "http://0xA9FEA9FE/"));

        let p = policy(
            "169.254.0.0/16, 10.0.0.0/8",
            "169.254.169.254/32,10.9.0.0/16",
        );
        assert!(p.check_addr(None, ip("169.254.169.254")).is_err());
        assert_eq!(p.check_addr(None, ip("169.254.1.1")), Ok(()));
        assert!(p.check_addr(None, ip("10.9.1.1")).is_err());
        assert_eq!(p.check_addr(None, ip("10.8.1.1")), Ok(()));

        // A denied IPv4 range also covers its IPv6 spellings.
        let p = policy("", "127.0.0.0/8");
        for denied in [
            "127.0.0.1",
            "127.9.9.9",
            "::ffff:127.0.0.1",
            "64:ff9b::7f00:1",
        ] {
            assert!(p.check_addr(None, ip(denied)).is_err(), "{denied}");
        }
        assert!(!url_ok(&p, "http://0x7f000001/"));
        assert!(!url_ok(&p, "http://017700000001/"));
        assert_eq!(p.check_addr(None, ip("::1")), Ok(()));

        let p = policy("", "fc00::/7,[fe80::]/10");
        assert!(p.check_addr(None, ip("fd12::1")).is_err());
        let err = p.check_addr(None, ip("fe80::1")).err();
        assert!(err.is_some_and(|e| e.to_string().contains("BGAGENT_EGRESS_DENY")));
    }

    #[test]
    fn names_match_themselves_and_subdomains() {
        let p = policy("metadata.google.internal", "Internal.Example.,localhost");
        assert!(url_ok(&p, "http://metadata.google.internal/"));
        assert_eq!(
            p.check_addr(Some("metadata.google.internal"), ip("169.254.169.254")),
            Ok(())
        );
        assert!(!url_ok(&p, "http://internal.example/"));
        assert!(!url_ok(&p, "http://a.b.INTERNAL.example./"));
        assert!(url_ok(&p, "http://notinternal.example/"));
        assert!(!url_ok(&p, "http://localhost:8080/"));
        // A denied name is refused whatever it resolves to.
        assert!(p.check_addr(Some("localhost"), ip("10.0.0.1")).is_err());
        // An allowed name is still checked against denied addresses.
        let p = policy("agent.example", "10.0.0.0/8");
        assert!(p.check_addr(Some("agent.example"), ip("10.0.0.1")).is_err());
        assert_eq!(
            p.check_addr(Some("agent.example"), ip("169.254.1.1")),
            Ok(())
        );
        assert!(
            p.check_addr(Some("other.example"), ip("169.254.1.1"))
                .is_err()
        );
    }

    #[test]
    fn rule_lists_parse_and_reject_garbage() {
        assert_eq!(Rules::parse(""), Ok(Rules::default()));
        assert_eq!(Rules::parse(" , ,"), Ok(Rules::default()));
        let rules = Rules::parse("10.0.0.1/8, ::1, [fd00::1], 0xA9FEA9FE, Example.COM")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rules.nets.len(), 4);
        assert!(rules.matches_ip(ip("10.200.0.1")));
        assert!(rules.matches_ip(ip("169.254.169.254")));
        assert!(rules.matches_ip(ip("fd00::1")));
        assert!(rules.matches_name("www.example.com"));
        for bad in ["10.0.0.0/33", "not a host", "http://x/", "a/b", "[::1"] {
            assert!(Rules::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn settings_parse_from_the_environment_names() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            egress: EgressConfig,
        }
        let cli = Cli::try_parse_from(["x", "--egress-deny", "10.0.0.0/8,db.internal"]);
        let policy = cli.map(|c| c.egress.policy()).unwrap_or_default();
        assert!(policy.check_addr(None, ip("10.1.1.1")).is_err());
        assert!(policy.check_name("db.internal").is_err());
        let cli = Cli::try_parse_from(["x", "--egress-allow", "10.0.0.0/99"]);
        let err = cli.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("BGAGENT_EGRESS_ALLOW"), "{err}");
    }

    #[test]
    fn refusals_name_the_field() {
        let url = url::Url::parse("http://169.254.169.254/latest?token=secret")
            .unwrap_or_else(|e| panic!("{e}"));
        match check_endpoint(&EgressPolicy::default(), "endpoint", &url) {
            Err(Error::Invalid { field, message }) => {
                assert_eq!(field, "endpoint");
                assert!(message.contains("169.254.169.254"), "{message}");
                assert!(!message.contains("secret"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
}
