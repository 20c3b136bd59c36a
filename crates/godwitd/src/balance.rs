//! Load balancing: processes move from busy nodes to idle ones, and away
//! from nodes short of memory, weighing what a move costs (the memory to
//! send over the link) against what it gains, with hysteresis so that
//! nothing bounces.
//!
//! Every node computes the same plan from the loads the heartbeats carry
//! ([`plan`], a pure function of them) and carries out only the moves of
//! its own processes, one at a time, so no two nodes ever move one process.
//! What is moved: transparent processes the agent manages (restored,
//! received or adopted with `godwit node adopt`), not pinned, and not
//! within [`Policy::cooldown`] of their arrival. Programs the agent started
//! itself and conformist services stay (their supervisor would have to hand
//! them over; services move with `godwit service migrate`).
//!
//! The load weighed is the CPU the managed processes use, as a share of the
//! node's CPUs: load that Godwit does not manage is not counted yet (on the
//! simulated hosts of scripts/cluster.sh every host shares one machine's
//! CPUs, so only the managed share tells the hosts apart).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Extension, Router};
use godwit_net::Scope;
use serde::Serialize;
use serde_json::{json, Value};

use crate::api::{need, ok, ApiError, ApiResult, Conn};
use crate::load::{Load, ProcLoad};
use crate::{lock, Agent};

/// The balancing rules (godwitd `--balance-*` options).
#[derive(Debug, Clone, Serialize)]
pub struct Policy {
    /// Nodes whose loads differ by less than this share of a node's CPUs
    /// are balanced; a move must bring them at least half of it closer.
    pub threshold: f64,
    /// A process that arrived on a node less than this long ago stays.
    #[serde(serialize_with = "secs")]
    pub cooldown: Duration,
    /// The link's rate, to price a move: its resident memory over it.
    pub link_bytes_per_sec: f64,
    /// Moves that would take longer than this to send are not made.
    pub max_move_secs: f64,
    /// Memory the managed processes of this node may use (`None`: no
    /// budget); beyond it, or when the node's available memory falls under
    /// [`MEM_LOW`] of its total, the node is under memory pressure.
    pub mem_budget: Option<u64>,
}

/// A node with less available memory than this share of its total is
/// under memory pressure.
pub const MEM_LOW: f64 = 0.10;

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            threshold: 0.2,
            cooldown: Duration::from_secs(60),
            link_bytes_per_sec: 100e6,
            max_move_secs: 30.0,
            mem_budget: None,
        }
    }
}

/// One node as the heartbeats describe it.
#[derive(Debug, Clone)]
pub struct NodeView {
    pub name: String,
    pub addr: String,
    pub alive: bool,
    pub load: Load,
}

/// One move of the plan.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Move {
    pub pid: i32,
    pub program: String,
    pub from: String,
    pub to: String,
    pub to_addr: String,
    /// "cpu" or "memory".
    pub reason: String,
    /// Why, in words.
    pub why: String,
    /// The process's CPU use, in CPUs, and resident memory.
    pub cpus: f64,
    pub rss_bytes: u64,
    /// Seconds its memory takes over the link.
    pub cost_secs: f64,
}

/// What the balancer would do now, and why not more.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Plan {
    pub moves: Vec<Move>,
    pub notes: Vec<String>,
}

fn busy(l: &Load) -> f64 {
    l.processes.iter().map(|p| p.cpu_percent).sum::<f64>() / 100.0 / f64::from(l.cpus.max(1))
}

fn managed_rss(l: &Load) -> u64 {
    l.processes.iter().map(|p| p.rss_bytes).sum()
}

/// Memory a node can take in before it is under pressure.
fn headroom(n: &NodeView, extra_rss: i64) -> i64 {
    let l = &n.load;
    let machine = l.mem_available_bytes as i64 - (l.mem_total_bytes as f64 * MEM_LOW) as i64;
    let budget = l
        .mem_budget_bytes
        .map_or(i64::MAX, |b| b as i64 - managed_rss(l) as i64);
    machine.min(budget) - extra_rss
}

fn movable(p: &ProcLoad, now_ms: u64, policy: &Policy) -> Result<(), String> {
    if p.kind != "transparent" {
        return Err(format!("{} ({}) is a {} process", p.pid, p.program, p.kind));
    }
    if p.pinned {
        return Err(format!("{} ({}) is pinned", p.pid, p.program));
    }
    let age = now_ms.saturating_sub(p.since_unix_ms.unwrap_or(0));
    if age < policy.cooldown.as_millis() as u64 {
        return Err(format!(
            "{} ({}) arrived {:.0} s ago (cool-down {:.0} s)",
            p.pid,
            p.program,
            age as f64 / 1e3,
            policy.cooldown.as_secs_f64()
        ));
    }
    Ok(())
}

/// The moves that would balance `nodes` now: at most one per node, from
/// the node under memory pressure first, then from the busiest. `now_ms`
/// is the time the cool-downs are measured at.
pub fn plan(nodes: &[NodeView], policy: &Policy, now_ms: u64) -> Plan {
    let mut out = Plan::default();
    let alive: Vec<&NodeView> = nodes.iter().filter(|n| n.alive).collect();
    if alive.len() < 2 {
        out.notes
            .push("fewer than two live nodes: nothing to balance".into());
        return out;
    }
    // Loads and memory as the planned moves change them.
    let mut load: BTreeMap<&str, f64> = alive
        .iter()
        .map(|n| (n.name.as_str(), busy(&n.load)))
        .collect();
    let mut taken: BTreeMap<&str, i64> = alive.iter().map(|n| (n.name.as_str(), 0)).collect();
    let cap = |n: &NodeView| f64::from(n.load.cpus.max(1));
    let mut order: Vec<&NodeView> = alive.clone();
    order.sort_by(|a, b| load[b.name.as_str()].total_cmp(&load[a.name.as_str()]));
    for src in order {
        let mut candidates: Vec<&ProcLoad> = Vec::new();
        for p in &src.load.processes {
            match movable(p, now_ms, policy) {
                Ok(()) => candidates.push(p),
                Err(why) if p.kind == "transparent" => {
                    out.notes.push(format!("{}: {why}", src.name))
                }
                Err(_) => {}
            }
        }
        let cost = |p: &ProcLoad| p.rss_bytes as f64 / policy.link_bytes_per_sec.max(1.0);
        candidates.retain(|p| {
            let ok = cost(p) <= policy.max_move_secs;
            if !ok {
                out.notes.push(format!(
                    "{}: {} ({}) would take {:.0} s to send (limit {:.0} s)",
                    src.name,
                    p.pid,
                    p.program,
                    cost(p),
                    policy.max_move_secs
                ));
            }
            ok
        });
        // Room at a destination, counting what the plan sends there.
        let room = |n: &NodeView, taken: &BTreeMap<&str, i64>, rss: u64| {
            headroom(n, taken[n.name.as_str()] + rss as i64) >= 0
        };
        // Memory first: a node over its budget or short of memory sends
        // its largest process to the node with the most room.
        if headroom(src, taken[src.name.as_str()]) < 0 {
            let best = candidates.iter().max_by_key(|p| p.rss_bytes).and_then(|p| {
                alive
                    .iter()
                    .filter(|n| n.name != src.name && room(n, &taken, p.rss_bytes))
                    .max_by_key(|n| headroom(n, taken[n.name.as_str()]))
                    .map(|n| (*p, *n))
            });
            match best {
                Some((p, dst)) => {
                    let c = p.cpu_percent / 100.0;
                    *load.get_mut(src.name.as_str()).unwrap() -= c / cap(src);
                    *load.get_mut(dst.name.as_str()).unwrap() += c / cap(dst);
                    *taken.get_mut(dst.name.as_str()).unwrap() += p.rss_bytes as i64;
                    *taken.get_mut(src.name.as_str()).unwrap() -= p.rss_bytes as i64;
                    out.moves.push(Move {
                        pid: p.pid,
                        program: p.program.clone(),
                        from: src.name.clone(),
                        to: dst.name.clone(),
                        to_addr: dst.addr.clone(),
                        reason: "memory".into(),
                        why: format!(
                            "{} is short of memory ({} MiB available, managed processes {} MiB{}); {} has room",
                            src.name,
                            src.load.mem_available_bytes >> 20,
                            managed_rss(&src.load) >> 20,
                            src.load.mem_budget_bytes.map_or(String::new(), |b| format!(" of a {} MiB budget", b >> 20)),
                            dst.name
                        ),
                        cpus: c,
                        rss_bytes: p.rss_bytes,
                        cost_secs: cost(p),
                    });
                    continue;
                }
                None => out.notes.push(format!(
                    "{} is short of memory but no movable process fits elsewhere",
                    src.name
                )),
            }
        }
        // CPU: to the least busy node with room, if that brings the two
        // closer by at least half the threshold.
        let Some(dst) = alive
            .iter()
            .filter(|n| n.name != src.name)
            .min_by(|a, b| load[a.name.as_str()].total_cmp(&load[b.name.as_str()]))
        else {
            continue;
        };
        let (ls, ld) = (load[src.name.as_str()], load[dst.name.as_str()]);
        let diff = ls - ld;
        if diff <= policy.threshold {
            continue;
        }
        let best = candidates
            .iter()
            .filter(|p| room(dst, &taken, p.rss_bytes))
            .map(|p| {
                let c = p.cpu_percent / 100.0;
                let after = ((ls - c / cap(src)) - (ld + c / cap(dst))).abs();
                (p, after)
            })
            .filter(|(_, after)| *after <= diff - policy.threshold / 2.0)
            .min_by(|a, b| a.1.total_cmp(&b.1));
        match best {
            Some((p, after)) => {
                let c = p.cpu_percent / 100.0;
                *load.get_mut(src.name.as_str()).unwrap() -= c / cap(src);
                *load.get_mut(dst.name.as_str()).unwrap() += c / cap(dst);
                *taken.get_mut(dst.name.as_str()).unwrap() += p.rss_bytes as i64;
                out.moves.push(Move {
                    pid: p.pid,
                    program: p.program.clone(),
                    from: src.name.clone(),
                    to: dst.name.clone(),
                    to_addr: dst.addr.clone(),
                    reason: "cpu".into(),
                    why: format!(
                        "{} runs at {:.0}% of its CPUs, {} at {:.0}%: moving {} ({:.0}% of a CPU, {} MiB, {:.1} s to send) leaves them {:.0} points apart",
                        src.name,
                        ls * 100.0,
                        dst.name,
                        ld * 100.0,
                        p.pid,
                        p.cpu_percent,
                        p.rss_bytes >> 20,
                        cost(p),
                        after * 100.0
                    ),
                    cpus: c,
                    rss_bytes: p.rss_bytes,
                    cost_secs: cost(p),
                });
            }
            None if !candidates.is_empty() => out.notes.push(format!(
                "{} ({:.0}%) and {} ({:.0}%): no move would bring them closer by {:.0} points",
                src.name,
                ls * 100.0,
                dst.name,
                ld * 100.0,
                policy.threshold * 50.0
            )),
            None => {}
        }
    }
    out
}

/// The balancer of this node: whether it runs, its rules, and what it did.
pub struct Balancer {
    pub enabled: AtomicBool,
    pub policy: Policy,
    pub every: Duration,
    /// Moves made by this node: (unix ms, move, error if it failed).
    done: std::sync::Mutex<Vec<(u64, Move, Option<String>)>>,
}

impl Balancer {
    pub fn new(enabled: bool, policy: Policy, every: Duration) -> Balancer {
        Balancer {
            enabled: AtomicBool::new(enabled),
            policy,
            every,
            done: std::sync::Mutex::new(Vec::new()),
        }
    }
}

use crate::now_ms;

/// Every node with the load its last heartbeat carried (this one's now).
fn views(agent: &Agent) -> Vec<NodeView> {
    let c = &agent.cluster;
    let mut out = vec![NodeView {
        name: c.name.clone(),
        addr: c.addr.clone(),
        alive: true,
        load: c.own_load(agent),
    }];
    for (name, addr, health, load) in c.peer_loads() {
        if let Some(load) = load {
            out.push(NodeView {
                name,
                addr,
                alive: health == crate::cluster::Health::Alive,
                load,
            });
        }
    }
    out
}

/// Runs the balancer of this node: every [`Balancer::every`], while enabled,
/// the first move of the plan that is this node's is made; after a move it
/// waits three heartbeats for the loads to show it.
pub fn start(agent: Arc<Agent>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(agent.balance.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !agent.balance.enabled.load(Ordering::SeqCst)
                || agent.stopping.load(Ordering::SeqCst)
            {
                continue;
            }
            let p = plan(&views(&agent), &agent.balance.policy, now_ms());
            let Some(m) = p.moves.into_iter().find(|m| m.from == agent.cluster.name) else {
                continue;
            };
            tracing::info!(pid = m.pid, to = %m.to, reason = %m.reason, "balancing: {}", m.why);
            let req = crate::migration::SendRequest {
                to: m.to_addr.clone(),
                mode: Some("pre-copy".into()),
                ..Default::default()
            };
            let r = crate::migration::send_migration(&agent, m.pid, &req).await;
            let err = r.err().map(|e| e.message().to_string());
            if let Some(e) = &err {
                tracing::warn!(pid = m.pid, to = %m.to, "balancing move failed: {e}");
            }
            lock(&agent.balance.done).push((now_ms(), m, err));
            tokio::time::sleep(agent.cluster.timing.heartbeat * 3).await;
        }
    });
}

pub fn routes() -> Router<Arc<Agent>> {
    Router::new()
        .route("/v1/balance", get(show).post(set))
        .route("/v1/processes/{pid}/pin", post(pin))
}

/// `GET /v1/balance` (`read`): on or off, the rules, the plan now (every
/// node's moves, with why, and why not more) and the moves this node made.
async fn show(State(agent): State<Arc<Agent>>, Extension(conn): Extension<Conn>) -> ApiResult {
    need(&conn, Scope::Read)?;
    let a = agent.clone();
    let p = tokio::task::spawn_blocking(move || plan(&views(&a), &a.balance.policy, now_ms()))
        .await
        .map_err(|e| ApiError::new(500, e.to_string()))?;
    let done: Vec<Value> = lock(&agent.balance.done)
        .iter()
        .map(|(t, m, e)| json!({"unix_ms": t, "move": m, "error": e}))
        .collect();
    ok(
        200,
        json!({
            "node": agent.cluster.name,
            "enabled": agent.balance.enabled.load(Ordering::SeqCst),
            "policy": agent.balance.policy,
            "every_secs": agent.balance.every.as_secs_f64(),
            "plan": p,
            "done": done,
        }),
    )
}

/// `POST /v1/balance` `{"enabled": bool}` (`operate`).
async fn set(
    State(agent): State<Arc<Agent>>,
    Extension(conn): Extension<Conn>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    need(&conn, Scope::Operate)?;
    let v = crate::api::json_body(body)?;
    let on = v["enabled"]
        .as_bool()
        .ok_or_else(|| ApiError::new(400, "`enabled` (true or false) is required"))?;
    agent.balance.enabled.store(on, Ordering::SeqCst);
    tracing::info!(enabled = on, "balancing switched");
    ok(200, json!({"node": agent.cluster.name, "enabled": on}))
}

/// `POST /v1/processes/{pid}/pin` `{"pinned": bool}` (`operate`): a managed
/// transparent process the balancer leaves where it is (or no longer).
async fn pin(
    State(agent): State<Arc<Agent>>,
    Extension(conn): Extension<Conn>,
    Path(pid): Path<i32>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    need(&conn, Scope::Operate)?;
    let v = crate::api::json_body(body)?;
    let pinned = v["pinned"].as_bool().unwrap_or(true);
    match lock(&agent.transparent).get_mut(&pid) {
        Some(m) => m.pinned = pinned,
        None => {
            return Err(ApiError::new(
                404,
                format!(
                    "process {pid} is not a transparent process this agent manages \
                     (restored, received or adopted here: `godwit node adopt --pid {pid}`)"
                ),
            ))
        }
    }
    ok(200, json!({"pid": pid, "pinned": pinned}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc_(pid: i32, cpu: f64, rss_mib: u64) -> ProcLoad {
        ProcLoad {
            pid,
            program: "spin".into(),
            kind: "transparent".into(),
            cpu_percent: cpu,
            rss_bytes: rss_mib << 20,
            uuid: None,
            address: None,
            origin: None,
            since_unix_ms: Some(0),
            pinned: false,
        }
    }

    fn node(name: &str, procs: Vec<ProcLoad>) -> NodeView {
        NodeView {
            name: name.into(),
            addr: format!("{name}:1"),
            alive: true,
            load: Load {
                cpus: 2,
                mem_total_bytes: 16 << 30,
                mem_available_bytes: 12 << 30,
                processes: procs,
                ..Default::default()
            },
        }
    }

    const NOW: u64 = 1_000_000;

    /// Applies `plan`'s moves to `nodes`.
    fn apply(nodes: &mut [NodeView], p: &Plan) {
        for m in &p.moves {
            let i = nodes.iter().position(|n| n.name == m.from).unwrap();
            let k = nodes[i]
                .load
                .processes
                .iter()
                .position(|q| q.pid == m.pid)
                .unwrap();
            let mut q = nodes[i].load.processes.remove(k);
            q.since_unix_ms = Some(0);
            let j = nodes.iter().position(|n| n.name == m.to).unwrap();
            nodes[j].load.processes.push(q);
        }
    }

    #[test]
    fn six_busy_processes_spread_two_per_node_and_stay() {
        let mut nodes = vec![
            node("n1", (1..=6).map(|p| proc_(p, 33.0, 8)).collect()),
            node("n2", vec![]),
            node("n3", vec![]),
        ];
        let policy = Policy::default();
        for _ in 0..10 {
            let p = plan(&nodes, &policy, NOW);
            // One move per node per round at most.
            let mut from: Vec<&str> = p.moves.iter().map(|m| m.from.as_str()).collect();
            from.dedup();
            assert_eq!(from.len(), p.moves.len(), "{p:?}");
            apply(&mut nodes, &p);
        }
        let counts: Vec<usize> = nodes.iter().map(|n| n.load.processes.len()).collect();
        assert_eq!(counts, vec![2, 2, 2]);
        // Settled: nothing moves, whatever the noise of ±30 % in the measurements.
        for (i, n) in nodes.iter_mut().enumerate() {
            for (k, p) in n.load.processes.iter_mut().enumerate() {
                p.cpu_percent = if (i + k) % 2 == 0 { 43.0 } else { 23.0 };
            }
        }
        let p = plan(&nodes, &policy, NOW);
        assert!(p.moves.is_empty(), "{p:?}");
    }

    #[test]
    fn pinned_arriving_and_started_processes_stay() {
        let mut busy = vec![proc_(1, 90.0, 8), proc_(2, 90.0, 8), proc_(3, 90.0, 8)];
        busy[0].pinned = true;
        busy[1].since_unix_ms = Some(NOW - 1000);
        busy[2].kind = "started".into();
        let nodes = vec![node("n1", busy), node("n2", vec![])];
        let p = plan(&nodes, &Policy::default(), NOW);
        assert!(p.moves.is_empty(), "{p:?}");
        assert!(p.notes.iter().any(|n| n.contains("pinned")), "{p:?}");
        assert!(p.notes.iter().any(|n| n.contains("cool-down")), "{p:?}");
    }

    #[test]
    fn a_node_over_its_memory_budget_sends_its_largest_process_where_it_fits() {
        let mut n1 = node("n1", vec![proc_(1, 0.0, 100), proc_(2, 0.0, 10)]);
        n1.load.mem_budget_bytes = Some(64 << 20);
        let mut n2 = node("n2", vec![]);
        n2.load.mem_budget_bytes = Some(50 << 20); // too small for it
        let n3 = node("n3", vec![]);
        let p = plan(&[n1, n2, n3], &Policy::default(), NOW);
        assert_eq!(p.moves.len(), 1, "{p:?}");
        assert_eq!((p.moves[0].pid, p.moves[0].to.as_str()), (1, "n3"));
        assert_eq!(p.moves[0].reason, "memory");
    }

    #[test]
    fn a_move_too_dear_for_the_link_is_not_made() {
        let nodes = vec![
            node(
                "n1",
                vec![proc_(1, 100.0, 8 << 10), proc_(2, 100.0, 8 << 10)],
            ),
            node("n2", vec![]),
        ];
        let p = plan(&nodes, &Policy::default(), NOW);
        assert!(p.moves.is_empty(), "{p:?}");
        assert!(p.notes.iter().any(|n| n.contains("to send")), "{p:?}");
    }

    #[test]
    fn dead_nodes_take_nothing() {
        let mut n2 = node("n2", vec![]);
        n2.alive = false;
        let nodes = vec![node("n1", vec![proc_(1, 100.0, 8), proc_(2, 100.0, 8)]), n2];
        assert!(plan(&nodes, &Policy::default(), NOW).moves.is_empty());
    }
}
