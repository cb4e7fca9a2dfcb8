//! Where the compose services' ports land on the test machine.
//!
//! Under compose every container has a network namespace of its own and
//! reaches the others by service name (`redis:6379`, `enqueuer:9464`);
//! here every process shares 127.0.0.1. So each (service, container port)
//! gets a free loopback port of its own, the first time anything asks for
//! it, and [`Loopback::rewrite`] turns every `service:port` address in an
//! environment value, a command argument or a config file into
//! `127.0.0.1:<that port>`. That mapping (and the listen ports, which the
//! stack maps with [`Loopback::port`]) is the only change the harness
//! makes to what the compose file and the configs say.

use parking_lot::Mutex;
use std::collections::BTreeMap;

use stem_testkit::free_port;

/// The (service, container port) → loopback port table of one stack.
#[derive(Debug)]
pub struct Loopback {
    services: Vec<String>,
    ports: Mutex<BTreeMap<(String, u16), u16>>,
}

impl Loopback {
    /// A table for the compose services `services` (the names
    /// [`Loopback::rewrite`] recognises in addresses).
    pub fn new(services: impl IntoIterator<Item = String>) -> Self {
        let mut services: Vec<String> = services.into_iter().collect();
        // Longest first, so `worker-billing` is never read as `worker`.
        services.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Loopback {
            services,
            ports: Mutex::new(BTreeMap::new()),
        }
    }

    /// The loopback port standing for `service`'s container port `port`
    /// (picked on first use, the same ever after).
    pub fn port(&self, service: &str, port: u16) -> u16 {
        let mut ports = self.ports.lock();
        *ports
            .entry((service.to_string(), port))
            .or_insert_with(free_port)
    }

    /// `text` with every `<service>:<port>` address (at a word boundary)
    /// replaced by `127.0.0.1:<mapped port>`.
    pub fn rewrite(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut i = 0;
        'scan: while i < text.len() {
            let boundary = text[..i]
                .chars()
                .next_back()
                .is_none_or(|c| !(c.is_ascii_alphanumeric() || "-_.".contains(c)));
            if boundary {
                for service in &self.services {
                    let Some(rest) = text[i..].strip_prefix(service.as_str()) else {
                        continue;
                    };
                    let Some(rest) = rest.strip_prefix(':') else {
                        continue;
                    };
                    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
                    let after = rest[digits..].chars().next();
                    if digits == 0 || after.is_some_and(|c| c.is_ascii_alphanumeric()) {
                        continue;
                    }
                    let Ok(port) = rest[..digits].parse::<u16>() else {
                        continue;
                    };
                    out.push_str(&format!("127.0.0.1:{}", self.port(service, port)));
                    i += service.len() + 1 + digits;
                    continue 'scan;
                }
            }
            let Some(c) = text[i..].chars().next() else {
                break;
            };
            out.push(c);
            i += c.len_utf8();
        }
        out
    }

    /// `text` with every `127.0.0.1:<port>` (an address inside `service`'s
    /// own container, as its healthcheck uses) pointed at the mapped port.
    pub fn rewrite_local(&self, service: &str, text: &str) -> String {
        const LOCAL: &str = "127.0.0.1:";
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(at) = rest.find(LOCAL) {
            out.push_str(&rest[..at + LOCAL.len()]);
            rest = &rest[at + LOCAL.len()..];
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            match rest[..digits].parse::<u16>() {
                Ok(port) => out.push_str(&self.port(service, port).to_string()),
                Err(_) => out.push_str(&rest[..digits]),
            }
            rest = &rest[digits..];
        }
        out.push_str(rest);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_of_services_are_rewritten_and_nothing_else() {
        let lb = Loopback::new(["redis", "worker-billing", "enqueuer"].map(String::from));
        let redis = lb.port("redis", 6379);
        let billing = lb.port("worker-billing", 9464);
        assert_eq!(
            lb.rewrite("rediss://redis:6379/0"),
            format!("rediss://127.0.0.1:{redis}/0")
        );
        assert_eq!(
            lb.rewrite("  - worker-billing:9464\n"),
            format!("  - 127.0.0.1:{billing}\n")
        );
        // Not an address: no port, part of a longer name, a URL scheme.
        for same in [
            "proxy_pass http://enqueuer/;",
            "myredis:6379",
            "redis:",
            "redis:63x",
        ] {
            assert_eq!(lb.rewrite(same), same);
        }
        let health = lb.port("enqueuer", 8081);
        assert_eq!(
            lb.rewrite_local("enqueuer", "http://127.0.0.1:8081/readyz"),
            format!("http://127.0.0.1:{health}/readyz")
        );
    }
}
