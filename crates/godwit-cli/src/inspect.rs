//! `godwit inspect`: an image as JSON or as text for people.

use godwit_engine::schema::{Checkpoint, FdKind, VmaKind};
use godwit_image::ImageReader;
use serde_json::{json, Value};
use std::fmt::Write;

fn prot(p: u32) -> String {
    let mut s = String::new();
    s.push(if p & libc_prot::READ != 0 { 'r' } else { '-' });
    s.push(if p & libc_prot::WRITE != 0 { 'w' } else { '-' });
    s.push(if p & libc_prot::EXEC != 0 { 'x' } else { '-' });
    s
}

mod libc_prot {
    pub const READ: u32 = 1;
    pub const WRITE: u32 = 2;
    pub const EXEC: u32 = 4;
}

/// Everything `inspect` shows, as one JSON value.
pub fn summary(ck: &Checkpoint, reader: &ImageReader) -> Value {
    let processes: Vec<Value> = ck
        .processes
        .iter()
        .map(|p| {
            let vmas: Vec<Value> = p
                .vmas
                .iter()
                .map(|v| {
                    let stored: u64 = v.pages.iter().map(|r| r.nr_pages * 4096).sum();
                    let inherited: u64 = v.inherited.iter().map(|r| r.nr_pages * 4096).sum();
                    json!({
                        "start": format!("{:#x}", v.start), "end": format!("{:#x}", v.end),
                        "size": v.end - v.start, "prot": prot(v.prot),
                        "kind": format!("{:?}", VmaKind::try_from(v.kind).unwrap_or(VmaKind::AnonPrivate)),
                        "path": v.path, "stored_bytes": stored, "flags": v.vm_flags,
                        "inherited_bytes": inherited,
                    })
                })
                .collect();
            let fds: Vec<Value> = p
                .fds
                .iter()
                .map(|f| {
                    let mut v = json!({
                        "fd": f.fd,
                        "kind": format!("{:?}", FdKind::try_from(f.kind).unwrap_or(FdKind::Regular)),
                        "path": if f.kind == FdKind::Pipe as i32 { format!("pipe:[{}]", f.pipe_id) } else { f.path.clone() },
                        "flags": format!("{:#o}", f.flags), "cloexec": f.cloexec, "pos": f.pos,
                    });
                    if let (Some(s), Ok(FdKind::PacketSocket | FdKind::NetlinkSocket)) =
                        (&f.socket, FdKind::try_from(f.kind))
                    {
                        v["socket"] = json!({
                            "protocol": s.protocol, "type": s.sock_type,
                            "interface": (!s.ifname.is_empty()).then_some(&s.ifname),
                            "groups": (!s.groups.is_empty()).then_some(&s.groups),
                            "memberships": s.packet_memberships.len(),
                            "filter_instructions": s.filter.len() / 8,
                        });
                    }
                    if let (Some(s), true) = (&f.socket, matches!(
                        FdKind::try_from(f.kind),
                        Ok(FdKind::TcpListen | FdKind::TcpEstablished | FdKind::Udp | FdKind::RawSocket)
                    )) {
                        let show = godwit_sys::tcp::show;
                        v["socket"] = json!({
                            "local": show(&s.addr),
                            "peer": (!s.peer_addr.is_empty()).then(|| show(&s.peer_addr)),
                            "queued_datagrams": (f.kind == FdKind::Udp as i32).then_some(s.queue.len()),
                            "protocol": matches!(FdKind::try_from(f.kind), Ok(FdKind::Udp | FdKind::RawSocket)).then_some(s.protocol),
                        });
                        if let Some(c) = &s.tcp {
                            v["socket"]["tcp"] = json!({
                                "state": godwit_sys::tcp::state_name(c.state as u8),
                                "send_queue_bytes": c.send_queue.len(), "unsent_bytes": c.unsent,
                                "recv_queue_bytes": c.recv_queue.len(),
                                "mss": c.mss, "sack": c.sack_ok, "timestamps": c.timestamps_ok,
                                "window_scale": c.wscale_ok.then(|| json!([c.snd_wscale, c.rcv_wscale])),
                            });
                        }
                    }
                    if !f.locks.is_empty() {
                        v["locks"] = f
                            .locks
                            .iter()
                            .map(|l| {
                                json!({
                                    "kind": match l.kind { 1 => "posix", 2 => "ofd", 3 => "flock", _ => "other" },
                                    "write": l.write, "start": l.start, "len": l.len,
                                })
                            })
                            .collect();
                    }
                    if f.kind == FdKind::Pidfd as i32 {
                        // -1: a process that had exited and been reaped.
                        v["pidfd_of"] = json!(f.pidfd_pid);
                    }
                    if let Some(e) = f.external.as_ref().filter(|_| f.kind == FdKind::External as i32) {
                        v["path"] = json!(e.key);
                        v["external"] = json!({
                            "key": e.key,
                            "was": format!("{:?}", FdKind::try_from(e.was).unwrap_or(FdKind::Pipe)),
                            "saved_bytes": e.data.len(),
                            "unread_bytes_not_saved": e.unread,
                        });
                    }
                    if let Some(t) = &f.tty {
                        let w = t.winsize.clone().unwrap_or_default();
                        v["tty"] = json!({
                            "side": if t.master { "master" } else { "slave" },
                            "index": t.index, "outside_the_tree": t.external,
                            "window": format!("{}x{}", w.rows, w.cols),
                            "lflag": t.termios.as_ref().map(|x| format!("{:#o}", x.lflag)),
                            "foreground_pgrp": t.fg_pgrp, "session": t.session,
                        });
                    }
                    v
                })
                .collect();
            let threads: Vec<Value> = p
                .threads
                .iter()
                .map(|t| {
                    json!({
                        "tid": t.tid, "comm": t.comm,
                        "rip": format!("{:#x}", t.gpregs.get(16).copied().unwrap_or(0)),
                        "sigmask": format!("{:#x}", t.sigmask),
                        "pending_signals": t.pending.len(), "xstate_bytes": t.xstate.len(),
                        "rseq": t.rseq.is_some(),
                        "sched": t.sched.as_ref().map(|x| json!({
                            "policy": x.policy, "priority": x.priority, "nice": x.nice,
                            "reset_on_fork": x.reset_on_fork, "slice_ns": x.slice_ns,
                            "cpus": x.cpus.iter().map(|w| format!("{w:#x}")).collect::<Vec<_>>(),
                            "ioprio": x.ioprio,
                        })),
                        "caps": t.caps.as_ref().map(|c| json!({
                            "permitted": format!("{:#x}", c.permitted),
                            "effective": format!("{:#x}", c.effective),
                            "inheritable": format!("{:#x}", c.inheritable),
                            "bounding": format!("{:#x}", c.bounding),
                            "ambient": format!("{:#x}", c.ambient),
                            "securebits": format!("{:#x}", c.securebits),
                            "no_new_privs": c.no_new_privs,
                        })),
                        "attrs": t.attrs.as_ref().map(|a| json!({
                            "pdeathsig": a.pdeathsig, "timer_slack_ns": a.timer_slack_ns,
                            "tsc_sigsegv": a.tsc_sigsegv, "mce_kill": a.mce_kill,
                            "cpuid_faulting": a.cpuid_faulting,
                            "syscall_dispatch": !a.syscall_dispatch.is_empty(),
                            "mempolicy": format!("{:#x}", a.mempolicy_mode),
                        })),
                        "seccomp": (t.seccomp_mode != 0).then(|| json!({
                            "mode": match t.seccomp_mode { 1 => "strict", 2 => "filter", _ => "unknown" },
                            "filters": t.seccomp_filters.iter().map(|f| json!({
                                "instructions": f.program.len() / 8,
                                "flags": f.flags,
                                "program_of": (f.program_of != 0).then_some(f.program_of),
                            })).collect::<Vec<_>>(),
                        })),
                    })
                })
                .collect();
            let handlers: Vec<Value> = p
                .sigactions
                .iter()
                .map(|a| {
                    json!({
                        "signal": a.signo,
                        "handler": match a.handler { 0 => "default".to_string(), 1 => "ignore".to_string(), h => format!("{h:#x}") },
                        "flags": format!("{:#x}", a.flags),
                    })
                })
                .collect();
            let creds = p.creds.clone().unwrap_or_default();
            json!({
                "pid": p.pid, "ppid": p.ppid, "pgid": p.pgid, "sid": p.sid,
                "comm": p.comm, "exe": p.exe, "cwd": p.cwd,
                "uids": creds.uids, "gids": creds.gids, "groups": creds.groups,
                "umask": format!("{:04o}", p.umask),
                "stop_signal": p.stop_signal,
                "attrs": p.attrs.as_ref().map(|a| json!({
                    "oom_score_adj": a.oom_score_adj, "loginuid": a.loginuid,
                    "child_subreaper": a.child_subreaper, "thp_disable": a.thp_disable,
                    "dumpable": a.dumpable, "membarrier": format!("{:#x}", a.membarrier),
                    "mdwe": a.mdwe, "autogroup_nice": a.autogroup_nice,
                })),
                "memory_policies": p.vma_policies.iter().map(|v| json!({
                    "start": format!("{:#x}", v.start), "end": format!("{:#x}", v.end),
                    "mode": format!("{:#x}", v.mode),
                })).collect::<Vec<_>>(),
                "memory": {
                    "mappings": vmas.len(),
                    "mapped_bytes": p.vmas.iter().map(|v| v.end - v.start).sum::<u64>(),
                    "stored_bytes": p.vmas.iter().flat_map(|v| &v.pages).map(|r| r.nr_pages * 4096).sum::<u64>(),
                    // Pages shared copy-on-write with the parent, stored with it.
                    "inherited_bytes": p.vmas.iter().flat_map(|v| &v.inherited).map(|r| r.nr_pages * 4096).sum::<u64>(),
                    "vmas": vmas,
                },
                "threads": threads, "fds": fds,
                "controlling_terminal": (p.ctty_dev != 0).then(|| godwit_engine::resources::tty::dev_name(p.ctty_dev)),
                "pipes": p.pipes.iter().map(|x| json!({"id": x.id, "buffered_bytes": x.data.len()})).collect::<Vec<_>>(),
                "shared_memory": p.shmem.iter().map(|o| json!({
                    "id": o.id, "size": o.size, "memfd": o.memfd, "name": o.name,
                    "seals": format!("{:#x}", o.seals),
                    "stored_bytes": o.data.iter().map(|r| r.nr_pages * 4096).sum::<u64>(),
                })).collect::<Vec<_>>(),
                "sysv_shm": p.sysv_shm.iter().map(|g| json!({
                    "key": format!("{:#010x}", g.key), "shmid": g.shmid, "size": g.size,
                    "mode": format!("{:04o}", g.mode), "uid": g.uid, "gid": g.gid,
                    "removed": g.removed, "locked": g.locked,
                    "stored_bytes": g.data.iter().map(|r| r.nr_pages * 4096).sum::<u64>(),
                })).collect::<Vec<_>>(),
                "signals": {
                    "handlers": handlers,
                    "shared_pending": p.shared_pending.len(),
                    "itimers": p.itimers.iter().map(|t| json!({"which": t.which, "value_us": t.value_us, "interval_us": t.interval_us})).collect::<Vec<_>>(),
                },
                "posix_timers": p.posix_timers.iter().map(|t| json!({
                    "id": t.id, "clock_id": t.clock_id, "signo": t.signo,
                    "notify": match t.notify { 0 => "signal", 1 => "none", 4 => "thread", _ => "other" },
                    "notify_tid": t.notify_tid, "interval_ns": t.interval_ns,
                    "value_ns": t.value_ns, "overrun": t.overrun,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "image": {
            "dir": reader.dir(), "bytes": reader.total_bytes(),
            "godwit_version": ck.godwit_version, "arch": ck.arch, "kernel": ck.kernel,
            "hostname": ck.hostname, "created_unix_ms": ck.created_unix_ms,
            "xcr0": ck.cpu.as_ref().map(|c| format!("{:#x}", c.xcr0)),
            "xsave_size": ck.cpu.as_ref().map(|c| c.xsave_size),
            "frozen_us": ck.stats.as_ref().map(|s| s.frozen_us),
        },
        "processes": processes,
        "externals": crate::externals_json(&godwit_engine::resources::external::list(&ck.processes)),
    })
}

fn mib(b: u64) -> String {
    if b >= 1 << 20 {
        format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
    } else {
        format!("{:.1} KiB", b as f64 / 1024.0)
    }
}

/// The same as text for people.
pub fn text(v: &Value, full: bool) -> String {
    let mut s = String::new();
    let img = &v["image"];
    let _ = writeln!(
        s,
        "image {}: {} on disk, godwit {}, {} kernel {} on {}",
        img["dir"].as_str().unwrap_or("?"),
        mib(img["bytes"].as_u64().unwrap_or(0)),
        img["godwit_version"].as_str().unwrap_or("?"),
        img["arch"].as_str().unwrap_or("?"),
        img["kernel"].as_str().unwrap_or("?"),
        img["hostname"].as_str().unwrap_or("?"),
    );
    for p in v["processes"].as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "process {} ({}) ppid {} pgid {} sid {}\n  exe {}\n  cwd {}\n  uids {} gids {} umask {}",
            p["pid"], p["comm"].as_str().unwrap_or(""), p["ppid"], p["pgid"], p["sid"],
            p["exe"].as_str().unwrap_or(""), p["cwd"].as_str().unwrap_or(""),
            p["uids"], p["gids"], p["umask"].as_str().unwrap_or(""),
        );
        if let Some(t) = p["controlling_terminal"].as_str() {
            let _ = writeln!(s, "  controlling terminal {t}");
        }
        let m = &p["memory"];
        let inherited = match m["inherited_bytes"].as_u64().unwrap_or(0) {
            0 => String::new(),
            n => format!(", {} shared with the parent (stored with it)", mib(n)),
        };
        let _ = writeln!(
            s,
            "  memory: {} mappings, {} mapped, {} stored{inherited}",
            m["mappings"],
            mib(m["mapped_bytes"].as_u64().unwrap_or(0)),
            mib(m["stored_bytes"].as_u64().unwrap_or(0)),
        );
        for vma in m["vmas"].as_array().into_iter().flatten() {
            if !full && vma["stored_bytes"].as_u64() == Some(0) {
                continue;
            }
            let _ = writeln!(
                s,
                "    {}-{} {} {:>11} {:<11} stored {:>10} {}",
                vma["start"].as_str().unwrap_or(""),
                vma["end"].as_str().unwrap_or(""),
                vma["prot"].as_str().unwrap_or(""),
                mib(vma["size"].as_u64().unwrap_or(0)),
                vma["kind"].as_str().unwrap_or(""),
                mib(vma["stored_bytes"].as_u64().unwrap_or(0)),
                vma["path"].as_str().unwrap_or(""),
            );
        }
        for g in p["sysv_shm"].as_array().into_iter().flatten() {
            let _ = writeln!(
                s,
                "  SysV shm: key {} shmid {} size {} mode {}{}",
                g["key"].as_str().unwrap_or(""),
                g["shmid"],
                g["size"],
                g["mode"].as_str().unwrap_or(""),
                if g["removed"].as_bool() == Some(true) {
                    " (marked for removal)"
                } else {
                    ""
                },
            );
        }
        if let Some(sig) = p["stop_signal"].as_i64().filter(|s| *s != 0) {
            let _ = writeln!(s, "  stopped (job control) by signal {sig}");
        }
        let threads = p["threads"].as_array().cloned().unwrap_or_default();
        let _ = writeln!(s, "  threads: {}", threads.len());
        for t in &threads {
            let _ = writeln!(
                s,
                "    tid {} {:<16} rip {} sigmask {} pending {}",
                t["tid"],
                t["comm"].as_str().unwrap_or(""),
                t["rip"].as_str().unwrap_or(""),
                t["sigmask"].as_str().unwrap_or(""),
                t["pending_signals"],
            );
            let sc = &t["seccomp"];
            if !sc.is_null() {
                let n = sc["filters"].as_array().map_or(0, |f| f.len());
                let _ = match sc["mode"].as_str() {
                    Some("filter") => writeln!(s, "      seccomp: {n} filter(s)"),
                    m => writeln!(s, "      seccomp: {} mode", m.unwrap_or("?")),
                };
            }
        }
        let fds = p["fds"].as_array().cloned().unwrap_or_default();
        let _ = writeln!(s, "  file descriptors: {}", fds.len());
        for f in &fds {
            let tty = &f["tty"];
            let sock = &f["socket"];
            let ext = &f["external"];
            let path = if !ext.is_null() {
                format!(
                    "{} connected outside the dumped tree ({} saved bytes){}",
                    f["path"].as_str().unwrap_or(""),
                    ext["saved_bytes"],
                    match ext["unread_bytes_not_saved"].as_u64() {
                        Some(n) if n > 0 => format!(", {n} unread bytes left in it"),
                        _ => String::new(),
                    }
                )
            } else if sock.is_null() {
                f["path"].as_str().unwrap_or("").to_string()
            } else {
                let mut d = sock["local"].as_str().unwrap_or("").to_string();
                if let Some(p) = sock["peer"].as_str() {
                    d += &format!(" <-> {p}");
                }
                let t = &sock["tcp"];
                if !t.is_null() {
                    d += &format!(
                        " {}, {} bytes to send ({} unsent), {} unread",
                        t["state"].as_str().unwrap_or(""),
                        t["send_queue_bytes"],
                        t["unsent_bytes"],
                        t["recv_queue_bytes"]
                    );
                }
                if let Some(n) = sock["queued_datagrams"].as_u64() {
                    d += &format!(", {n} datagram(s) queued");
                }
                d
            };
            let _ = writeln!(
                s,
                "    {:>4} {:<10} pos {:<8} flags {:<8} {}{}{}",
                f["fd"],
                f["kind"].as_str().unwrap_or(""),
                f["pos"],
                f["flags"].as_str().unwrap_or(""),
                path,
                if tty.is_null() {
                    String::new()
                } else {
                    format!(
                        " (pty {} {}, {}{})",
                        tty["index"],
                        tty["side"].as_str().unwrap_or(""),
                        tty["window"].as_str().unwrap_or(""),
                        if tty["outside_the_tree"].as_bool() == Some(true) {
                            ", master outside the tree"
                        } else {
                            ""
                        }
                    )
                },
                if f["cloexec"].as_bool() == Some(true) {
                    " (cloexec)"
                } else {
                    ""
                },
            );
        }
        let sig = &p["signals"];
        let handlers = sig["handlers"].as_array().cloned().unwrap_or_default();
        let _ = writeln!(
            s,
            "  signals: {} handlers set, {} process-wide pending, {} interval timers",
            handlers.len(),
            sig["shared_pending"],
            sig["itimers"].as_array().map_or(0, |a| a.len()),
        );
        for h in &handlers {
            let _ = writeln!(
                s,
                "    signal {:>2}: {} flags {}",
                h["signal"],
                h["handler"].as_str().unwrap_or(""),
                h["flags"].as_str().unwrap_or("")
            );
        }
        let timers = p["posix_timers"].as_array().cloned().unwrap_or_default();
        if !timers.is_empty() {
            let _ = writeln!(s, "  POSIX timers: {}", timers.len());
            for t in &timers {
                let ms = |k: &str| t[k].as_u64().unwrap_or(0) as f64 / 1e6;
                let _ = writeln!(
                    s,
                    "    timer {}: clock {}, notify {} (signal {}), every {:.3} ms, next in {:.3} ms, overrun {}",
                    t["id"],
                    t["clock_id"],
                    t["notify"].as_str().unwrap_or(""),
                    t["signo"],
                    ms("interval_ns"),
                    ms("value_ns"),
                    t["overrun"]
                );
            }
        }
    }
    s
}

/// What `inspect --verify` found: each page file checked against the
/// manifest (whose own checksum was checked when the image was opened).
pub struct Verified {
    /// (page file, the error if its size or checksum differs).
    pub files: Vec<(String, Option<String>)>,
}

/// Reads every page file of the image through xxh3, each one even if an
/// earlier one is corrupt.
pub fn verify(reader: &ImageReader) -> Verified {
    let files = reader
        .page_files()
        .iter()
        .map(|info| {
            let bad = reader.verify_page_file(info).err().map(|e| e.to_string());
            (info.name.clone(), bad)
        })
        .collect();
    Verified { files }
}

impl Verified {
    pub fn json(&self) -> Value {
        let files: Vec<Value> = self
            .files
            .iter()
            .map(|(name, bad)| json!({ "name": name, "ok": bad.is_none(), "error": bad }))
            .collect();
        json!({ "manifest_ok": true, "page_files": files, "ok": self.corrupt().next().is_none() })
    }

    pub fn text(&self) -> String {
        let mut out = String::from("verify:\n  manifest.img: ok\n");
        for (name, bad) in &self.files {
            // Writing to a String cannot fail.
            let _ = match bad {
                None => writeln!(out, "  {name}: ok"),
                Some(e) => writeln!(out, "  {name}: CORRUPT ({e})"),
            };
        }
        out
    }

    fn corrupt(&self) -> impl Iterator<Item = &str> {
        self.files
            .iter()
            .filter(|(_, bad)| bad.is_some())
            .map(|(name, _)| name.as_str())
    }

    /// The error to exit with (code 3) when a page file is corrupt.
    pub fn error(&self, dir: &std::path::Path) -> Option<godwit_engine::EngineError> {
        let bad: Vec<&str> = self.corrupt().collect();
        if bad.is_empty() {
            return None;
        }
        Some(godwit_engine::EngineError::BadImage(format!(
            "{}: page file{} {} corrupt ({} of {}): it cannot be restored; dump the process again or restore a copy of the image",
            dir.display(),
            if bad.len() > 1 { "s" } else { "" },
            bad.join(", "),
            bad.len(),
            self.files.len()
        )))
    }
}
