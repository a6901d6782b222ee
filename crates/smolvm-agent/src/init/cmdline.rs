//! The `smolvm.*` kernel command-line parameters the host passes. The
//! dotted names matter: the kernel treats them as unknown module options
//! and neither passes them to init's environment nor complains.
//!
//! - `smolvm.hostname=NAME`  (1–63 of `[a-z0-9-]`)
//! - `smolvm.ip=ADDR/PREFIX` (IPv4 or IPv6, configured on eth0)
//! - `smolvm.gw=ADDR`        (default route via eth0)
//! - `smolvm.dns=ADDR[,ADDR...]` (at most 3 nameservers; may repeat)
//! - `smolvm.halt=poweroff|reboot` (what power-off ends with)
//!
//! Malformed values are ignored; the last valid occurrence wins.

use std::net::IpAddr;

use crate::system::identity::valid_hostname;
use crate::system::power::HaltAction;

/// resolv.conf honours at most three nameservers.
const MAX_DNS: usize = 3;

/// Boot settings taken from the kernel command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootConfig {
    pub hostname: Option<String>,
    pub address: Option<(IpAddr, u8)>,
    pub gateway: Option<IpAddr>,
    pub dns: Vec<IpAddr>,
    pub halt: HaltAction,
}

/// Parses the text of /proc/cmdline.
pub fn parse(cmdline: &str) -> BootConfig {
    let mut boot = BootConfig::default();
    for word in cmdline.split_whitespace() {
        let Some((key, value)) = word.split_once('=') else {
            continue;
        };
        let value = value.trim_matches('"');
        match key {
            "smolvm.hostname" if valid_hostname(value) => boot.hostname = Some(value.to_string()),
            "smolvm.ip" => {
                if let Some(address) = parse_cidr(value) {
                    boot.address = Some(address);
                }
            }
            "smolvm.gw" => {
                if let Ok(gateway) = value.parse() {
                    boot.gateway = Some(gateway);
                }
            }
            "smolvm.dns" => {
                for server in value.split(',').filter_map(|s| s.parse().ok()) {
                    if boot.dns.len() < MAX_DNS && !boot.dns.contains(&server) {
                        boot.dns.push(server);
                    }
                }
            }
            "smolvm.halt" => match value {
                "poweroff" => boot.halt = HaltAction::PowerOff,
                "reboot" => boot.halt = HaltAction::Reboot,
                _ => {}
            },
            _ => {}
        }
    }
    boot
}

fn parse_cidr(value: &str) -> Option<(IpAddr, u8)> {
    let (address, prefix) = value.split_once('/')?;
    let address: IpAddr = address.parse().ok()?;
    let prefix: u8 = prefix.parse().ok()?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    (prefix <= max).then_some((address, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_smolvm_parameters() {
        let boot = parse(
            "console=ttyS0 smolvm.hostname=sbx-1 smolvm.ip=10.0.0.2/24 smolvm.gw=10.0.0.1 \
             smolvm.dns=1.1.1.1,8.8.8.8 smolvm.halt=reboot quiet\n",
        );
        assert_eq!(boot.hostname.as_deref(), Some("sbx-1"));
        assert_eq!(boot.address, Some(("10.0.0.2".parse().unwrap(), 24)));
        assert_eq!(boot.gateway, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(
            boot.dns,
            vec!["1.1.1.1".parse::<IpAddr>().unwrap(), "8.8.8.8".parse().unwrap()]
        );
        assert_eq!(boot.halt, HaltAction::Reboot);
    }

    #[test]
    fn ignores_malformed_values() {
        let boot = parse(
            "smolvm.hostname=Bad_Name smolvm.ip=10.0.0.2 smolvm.ip=10.0.0.2/33 smolvm.gw=nope \
             smolvm.dns=x,1.1.1.1 smolvm.halt=explode smolvm.ip=fd00::2/64",
        );
        assert_eq!(boot.hostname, None);
        assert_eq!(boot.address, Some(("fd00::2".parse().unwrap(), 64)));
        assert_eq!(boot.gateway, None);
        assert_eq!(boot.dns, vec!["1.1.1.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(boot.halt, HaltAction::PowerOff);
        assert_eq!(parse(""), BootConfig::default());
    }
}
