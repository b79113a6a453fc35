//! What streaming costs: bytes moved, time spent reading, time the engine
//! waited, and the process's peak memory.

use std::time::Duration;

#[derive(Debug, Default, Clone, PartialEq)]
pub struct IoStats {
    /// Bytes read into resident memory at start.
    pub resident_bytes: u64,
    pub resident_load_time: Duration,
    /// Bytes read for streamed layers since the last reset.
    pub streamed_bytes: u64,
    pub streamed_layers: u64,
    /// Time the loader spent reading (overlaps compute when prefetching).
    pub read_time: Duration,
    /// Time the engine waited for a layer: the part of I/O not hidden.
    pub stall_time: Duration,
}

/// Peak resident set size of this process (VmHWM), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    proc_status_kib("VmHWM:").map(|k| k * 1024)
}

/// Current resident set size (VmRSS), in bytes.
pub fn current_rss_bytes() -> Option<u64> {
    proc_status_kib("VmRSS:").map(|k| k * 1024)
}

/// Restart peak RSS tracking from the current RSS (Linux: clear_refs 5).
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn rss_is_readable_on_linux() {
        // Read the current value first: RSS can grow between the reads.
        let now = super::current_rss_bytes().unwrap();
        let peak = super::peak_rss_bytes().unwrap();
        assert!(peak >= now && now > 0);
    }
}
