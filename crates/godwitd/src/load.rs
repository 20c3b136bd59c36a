//! The node's load, measured once per heartbeat: run queue (`/proc/loadavg`,
//! `procs_running` of `/proc/stat`), CPU use (the busy share of `/proc/stat`'s
//! CPU time since the previous sample, over every CPU), memory (`/proc/meminfo`)
//! and, for each process the agent manages (programs it started, transparent
//! processes it restored or received), its CPU use since the previous sample and
//! its resident memory. A short history (the last [`HISTORY`]) is kept for plots.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{lock, Agent};

/// How far back `GET /v1/load/history` goes.
pub const HISTORY: Duration = Duration::from_secs(600);

/// One process the agent manages, as measured.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProcLoad {
    pub pid: i32,
    pub program: String,
    /// `started` (by POST /v1/exec), `service` (a started conformist service) or
    /// `transparent` (restored or received here).
    pub kind: String,
    /// Share of one CPU since the previous sample (100 = one CPU busy).
    pub cpu_percent: f64,
    pub rss_bytes: u64,
    /// A conformist service: its UUID and address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Where a transparent process came from ("migrated from ...").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// A transparent process: since when this node has it (the balancer
    /// leaves a process alone for a while after it arrived).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_unix_ms: Option<u64>,
    /// Kept where it is by the balancer (`godwit node pin`).
    #[serde(default)]
    pub pinned: bool,
}

/// The node's load at one instant.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Load {
    pub unix_ms: u64,
    /// `/proc/loadavg`: 1, 5 and 15 minute averages.
    pub loadavg: [f64; 3],
    /// `procs_running` of `/proc/stat`: the run queue now.
    pub procs_running: u64,
    pub cpus: u32,
    /// Busy share of all CPUs since the previous sample (0 to 100).
    pub cpu_percent: f64,
    pub mem_total_bytes: u64,
    pub mem_free_bytes: u64,
    pub mem_available_bytes: u64,
    /// The managed processes (empty in the history).
    #[serde(default)]
    pub processes: Vec<ProcLoad>,
    /// Memory the managed processes may use here (`--balance-mem-budget-mib`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_budget_bytes: Option<u64>,
}

/// Measures the load; keeps what the deltas need and the history.
#[derive(Default)]
pub struct Sampler {
    /// (busy, total) jiffies of the `cpu` line at the previous sample.
    prev_cpu: Option<(u64, u64)>,
    /// Per process: (utime+stime, start time, total jiffies of all CPUs / CPUs) then.
    prev_proc: HashMap<i32, (u64, u64, f64)>,
    history: VecDeque<Load>,
    last: Option<Load>,
}

use crate::now_ms;

/// `/proc/stat`: (busy jiffies, total jiffies, CPUs, procs_running).
fn proc_stat() -> Option<(u64, u64, u32, u64)> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let mut cpu = None;
    let mut cpus = 0;
    let mut running = 0;
    for l in s.lines() {
        if let Some(rest) = l.strip_prefix("cpu ") {
            let v: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal (guest is in user).
            let total: u64 = v.iter().take(8).sum();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            cpu = Some((total.saturating_sub(idle), total));
        } else if l.starts_with("cpu") {
            cpus += 1;
        } else if let Some(r) = l.strip_prefix("procs_running ") {
            running = r.trim().parse().unwrap_or(0);
        }
    }
    let (busy, total) = cpu?;
    Some((busy, total, cpus.max(1), running))
}

fn loadavg() -> [f64; 3] {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = s.split_whitespace().map(|x| x.parse().unwrap_or(0.0));
    [
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
    ]
}

/// `/proc/meminfo`: (total, free, available) in bytes.
fn meminfo() -> (u64, u64, u64) {
    let s = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
            << 10
    };
    (
        field("MemTotal:"),
        field("MemFree:"),
        field("MemAvailable:"),
    )
}

/// `/proc/PID/stat`: (utime+stime, start time) in jiffies; RSS pages from statm.
fn proc_times(pid: i32) -> Option<(u64, u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let close = s.rfind(')')?;
    let f: Vec<&str> = s.get(close + 2..)?.split_whitespace().collect();
    let cpu = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let start = f.get(19)?.parse().ok()?;
    let rss = std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    Some((cpu, start, rss))
}

fn program_of(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .and_then(|b| {
            b.split(|c| *c == 0)
                .next()
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
        })
        .unwrap_or_default()
}

impl Sampler {
    /// Measures now (CPU shares over the time since the previous call), records it in
    /// the history and returns it.
    pub fn sample(&mut self, agent: &Agent) -> Load {
        let (busy, total, cpus, procs_running) = proc_stat().unwrap_or((0, 0, 1, 0));
        let cpu_percent = match self.prev_cpu {
            Some((b0, t0)) if total > t0 => {
                100.0 * busy.saturating_sub(b0) as f64 / (total - t0) as f64
            }
            _ => 0.0,
        };
        self.prev_cpu = Some((busy, total));
        let (mem_total_bytes, mem_free_bytes, mem_available_bytes) = meminfo();

        // Whom the agent manages: what it started (still running) and what it restored
        // or received.
        let mut managed: BTreeMap<i32, ProcLoad> = BTreeMap::new();
        for (pid, p) in lock(&agent.procs).iter().filter(|(_, p)| p.running) {
            let pid = *pid as i32;
            managed.insert(
                pid,
                ProcLoad {
                    pid,
                    program: p.program.clone(),
                    kind: if p.service.is_some() {
                        "service"
                    } else {
                        "started"
                    }
                    .into(),
                    cpu_percent: 0.0,
                    rss_bytes: 0,
                    uuid: p.service.as_ref().map(|s| s.1.clone()),
                    address: p.service.as_ref().map(|s| s.0.clone()),
                    origin: None,
                    since_unix_ms: None,
                    pinned: false,
                },
            );
        }
        for (pid, m) in lock(&agent.transparent).iter() {
            managed.entry(*pid).or_insert_with(|| ProcLoad {
                pid: *pid,
                program: program_of(*pid),
                kind: "transparent".into(),
                cpu_percent: 0.0,
                rss_bytes: 0,
                uuid: None,
                address: None,
                origin: Some(m.origin.clone()),
                since_unix_ms: Some(m.since_unix_ms),
                pinned: m.pinned,
            });
        }
        // Per-process CPU: its ticks over the wall time of one CPU since the last sample.
        let per_cpu_total = total as f64 / f64::from(cpus);
        let mut seen = HashMap::new();
        let mut processes = Vec::new();
        for (pid, mut p) in managed {
            let Some((ticks, start, rss)) = proc_times(pid) else {
                continue; // gone since
            };
            if let Some((t0, s0, w0)) = self.prev_proc.get(&pid) {
                if *s0 == start && per_cpu_total > *w0 {
                    p.cpu_percent = 100.0 * ticks.saturating_sub(*t0) as f64 / (per_cpu_total - w0);
                }
            }
            p.rss_bytes = rss * PAGE;
            seen.insert(pid, (ticks, start, per_cpu_total));
            processes.push(p);
        }
        self.prev_proc = seen;

        let load = Load {
            unix_ms: now_ms(),
            loadavg: loadavg(),
            procs_running,
            cpus,
            cpu_percent,
            mem_total_bytes,
            mem_free_bytes,
            mem_available_bytes,
            processes,
            mem_budget_bytes: agent.balance.policy.mem_budget,
        };
        let oldest = load.unix_ms.saturating_sub(HISTORY.as_millis() as u64);
        while self.history.front().is_some_and(|l| l.unix_ms < oldest) {
            self.history.pop_front();
        }
        self.history.push_back(Load {
            processes: Vec::new(),
            ..load.clone()
        });
        self.last = Some(load.clone());
        load
    }

    /// The latest sample (None before the first).
    pub fn last(&self) -> Option<&Load> {
        self.last.as_ref()
    }

    /// The samples of the last [`HISTORY`], oldest first, without processes.
    pub fn history(&self) -> impl Iterator<Item = &Load> {
        self.history.iter()
    }
}

/// Bytes per page of `/proc/PID/statm` (x86-64 and aarch64 4K kernels, as the
/// engine assumes).
const PAGE: u64 = 4096;
