//! Helpers shared by the idle-CPU test binaries (each its own binary, so that no other
//! test's threads are counted).

/// User + system CPU time of this process, from /proc/self/stat (clock ticks of 10 ms).
pub fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("linux /proc");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}
