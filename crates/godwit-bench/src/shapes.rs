//! Dump and restore time against the shape of what is dumped: a tree of
//! processes, and a process with many memory mappings (restore must stay
//! linear in both).

use crate::target::{self, Target};
use crate::{Env, Samples, TempImage};
use anyhow::{Context, Result};
use godwit_engine::dump::{dump, DumpOptions};
use godwit_engine::restore::{restore, RestoreOptions};
use godwit_engine::Quiet;
use serde_json::{json, Value};

/// Dumps and restores the tree rooted at `t`, `reps` times; (dump, restore).
fn cycle(
    env: &Env,
    t: &mut Target,
    reps: usize,
    tag: &str,
) -> Result<(Samples, Samples, usize, u64)> {
    let (mut d, mut r) = (Samples::default(), Samples::default());
    let (mut procs, mut bytes) = (0, 0);
    for rep in 0..reps {
        let img = env.dir.join(format!("img-{tag}-{rep}"));
        let _img = TempImage(img.clone());
        let opts = DumpOptions {
            no_sync: true,
            ..Default::default()
        };
        let rep_d =
            dump(&[t.pid], &img, &opts, &Quiet).with_context(|| format!("dumping {tag}"))?;
        d.push(rep_d.total);
        procs = rep_d.processes;
        bytes = rep_d.memory_bytes;
        // The dump ended the tree: collect the root (ours) and wait until
        // every PID is free (the others are re-parented to us).
        t.ended_by_dump();
        for pid in rep_d.pids.iter().skip(1) {
            target::reap(*pid);
        }
        let res = restore(&img, &RestoreOptions::default(), &Quiet)
            .with_context(|| format!("restoring {tag}"))?;
        r.push(res.total);
        t.adopt(res.pid);
    }
    Ok((d, r, procs, bytes))
}

fn row(shape: &str, d: &Samples, r: &Samples, procs: usize, vmas: u64, bytes: u64) -> Value {
    json!({
        "shape": shape, "processes": procs, "vmas": vmas, "memory_bytes": bytes,
        "dump_ms": {"min": d.min().as_secs_f64() * 1e3, "median": d.median().as_secs_f64() * 1e3},
        "restore_ms": {"min": r.min().as_secs_f64() * 1e3, "median": r.median().as_secs_f64() * 1e3},
    })
}

/// Tree of 16 × 64 MiB, and 2500 / 5000 / 10000 mappings.
pub fn run(env: &Env, reps: usize) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    {
        let mut t = Target::tree(&env.bin, &env.dir, 16, 64, "tree")?;
        let (d, r, procs, bytes) = cycle(env, &mut t, reps, "tree")?;
        out.push(row(
            "tree of 16 processes x 64 MiB",
            &d,
            &r,
            procs,
            0,
            bytes,
        ));
        kill_tree(&t);
    }
    for n in [2500u32, 5000, 10000] {
        let mut t = Target::vmas(&env.bin, &env.dir, n, &format!("vmas{n}"))?;
        let (d, r, procs, bytes) = cycle(env, &mut t, reps, &format!("vmas{n}"))?;
        out.push(row(
            &format!("one process, {n} extra mappings"),
            &d,
            &r,
            procs,
            n as u64,
            bytes,
        ));
    }
    Ok(out)
}

/// Ends the children of a tree target (the root itself goes with its Target).
fn kill_tree(t: &Target) {
    let kids =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", t.pid)).unwrap_or_default();
    for k in kids
        .split_whitespace()
        .filter_map(|k| k.parse::<i32>().ok())
    {
        // SAFETY: kill has no memory arguments.
        unsafe { libc::kill(k, libc::SIGKILL) };
        target::reap(k);
    }
}
