//! Dirty tracking with userfaultfd WP_ASYNC and PAGEMAP_SCAN, on this test
//! process's own memory: after write-protecting a range, exactly the pages
//! written since are reported, WP_MATCHING protects them again, and a
//! present-pages scan tells written pages from clean ones.

use godwit_sys::mem::{scan, PageRegion, Pagemap, ScanQuery};
use godwit_sys::uffd::{self, Uffd};
use godwit_sys::PAGE_SIZE;
use std::os::fd::{FromRawFd, OwnedFd};

fn own_userfaultfd() -> OwnedFd {
    // SAFETY: userfaultfd takes only flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
    assert!(fd >= 0, "userfaultfd: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` was just created and is owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

const PAGES: u64 = 4096;

/// The regions `q` reports among pages [from, to) of the mapping at
/// `start`, as page numbers in it.
fn scan_pages(pm: &Pagemap, start: u64, from: u64, to: u64, q: &ScanQuery) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    pm.scan(
        start + from * PAGE_SIZE,
        start + to * PAGE_SIZE,
        q,
        &mut out,
    )
    .expect("PAGEMAP_SCAN");
    out.iter()
        .map(|r| ((r.start - start) / PAGE_SIZE, (r.end - start) / PAGE_SIZE))
        .collect()
}

fn written(pm: &Pagemap, start: u64, wp_again: bool) -> Vec<(u64, u64)> {
    let q = ScanQuery {
        flags: if wp_again { scan::WP_MATCHING } else { 0 },
        all_of: scan::WRITTEN,
        none_of: 0,
        any_of: 0,
        report: scan::WRITTEN,
    };
    scan_pages(pm, start, 0, PAGES, &q)
}

#[test]
fn written_pages_are_reported_and_protected_again() {
    let mut mem = vec![1u8; (PAGES * PAGE_SIZE) as usize + PAGE_SIZE as usize];
    let off = mem.as_ptr().align_offset(PAGE_SIZE as usize);
    let base = &mut mem[off..off + (PAGES * PAGE_SIZE) as usize];
    let start = base.as_ptr() as u64;
    let u = Uffd::new(own_userfaultfd(), uffd::FEATURE_WP_ASYNC).expect("WP_ASYNC");
    u.register(start, PAGES * PAGE_SIZE, uffd::REGISTER_MODE_WP)
        .expect("register");
    u.write_protect(start, PAGES * PAGE_SIZE, true)
        .expect("protect");
    let pm = Pagemap::open(std::process::id() as i32).expect("pagemap");
    assert_eq!(written(&pm, start, false), vec![], "nothing written yet");

    for p in [3u64, 4, 5, 100, 4095] {
        base[(p * PAGE_SIZE) as usize + 17] = 9;
    }
    assert_eq!(
        written(&pm, start, true),
        vec![(3, 6), (100, 101), (4095, 4096)]
    );
    assert_eq!(written(&pm, start, false), vec![], "protected again");
    base[(7 * PAGE_SIZE) as usize] = 2;

    // Present pages, with the written ones told apart (as at a freeze).
    let mut all: Vec<PageRegion> = Vec::new();
    let q = ScanQuery {
        flags: 0,
        all_of: 0,
        none_of: 0,
        any_of: scan::PRESENT | scan::SWAPPED,
        report: scan::PRESENT | scan::SWAPPED | scan::WRITTEN,
    };
    pm.scan(start, start + PAGES * PAGE_SIZE, &q, &mut all)
        .expect("scan");
    let rel: Vec<(u64, u64, u64)> = all
        .iter()
        .map(|r| {
            (
                (r.start - start) / PAGE_SIZE,
                (r.end - start) / PAGE_SIZE,
                r.categories,
            )
        })
        .collect();
    let p = scan::PRESENT;
    assert_eq!(
        rel,
        vec![(0, 7, p), (7, 8, p | scan::WRITTEN), (8, PAGES, p)],
        "every page present, only page 7 written since the rescan"
    );

    // Pages released since: neither present nor swapped.
    // SAFETY: the range is inside `mem`, which is not used again but dropped.
    let r = unsafe {
        libc::madvise(
            (start + 10 * PAGE_SIZE) as *mut libc::c_void,
            (2 * PAGE_SIZE) as usize,
            libc::MADV_DONTNEED,
        )
    };
    assert_eq!(r, 0);
    let gone = ScanQuery {
        flags: 0,
        all_of: 0,
        none_of: scan::PRESENT | scan::SWAPPED,
        any_of: 0,
        report: scan::PRESENT,
    };
    let rel = scan_pages(&pm, start, 0, PAGES, &gone);
    assert_eq!(rel, vec![(10, 12)], "the two released pages");
    // In async mode a page that is not there counts as written: only
    // present (or swapped) pages tell what the process wrote.
    let q = ScanQuery {
        flags: 0,
        all_of: scan::WRITTEN,
        none_of: 0,
        any_of: 0,
        report: scan::WRITTEN,
    };
    let rel = scan_pages(&pm, start, 8, 14, &q);
    assert_eq!(rel, vec![(10, 12)], "released pages look written");
    let q = ScanQuery {
        any_of: scan::PRESENT | scan::SWAPPED,
        ..q
    };
    let rel = scan_pages(&pm, start, 8, 14, &q);
    assert!(rel.is_empty(), "{rel:?}");
    u.unregister(start, PAGES * PAGE_SIZE).expect("unregister");
    drop(mem);
}
