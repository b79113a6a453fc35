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
