//! The embedded registry: used in-process and inside godwitd.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One live binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Service UUID.
    pub uuid: String,
    /// Current address.
    pub address: String,
    /// Time left on the lease (zero when the backend does not say).
    pub expires_in: Duration,
}

#[derive(Debug)]
struct Entry {
    address: String,
    expires: Instant,
}

/// An in-memory name registry with leases. Expired entries are ignored and swept lazily.
#[derive(Debug, Default)]
pub struct Registry {
    entries: Mutex<HashMap<String, Entry>>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding this lock cannot leave the map inconsistent (each
        // operation is a single insert/remove), so a poisoned lock is still usable.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Binds `uuid -> address` until `ttl` from now.
    pub fn advertise(&self, uuid: &str, address: &str, ttl: Duration) {
        let expires = Instant::now() + ttl;
        self.lock().insert(
            uuid.to_string(),
            Entry {
                address: address.to_string(),
                expires,
            },
        );
    }

    /// The live address of `uuid`.
    pub fn resolve(&self, uuid: &str) -> Option<String> {
        let mut map = self.lock();
        match map.get(uuid) {
            Some(e) if e.expires > Instant::now() => Some(e.address.clone()),
            Some(_) => {
                map.remove(uuid);
                None
            }
            None => None,
        }
    }

    /// Removes the binding of `uuid` if `address` is `None` or equals the bound address.
    pub fn withdraw(&self, uuid: &str, address: Option<&str>) -> bool {
        let mut map = self.lock();
        match map.get(uuid) {
            Some(e) if address.is_none_or(|a| a == e.address) => {
                map.remove(uuid);
                true
            }
            _ => false,
        }
    }

    /// Every live binding, sorted by UUID.
    pub fn list(&self) -> Vec<Record> {
        let now = Instant::now();
        let mut map = self.lock();
        map.retain(|_, e| e.expires > now);
        let mut out: Vec<Record> = map
            .iter()
            .map(|(k, e)| Record {
                uuid: k.clone(),
                address: e.address.clone(),
                expires_in: e.expires - now,
            })
            .collect();
        out.sort_by(|a, b| a.uuid.cmp(&b.uuid));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_expiry_and_compare_delete() {
        let r = Registry::default();
        r.advertise("a", "1.1.1.1:1", Duration::from_secs(60));
        assert_eq!(r.resolve("a").as_deref(), Some("1.1.1.1:1"));
        assert!(
            !r.withdraw("a", Some("2.2.2.2:2")),
            "must not remove someone else's binding"
        );
        assert_eq!(r.list().len(), 1);
        assert!(r.withdraw("a", Some("1.1.1.1:1")));
        assert_eq!(r.resolve("a"), None);
        r.advertise("b", "x:1", Duration::ZERO);
        assert_eq!(r.resolve("b"), None, "an expired lease is invisible");
        assert!(r.list().is_empty());
    }
}
