//! Facts about the machine that the defaults depend on.

/// Physical cores (hyper-threads share a core's vector units, so matrix
/// kernels gain little from them). Falls back to the logical count.
pub fn physical_cores() -> usize {
    let logical = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
        return logical;
    };
    let mut cores = std::collections::HashSet::new();
    let mut physical = "";
    for line in info.lines() {
        let mut kv = line.splitn(2, ':');
        let (key, value) = (
            kv.next().unwrap_or("").trim(),
            kv.next().unwrap_or("").trim(),
        );
        match key {
            "physical id" => physical = value,
            "core id" => {
                cores.insert((physical.to_string(), value.to_string()));
            }
            _ => {}
        }
    }
    // ARM kernels often omit core ids: then every logical CPU is a core.
    if cores.is_empty() {
        logical
    } else {
        cores.len().min(logical)
    }
}

/// Memory this process may still use, as the kernel will enforce it: the
/// smaller of `MemAvailable` and the room left under the memory limit of the
/// process's cgroup (v2 `memory.max`, or v1 `memory.limit_in_bytes`), so a
/// container limit is respected even where the host has plenty free.
/// `None` when neither can be read.
pub fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .map(|kib| kib * 1024)
        });
    match (meminfo, cgroup_room()) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Bytes left under this process's cgroup memory limit, if it has one.
fn cgroup_room() -> Option<u64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let read_u64 =
        |path: String| -> Option<u64> { std::fs::read_to_string(path).ok()?.trim().parse().ok() };
    for line in own.lines() {
        // "0::/path" (v2) or "4:memory:/path" (v1).
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let (limit, usage) = if controllers.is_empty() {
            let dir = format!("/sys/fs/cgroup{path}");
            (
                read_u64(format!("{dir}/memory.max")),
                read_u64(format!("{dir}/memory.current")),
            )
        } else if controllers.split(',').any(|c| c == "memory") {
            let dir = format!("/sys/fs/cgroup/memory{path}");
            (
                read_u64(format!("{dir}/memory.limit_in_bytes")),
                read_u64(format!("{dir}/memory.usage_in_bytes")),
            )
        } else {
            continue;
        };
        // v1 reports "no limit" as a huge page-rounded number; v2 as "max",
        // which does not parse.
        if let (Some(limit), Some(usage)) = (limit, usage) {
            if limit < (1 << 60) {
                return Some(limit.saturating_sub(usage));
            }
        }
    }
    None
}
