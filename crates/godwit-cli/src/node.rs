//! `godwit node ...`: the transparent processes of one node, through its
//! godwitd: what runs there, checkpoints into its store, restores from it.

use std::time::Duration;

use clap::Subcommand;
use godwit_agent_client::Agent;
use serde_json::{json, Value};

#[derive(Subcommand, Debug)]
pub enum NodeCmd {
    /// What runs on the node: the processes the agent started, restored or
    /// received (all of the node's processes with --all).
    Ps {
        #[arg(long)]
        all: bool,
    },
    /// Checkpoint a process (and its descendants) into the node's store.
    /// It keeps running unless --stop.
    Checkpoint {
        /// The process, as the node sees it.
        #[arg(long)]
        pid: i32,
        /// Name of the checkpoint in the store (default PID-MILLISECONDS).
        #[arg(long)]
        id: Option<String>,
        /// End the process once its checkpoint is written.
        #[arg(long)]
        stop: bool,
        /// Include established TCP connections (see `godwit dump --tcp-established`).
        #[arg(long)]
        tcp_established: bool,
    },
    /// The checkpoints in the node's store.
    Images,
    /// Restore a checkpoint of the node's store on the node.
    Restore {
        id: String,
        /// Into a new PID namespace (when the PIDs are taken).
        #[arg(long)]
        pid_ns: bool,
        /// Restore the image's established TCP connections.
        #[arg(long)]
        tcp_established: bool,
    },
    /// Remove a checkpoint from the node's store.
    Rm { id: String },
    /// Make a node known to this one (kept in its data dir): heartbeats go both
    /// ways once each knows the other.
    Add {
        /// The peer's node name (its --node-name).
        name: String,
        /// Its godwitd, ADDR:PORT.
        addr: String,
    },
    /// The agent's Prometheus metrics (OpenMetrics text).
    Metrics,
    /// Manage a process of the node that the agent did not start: it is
    /// listed, its load measured, and the balancer may move it.
    Adopt {
        #[arg(long)]
        pid: i32,
    },
    /// Keep a managed process where it is (the balancer leaves it);
    /// --unpin lets it move again.
    Pin {
        #[arg(long)]
        pid: i32,
        #[arg(long)]
        unpin: bool,
    },
    /// Have the agent move one of its node's processes (with its
    /// descendants) to another node's agent, as `godwit migrate` would from
    /// there; prints where it now runs.
    Migrate {
        /// The process, as the node sees it.
        #[arg(long)]
        pid: i32,
        /// More processes moved in the same image (what they share with
        /// --pid moves once).
        #[arg(long)]
        also: Vec<i32>,
        /// The destination's godwitd, ADDR:PORT (it must accept this
        /// agent's operate token).
        #[arg(long)]
        to: String,
        /// stop-copy, pre-copy, post-copy or pre-copy-post-copy.
        #[arg(long, default_value = "stop-copy")]
        mode: String,
        /// Move established TCP connections too.
        #[arg(long)]
        tcp_established: bool,
        /// Restore into a new PID namespace at the destination.
        #[arg(long)]
        pid_ns: bool,
        /// See `godwit migrate --max-downtime`.
        #[arg(long, value_name = "MS")]
        max_downtime: Option<u64>,
        /// See `godwit migrate --inherit-fd` (TARGET: a path on the
        /// destination, or null). Repeatable.
        #[arg(long = "inherit-fd", value_name = "FD:TARGET")]
        inherit_fds: Vec<godwit_engine::resources::external::RemoteInherit>,
    },
    /// The node's load (run queue, CPU, memory, managed processes); --history:
    /// the samples of the last ten minutes.
    Load {
        #[arg(long)]
        history: bool,
    },
}

/// Which godwitd to talk to, and how.
#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    /// The node agent (godwitd) to talk to.
    #[arg(long, default_value = "127.0.0.1:7420", env = "GODWIT_AGENT")]
    pub agent: String,
    /// File holding a token of the agent (mode 0600; the first token is used;
    /// `read` is enough).
    #[arg(long, env = "GODWIT_TOKEN_FILE")]
    pub token_file: std::path::PathBuf,
    /// CA certificate (PEM) to verify the agent's certificate with (PKI mode).
    #[arg(long, env = "GODWIT_TLS_CA")]
    pub tls_ca: Option<std::path::PathBuf>,
}

impl AgentArgs {
    pub fn connect(&self) -> anyhow::Result<Agent> {
        let token = godwit_agent_client::load_token(&self.token_file)?;
        Ok(Agent::with_ca(&self.agent, token, self.tls_ca.as_deref())?)
    }
}

async fn nodes_view(agent: &Agent) -> anyhow::Result<Value> {
    Ok(agent
        .request("nodes", "GET", "/v1/nodes", None, Duration::from_secs(10))
        .await?)
}

fn ago(v: &Value) -> String {
    match v.as_u64() {
        Some(ms) => format!("{:.1}s ago", ms as f64 / 1e3),
        None => "never".into(),
    }
}

/// `godwit nodes`: every node the agent knows, with health and load.
pub async fn nodes(agent: &Agent, json_out: bool) -> anyhow::Result<()> {
    let v = nodes_view(agent).await?;
    if json_out {
        println!("{v}");
        return Ok(());
    }
    println!(
        "{:<16} {:<22} {:<8} {:>10} {:>6} {:>5} {:>5} {:>10} {:>5}",
        "NAME", "ADDR", "HEALTH", "HEARD", "LOAD1", "RUNQ", "CPU%", "AVAIL(MiB)", "PROCS"
    );
    for n in v["nodes"].as_array().into_iter().flatten() {
        let l = &n["load"];
        let name = format!(
            "{}{}",
            n["name"].as_str().unwrap_or("?"),
            if n["self"] == json!(true) { "*" } else { "" }
        );
        if l.is_null() {
            println!(
                "{:<16} {:<22} {:<8} {:>10}",
                name,
                n["addr"].as_str().unwrap_or("?"),
                n["health"].as_str().unwrap_or("?"),
                ago(&n["last_heard_ms_ago"])
            );
            continue;
        }
        println!(
            "{:<16} {:<22} {:<8} {:>10} {:>6.2} {:>5} {:>5.1} {:>10} {:>5}",
            name,
            n["addr"].as_str().unwrap_or("?"),
            n["health"].as_str().unwrap_or("?"),
            ago(&n["last_heard_ms_ago"]),
            l["loadavg"][0].as_f64().unwrap_or(0.0),
            l["procs_running"].as_u64().unwrap_or(0),
            l["cpu_percent"].as_f64().unwrap_or(0.0),
            mib(&l["mem_available_bytes"]),
            l["processes"].as_array().map_or(0, Vec::len),
        );
    }
    println!(
        "(* the node asked; dead after {} ms without a heartbeat)",
        v["dead_after_ms"]
    );
    Ok(())
}

/// `godwit ps [--all-nodes]`: the processes and services the agents manage, with the
/// node each runs on (as of that node's last heartbeat for the others).
pub async fn ps(agent: &Agent, all_nodes: bool, json_out: bool) -> anyhow::Result<()> {
    let v = nodes_view(agent).await?;
    let mut rows = Vec::new();
    for n in v["nodes"].as_array().into_iter().flatten() {
        if !all_nodes && n["self"] != json!(true) {
            continue;
        }
        for p in n["load"]["processes"].as_array().into_iter().flatten() {
            let mut p = p.clone();
            p["node"] = n["name"].clone();
            p["node_addr"] = n["addr"].clone();
            p["node_health"] = n["health"].clone();
            rows.push(p);
        }
    }
    if json_out {
        println!("{}", json!({ "processes": rows }));
        return Ok(());
    }
    println!(
        "{:<16} {:<8} {:>7} {:<11} {:>6} {:>9}  {:<28} SERVICE/ORIGIN",
        "NODE", "HEALTH", "PID", "KIND", "CPU%", "RSS(MiB)", "PROGRAM"
    );
    for p in &rows {
        let extra = match (p["uuid"].as_str(), p["address"].as_str()) {
            (Some(u), Some(a)) => format!("{u} at {a}"),
            _ => p["origin"].as_str().unwrap_or("-").to_string(),
        };
        println!(
            "{:<16} {:<8} {:>7} {:<11} {:>6.1} {:>9}  {:<28} {}",
            p["node"].as_str().unwrap_or("?"),
            p["node_health"].as_str().unwrap_or("?"),
            p["pid"].as_i64().unwrap_or(0),
            p["kind"].as_str().unwrap_or("?"),
            p["cpu_percent"].as_f64().unwrap_or(0.0),
            mib(&p["rss_bytes"]),
            p["program"].as_str().unwrap_or("?"),
            extra
        );
    }
    Ok(())
}

fn mib(v: &Value) -> String {
    format!("{:.1}", v.as_f64().unwrap_or(0.0) / (1 << 20) as f64)
}

pub async fn run(cmd: NodeCmd, agent: &Agent, json_out: bool) -> anyhow::Result<()> {
    let long = Duration::from_secs(600);
    let v = match &cmd {
        NodeCmd::Metrics => {
            let mut req = godwit_net::http::HttpRequest::new("GET", "/metrics");
            req.timeout = Duration::from_secs(10);
            let resp = agent.client().request(agent.addr(), &req).await?;
            if resp.status >= 300 {
                anyhow::bail!(
                    "agent {}: metrics: HTTP {}: {}",
                    agent.addr(),
                    resp.status,
                    resp.error_message()
                );
            }
            print!("{}", String::from_utf8_lossy(&resp.body));
            return Ok(());
        }
        NodeCmd::Load { history } => {
            let path = if *history {
                "/v1/load/history"
            } else {
                "/v1/load"
            };
            agent
                .request("load", "GET", path, None, Duration::from_secs(10))
                .await?
        }
        NodeCmd::Migrate {
            pid,
            also,
            to,
            mode,
            tcp_established,
            pid_ns,
            max_downtime,
            inherit_fds,
        } => {
            let inherit_fds: Vec<String> = inherit_fds.iter().map(ToString::to_string).collect();
            let body = json!({
                "to": to, "also": also, "mode": mode, "tcp_established": tcp_established,
                "pid_ns": pid_ns, "max_downtime_ms": max_downtime, "inherit_fds": inherit_fds,
            });
            agent
                .request(
                    "migrate",
                    "POST",
                    &format!("/v1/processes/{pid}/migrate"),
                    Some(body),
                    long,
                )
                .await?
        }
        NodeCmd::Adopt { pid } => {
            agent
                .request(
                    "adopt",
                    "POST",
                    &format!("/v1/processes/{pid}/adopt"),
                    Some(json!({})),
                    Duration::from_secs(10),
                )
                .await?
        }
        NodeCmd::Pin { pid, unpin } => {
            agent
                .request(
                    "pin",
                    "POST",
                    &format!("/v1/processes/{pid}/pin"),
                    Some(json!({"pinned": !unpin})),
                    Duration::from_secs(10),
                )
                .await?
        }
        NodeCmd::Add { name, addr } => {
            agent
                .request(
                    "node add",
                    "POST",
                    "/v1/nodes",
                    Some(json!({"name": name, "addr": addr})),
                    Duration::from_secs(10),
                )
                .await?
        }
        NodeCmd::Ps { all } => {
            let path = if *all {
                "/v1/processes?all=true"
            } else {
                "/v1/processes"
            };
            agent
                .request("ps", "GET", path, None, Duration::from_secs(10))
                .await?
        }
        NodeCmd::Checkpoint {
            pid,
            id,
            stop,
            tcp_established,
        } => {
            let mut body = json!({"leave_running": !stop, "tcp_established": tcp_established});
            if let Some(id) = id {
                body["id"] = json!(id);
            }
            agent
                .request(
                    "checkpoint",
                    "POST",
                    &format!("/v1/processes/{pid}/checkpoint"),
                    Some(body),
                    long,
                )
                .await?
        }
        NodeCmd::Images => {
            agent
                .request("images", "GET", "/v1/images", None, Duration::from_secs(30))
                .await?
        }
        NodeCmd::Restore {
            id,
            pid_ns,
            tcp_established,
        } => {
            let body = json!({"pid_ns": pid_ns, "tcp_established": tcp_established});
            agent
                .request(
                    "restore",
                    "POST",
                    &format!("/v1/images/{id}/restore"),
                    Some(body),
                    long,
                )
                .await?
        }
        NodeCmd::Rm { id } => {
            agent
                .request(
                    "rm",
                    "DELETE",
                    &format!("/v1/images/{id}"),
                    None,
                    Duration::from_secs(30),
                )
                .await?
        }
    };
    if json_out {
        println!("{v}");
        return Ok(());
    }
    match cmd {
        NodeCmd::Ps { .. } => {
            println!(
                "{:>7} {:>7} {:<5} {:<11} {:>9} {:>6}  {:<24} ORIGIN",
                "PID", "PPID", "STATE", "KIND", "MEM(MiB)", "CPU%", "PROGRAM"
            );
            for p in v["processes"].as_array().into_iter().flatten() {
                println!(
                    "{:>7} {:>7} {:<5} {:<11} {:>9} {:>6.1}  {:<24} {}",
                    p["pid"].as_i64().unwrap_or(0),
                    p["ppid"].as_i64().unwrap_or(0),
                    p["state"].as_str().unwrap_or("?"),
                    p["kind"].as_str().unwrap_or("?"),
                    mib(&p["memory_bytes"]),
                    p["cpu_percent"].as_f64().unwrap_or(0.0),
                    p["program"].as_str().unwrap_or("?"),
                    p["origin"].as_str().unwrap_or("-"),
                );
            }
        }
        NodeCmd::Checkpoint { stop, .. } => println!(
            "checkpoint {} of process {} ({} processes, {} MiB of memory) in {:.1} ms, frozen {:.1} ms; {}",
            v["id"].as_str().unwrap_or("?"),
            v["pid"],
            v["processes"],
            mib(&v["memory_bytes"]),
            v["total_ms"].as_f64().unwrap_or(0.0),
            v["frozen_ms"].as_f64().unwrap_or(0.0),
            if stop { "the process was ended" } else { "it keeps running" }
        ),
        NodeCmd::Images => {
            println!("{:<28} {:>10} {:<20} PIDS", "ID", "MiB", "FROM HOST");
            for i in v["images"].as_array().into_iter().flatten() {
                println!(
                    "{:<28} {:>10} {:<20} {}",
                    i["id"].as_str().unwrap_or("?"),
                    mib(&i["bytes"]),
                    i["hostname"].as_str().unwrap_or("?"),
                    i["pids"]
                );
            }
        }
        NodeCmd::Restore { .. } => println!(
            "restored {} as PID {}{}",
            v["id"].as_str().unwrap_or("?"),
            v["pid"],
            if v["host_pid"] != v["pid"] { format!(" (node PID {})", v["host_pid"]) } else { String::new() }
        ),
        NodeCmd::Rm { .. } => println!("removed {}", v["id"].as_str().unwrap_or("?")),
        NodeCmd::Add { name, addr } => println!(
            "{name} at {addr} {}",
            if v["added"] == json!(true) { "added" } else { "updated" }
        ),
        NodeCmd::Metrics => {}
        NodeCmd::Adopt { pid } => println!("process {pid} is managed by the agent"),
        NodeCmd::Pin { pid, unpin } => println!(
            "process {pid} {}",
            if unpin { "may be moved by the balancer again" } else { "is pinned: the balancer leaves it here" }
        ),
        NodeCmd::Migrate { pid, to, .. } => println!(
            "moved process {pid} ({} process{}) to {to} ({}): now PID {} there; downtime {:.1} ms, {} MiB sent in {:.1} ms",
            v["pids"].as_array().map_or(0, Vec::len),
            if v["pids"].as_array().map_or(0, Vec::len) == 1 { "" } else { "es" },
            v["node"].as_str().unwrap_or("?"),
            v["dest_pid"],
            v["downtime_ms"].as_f64().unwrap_or(0.0),
            v["bytes_sent"].as_u64().unwrap_or(0) >> 20,
            v["total_ms"].as_f64().unwrap_or(0.0),
        ),
        NodeCmd::Load { history: false } => {
            let l = &v["load"];
            println!(
                "node {}: load {:.2} {:.2} {:.2}, run queue {}, CPU {:.1}% of {}, memory available {} MiB of {} MiB, {} managed processes",
                v["node"].as_str().unwrap_or("?"),
                l["loadavg"][0].as_f64().unwrap_or(0.0),
                l["loadavg"][1].as_f64().unwrap_or(0.0),
                l["loadavg"][2].as_f64().unwrap_or(0.0),
                l["procs_running"],
                l["cpu_percent"].as_f64().unwrap_or(0.0),
                l["cpus"],
                mib(&l["mem_available_bytes"]),
                mib(&l["mem_total_bytes"]),
                l["processes"].as_array().map_or(0, Vec::len),
            );
        }
        NodeCmd::Load { history: true } => {
            println!("{:>15} {:>6} {:>5} {:>6} {:>10}", "UNIX_MS", "LOAD1", "RUNQ", "CPU%", "AVAIL(MiB)");
            for l in v["samples"].as_array().into_iter().flatten() {
                println!(
                    "{:>15} {:>6.2} {:>5} {:>6.1} {:>10}",
                    l["unix_ms"],
                    l["loadavg"][0].as_f64().unwrap_or(0.0),
                    l["procs_running"],
                    l["cpu_percent"].as_f64().unwrap_or(0.0),
                    mib(&l["mem_available_bytes"]),
                );
            }
        }
    }
    Ok(())
}

/// `godwit balance`: switches this node's balancer when asked, then shows
/// the plan.
pub async fn balance(agent: &Agent, switch: Option<bool>, json_out: bool) -> anyhow::Result<()> {
    if let Some(on) = switch {
        agent
            .request(
                "balance",
                "POST",
                "/v1/balance",
                Some(json!({"enabled": on})),
                Duration::from_secs(10),
            )
            .await?;
    }
    let v = agent
        .request(
            "balance",
            "GET",
            "/v1/balance",
            None,
            Duration::from_secs(10),
        )
        .await?;
    if json_out {
        println!("{v}");
        return Ok(());
    }
    println!(
        "balancing on {} is {}",
        v["node"].as_str().unwrap_or("?"),
        if v["enabled"] == json!(true) {
            "on"
        } else {
            "off"
        }
    );
    let moves = v["plan"]["moves"].as_array().cloned().unwrap_or_default();
    if moves.is_empty() {
        println!("plan: no move");
    }
    for m in &moves {
        println!(
            "plan: move {} ({}) from {} to {} [{}]: {}",
            m["pid"],
            m["program"].as_str().unwrap_or("?"),
            m["from"].as_str().unwrap_or("?"),
            m["to"].as_str().unwrap_or("?"),
            m["reason"].as_str().unwrap_or("?"),
            m["why"].as_str().unwrap_or("")
        );
    }
    for n in v["plan"]["notes"].as_array().into_iter().flatten() {
        println!("  {}", n.as_str().unwrap_or(""));
    }
    for d in v["done"].as_array().into_iter().flatten() {
        let m = &d["move"];
        println!(
            "done: {} to {}{}",
            m["pid"],
            m["to"].as_str().unwrap_or("?"),
            d["error"]
                .as_str()
                .map(|e| format!(" failed: {e}"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// `godwit protect`: protects `pid`, or lists what the agent protects and
/// holds.
pub async fn protect(
    agent: &Agent,
    pid: Option<i32>,
    every: f64,
    replicas: u64,
    json_out: bool,
) -> anyhow::Result<()> {
    let v = match pid {
        Some(pid) => {
            agent
                .request(
                    "protect",
                    "POST",
                    "/v1/protected",
                    Some(json!({"pid": pid, "every_secs": every, "replicas": replicas})),
                    Duration::from_secs(10),
                )
                .await?
        }
        None => {
            agent
                .request(
                    "protect",
                    "GET",
                    "/v1/protected",
                    None,
                    Duration::from_secs(10),
                )
                .await?
        }
    };
    if json_out {
        println!("{v}");
        return Ok(());
    }
    if pid.is_some() {
        println!(
            "protected {} as {}: a checkpoint every {} s, copied to {}",
            v["pid"],
            v["id"].as_str().unwrap_or("?"),
            v["every_ms"].as_f64().unwrap_or(0.0) / 1e3,
            v["holders"]
        );
        return Ok(());
    }
    for r in v["owned"].as_array().into_iter().flatten() {
        // Each holder: how old its copy is, and the bytes its newest copy took.
        let copies: Vec<String> = r["holders"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|h| h.as_str())
            .map(|h| {
                let lag = match r["lag_ms_by_holder"][h].as_u64() {
                    Some(ms) => format!("lag {ms} ms"),
                    None => "no copy yet".to_string(),
                };
                match r["sent_bytes"][h][0].as_u64() {
                    Some(b) => format!("{h} ({lag}, last copy {b} bytes)"),
                    None => format!("{h} ({lag})"),
                }
            })
            .collect();
        println!(
            "owns {} ({} {}, {}): generation {}, {} checkpoints, newest {}, copies on {}",
            r["id"].as_str().unwrap_or("?"),
            if r["service"].is_object() {
                "service, PID"
            } else {
                "PID"
            },
            r["pid"],
            r["program"].as_str().unwrap_or("?"),
            r["generation"],
            r["taken"],
            r["last_checkpoint"].as_str().unwrap_or("-"),
            if copies.is_empty() {
                "none".to_string()
            } else {
                copies.join(", ")
            }
        );
    }
    for h in v["held"].as_array().into_iter().flatten() {
        println!(
            "holds {} for {} (generation {}): checkpoint {}, {} ms old",
            h["id"].as_str().unwrap_or("?"),
            h["owner"].as_str().unwrap_or("?"),
            h["generation"],
            h["checkpoint"].as_str().unwrap_or("?"),
            h["age_ms"]
        );
    }
    Ok(())
}
