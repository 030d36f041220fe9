//! An inclusive IPv4 address range, as MetalLB writes its pools: `A-B` or a CIDR.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnet::Ipv4Net;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
}

impl IpRange {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        (self.first..=self.last).contains(&ip)
    }

    /// How many addresses the range holds.
    pub fn address_count(&self) -> u64 {
        u64::from(u32::from(self.last)) - u64::from(u32::from(self.first)) + 1
    }

    pub fn within(&self, net: &Ipv4Net) -> bool {
        net.contains(&self.first) && net.contains(&self.last)
    }
}

impl FromStr for IpRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if let Some((first, last)) = text.split_once('-') {
            let parse = |part: &str| {
                part.trim().parse::<Ipv4Addr>().map_err(|_| format!("`{}` is not an IPv4 address", part.trim()))
            };
            let (first, last) = (parse(first)?, parse(last)?);
            if first > last {
                return Err(format!("starts after it ends ({first} > {last})"));
            }
            Ok(IpRange { first, last })
        } else if let Ok(net) = text.parse::<Ipv4Net>() {
            Ok(IpRange { first: net.network(), last: net.broadcast() })
        } else {
            Err("is neither `FIRST-LAST` (e.g. 172.16.16.101-172.16.16.120) nor a CIDR".into())
        }
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl Serialize for IpRange {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dash_ranges_and_cidrs() {
        let pool: IpRange = "172.16.16.101-172.16.16.120".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(pool.address_count(), 20);
        assert!(pool.contains(Ipv4Addr::new(172, 16, 16, 101)));
        assert!(pool.contains(Ipv4Addr::new(172, 16, 16, 120)));
        assert!(!pool.contains(Ipv4Addr::new(172, 16, 16, 121)));
        let cidr: IpRange = "10.0.0.0/30".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cidr.to_string(), "10.0.0.0-10.0.0.3");
        assert!("10.0.0.9-10.0.0.1".parse::<IpRange>().unwrap_err().contains("starts after"));
        assert!("10.0.0.1-banana".parse::<IpRange>().unwrap_err().contains("banana"));
        assert!("banana".parse::<IpRange>().is_err());
    }
}
