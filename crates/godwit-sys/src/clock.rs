//! Reading clocks by id (CLOCK_MONOTONIC, CLOCK_REALTIME, CLOCK_BOOTTIME, ...).

use crate::{Result, SysError};

/// Nanoseconds on clock `clock_id` now.
pub fn now_ns(clock_id: i32) -> Result<i128> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: the kernel writes one timespec into `ts`, which lives for the call.
    if unsafe { libc::clock_gettime(clock_id, &mut ts) } != 0 {
        return Err(SysError::call("clock_gettime", clock_id));
    }
    Ok(ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128)
}
