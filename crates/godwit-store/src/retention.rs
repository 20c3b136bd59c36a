//! Retention: which checkpoints a store keeps ([`Store::prune`]).
//!
//! The rule works per process (the checkpoints of one root PID; those
//! without a PID form one group): the newest `keep` of each are kept, and
//! of the others those older than `max_age` go. The newest checkpoint of a
//! process is never removed by age (it is the only way back to it). Then
//! [`Store::gc`] frees the chunks no remaining checkpoint refers to: a
//! checkpoint that shares chunks with a kept one frees only its own.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::{GcReport, Result, Store, Summary};

/// What to keep (`None`: no limit of that kind).
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct Retention {
    /// The newest this many checkpoints of each process (at least 1).
    pub keep: Option<usize>,
    /// Checkpoints older than this (the newest of a process excepted).
    pub max_age: Option<Duration>,
}

/// What [`Store::prune`] did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PruneReport {
    /// Checkpoints removed, oldest first.
    pub removed: Vec<String>,
    /// Checkpoints left.
    pub kept: u64,
    /// The collection that followed.
    pub gc: GcReport,
}

impl Retention {
    /// Whether the rule removes anything at all.
    pub fn is_none(&self) -> bool {
        self.keep.is_none() && self.max_age.is_none()
    }

    /// The checkpoints of `list` (oldest first, as [`Store::list`] gives
    /// them) this rule removes at `now_ms`.
    pub fn doomed(&self, list: &[Summary], now_ms: u64) -> Vec<String> {
        let mut by_pid: BTreeMap<Option<i32>, Vec<&Summary>> = BTreeMap::new();
        for s in list {
            by_pid.entry(s.pid).or_default().push(s);
        }
        let mut out = Vec::new();
        for group in by_pid.values() {
            let n = group.len();
            for (i, s) in group.iter().enumerate() {
                let from_newest = n - 1 - i; // 0 for the newest
                let over_count = self.keep.is_some_and(|k| from_newest >= k.max(1));
                let too_old = from_newest > 0
                    && self.max_age.is_some_and(|a| {
                        now_ms.saturating_sub(s.created_unix_ms) > a.as_millis() as u64
                    });
                if over_count || too_old {
                    out.push(s.id.clone());
                }
            }
        }
        let order: BTreeMap<&str, usize> = list
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id.as_str(), i))
            .collect();
        out.sort_by_key(|id| order.get(id.as_str()).copied());
        out
    }
}

impl Store {
    /// Removes the checkpoints `rule` does not keep, then collects the
    /// chunks no checkpoint refers to any more.
    pub fn prune(&self, rule: &Retention) -> Result<PruneReport> {
        let list = self.list()?;
        let removed = rule.doomed(&list, crate::now_ms());
        for id in &removed {
            self.remove(id)?;
        }
        let gc = self.gc()?;
        Ok(PruneReport {
            kept: (list.len() - removed.len()) as u64,
            removed,
            gc,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(id: &str, pid: i32, t: u64) -> Summary {
        Summary {
            id: id.into(),
            parent: None,
            parent_present: false,
            pid: Some(pid),
            created_unix_ms: t,
            page_bytes: 0,
            chunks: 0,
            new_chunks: 0,
            new_stored_bytes: 0,
        }
    }

    #[test]
    fn keeps_the_newest_per_process_and_never_the_last_by_age() {
        let list = [
            s("a1", 1, 1000),
            s("b1", 2, 1500),
            s("a2", 1, 2000),
            s("a3", 1, 3000),
            s("b2", 2, 3500),
        ];
        let keep2 = Retention {
            keep: Some(2),
            max_age: None,
        };
        assert_eq!(keep2.doomed(&list, 4000), ["a1"]);
        let keep1 = Retention {
            keep: Some(1),
            max_age: None,
        };
        assert_eq!(keep1.doomed(&list, 4000), ["a1", "b1", "a2"]);
        // Older than 1.5 s at t=4000: a1, b1, a2; b2 and a3 are the newest.
        let age = Retention {
            keep: None,
            max_age: Some(Duration::from_millis(1500)),
        };
        assert_eq!(age.doomed(&list, 4000), ["a1", "b1", "a2"]);
        // Everything old: each process keeps its newest.
        assert_eq!(age.doomed(&list, 100_000), ["a1", "b1", "a2"]);
        assert!(Retention::default().doomed(&list, 4000).is_empty());
        // keep 0 means 1: a process always keeps one.
        let keep0 = Retention {
            keep: Some(0),
            max_age: None,
        };
        assert_eq!(keep0.doomed(&list, 4000), ["a1", "b1", "a2"]);
    }
}
