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
}

fn mib(v: &Value) -> String {
    format!("{:.1}", v.as_f64().unwrap_or(0.0) / (1 << 20) as f64)
}

pub async fn run(cmd: NodeCmd, agent: &Agent, json_out: bool) -> anyhow::Result<()> {
    let long = Duration::from_secs(600);
    let v = match &cmd {
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
    }
    Ok(())
}
