//! Bad input and refusals: each must give a clear message and exit code,
//! never a panic, and leave the process being dumped running.

mod common;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_fails(out: &std::process::Output, code: i32, needle: &str) {
    let err = stderr_of(out);
    assert_eq!(out.status.code(), Some(code), "exit code; stderr: {err}");
    assert!(
        err.contains(needle),
        "stderr should mention {needle:?}: {err}"
    );
    assert!(!err.contains("panicked"), "godwit panicked: {err}");
}

/// What a counting test process last wrote to DIR/count (-1: nothing yet).
fn counted(p: &Proc) -> i64 {
    std::fs::read_to_string(p.path("count"))
        .unwrap_or_default()
        .trim()
        .parse::<i64>()
        .unwrap_or(-1)
}

fn dumped(name: &str) -> Proc {
    let mut p = Proc::test_prog(name);
    let img = p.images();
    godwit_ok(&[
        "dump",
        "--pid",
        &p.pid.to_string(),
        "--images",
        img.to_str().unwrap(),
    ]);
    p.end_original();
    p
}

#[test]
fn unknown_pid() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img");
    let out = godwit(&["dump", "--pid", "999999", "--images", img.to_str().unwrap()]);
    assert_fails(&out, 6, "no process with PID 999999");
    assert!(!img.join("manifest.img").exists());
}

#[test]
fn unsupported_resource_leaves_process_running() {
    let p = Proc::test_prog("sockets");
    let img = p.images();
    let maps = || std::fs::read_to_string(format!("/proc/{}/maps", p.pid)).unwrap();
    let before = maps();
    let out = godwit(&[
        "dump",
        "--pid",
        &p.pid.to_string(),
        "--images",
        img.to_str().unwrap(),
    ]);
    assert_fails(&out, 5, "socket");
    assert_eq!(maps(), before, "the memory map after the failed dump");
    assert!(
        stderr_of(&out).contains(&format!("process {}", p.pid)),
        "names the PID"
    );
    // The process still runs and still counts.
    let count = || counted(&p);
    let before = count();
    wait_for("the counter to advance", Duration::from_secs(10), || {
        count() > before
    });
    // Nothing that restore would accept was left behind, nor the page
    // files its memory was being copied into meanwhile.
    let left: Vec<_> = std::fs::read_dir(&img)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "files left in the image directory: {left:?}"
    );
    let out = godwit(&["restore", "--images", img.to_str().unwrap()]);
    assert_fails(&out, 3, "no committed image");
}

#[test]
fn second_restore_while_pid_taken() {
    let mut p = dumped("signals");
    p.restore();
    let img = p.images();
    let out = godwit(&["restore", "--images", img.to_str().unwrap()]);
    assert_fails(&out, 4, &format!("PID {} is in use", p.pid));
    assert_eq!(p.verdict(), "PASS");
}

#[test]
fn corrupt_page_file() {
    let p = dumped("memory");
    let pages = p.images().join("pages-0.img");
    let mut b = std::fs::read(&pages).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x5a;
    std::fs::write(&pages, &b).unwrap();
    let out = godwit(&["restore", "--images", p.images().to_str().unwrap()]);
    assert_fails(&out, 3, "pages-0.img");
    assert!(reaped(p.pid), "the half-built process was ended");
}

#[test]
fn missing_and_truncated_files() {
    let p = dumped("files");
    let img = p.images();
    let manifest = std::fs::read(img.join("manifest.img")).unwrap();
    std::fs::write(img.join("manifest.img"), &manifest[..manifest.len() - 7]).unwrap();
    assert_fails(
        &godwit(&["restore", "--images", img.to_str().unwrap()]),
        3,
        "manifest.img",
    );
    assert_fails(
        &godwit(&["inspect", img.to_str().unwrap()]),
        3,
        "manifest.img",
    );
    std::fs::write(img.join("manifest.img"), &manifest).unwrap();
    std::fs::remove_file(img.join("pages-0.img")).unwrap();
    assert_fails(
        &godwit(&["restore", "--images", img.to_str().unwrap()]),
        3,
        "pages-0.img",
    );
    assert_fails(
        &godwit(&["restore", "--images", "/nonexistent/godwit"]),
        3,
        "/nonexistent/godwit",
    );
}

#[test]
fn newer_major_version_refused() {
    let p = dumped("files");
    let m = p.images().join("manifest.img");
    let mut b = std::fs::read(&m).unwrap();
    b[8] = 9; // major version, little endian u16 after the 8-byte magic
    std::fs::write(&m, &b).unwrap();
    assert_fails(
        &godwit(&["restore", "--images", p.images().to_str().unwrap()]),
        3,
        "upgrade godwit",
    );
}

#[test]
fn changed_file_refused_unless_allowed() {
    let mut p = dumped("files");
    let data = p.path("work/data.txt");
    std::fs::write(&data, "short").unwrap();
    let img = p.images();
    let out = godwit(&["restore", "--images", img.to_str().unwrap()]);
    assert_fails(&out, 1, "data.txt");
    assert!(stderr_of(&out).contains("--allow-file-changes"));
    assert!(gone(p.pid));
    // With the option it restores (the program then sees the changed file).
    std::fs::write(&data, "0123456789abcdef").unwrap();
    godwit_ok(&[
        "restore",
        "--images",
        img.to_str().unwrap(),
        "--allow-file-changes",
    ]);
    p.child = None;
    assert_eq!(p.verdict(), "PASS");
}

#[test]
fn vanished_file_refused() {
    let p = dumped("files");
    std::fs::remove_file(p.path("work/data.txt")).unwrap();
    let out = godwit(&["restore", "--images", p.images().to_str().unwrap()]);
    assert_fails(&out, 1, "data.txt");
    assert!(gone(p.pid));
}

#[test]
fn non_root_cannot_dump_others() {
    let p = Proc::test_prog("signals");
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let img = dir.path().join("img");
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_godwit"))
        .args([
            "dump",
            "--pid",
            &p.pid.to_string(),
            "--images",
            img.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_fails(&out, 6, "permission denied");
    assert_eq!(p.verdict(), "PASS", "the process was not disturbed");
}

#[test]
fn image_is_private_and_inspectable() {
    let p = dumped("memory");
    let img = p.images();
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&img), 0o700);
    for e in std::fs::read_dir(&img).unwrap() {
        assert_eq!(mode(&e.unwrap().path()), 0o600);
    }
    let v: serde_json::Value =
        serde_json::from_str(&godwit_ok(&["inspect", "--json", img.to_str().unwrap()])).unwrap();
    let proc0 = &v["processes"][0];
    assert_eq!(proc0["pid"], p.pid);
    assert_eq!(proc0["comm"], "memory");
    assert!(proc0["memory"]["stored_bytes"].as_u64().unwrap() >= 24 << 20);
    assert!(proc0["memory"]["vmas"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["kind"] == "Heap"));
    assert!(proc0["fds"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["path"].as_str().unwrap_or("") == "/dev/null"));
    let text = godwit_ok(&["inspect", img.to_str().unwrap()]);
    assert!(
        text.contains("threads: 1") && text.contains("memory:"),
        "{text}"
    );
}

/// A seccomp filter handing syscalls to a user-space listener cannot be
/// restored (the listener's descriptor cannot be recreated): the dump is
/// refused naming the thread, and the process, filter and listener work on.
#[test]
fn seccomp_listener_refused_not_dropped() {
    let p = Proc::test_prog("seccomp_notify");
    let tid = std::fs::read_to_string(p.path("tid")).unwrap();
    let img = p.images();
    let out = godwit(&[
        "dump",
        "--pid",
        &p.pid.to_string(),
        "--images",
        img.to_str().unwrap(),
    ]);
    assert_fails(&out, 5, &format!("thread {}", tid.trim()));
    assert_fails(&out, 5, "SECCOMP_RET_USER_NOTIF");
    assert!(!img.join("manifest.img").exists(), "no image committed");
    assert_eq!(p.verdict(), "PASS", "the process runs on");
}

/// The SysV segments (key, shmid) an image holds, from `godwit inspect`.
fn image_segments(img: &std::path::Path) -> Vec<(i32, i32)> {
    let v: serde_json::Value =
        serde_json::from_str(&godwit_ok(&["inspect", "--json", img.to_str().unwrap()])).unwrap();
    let mut out = Vec::new();
    for p in v["processes"].as_array().unwrap() {
        for g in p["sysv_shm"].as_array().unwrap() {
            let key = u32::from_str_radix(g["key"].as_str().unwrap().trim_start_matches("0x"), 16);
            out.push((key.unwrap() as i32, g["shmid"].as_i64().unwrap() as i32));
        }
    }
    out
}

/// This host's segments with the ids of `segs`: (key, shmid, cpid, lpid, nattch).
fn host_segments(segs: &[(i32, i32)]) -> Vec<(i32, i32, i32, i32, u64)> {
    sysv_segments()
        .into_iter()
        .filter(|h| segs.iter().any(|s| s.1 == h.1))
        .collect()
}

/// A SysV segment left on the host by the dumped process (not marked for
/// removal) holds the key and id the image needs: restore refuses, naming
/// both, and leaves nothing behind; once it is removed, restore works.
#[test]
fn sysv_segment_in_use_refused() {
    let mut p = Proc::test_prog("ipc");
    p.dump(&[]);
    let tree = p.end_original_leaving_segments();
    let img = p.images();
    let segs = image_segments(&img);
    assert_eq!(segs.len(), 2, "{segs:?}");
    let &(key, shmid) = segs
        .iter()
        .find(|s| s.0 != 0)
        .expect("a segment with a key");
    let before = host_segments(&segs);
    assert_eq!(
        before.len(),
        1,
        "only the one not marked for removal is left: {before:?}"
    );
    assert_eq!((before[0].0, before[0].1), (key, shmid));
    let out = godwit(&["restore", "--images", img.to_str().unwrap()]);
    assert_fails(&out, 4, &format!("shmid {shmid}"));
    let err = stderr_of(&out);
    assert!(
        err.contains(&format!("{key:#010x}")),
        "names the key: {err}"
    );
    assert!(
        err.contains(&format!("ipcrm -m {shmid}")),
        "says what to do: {err}"
    );
    assert!(tree.iter().all(|pid| gone(*pid)), "no process left behind");
    assert_eq!(
        host_segments(&segs),
        before,
        "no segment created or removed"
    );
    remove_leftover_segments(&tree);
    p.restore();
    assert_eq!(p.verdict(), "PASS");
}

/// The FIFO a process had open was removed before the restore: refused,
/// naming its path, with no process or SysV segment left behind.
#[test]
fn fifo_removed_refused() {
    let mut p = dumped("ipc");
    let segs = image_segments(&p.images());
    let fifo = p.path("fifo");
    std::fs::remove_file(&fifo).unwrap();
    let out = godwit(&["restore", "--images", p.images().to_str().unwrap()]);
    assert_fails(&out, 1, fifo.to_str().unwrap());
    assert!(stderr_of(&out).contains("mkfifo"), "{}", stderr_of(&out));
    assert!(p.tree.iter().all(|pid| gone(*pid)) && gone(p.pid));
    assert_eq!(host_segments(&segs), vec![], "no SysV segment was created");
    // With the FIFO back, the restore works (and refills its data).
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    p.restore();
    assert_eq!(p.verdict(), "PASS");
}

/// A restore refused for a corrupt page file leaves no SysV segment and no
/// process behind (the checksums are verified before either is created).
#[test]
fn failed_restore_removes_sysv_segments() {
    let p = dumped("ipc");
    let segs = image_segments(&p.images());
    assert_eq!(segs.len(), 2, "{segs:?}");
    let pages = p.images().join("pages-0.img");
    let mut b = std::fs::read(&pages).unwrap();
    let last = b.len() - 1;
    b[last] ^= 0x5a;
    std::fs::write(&pages, &b).unwrap();
    let out = godwit(&["restore", "--images", p.images().to_str().unwrap()]);
    assert_fails(&out, 3, "pages-0.img");
    assert!(reaped(p.pid), "the half-built process was ended");
    for pid in &p.tree {
        assert!(reaped(*pid), "the half-built child {pid} was ended");
    }
    assert_eq!(host_segments(&segs), vec![], "segments left behind");
}

/// A --leave-running dump that fails after its pre-copy (a connected TCP
/// socket is found at the freeze) leaves the process as it was: running,
/// writing its memory, no write protection left on it (no `uw` in its
/// VmFlags), and no image.
#[test]
fn failed_precopy_dump_leaves_process_untouched() {
    let script = r#"
import os, socket, sys, time
d = sys.argv[1]
mem = bytearray(os.urandom(1 << 20) * 32)
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
cli = socket.create_connection(srv.getsockname()); conn, _ = srv.accept()
n = 0
while True:
    n += 1
    mem[(n * 4096) % len(mem)] = n % 256
    with open(d + "/count.tmp", "w") as f:
        f.write(str(n))
    os.rename(d + "/count.tmp", d + "/count")
    time.sleep(0.005)
"#;
    let dir = tempfile::Builder::new()
        .prefix("godwit-e2e")
        .tempdir()
        .unwrap();
    let d = dir.path().to_str().unwrap().to_string();
    let p = Proc::spawn_in(dir, "python3", &["-c", script, &d]);
    let count = || counted(&p);
    wait_for("python to count", Duration::from_secs(20), || count() > 0);
    let img = p.images();
    let out = godwit(&[
        "--json",
        "dump",
        "--pid",
        &p.pid.to_string(),
        "--images",
        img.to_str().unwrap(),
        "--leave-running",
    ]);
    assert_fails(&out, 5, "socket");
    let before = count();
    wait_for("the counter to advance", Duration::from_secs(10), || {
        count() > before + 10
    });
    let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", p.pid)).unwrap();
    assert!(
        !smaps
            .lines()
            .any(|l| l.starts_with("VmFlags:") && l.contains(" uw")),
        "write protection left behind"
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", p.pid)).unwrap();
    assert!(status.contains("TracerPid:\t0"), "{status}");
    assert!(!img.join("manifest.img").exists());
    let leftovers: Vec<_> = std::fs::read_dir(&img)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(
        leftovers.is_empty(),
        "left in the image directory: {leftovers:?}"
    );
}

/// One byte of a dumped counter's page file flipped: the restore fails
/// naming the file (exit 3) before it creates any process, so no process
/// ever holds the image's PID, not even for a moment.
#[test]
fn corrupt_page_file_creates_no_process() {
    let dir = tempfile::Builder::new()
        .prefix("godwit-e2e")
        .tempdir()
        .unwrap();
    let log = dir.path().join("counter.log");
    let log = log.to_str().unwrap().to_string();
    let counter = progs().join("counter");
    let mut p = Proc::spawn_in(dir, counter.to_str().unwrap(), &[&log]);
    wait_for("the counter to count", Duration::from_secs(10), || {
        std::fs::read_to_string(&log).is_ok_and(|s| s.lines().count() > 1)
    });
    let img = p.images();
    godwit_ok(&[
        "dump",
        "--pid",
        &p.pid.to_string(),
        "--images",
        img.to_str().unwrap(),
    ]);
    p.end_original();
    let pages = img.join("pages-0.img");
    let mut b = std::fs::read(&pages).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x01;
    std::fs::write(&pages, &b).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        let proc_dir = format!("/proc/{}", p.pid);
        std::thread::spawn(move || {
            let mut seen = false;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                seen |= std::path::Path::new(&proc_dir).exists();
            }
            seen
        })
    };
    let out = godwit(&["restore", "--images", img.to_str().unwrap()]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = watcher.join().unwrap();
    assert_fails(&out, 3, "pages-0.img");
    assert!(
        !seen,
        "a process with the image's PID {} appeared during the failed restore",
        p.pid
    );
    assert!(gone(p.pid));
}

/// `inspect --verify` reads every page file: a sound image passes (exit 0,
/// each file "ok"); a flipped byte in one page file is named as corrupt
/// (the others still checked and ok) and the exit code is 3.
#[test]
fn inspect_verify_names_corrupt_page_file() {
    let p = dumped("tree");
    let img = p.images();
    let dir = img.to_str().unwrap();
    let text = godwit_ok(&["inspect", "--verify", dir]);
    assert!(
        text.contains("manifest.img: ok") && text.contains("pages-0.img: ok"),
        "{text}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&godwit_ok(&["--json", "inspect", "--verify", dir])).unwrap();
    assert_eq!(v["verify"]["ok"], true, "{}", v["verify"]);
    let files = v["verify"]["page_files"].as_array().unwrap().len();
    assert!(files >= 2, "the tree has several page files");
    let name = v["verify"]["page_files"][files - 1]["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(name, "pages-0.img");
    let pages = img.join(&name);
    let mut b = std::fs::read(&pages).unwrap();
    let last = b.len() - 1;
    b[last] ^= 0x01;
    std::fs::write(&pages, &b).unwrap();
    // Without --verify inspect only reads the manifest.
    godwit_ok(&["inspect", dir]);
    let out = godwit(&["inspect", "--verify", dir]);
    assert_fails(&out, 3, &name);
    assert!(stderr_of(&out).contains("corrupt"), "{}", stderr_of(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("{name}: CORRUPT")), "{text}");
    assert!(text.contains("pages-0.img: ok"), "{text}");
    let out = godwit(&["--json", "inspect", "--verify", dir]);
    assert_eq!(out.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["verify"]["ok"], false);
    assert_eq!(
        v["verify"]["page_files"][files - 1]["ok"],
        false,
        "{}",
        v["verify"]
    );
}

/// A user without the rights to restore (uid 2000, no capabilities) dumps
/// its own process: a dump that would end it is refused (exit 6) with the
/// reason and --leave-running suggested, before the process is touched; it
/// keeps running.
#[test]
fn dump_refused_when_caller_could_not_restore() {
    let p = Proc::test_prog_as(Some(2000), "signals", &[]);
    let img = p.images();
    let run_as_2000 = |extra: &[&str]| {
        std::process::Command::new("setpriv")
            .args(["--reuid=2000", "--regid=2000", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_godwit"))
            .args([
                "dump",
                "--pid",
                &p.pid.to_string(),
                "--images",
                img.to_str().unwrap(),
            ])
            .args(extra)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let out = run_as_2000(&[]);
    assert_fails(&out, 6, "--leave-running");
    let err = stderr_of(&out);
    assert!(
        err.contains(&format!("process {}", p.pid))
            && err.contains("CAP_CHECKPOINT_RESTORE")
            && err.contains("left running"),
        "{err}"
    );
    assert!(!img.join("manifest.img").exists(), "no image was written");
    let status = std::fs::read_to_string(format!("/proc/{}/status", p.pid)).unwrap();
    assert!(status.contains("TracerPid:\t0"), "{status}");
    assert_eq!(p.verdict(), "PASS", "the process runs on, undisturbed");
}

/// `godwit dump --pid $$` from a shell (the shell is godwit's parent):
/// refused as permission denied on the shell, saying it is an ancestor of
/// godwit (naming godwit's PID) instead of failing on godwit itself.
#[test]
fn dumping_an_ancestor_of_godwit_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img");
    let out = std::process::Command::new("sh")
        .args([
            "-c",
            r#"echo "shell $$" >&2; "$0" dump --pid $$ --images "$1"; exit $?"#,
            env!("CARGO_BIN_EXE_godwit"),
            img.to_str().unwrap(),
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = stderr_of(&out);
    let shell: i32 = err
        .lines()
        .find_map(|l| l.strip_prefix("shell "))
        .and_then(|s| s.trim().parse().ok())
        .expect("the shell's PID");
    assert_fails(&out, 6, &format!("permission denied on process {shell}"));
    assert!(
        err.contains(&format!("PID {shell} is an ancestor of this godwit (PID "))
            && err.contains("run godwit from outside its tree"),
        "{err}"
    );
    assert!(!img.join("manifest.img").exists());
}

/// Root dumping a process another process already traces (a debugger):
/// the refusal names the tracer instead of suggesting another user's
/// process, and the traced process runs on.
#[test]
fn dumping_a_traced_process_names_the_tracer() {
    let p = Proc::test_prog("tracer");
    let traced: i32 = std::fs::read_to_string(p.path("traced"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let img = p.images();
    let out = godwit(&[
        "dump",
        "--pid",
        &traced.to_string(),
        "--images",
        img.to_str().unwrap(),
    ]);
    assert_fails(&out, 6, &format!("permission denied on process {traced}"));
    let err = stderr_of(&out);
    assert!(
        err.contains(&format!("already traced by PID {} (tracer)", p.pid)),
        "{err}"
    );
    assert!(!err.contains("another user"), "{err}");
    assert!(!dead(traced), "the traced process runs on");
    assert!(!img.join("manifest.img").exists());
}

/// The program's own file (its executable, mapped) was deleted after the
/// dump: the restore says the file is gone and must be put back at the
/// same path, without suggesting --allow-file-changes (which cannot help).
#[test]
fn vanished_mapped_file_says_put_it_back() {
    let dir = tempfile::Builder::new()
        .prefix("godwit-e2e")
        .tempdir()
        .unwrap();
    let exe = dir.path().join("counter-copy");
    std::fs::copy(progs().join("counter"), &exe).unwrap();
    let log = dir.path().join("counter.log");
    let log = log.to_str().unwrap().to_string();
    let exe = exe.to_str().unwrap().to_string();
    let mut p = Proc::spawn_in(dir, &exe, &[&log]);
    wait_for("the counter to count", Duration::from_secs(10), || {
        std::fs::read_to_string(&log).is_ok_and(|s| s.lines().count() > 1)
    });
    let img = p.images();
    godwit_ok(&[
        "dump",
        "--pid",
        &p.pid.to_string(),
        "--images",
        img.to_str().unwrap(),
    ]);
    p.end_original();
    std::fs::remove_file(&exe).unwrap();
    for extra in [&[][..], &["--allow-file-changes"][..]] {
        let mut args = vec!["restore", "--images", img.to_str().unwrap()];
        args.extend_from_slice(extra);
        let out = godwit(&args);
        assert_fails(&out, 1, &exe);
        let err = stderr_of(&out);
        assert!(
            err.contains("is gone") && err.contains("must exist at the same path"),
            "{err}"
        );
        assert!(!err.contains("use --allow-file-changes"), "{err}");
        assert!(gone(p.pid));
    }
}

/// A data file a process had mapped (its descriptor closed) was deleted
/// after the dump: the restore names it, says it is gone and must be put
/// back, without suggesting --allow-file-changes.
#[test]
fn vanished_mapped_data_file_says_put_it_back() {
    let script = r#"
import mmap, os, sys, time
d = sys.argv[1]
with open(d + "/data.bin", "wb") as f:
    f.write(b"x" * 8192)
with open(d + "/data.bin", "r+b") as f:
    m = mmap.mmap(f.fileno(), 0)
open(d + "/ready", "w").close()
while True:
    time.sleep(0.05)
"#;
    let dir = tempfile::Builder::new()
        .prefix("godwit-e2e")
        .tempdir()
        .unwrap();
    let d = dir.path().to_str().unwrap().to_string();
    let mut p = Proc::spawn_in(dir, "python3", &["-c", script, &d]);
    let ready = p.path("ready");
    wait_for("python to map its file", Duration::from_secs(20), || {
        ready.exists()
    });
    let img = p.images();
    godwit_ok(&[
        "dump",
        "--pid",
        &p.pid.to_string(),
        "--images",
        img.to_str().unwrap(),
    ]);
    p.end_original();
    let data = p.path("data.bin");
    std::fs::remove_file(&data).unwrap();
    let out = godwit(&["restore", "--images", img.to_str().unwrap()]);
    assert_fails(&out, 1, data.to_str().unwrap());
    let err = stderr_of(&out);
    assert!(
        err.contains("is gone") && err.contains("must exist at the same path"),
        "{err}"
    );
    assert!(!err.contains("--allow-file-changes"), "{err}");
    assert!(gone(p.pid));
}
