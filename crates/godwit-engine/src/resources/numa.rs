//! NUMA memory policies: each thread's (set_mempolicy) and each memory
//! area's own (mbind). Read by injected get_mempolicy (with MPOL_F_ADDR an
//! area's own policy, MPOL_DEFAULT for an area without one); set again by injected
//! set_mempolicy in each thread and mbind over each area once its memory is
//! in place (pages already placed stay where they are).

use crate::error::{DumpCtx, EngineError, RestoreCtx, Result};
use crate::remote::{u64_at, Call, Remote};
use crate::schema::{Process, ThreadAttrs, VmaPolicy};
use godwit_sys::proc;

/// Node mask size used with the kernel: 1024 nodes (the kernel reads and
/// writes `maxnode - 1` bits).
const MASK_BYTES: usize = 128;
const MAXNODE: u64 = 1025;
const MPOL_F_ADDR: u64 = 2;
/// Where the mode and the mask go in the scratch area.
const MODE_AT: u64 = 256;
const MASK_AT: u64 = 264;

fn words(b: &[u8]) -> Vec<u64> {
    let mut w: Vec<u64> = (0..MASK_BYTES / 8).map(|i| u64_at(b, i)).collect();
    while w.last() == Some(&0) {
        w.pop();
    }
    w
}

/// get_mempolicy in the task behind `r`: of the task, or (`addr`) of the
/// memory area holding that address.
fn get(r: &Remote, addr: Option<u64>) -> godwit_sys::Result<(u32, Vec<u64>)> {
    let mode = r.scratch + MODE_AT;
    let mask = r.scratch + MASK_AT;
    let (a, flags) = addr.map_or((0, 0), |a| (a, MPOL_F_ADDR));
    r.call(
        "get_mempolicy",
        libc::SYS_get_mempolicy,
        [mode, mask, MAXNODE, a, flags, 0],
    )?;
    let b = r.get(MODE_AT, 8 + MASK_BYTES)?;
    Ok((
        u32::from_le_bytes(b[0..4].try_into().expect("4 bytes")),
        words(&b[8..]),
    ))
}

/// The memory policy of thread `rt.tid`: (mode with flags, node words).
/// Uses scratch bytes [256, 392).
pub fn dump_thread(rt: &Remote) -> Result<(u32, Vec<u64>)> {
    get(rt, None).dumping(rt.pid, "reading the memory policy")
}

/// Where the batched per-area modes go in the scratch area (below the
/// batch table at 4096).
const SLOTS_AT: u64 = 512;
const SLOTS: usize = (4096 - SLOTS_AT as usize) / 8;

/// Injecting one call costs about this much (the dump injects one by one).
const INJECTED_CALL_US: u64 = 100;
/// /proc/PID/numa_maps walks every resident page: about 50 ms per GiB.
const NUMA_MAPS_US_PER_GIB: u64 = 50_000;

/// The memory areas of the process with a policy of their own: get_mempolicy
/// (MPOL_F_ADDR) over the areas (MPOL_DEFAULT for an area without one,
/// whatever its thread's), then the node mask of each that has one. Which
/// areas are asked: every one, or, when that would take longer than a walk
/// of its resident pages (many small areas: 10000 of them take a second of
/// injected calls, against a few ms for the walk), those /proc/PID/numa_maps
/// shows with a policy other than "default" (its own or its thread's).
/// Uses scratch bytes [256, 4096).
pub fn dump_vmas(r: &Remote) -> Result<Vec<VmaPolicy>> {
    let pid = r.pid;
    let stage = "reading memory policies";
    let maps = proc::maps(pid).dumping(pid, stage)?;
    // (The vsyscall page is no memory area of the process.)
    let mut areas: Vec<(u64, u64)> = maps
        .iter()
        .filter(|m| m.start < 1 << 47)
        .map(|m| (m.start, m.end))
        .collect();
    let rss = proc::status(pid).map(|s| s.vm_rss).unwrap_or(u64::MAX / 2);
    let walk_us = (rss >> 20) * NUMA_MAPS_US_PER_GIB / 1024 + areas.len() as u64 * 2;
    if walk_us < areas.len() as u64 * INJECTED_CALL_US {
        let listed = proc::vma_policy_starts(pid).dumping(pid, stage)?;
        areas.retain(|(start, _)| listed.binary_search(start).is_ok());
    }
    let mut out = Vec::new();
    for chunk in areas.chunks(SLOTS) {
        let calls: Vec<Call> = chunk
            .iter()
            .enumerate()
            .map(|(i, &(start, _))| Call {
                name: "get_mempolicy",
                nr: libc::SYS_get_mempolicy,
                args: [
                    r.scratch + SLOTS_AT + i as u64 * 8,
                    0,
                    0,
                    start,
                    MPOL_F_ADDR,
                    0,
                ],
            })
            .collect();
        match r.call_batch(&calls) {
            // A kernel without NUMA: no policies at all.
            Err(e) if e.errno() == Some(libc::ENOSYS) => return Ok(Vec::new()),
            done => done.dumping(pid, stage)?,
        };
        let modes = r.get(SLOTS_AT, chunk.len() * 8).dumping(pid, stage)?;
        for (i, &(start, end)) in chunk.iter().enumerate() {
            let at = i * 8;
            if u32::from_le_bytes(modes[at..at + 4].try_into().expect("4 bytes")) == 0 {
                continue;
            }
            let (mode, nodes) = get(r, Some(start)).dumping(pid, stage)?;
            out.push(VmaPolicy {
                start,
                end,
                mode,
                nodes,
            });
        }
    }
    Ok(out)
}

fn put_mask(r: &Remote, nodes: &[u64]) -> godwit_sys::Result<u64> {
    let mut b = vec![0u8; MASK_BYTES];
    for (i, w) in nodes.iter().take(MASK_BYTES / 8).enumerate() {
        b[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
    }
    r.put(MASK_AT, &b)
}

fn refused(pid: i32, what: String, e: godwit_sys::SysError) -> EngineError {
    EngineError::Refused {
        pid,
        what: format!("{what} could not be set on this host ({e}); are its NUMA nodes here?"),
    }
}

/// Sets the saved memory policy of thread `rt.tid` (MPOL_DEFAULT too, so
/// that it does not keep one godwit had). Uses scratch bytes [264, 392).
pub fn restore_thread(rt: &Remote, tid: i32, a: &ThreadAttrs) -> Result<()> {
    let mask = put_mask(rt, &a.mempolicy_nodes).restoring(rt.pid, "setting the memory policy")?;
    let (mask, maxnode) = if a.mempolicy_mode == 0 {
        (0, 0)
    } else {
        (mask, MAXNODE)
    };
    rt.call(
        "set_mempolicy",
        libc::SYS_set_mempolicy,
        [a.mempolicy_mode as u64, mask, maxnode, 0, 0, 0],
    )
    .map_err(|e| {
        refused(
            rt.pid,
            format!(
                "the memory policy {:#x} of thread {tid} (nodes {:x?})",
                a.mempolicy_mode, a.mempolicy_nodes
            ),
            e,
        )
    })?;
    Ok(())
}

/// mbind over each memory area that had its own policy, once the memory is
/// in place. Uses scratch bytes [264, 392).
pub fn restore_vmas(r: &Remote, p: &Process) -> Result<()> {
    for v in &p.vma_policies {
        let mask = put_mask(r, &v.nodes).restoring(r.pid, "setting memory policies")?;
        r.call(
            "mbind",
            libc::SYS_mbind,
            [v.start, v.end - v.start, v.mode as u64, mask, MAXNODE, 0],
        )
        .map_err(|e| {
            refused(
                p.pid,
                format!(
                    "the memory policy {:#x} of {:#x}-{:#x} (nodes {:x?})",
                    v.mode, v.start, v.end, v.nodes
                ),
                e,
            )
        })?;
    }
    Ok(())
}
