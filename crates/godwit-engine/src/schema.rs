//! The checkpoint metadata: `godwit.image.v1.Checkpoint` (proto/checkpoint.proto
//! is the same schema as a .proto file for other languages). Plain data only:
//! no handles, no pointers into this process. Every field is optional on the
//! wire, so adding a field is not a breaking change (docs/IMAGE_FORMAT.md).

#[derive(Clone, PartialEq, prost::Message)]
pub struct Checkpoint {
    #[prost(string, tag = "1")]
    pub godwit_version: String,
    /// "x86_64"
    #[prost(string, tag = "2")]
    pub arch: String,
    #[prost(message, optional, tag = "3")]
    pub cpu: Option<CpuFeatures>,
    /// uname -r of the dumping host.
    #[prost(string, tag = "4")]
    pub kernel: String,
    #[prost(string, tag = "5")]
    pub hostname: String,
    #[prost(uint64, tag = "6")]
    pub created_unix_ms: u64,
    #[prost(message, repeated, tag = "7")]
    pub processes: Vec<Process>,
    #[prost(message, optional, tag = "8")]
    pub stats: Option<DumpStats>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CpuFeatures {
    /// XCR0 of the dumping CPU: the xsave features the image's xstate may use.
    #[prost(uint64, tag = "1")]
    pub xcr0: u64,
    /// Size of the xsave area for those features.
    #[prost(uint32, tag = "2")]
    pub xsave_size: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct DumpStats {
    #[prost(uint64, tag = "1")]
    pub frozen_us: u64,
    #[prost(uint64, tag = "2")]
    pub total_us: u64,
    #[prost(uint64, tag = "3")]
    pub pages_written: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Process {
    #[prost(int32, tag = "1")]
    pub pid: i32,
    #[prost(int32, tag = "2")]
    pub ppid: i32,
    #[prost(int32, tag = "3")]
    pub pgid: i32,
    #[prost(int32, tag = "4")]
    pub sid: i32,
    #[prost(string, tag = "5")]
    pub comm: String,
    #[prost(string, tag = "6")]
    pub exe: String,
    #[prost(string, tag = "7")]
    pub cwd: String,
    #[prost(uint32, tag = "8")]
    pub umask: u32,
    #[prost(uint32, tag = "9")]
    pub personality: u32,
    #[prost(message, optional, tag = "10")]
    pub creds: Option<Creds>,
    #[prost(message, repeated, tag = "11")]
    pub rlimits: Vec<Rlimit>,
    #[prost(message, optional, tag = "12")]
    pub mm: Option<MmLayout>,
    #[prost(message, repeated, tag = "13")]
    pub vmas: Vec<Vma>,
    #[prost(message, repeated, tag = "14")]
    pub threads: Vec<Thread>,
    #[prost(message, repeated, tag = "15")]
    pub sigactions: Vec<SigAction>,
    /// Process-wide pending signals, raw 128-byte siginfo_t each.
    #[prost(bytes = "vec", repeated, tag = "16")]
    pub shared_pending: Vec<Vec<u8>>,
    #[prost(message, repeated, tag = "17")]
    pub itimers: Vec<Itimer>,
    #[prost(message, repeated, tag = "18")]
    pub fds: Vec<Fd>,
    #[prost(message, repeated, tag = "19")]
    pub pipes: Vec<Pipe>,
    /// Name of the page file holding this process's pages.
    #[prost(string, tag = "20")]
    pub page_file: String,
    /// A zombie: only its IDs and exit status are kept.
    #[prost(bool, tag = "21")]
    pub zombie: bool,
    /// The wait status a zombie reports to its parent.
    #[prost(int32, tag = "22")]
    pub exit_status: i32,
    /// The signal the parent gets when this process exits (clone's exit
    /// signal; 0: none, and the parent waits for it only with __WALL or
    /// __WCLONE). None in older images: SIGCHLD.
    #[prost(int32, optional, tag = "31")]
    pub exit_signal: Option<i32>,
    /// Its root directory when it was chroot'ed: the path as godwit saw it
    /// (from godwit's own root). Empty: the same root as godwit's.
    #[prost(string, tag = "32")]
    pub root: String,
    /// A working directory that was removed (`cwd` is its path without
    /// " (deleted)"): its mode, owner, times and `node_id`, kind DIRECTORY,
    /// `deleted` set. None: `cwd` exists.
    #[prost(message, optional, tag = "33")]
    pub cwd_deleted: Option<Fd>,
    /// A root directory (chroot) that was removed (`root` is its path
    /// without " (deleted)"), described as `cwd_deleted` is.
    #[prost(message, optional, tag = "34")]
    pub root_deleted: Option<Fd>,
    /// The main thread had exited (pthread_exit, SYS_exit) while the
    /// threads in `threads` (which then hold no main thread) ran on: a
    /// zombie thread-group leader. Its wait status is `exit_status`.
    #[prost(bool, tag = "40")]
    pub leader_exited: bool,
    /// The exited main thread's CPU affinity (as `Sched::cpus`), which its
    /// /proc entry still shows.
    #[prost(uint64, repeated, tag = "41")]
    pub leader_cpus: Vec<u64>,
    /// Contents of the shmem objects this process is the first (in tree
    /// order) to map; stored after its page runs in its page file.
    #[prost(message, repeated, tag = "23")]
    pub shmem: Vec<ShmemObject>,
    /// The page files holding this process's pages, in order: each holds the
    /// bytes [start, start + len) of the process's page offsets. Empty in
    /// older images: then `page_file` holds them all.
    #[prost(message, repeated, tag = "24")]
    pub page_spans: Vec<PageSpan>,
    #[prost(message, repeated, tag = "25")]
    pub posix_timers: Vec<PosixTimer>,
    /// The SysV shared memory segments this process is the first (in tree
    /// order) to have attached; their contents follow its shmem objects'
    /// in its page file.
    #[prost(message, repeated, tag = "26")]
    pub sysv_shm: Vec<SysvShm>,
    /// The controlling terminal's device number (dev_t as stat(2) gives
    /// it); 0 when the process has none.
    #[prost(uint64, tag = "27")]
    pub ctty_dev: u64,
    /// Stopped by job control (group stop) with this signal (SIGSTOP,
    /// SIGTSTP, SIGTTIN, SIGTTOU); 0: running.
    #[prost(int32, tag = "28")]
    pub stop_signal: i32,
    /// Process-wide attributes; absent in older images (then left as a
    /// child of godwit gets them).
    #[prost(message, optional, tag = "29")]
    pub attrs: Option<ProcAttrs>,
    /// Memory areas with their own memory policy (mbind).
    #[prost(message, repeated, tag = "30")]
    pub vma_policies: Vec<VmaPolicy>,
}

/// A SysV shared memory segment, recreated with the same key and id.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SysvShm {
    /// IPC_PRIVATE (0) for a private segment or one marked for removal.
    #[prost(int32, tag = "1")]
    pub key: i32,
    /// The id attaches name it by (`Vma::sysv_shmid`).
    #[prost(int32, tag = "2")]
    pub shmid: i32,
    #[prost(uint64, tag = "3")]
    pub size: u64,
    /// Permission bits (shm_perm.mode & 0777).
    #[prost(uint32, tag = "4")]
    pub mode: u32,
    /// Owner (shm_perm.uid, gid).
    #[prost(uint32, tag = "5")]
    pub uid: u32,
    #[prost(uint32, tag = "6")]
    pub gid: u32,
    /// Marked for removal (IPC_RMID, SHM_DEST): removed again once attached.
    #[prost(bool, tag = "7")]
    pub removed: bool,
    /// Locked in memory (SHM_LOCK).
    #[prost(bool, tag = "8")]
    pub locked: bool,
    /// Data extents: `addr` is the offset in the segment, `offset` the
    /// place in the page file (pages never touched are not stored).
    #[prost(message, repeated, tag = "9")]
    pub data: Vec<PageRun>,
    /// A hugetlb segment (SHM_HUGETLB): its page size in bytes; 0 for an
    /// ordinary one.
    #[prost(uint64, tag = "10")]
    pub huge_page_size: u64,
}

/// A POSIX timer (timer_create).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PosixTimer {
    #[prost(int32, tag = "1")]
    pub id: i32,
    #[prost(int32, tag = "2")]
    pub clock_id: i32,
    #[prost(int32, tag = "3")]
    pub signo: i32,
    /// SIGEV_SIGNAL 0, SIGEV_NONE 1, SIGEV_THREAD_ID 4.
    #[prost(int32, tag = "4")]
    pub notify: i32,
    #[prost(uint64, tag = "5")]
    pub sigval: u64,
    /// The thread notified (SIGEV_THREAD_ID).
    #[prost(int32, tag = "6")]
    pub notify_tid: i32,
    #[prost(uint64, tag = "7")]
    pub interval_ns: u64,
    /// Time left to the next expiry (0: disarmed).
    #[prost(uint64, tag = "8")]
    pub value_ns: u64,
    /// timer_getoverrun(): extra expiries behind the last signal delivered.
    #[prost(int32, tag = "9")]
    pub overrun: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PageSpan {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(uint64, tag = "2")]
    pub start: u64,
    #[prost(uint64, tag = "3")]
    pub len: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ShmemObject {
    /// The id in `Vma::shmem_id`.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub size: u64,
    /// Data extents: `addr` is the offset in the object, `offset` the place
    /// in the page file (holes are not stored).
    #[prost(message, repeated, tag = "3")]
    pub data: Vec<PageRun>,
    /// A memfd (memfd_create): recreated as one with the same name, mode,
    /// owner and seals. Otherwise (shared anonymous memory, unlinked shm
    /// files) a memfd named "godwit-shm" stands in.
    #[prost(bool, tag = "4")]
    pub memfd: bool,
    /// The name given to memfd_create (without the "memfd:" prefix).
    #[prost(string, tag = "5")]
    pub name: String,
    /// F_GET_SEALS (F_SEAL_SEAL 1, SHRINK 2, GROW 4, WRITE 8, FUTURE_WRITE
    /// 16, EXEC 32); F_SEAL_SEAL alone is a memfd without MFD_ALLOW_SEALING.
    #[prost(uint32, tag = "6")]
    pub seals: u32,
    /// Permission bits, owner.
    #[prost(uint32, tag = "7")]
    pub mode: u32,
    #[prost(uint32, tag = "8")]
    pub uid: u32,
    #[prost(uint32, tag = "9")]
    pub gid: u32,
    /// memfd: access and modification times (ns since the epoch); 0 in
    /// older images (left as the restore makes them).
    #[prost(int64, tag = "10")]
    pub atime_ns: i64,
    #[prost(int64, tag = "11")]
    pub mtime_ns: i64,
    /// A hugetlb object (MAP_SHARED | MAP_HUGETLB memory, an MFD_HUGETLB
    /// memfd): its page size in bytes; 0 for a tmpfs one. Made again as a
    /// hugetlb memfd of that page size.
    #[prost(uint64, tag = "12")]
    pub huge_page_size: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Creds {
    /// real, effective, saved, filesystem
    #[prost(uint32, repeated, tag = "1")]
    pub uids: Vec<u32>,
    #[prost(uint32, repeated, tag = "2")]
    pub gids: Vec<u32>,
    #[prost(uint32, repeated, tag = "3")]
    pub groups: Vec<u32>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Rlimit {
    #[prost(uint32, tag = "1")]
    pub resource: u32,
    #[prost(uint64, tag = "2")]
    pub soft: u64,
    #[prost(uint64, tag = "3")]
    pub hard: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct MmLayout {
    #[prost(uint64, tag = "1")]
    pub start_code: u64,
    #[prost(uint64, tag = "2")]
    pub end_code: u64,
    #[prost(uint64, tag = "3")]
    pub start_data: u64,
    #[prost(uint64, tag = "4")]
    pub end_data: u64,
    #[prost(uint64, tag = "5")]
    pub start_brk: u64,
    #[prost(uint64, tag = "6")]
    pub brk: u64,
    #[prost(uint64, tag = "7")]
    pub start_stack: u64,
    #[prost(uint64, tag = "8")]
    pub arg_start: u64,
    #[prost(uint64, tag = "9")]
    pub arg_end: u64,
    #[prost(uint64, tag = "10")]
    pub env_start: u64,
    #[prost(uint64, tag = "11")]
    pub env_end: u64,
    /// The auxiliary vector as 64-bit words (type, value, ..., 0, 0).
    #[prost(uint64, repeated, tag = "12")]
    pub auxv: Vec<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum VmaKind {
    AnonPrivate = 0,
    AnonShared = 1,
    FilePrivate = 2,
    FileShared = 3,
    Heap = 4,
    Stack = 5,
    Vdso = 6,
    Vvar = 7,
    VvarVclock = 8,
    Vsyscall = 9,
    /// A SysV shared memory attach (shmat); `Vma::sysv_shmid` names it.
    SysvShm = 10,
    /// Private anonymous hugetlb memory (MAP_PRIVATE | MAP_ANONYMOUS |
    /// MAP_HUGETLB); `Vma::huge_page_size` gives its page size.
    AnonHugetlb = 11,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Vma {
    #[prost(uint64, tag = "1")]
    pub start: u64,
    #[prost(uint64, tag = "2")]
    pub end: u64,
    /// PROT_* bits.
    #[prost(uint32, tag = "3")]
    pub prot: u32,
    #[prost(enumeration = "VmaKind", tag = "4")]
    pub kind: i32,
    /// The mapped file (file kinds only).
    #[prost(string, tag = "5")]
    pub path: String,
    /// Offset into the file, in bytes.
    #[prost(uint64, tag = "6")]
    pub pgoff: u64,
    /// The file's size and mtime at dump time, to detect a changed file.
    #[prost(uint64, tag = "7")]
    pub file_size: u64,
    #[prost(int64, tag = "8")]
    pub file_mtime_ns: i64,
    /// The two-letter VmFlags of /proc/PID/smaps (gd, dc, hg, ...).
    #[prost(string, repeated, tag = "9")]
    pub vm_flags: Vec<String>,
    /// Runs of pages stored in the page file.
    #[prost(message, repeated, tag = "10")]
    pub pages: Vec<PageRun>,
    /// Shared anonymous memory: the shmem object's id (its inode); mappings
    /// with the same id, in one process or several, share it after restore.
    /// Its pages are stored with the first mapping (in tree order) only.
    #[prost(uint64, tag = "11")]
    pub shmem_id: u64,
    /// Size of that shmem object (or SysV segment) in bytes.
    #[prost(uint64, tag = "12")]
    pub shmem_size: u64,
    /// SysvShm: the segment's id. The VMAs of one attach follow each other
    /// from offset 0 to the segment's end (split by mprotect, say).
    #[prost(int32, tag = "13")]
    pub sysv_shmid: i32,
    /// SysvShm: the shmat flags of the attach (SHM_RDONLY 0o10000,
    /// SHM_EXEC 0o100000).
    #[prost(uint32, tag = "14")]
    pub shmat_flags: u32,
    /// Runs of pages that exist but whose contents are NOT in the image:
    /// a post-copy migration's source serves them after the process runs
    /// at the destination (`offset` unused, 0). Only private anonymous
    /// VMAs have them. An image with lazy runs can be restored only by
    /// the migration receiving it.
    #[prost(message, repeated, tag = "15")]
    pub lazy: Vec<PageRun>,
    /// The process had called mlockall(MCL_FUTURE): mappings it makes are
    /// locked. The bits of mlockall(2): MCL_FUTURE 2, with MCL_ONFAULT 4
    /// when only the pages faulted in are. Process-wide state, kept on the
    /// process's first VMA only (0 on the others); per-VMA locks are the
    /// "lo" and "lf" of `vm_flags`.
    #[prost(uint32, tag = "16")]
    pub mlockall: u32,
    /// The process had prctl(PR_SET_MEMORY_MERGE, 1): KSM may merge all its
    /// private memory, mappings made later included. Process-wide, on the
    /// first VMA only, like `mlockall`.
    #[prost(bool, tag = "17")]
    pub merge_any: bool,
    /// Runs of pages NOT in the image (`offset` unused, 0) because they are
    /// the parent's pages at the same addresses: at dump time both
    /// processes mapped the same physical page (shared copy-on-write since
    /// a fork). The parent's image has a VMA with the same bounds holding
    /// them; the restore rebuilds that VMA in the parent before forking
    /// this process, so they are shared again. Private anonymous VMAs only.
    #[prost(message, repeated, tag = "18")]
    pub inherited: Vec<PageRun>,
    /// FILE_PRIVATE mappings of a deleted file: the file's `Fd::node_id`
    /// (a descriptor of the same process holds it; `path` is empty). A
    /// private mapping of a memfd has `shmem_id` instead.
    #[prost(uint64, tag = "19")]
    pub deleted_node: u64,
    /// hugetlb memory (VmFlags "ht"): its page size in bytes (2 MiB,
    /// 1 GiB); 0 for ordinary memory.
    #[prost(uint64, tag = "20")]
    pub huge_page_size: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PageRun {
    #[prost(uint64, tag = "1")]
    pub addr: u64,
    #[prost(uint64, tag = "2")]
    pub nr_pages: u64,
    /// Byte offset of the first page in the page file.
    #[prost(uint64, tag = "3")]
    pub offset: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Thread {
    #[prost(int32, tag = "1")]
    pub tid: i32,
    /// General registers, user_regs_struct order (27 words on x86_64).
    #[prost(uint64, repeated, tag = "2")]
    pub gpregs: Vec<u64>,
    /// The raw xsave area (NT_X86_XSTATE).
    #[prost(bytes = "vec", tag = "3")]
    pub xstate: Vec<u8>,
    #[prost(uint64, tag = "4")]
    pub sigmask: u64,
    /// Pending signals queued to this thread, raw 128-byte siginfo_t each.
    #[prost(bytes = "vec", repeated, tag = "5")]
    pub pending: Vec<Vec<u8>>,
    #[prost(uint64, tag = "6")]
    pub clear_child_tid: u64,
    #[prost(uint64, tag = "7")]
    pub robust_list: u64,
    #[prost(uint64, tag = "8")]
    pub robust_len: u64,
    #[prost(message, optional, tag = "9")]
    pub rseq: Option<Rseq>,
    #[prost(message, optional, tag = "10")]
    pub altstack: Option<SigAltStack>,
    #[prost(string, tag = "11")]
    pub comm: String,
    /// Scheduling; absent in older images (then: godwit's CPUs, as a
    /// child of godwit).
    #[prost(message, optional, tag = "12")]
    pub sched: Option<Sched>,
    /// Capabilities, securebits, no_new_privs; absent in older images.
    #[prost(message, optional, tag = "13")]
    pub caps: Option<Caps>,
    /// Parent-death signal, timer slack; absent in older images.
    #[prost(message, optional, tag = "14")]
    pub attrs: Option<ThreadAttrs>,
    /// This thread's own credentials (they are per thread); absent in
    /// older images (then the process's).
    #[prost(message, optional, tag = "15")]
    pub creds: Option<Creds>,
    /// Seccomp mode: 0 none, 1 strict, 2 filter (older images: 0, and a
    /// thread under seccomp was refused at dump).
    #[prost(uint32, tag = "16")]
    pub seccomp_mode: u32,
    /// In filter mode, the thread's filter stack, oldest first.
    #[prost(message, repeated, tag = "17")]
    pub seccomp_filters: Vec<SeccompFilter>,
}

/// One seccomp filter of a thread's stack.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SeccompFilter {
    /// The classic BPF program: `struct sock_filter` records, 8 bytes each
    /// (u16 code, u8 jt, u8 jf, u32 k; little-endian). Empty when
    /// `program_of` names the thread holding it.
    #[prost(bytes = "vec", tag = "1")]
    pub program: Vec<u8>,
    /// SECCOMP_FILTER_FLAG_* it was installed with, as far as the kernel
    /// tells (SECCOMP_FILTER_FLAG_LOG).
    #[prost(uint32, tag = "2")]
    pub flags: u32,
    /// With an empty `program`: the TID of an earlier thread of the image
    /// whose filter at the same position (its stack starting the same way)
    /// holds the program. Stacks shared by threads (inherited at clone, or
    /// synchronised with SECCOMP_FILTER_FLAG_TSYNC) are stored once.
    #[prost(int32, tag = "3")]
    pub program_of: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Rseq {
    #[prost(uint64, tag = "1")]
    pub addr: u64,
    #[prost(uint32, tag = "2")]
    pub len: u32,
    #[prost(uint32, tag = "3")]
    pub flags: u32,
    #[prost(uint32, tag = "4")]
    pub signature: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SigAltStack {
    #[prost(uint64, tag = "1")]
    pub sp: u64,
    #[prost(int32, tag = "2")]
    pub flags: i32,
    #[prost(uint64, tag = "3")]
    pub size: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SigAction {
    #[prost(uint32, tag = "1")]
    pub signo: u32,
    #[prost(uint64, tag = "2")]
    pub handler: u64,
    #[prost(uint64, tag = "3")]
    pub flags: u64,
    #[prost(uint64, tag = "4")]
    pub restorer: u64,
    #[prost(uint64, tag = "5")]
    pub mask: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Itimer {
    /// ITIMER_REAL = 0, ITIMER_VIRTUAL = 1, ITIMER_PROF = 2
    #[prost(int32, tag = "1")]
    pub which: i32,
    #[prost(uint64, tag = "2")]
    pub interval_us: u64,
    #[prost(uint64, tag = "3")]
    pub value_us: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum FdKind {
    Regular = 0,
    Directory = 1,
    CharDevice = 2,
    Pipe = 3,
    Epoll = 4,
    TcpListen = 5,
    EventFd = 6,
    TimerFd = 7,
    SignalFd = 8,
    Inotify = 9,
    /// AF_UNIX socket of any type and state (Fd::socket).
    UnixSocket = 10,
    /// memfd_create: `path` holds its name, `shmem_id` its contents.
    Memfd = 11,
    /// A named pipe: `path`, and `pipe_id` shared by its ends.
    Fifo = 12,
    /// A terminal: either side of a pty, or /dev/tty (Fd::tty).
    Tty = 13,
    /// A connected TCP socket (IPv4/IPv6), repaired (Fd::socket, its `tcp`).
    TcpEstablished = 14,
    /// A UDP socket (IPv4/IPv6), bound or connected or neither, with its
    /// queued datagrams (Fd::socket: `queue` and `queue_from`).
    Udp = 15,
    /// A pipe end or a unix socket whose other end is held by no process of
    /// the dumped tree (Fd::external). Restored as a descriptor the caller
    /// passes (`restore --inherit-fd`) or a documented stand-in.
    External = 16,
    /// A pidfd (Fd::pidfd_pid): of a process or thread of the dumped tree,
    /// or of a process that has exited and been reaped.
    Pidfd = 17,
    /// A raw IPv4/IPv6 socket (SOCK_RAW, any protocol; Fd::socket): its
    /// protocol, options, ICMP filter, bound and connected addresses.
    RawSocket = 20,
    /// A packet socket (AF_PACKET; Fd::socket): protocol, bound interface
    /// (`ifname`), memberships, options, BPF filter.
    PacketSocket = 21,
    /// A netlink socket (Fd::socket): protocol, port id (`addr`), groups,
    /// connected peer, options.
    NetlinkSocket = 22,
    /// A fanotify group (Fd::anon): fanotify_init flags in `flags`, the
    /// event files' flags in `fanotify_event_flags`, the marks in
    /// `fanotify_marks`.
    Fanotify = 25,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Fd {
    #[prost(int32, tag = "1")]
    pub fd: i32,
    #[prost(enumeration = "FdKind", tag = "2")]
    pub kind: i32,
    /// open(2) flags without O_CLOEXEC.
    #[prost(uint32, tag = "3")]
    pub flags: u32,
    #[prost(bool, tag = "4")]
    pub cloexec: bool,
    #[prost(string, tag = "5")]
    pub path: String,
    #[prost(uint64, tag = "6")]
    pub pos: u64,
    /// Regular files: size and mtime at dump time.
    #[prost(uint64, tag = "7")]
    pub size: u64,
    #[prost(int64, tag = "8")]
    pub mtime_ns: i64,
    /// Pipes: the pipe's id (its inode number), shared by both ends.
    /// FIFOs: an id made of the FIFO file's device and inode.
    #[prost(uint64, tag = "9")]
    pub pipe_id: u64,
    /// Sockets: how to create, configure and bind it again.
    #[prost(message, optional, tag = "10")]
    pub socket: Option<Socket>,
    /// epoll: the interest list.
    #[prost(message, repeated, tag = "11")]
    pub epoll: Vec<EpollTarget>,
    /// eventfd, timerfd, signalfd, inotify: their state.
    #[prost(message, optional, tag = "12")]
    pub anon: Option<AnonFd>,
    /// The open file description: fds with the same id, in one process or
    /// several, share one description (offset, flags) after restore.
    #[prost(uint64, tag = "13")]
    pub file_id: u64,
    /// A regular file that was deleted while open: its contents and mode.
    /// `path` is where it was; restore recreates it there under a temporary
    /// name, opens it and deletes it again.
    #[prost(bool, tag = "14")]
    pub deleted: bool,
    #[prost(bytes = "vec", tag = "15")]
    pub deleted_data: Vec<u8>,
    #[prost(uint32, tag = "16")]
    pub mode: u32,
    /// memfd: the shmem object holding its contents (`ShmemObject::id`,
    /// also `Vma::shmem_id` of its shared mappings).
    #[prost(uint64, tag = "17")]
    pub shmem_id: u64,
    /// Terminals: which side of which pty, and its settings.
    #[prost(message, optional, tag = "18")]
    pub tty: Option<Tty>,
    /// File locks held through this descriptor (resources::locks).
    #[prost(message, repeated, tag = "19")]
    pub locks: Vec<FileLock>,
    /// Pipes and FIFOs: the buffer size (F_GETPIPE_SZ); 0 in older images
    /// (the default size is kept).
    #[prost(uint32, tag = "20")]
    pub pipe_size: u32,
    /// The owner that receives SIGIO/SIGURG (F_GETOWN_EX): its type
    /// (F_OWNER_TID 0, F_OWNER_PID 1, F_OWNER_PGRP 2) and id (0: none).
    #[prost(int32, tag = "21")]
    pub owner_type: i32,
    #[prost(int32, tag = "22")]
    pub owner_pid: i32,
    /// The signal sent for I/O readiness (F_GETSIG; 0: SIGIO).
    #[prost(int32, tag = "23")]
    pub signal: i32,
    /// Deleted files: owner, group and access time (the modification time
    /// is `mtime_ns`).
    #[prost(uint32, tag = "24")]
    pub uid: u32,
    #[prost(uint32, tag = "25")]
    pub gid: u32,
    #[prost(int64, tag = "26")]
    pub atime_ns: i64,
    /// Deleted files: the ranges holding data, in order; `deleted_data` is
    /// their bytes one after the other, the rest of the file (up to `size`)
    /// is holes. Empty in older images: `deleted_data` is then the whole file.
    #[prost(message, repeated, tag = "27")]
    pub extents: Vec<Extent>,
    /// EXTERNAL: what the descriptor was connected to outside the tree.
    #[prost(message, optional, tag = "28")]
    pub external: Option<External>,
    /// PIDFD: the PID (or, with PIDFD_THREAD, kept in `flags` as O_EXCL,
    /// the TID) it refers to; -1: a process that has exited and been reaped.
    #[prost(int32, tag = "29")]
    pub pidfd_pid: i32,
    /// Deleted device nodes: the device number (st_rdev).
    #[prost(uint64, tag = "30")]
    pub rdev: u64,
    /// Deleted symlinks (O_PATH|O_NOFOLLOW): where the link pointed.
    #[prost(string, tag = "31")]
    pub link_target: String,
    /// Deleted files, FIFOs, directories, symlinks and device nodes: the
    /// object's id (device and inode, as `shmem_id`), so that every
    /// description, working directory and private mapping of one object is
    /// made again on one recreated object. 0 in older images: each
    /// description recreates its own.
    #[prost(uint64, tag = "32")]
    pub node_id: u64,
    /// Deleted regular files whose data is kept in the page file (those
    /// above [`crate::resources::files::INLINE_DELETED`] bytes of data), of
    /// the first process holding the description: its extents, `addr` the
    /// offset in the file, `offset` the place in the page file.
    /// `deleted_data` and `extents` are then empty.
    #[prost(message, repeated, tag = "33")]
    pub deleted_runs: Vec<PageRun>,
    #[prost(bool, tag = "34")]
    pub deleted_in_pages: bool,
}

/// A descriptor connected to something outside the dumped tree (kind
/// EXTERNAL): a pipe end whose other end no process of the tree holds, or a
/// unix socket whose peer is outside it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct External {
    /// Its stable name, as /proc/PID/fd shows it at dump time:
    /// "pipe:[INODE]" or "socket:[INODE]". What `restore --inherit-fd` names.
    #[prost(string, tag = "1")]
    pub key: String,
    /// What it was: PIPE or UNIX_SOCKET.
    #[prost(enumeration = "FdKind", tag = "2")]
    pub was: i32,
    /// A pipe's read end: the bytes in the pipe at dump time (read without
    /// consuming them; they are still in the pipe on the host).
    #[prost(bytes = "vec", tag = "3")]
    pub data: Vec<u8>,
    /// A socket: SOCK_STREAM, SOCK_DGRAM or SOCK_SEQPACKET.
    #[prost(int32, tag = "4")]
    pub sock_type: i32,
    /// A socket: unread bytes in its receive queue at dump time (not saved;
    /// they stay in the socket on the host).
    #[prost(uint64, tag = "5")]
    pub unread: u64,
}

/// A range of a file holding data.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Extent {
    #[prost(uint64, tag = "1")]
    pub offset: u64,
    #[prost(uint64, tag = "2")]
    pub length: u64,
}

/// One side of a pseudo-terminal (resources::tty).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Tty {
    /// N of /dev/pts/N at dump time (restore gets a new pty and another N).
    #[prost(uint32, tag = "1")]
    pub index: u32,
    /// The master side (/dev/ptmx); else the slave (/dev/pts/N or /dev/tty).
    #[prost(bool, tag = "2")]
    pub master: bool,
    /// The slave's device number (dev_t), for both sides: what
    /// `Process::ctty_dev` names.
    #[prost(uint64, tag = "3")]
    pub dev: u64,
    /// The terminal settings, on either side the slave's (the kernel applies
    /// termios and window size calls on a master to its slave).
    #[prost(message, optional, tag = "4")]
    pub termios: Option<Termios>,
    #[prost(message, optional, tag = "5")]
    pub winsize: Option<WinSize>,
    /// Master: the slave is locked (unlockpt not called yet).
    #[prost(bool, tag = "6")]
    pub locked: bool,
    /// Master: packet mode (TIOCPKT) is on.
    #[prost(bool, tag = "7")]
    pub packet: bool,
    /// A slave whose master is outside the dumped tree (dump --shell-job):
    /// restore attaches it to the restoring caller's terminal.
    #[prost(bool, tag = "8")]
    pub external: bool,
    /// Master: the foreground process group of the slave (0: none).
    #[prost(int32, tag = "9")]
    pub fg_pgrp: i32,
    /// Master: the session whose controlling terminal the slave is (0: none).
    #[prost(int32, tag = "10")]
    pub session: i32,
    /// Master: the slave was opened and closed again (reads give EIO).
    #[prost(bool, tag = "11")]
    pub peer_closed: bool,
    /// The fd was opened through /dev/tty (restored as the slave's path).
    #[prost(bool, tag = "12")]
    pub via_dev_tty: bool,
    /// Master: the owner, group and mode (with the file type bits) of the
    /// slave's device node /dev/pts/N, which grantpt sets and a program may
    /// change (chown, chmod, `mesg n`); mode 0 in older images (the new
    /// node keeps the owner and mode devpts gives it).
    #[prost(uint32, tag = "30")]
    pub slave_uid: u32,
    #[prost(uint32, tag = "31")]
    pub slave_gid: u32,
    #[prost(uint32, tag = "32")]
    pub slave_mode: u32,
}

/// struct termios2.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Termios {
    #[prost(uint32, tag = "1")]
    pub iflag: u32,
    #[prost(uint32, tag = "2")]
    pub oflag: u32,
    #[prost(uint32, tag = "3")]
    pub cflag: u32,
    #[prost(uint32, tag = "4")]
    pub lflag: u32,
    #[prost(uint32, tag = "5")]
    pub line: u32,
    /// c_cc, 19 bytes.
    #[prost(bytes = "vec", tag = "6")]
    pub cc: Vec<u8>,
    #[prost(uint32, tag = "7")]
    pub ispeed: u32,
    #[prost(uint32, tag = "8")]
    pub ospeed: u32,
}

/// struct winsize.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WinSize {
    #[prost(uint32, tag = "1")]
    pub rows: u32,
    #[prost(uint32, tag = "2")]
    pub cols: u32,
    #[prost(uint32, tag = "3")]
    pub xpixel: u32,
    #[prost(uint32, tag = "4")]
    pub ypixel: u32,
}

/// State of the anonymous-inode descriptors (resources::anon).
#[derive(Clone, PartialEq, prost::Message)]
pub struct AnonFd {
    /// eventfd: the counter.
    #[prost(uint64, tag = "1")]
    pub counter: u64,
    /// Creation flags (EFD_SEMAPHORE, TFD_*, SFD_*, IN_NONBLOCK ...), without
    /// O_CLOEXEC/O_NONBLOCK which the Fd's own flags carry.
    #[prost(uint32, tag = "2")]
    pub flags: u32,
    /// timerfd: the clock.
    #[prost(int32, tag = "3")]
    pub clock_id: i32,
    /// timerfd: interval and time left until the next expiry, in ns.
    #[prost(uint64, tag = "4")]
    pub interval_ns: u64,
    #[prost(uint64, tag = "5")]
    pub value_ns: u64,
    /// timerfd: expirations not yet read.
    #[prost(uint64, tag = "6")]
    pub ticks: u64,
    /// signalfd: the signal set.
    #[prost(uint64, tag = "7")]
    pub sigmask: u64,
    /// inotify: the watches.
    #[prost(message, repeated, tag = "8")]
    pub watches: Vec<InotifyWatch>,
    /// fanotify: the open flags of the files events carry (fanotify_init's
    /// event_f_flags).
    #[prost(uint32, tag = "20")]
    pub fanotify_event_flags: u32,
    /// fanotify: the marks.
    #[prost(message, repeated, tag = "21")]
    pub fanotify_marks: Vec<FanotifyMark>,
}

/// What a fanotify mark is on (FanotifyMark::target).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum FanotifyTarget {
    /// One file or directory (`path` is that file).
    Inode = 0,
    /// A mount (`path` is its mount point).
    Mount = 1,
    /// A whole filesystem (`path` is a mount point of it).
    Filesystem = 2,
}

/// One mark of a fanotify group.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FanotifyMark {
    #[prost(enumeration = "FanotifyTarget", tag = "1")]
    pub target: i32,
    #[prost(string, tag = "2")]
    pub path: String,
    /// FAN_MARK_IGNORED_SURV_MODIFY, FAN_MARK_EVICTABLE, FAN_MARK_IGNORE.
    #[prost(uint32, tag = "3")]
    pub mflags: u32,
    #[prost(uint32, tag = "4")]
    pub mask: u32,
    #[prost(uint32, tag = "5")]
    pub ignored_mask: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct InotifyWatch {
    #[prost(int32, tag = "1")]
    pub wd: i32,
    #[prost(string, tag = "2")]
    pub path: String,
    #[prost(uint32, tag = "3")]
    pub mask: u32,
    /// A watch on a deleted file that a descriptor of the same process
    /// holds: that descriptor's `Fd::node_id` (`path` is where the file
    /// was). 0: the watch is on `path`.
    #[prost(uint64, tag = "4")]
    pub node_id: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Socket {
    #[prost(int32, tag = "1")]
    pub family: i32,
    #[prost(int32, tag = "2")]
    pub sock_type: i32,
    #[prost(int32, tag = "3")]
    pub protocol: i32,
    /// The bound address, a raw struct sockaddr.
    #[prost(bytes = "vec", tag = "4")]
    pub addr: Vec<u8>,
    #[prost(uint32, tag = "5")]
    pub backlog: u32,
    /// Integer socket options to set again before bind.
    #[prost(message, repeated, tag = "6")]
    pub options: Vec<SockOpt>,
    /// The socket's inode at dump time: its id across the tree.
    #[prost(uint64, tag = "7")]
    pub ino: u64,
    /// Unix sockets from here on. The connected peer's inode, when the peer
    /// is a socket in the dumped tree.
    #[prost(uint64, tag = "8")]
    pub peer_ino: u64,
    /// Connected to a peer that has been closed (a pair whose other end is
    /// closed again after the queue is refilled).
    #[prost(bool, tag = "9")]
    pub peer_gone: bool,
    /// The peer's address (raw sockaddr), connected to again: a unix
    /// datagram socket's named socket outside the tree, or the remote end
    /// of a TCP connection.
    #[prost(bytes = "vec", tag = "10")]
    pub peer_addr: Vec<u8>,
    #[prost(bool, tag = "11")]
    pub listening: bool,
    /// sk_shutdown: 1 reading shut down, 2 writing shut down.
    #[prost(uint32, tag = "12")]
    pub shutdown: u32,
    /// The receive queue, saved with the first fd of the socket (in tree
    /// order): one entry per message (datagram, seqpacket), or all the
    /// bytes in one entry (stream).
    #[prost(bytes = "vec", repeated, tag = "13")]
    pub queue: Vec<Vec<u8>>,
    /// The directory relative socket paths (in `addr`, `peer_addr`) are
    /// resolved in: the holder's working directory at dump time.
    #[prost(string, tag = "14")]
    pub cwd: String,
    /// A socket bound to a path: its file's permission bits and owner.
    #[prost(uint32, tag = "15")]
    pub file_mode: u32,
    #[prost(uint32, tag = "16")]
    pub file_uid: u32,
    #[prost(uint32, tag = "17")]
    pub file_gid: u32,
    /// The socket file had been removed (the socket keeps its name).
    #[prost(bool, tag = "18")]
    pub file_unlinked: bool,
    /// SO_PEERCRED: the peer's credentials as the socket reports them (a
    /// listener: its own at listen time); pid 0 when it has none.
    #[prost(int32, tag = "19")]
    pub cred_pid: i32,
    #[prost(uint32, tag = "20")]
    pub cred_uid: u32,
    #[prost(uint32, tag = "21")]
    pub cred_gid: u32,
    /// A TCP connection: its state, queues and negotiated options.
    #[prost(message, optional, tag = "22")]
    pub tcp: Option<TcpConnection>,
    /// UDP: the sender (raw sockaddr) of each datagram in `queue`.
    #[prost(bytes = "vec", repeated, tag = "23")]
    pub queue_from: Vec<Vec<u8>>,
    /// Unix sockets whose receiver reads its senders' credentials
    /// (SO_PASSCRED): the credentials each entry of `queue` was sent with,
    /// sent again with it (then one entry of a stream socket's `queue` per
    /// run of bytes with the same credentials). Empty otherwise.
    #[prost(message, repeated, tag = "24")]
    pub queue_creds: Vec<MsgCred>,
    /// Unix sockets with descriptors in flight: the open file descriptions
    /// each entry of `queue` carries (SCM_RIGHTS), in order, one `Passed`
    /// per entry (empty when no entry carries any). Each is an `Fd` whose
    /// `file_id` is shared with the processes' fds of the same description;
    /// its `fd` number means nothing.
    #[prost(message, repeated, tag = "25")]
    pub queue_fds: Vec<Passed>,
    /// A listening unix socket: the connections that waited to be
    /// accepted, in order (godwit accepted them at dump time; each is made
    /// again by connecting its client, a socket of the tree, to it).
    #[prost(message, repeated, tag = "26")]
    pub pending: Vec<PendingConn>,
    /// A unix socket whose connection its listener had not accepted yet:
    /// that listener's inode (it lists the connection in `pending`).
    #[prost(uint64, tag = "27")]
    pub pending_listener: u64,
    /// The classic BPF program attached (SO_ATTACH_FILTER), 8 bytes per
    /// instruction as SO_GET_FILTER gives it; empty: none.
    #[prost(bytes = "vec", tag = "28")]
    pub filter: Vec<u8>,
    /// Options that are not integers (raw sockets' ICMP_FILTER and
    /// ICMPV6_FILTER), set again as they were read.
    #[prost(message, repeated, tag = "29")]
    pub byte_options: Vec<SockOptBytes>,
    /// Packet sockets: the name of the interface bound to (`addr` holds
    /// its dump-time index), looked up again at restore.
    #[prost(string, tag = "30")]
    pub ifname: String,
    /// Netlink sockets: the multicast groups joined (group numbers).
    #[prost(uint32, repeated, tag = "31")]
    pub groups: Vec<u32>,
    /// Packet sockets: multicast and promiscuous memberships.
    #[prost(message, repeated, tag = "32")]
    pub packet_memberships: Vec<PacketMembership>,
}

/// A socket option whose value is not an integer.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SockOptBytes {
    #[prost(int32, tag = "1")]
    pub level: i32,
    #[prost(int32, tag = "2")]
    pub name: i32,
    #[prost(bytes = "vec", tag = "3")]
    pub value: Vec<u8>,
}

/// One PACKET_ADD_MEMBERSHIP of a packet socket, made `count` times.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PacketMembership {
    /// The interface's name (its index is looked up again at restore).
    #[prost(string, tag = "1")]
    pub ifname: String,
    /// PACKET_MR_MULTICAST, _PROMISC, _ALLMULTI or _UNICAST.
    #[prost(uint32, tag = "2")]
    pub kind: u32,
    #[prost(bytes = "vec", tag = "3")]
    pub addr: Vec<u8>,
    #[prost(uint32, tag = "4")]
    pub count: u32,
}

/// A connection waiting in a unix listener's queue.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PendingConn {
    /// The connecting socket (in the tree).
    #[prost(uint64, tag = "1")]
    pub peer_ino: u64,
    /// What it sent, not read yet (as `Socket.queue`).
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub queue: Vec<Vec<u8>>,
    #[prost(message, repeated, tag = "3")]
    pub queue_creds: Vec<MsgCred>,
}

/// The descriptions one queued message carries.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Passed {
    #[prost(message, repeated, tag = "1")]
    pub fds: Vec<Fd>,
}

/// The credentials a queued unix socket message carries (SCM_CREDENTIALS).
#[derive(Clone, PartialEq, prost::Message)]
pub struct MsgCred {
    #[prost(int32, tag = "1")]
    pub pid: i32,
    #[prost(uint32, tag = "2")]
    pub uid: u32,
    #[prost(uint32, tag = "3")]
    pub gid: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SockOpt {
    #[prost(int32, tag = "1")]
    pub level: i32,
    #[prost(int32, tag = "2")]
    pub name: i32,
    #[prost(int32, tag = "3")]
    pub value: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EpollTarget {
    /// The watched descriptor's number in the process.
    #[prost(int32, tag = "1")]
    pub fd: i32,
    #[prost(uint32, tag = "2")]
    pub events: u32,
    #[prost(uint64, tag = "3")]
    pub data: u64,
    /// The fd, in the same process, that holds the watched description when
    /// it is not `fd`: the watch was added under `fd`, which was closed since
    /// (the watch stays while the description is open) and may now be
    /// another file. Absent: `fd` itself.
    #[prost(int32, optional, tag = "4")]
    pub held_at: Option<i32>,
}

/// A pipe's or FIFO's unread data.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Pipe {
    /// `Fd::pipe_id` of its ends.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Unread bytes buffered in the pipe at dump time.
    #[prost(bytes = "vec", tag = "2")]
    pub data: Vec<u8>,
}

/// A connected TCP socket as TCP_REPAIR reads and sets it. Sequence
/// numbers are those of the first byte of each saved queue.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TcpConnection {
    /// tcpi_state (1 ESTABLISHED).
    #[prost(uint32, tag = "1")]
    pub state: u32,
    /// Sequence number of the first byte of `send_queue` (snd_una).
    #[prost(uint32, tag = "2")]
    pub send_seq: u32,
    /// Sent but unacknowledged bytes, then unsent bytes.
    #[prost(bytes = "vec", tag = "3")]
    pub send_queue: Vec<u8>,
    /// How many bytes at the end of `send_queue` had not been sent.
    #[prost(uint32, tag = "4")]
    pub unsent: u32,
    /// Sequence number of the first byte of `recv_queue`.
    #[prost(uint32, tag = "5")]
    pub recv_seq: u32,
    /// Received bytes the process had not read.
    #[prost(bytes = "vec", tag = "6")]
    pub recv_queue: Vec<u8>,
    /// The MSS clamp negotiated at the handshake.
    #[prost(uint32, tag = "7")]
    pub mss: u32,
    /// Window scaling negotiated, and the shifts each way.
    #[prost(bool, tag = "8")]
    pub wscale_ok: bool,
    #[prost(uint32, tag = "9")]
    pub snd_wscale: u32,
    #[prost(uint32, tag = "10")]
    pub rcv_wscale: u32,
    #[prost(bool, tag = "11")]
    pub sack_ok: bool,
    #[prost(bool, tag = "12")]
    pub timestamps_ok: bool,
    /// TCP_TIMESTAMP at dump time (the clock the peer sees).
    #[prost(uint32, tag = "13")]
    pub timestamp: u32,
    /// TCP_REPAIR_WINDOW.
    #[prost(uint32, tag = "14")]
    pub snd_wl1: u32,
    #[prost(uint32, tag = "15")]
    pub snd_wnd: u32,
    #[prost(uint32, tag = "16")]
    pub max_window: u32,
    #[prost(uint32, tag = "17")]
    pub rcv_wnd: u32,
    #[prost(uint32, tag = "18")]
    pub rcv_wup: u32,
    /// We had shut down our side (FIN sent, acknowledged or not): restored
    /// by shutdown(SHUT_WR) after the queues. Not counted in the sequence
    /// numbers and queues above.
    #[prost(bool, tag = "19")]
    pub fin_sent: bool,
    /// The peer had closed its side (FIN received): delivered again after
    /// the restore. Not counted in `recv_seq` + `recv_queue`.
    #[prost(bool, tag = "20")]
    pub fin_received: bool,
}

/// The scheduling of one thread.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Sched {
    /// SCHED_OTHER 0, FIFO 1, RR 2, BATCH 3, IDLE 5.
    #[prost(uint32, tag = "1")]
    pub policy: u32,
    /// Real-time priority (FIFO, RR).
    #[prost(uint32, tag = "2")]
    pub priority: u32,
    #[prost(int32, tag = "3")]
    pub nice: i32,
    /// SCHED_RESET_ON_FORK.
    #[prost(bool, tag = "4")]
    pub reset_on_fork: bool,
    /// CPU affinity: bit c % 64 of word c / 64 for CPU c.
    #[prost(uint64, repeated, tag = "5")]
    pub cpus: Vec<u64>,
    /// I/O priority (ioprio_get): class << 13 | level.
    #[prost(int32, tag = "6")]
    pub ioprio: i32,
    /// A custom time slice (sched_setattr sched_runtime under SCHED_OTHER,
    /// BATCH or IDLE, Linux 6.12+), nanoseconds; 0: the default.
    #[prost(uint64, tag = "7")]
    pub slice_ns: u64,
}

/// The capability sets, securebits and no_new_privs of one thread.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Caps {
    #[prost(uint64, tag = "1")]
    pub inheritable: u64,
    #[prost(uint64, tag = "2")]
    pub permitted: u64,
    #[prost(uint64, tag = "3")]
    pub effective: u64,
    #[prost(uint64, tag = "4")]
    pub bounding: u64,
    #[prost(uint64, tag = "5")]
    pub ambient: u64,
    /// PR_GET_SECUREBITS.
    #[prost(uint32, tag = "6")]
    pub securebits: u32,
    #[prost(bool, tag = "7")]
    pub no_new_privs: bool,
}

/// Per-thread attributes set with prctl.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ThreadAttrs {
    /// PR_GET_PDEATHSIG (0: none).
    #[prost(int32, tag = "1")]
    pub pdeathsig: i32,
    /// PR_GET_TIMERSLACK, nanoseconds.
    #[prost(uint64, tag = "2")]
    pub timer_slack_ns: u64,
    /// PR_GET_TSC gave PR_TSC_SIGSEGV (rdtsc faults).
    #[prost(bool, tag = "3")]
    pub tsc_sigsegv: bool,
    /// PR_MCE_KILL_GET: 0 late, 1 early, 2 the system's default.
    #[prost(int32, tag = "4")]
    pub mce_kill: i32,
    /// ARCH_GET_CPUID gave 0: the cpuid instruction faults.
    #[prost(bool, tag = "5")]
    pub cpuid_faulting: bool,
    /// Syscall user dispatch (PR_SET_SYSCALL_USER_DISPATCH): mode (0 off),
    /// selector address, offset and length of the always-allowed range.
    #[prost(uint64, repeated, tag = "6")]
    pub syscall_dispatch: Vec<u64>,
    /// Speculation control set for this thread (PR_SET_SPECULATION_CTRL),
    /// as /proc/PID/task/TID/status shows it: the PR_SPEC_* state to set
    /// for speculative store bypass and indirect branch (0: as the system
    /// gives it).
    #[prost(uint32, tag = "7")]
    pub spec_store_bypass: u32,
    #[prost(uint32, tag = "8")]
    pub spec_indirect_branch: u32,
    /// The thread's memory policy (get_mempolicy): mode with its flags
    /// (0: MPOL_DEFAULT) and node mask words.
    #[prost(uint32, tag = "9")]
    pub mempolicy_mode: u32,
    #[prost(uint64, repeated, tag = "10")]
    pub mempolicy_nodes: Vec<u64>,
}

/// Process-wide attributes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProcAttrs {
    /// /proc/PID/oom_score_adj.
    #[prost(int32, tag = "1")]
    pub oom_score_adj: i32,
    /// /proc/PID/loginuid (4294967295: unset).
    #[prost(uint32, tag = "2")]
    pub loginuid: u32,
    /// PR_GET_CHILD_SUBREAPER.
    #[prost(bool, tag = "3")]
    pub child_subreaper: bool,
    /// PR_GET_THP_DISABLE (its raw result).
    #[prost(uint32, tag = "4")]
    pub thp_disable: u32,
    /// PR_GET_DUMPABLE (0, 1 or 2).
    #[prost(uint32, tag = "5")]
    pub dumpable: u32,
    /// membarrier registrations found: MEMBARRIER_CMD_REGISTER_* bits
    /// (PRIVATE_EXPEDITED 16, _SYNC_CORE 64, _RSEQ 256).
    #[prost(uint32, tag = "6")]
    pub membarrier: u32,
    /// PR_GET_MDWE (memory-deny-write-execute flags).
    #[prost(uint32, tag = "7")]
    pub mdwe: u32,
    /// The nice value of the session's autogroup (/proc/PID/autogroup).
    #[prost(int32, tag = "8")]
    pub autogroup_nice: i32,
}

/// A file lock held through a descriptor.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FileLock {
    /// 1 POSIX record lock (fcntl F_SETLK, owned by the process), 2 OFD
    /// lock (F_OFD_SETLK, owned by the open file description), 3 flock.
    #[prost(uint32, tag = "1")]
    pub kind: u32,
    /// A write (exclusive) lock; else read (shared).
    #[prost(bool, tag = "2")]
    pub write: bool,
    #[prost(uint64, tag = "3")]
    pub start: u64,
    /// Bytes locked; 0: to the end of the file (and beyond).
    #[prost(uint64, tag = "4")]
    pub len: u64,
    /// The locked file's device and inode at dump time.
    #[prost(uint32, tag = "5")]
    pub dev_major: u32,
    #[prost(uint32, tag = "6")]
    pub dev_minor: u32,
    #[prost(uint64, tag = "7")]
    pub ino: u64,
}

/// The memory policy of one memory area (mbind).
#[derive(Clone, PartialEq, prost::Message)]
pub struct VmaPolicy {
    #[prost(uint64, tag = "1")]
    pub start: u64,
    #[prost(uint64, tag = "2")]
    pub end: u64,
    /// MPOL_* mode with its MPOL_F_* flags.
    #[prost(uint32, tag = "3")]
    pub mode: u32,
    /// Node mask words.
    #[prost(uint64, repeated, tag = "4")]
    pub nodes: Vec<u64>,
}

#[cfg(test)]
mod tests {
    /// Every `#[prost(..., tag = "N")] pub NAME` of this file must appear in
    /// proto/checkpoint.proto as `NAME = N;` inside the message of that struct.
    #[test]
    fn proto_file_matches_schema() {
        let rs = include_str!("schema.rs");
        let proto = include_str!("../proto/checkpoint.proto");
        let mut message = String::new();
        let mut pending_tag: Option<String> = None;
        let mut checked = 0;
        for line in rs.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("pub struct ") {
                message = rest.trim_end_matches(" {").to_string();
            } else if line.starts_with("#[prost(") && line.contains("tag = \"") {
                let tag = line
                    .split("tag = \"")
                    .nth(1)
                    .unwrap()
                    .split('"')
                    .next()
                    .unwrap();
                pending_tag = Some(tag.to_string());
            } else if let (Some(tag), Some(rest)) = (pending_tag.take(), line.strip_prefix("pub "))
            {
                let name = rest.split(':').next().unwrap();
                let body = proto
                    .split(&format!("message {message} {{"))
                    .nth(1)
                    .unwrap_or_else(|| panic!("message {message} missing from checkpoint.proto"));
                let body = body.split("\n}").next().unwrap();
                assert!(
                    body.lines()
                        .any(|l| l.contains(&format!(" {name} = {tag};"))),
                    "{message}.{name} = {tag} missing from checkpoint.proto"
                );
                checked += 1;
            }
        }
        assert!(checked > 80, "only {checked} fields checked");
    }
}
