//! `vyre bench ingest`: file ingest side by side, in one run, on the same generated files,
//! with the same block size and queue depth:
//!
//! - `vyre`: [`vyre_ingest::Ingest`] (io_uring, O_DIRECT, registered buffers and files);
//! - `fio`: the `fio` binary, `ioengine=io_uring direct=1 fixedbufs registerfiles`, its JSON
//!   output parsed (bytes, runtime, `usr_cpu`, `sys_cpu`);
//! - `std`: a buffered `std::fs::File::read` loop with one buffer of the block size.
//!
//! Two sets: a few large files, and many small files. Each set runs cold (page cache
//! dropped through `/proc/sys/vm/drop_caches` before every measurement, where permitted)
//! and warm. Reported: GB/s and CPU seconds per GiB (user and system, from `getrusage` for
//! vyre and std, from fio's own accounting for fio), and vyre/fio ratios. fio skips files
//! smaller than its block size, so on the small set it reads with `bs` = the file size:
//! both do one read per file there.
//!
//! With `--backend cuda` (a build with the `cuda` feature) it measures instead, in one run
//! on the large set: the disk read rate (vyre ingest alone, O_DIRECT, and fio with the same
//! parameters), the host-to-device copy rate from pinned memory, and the end-to-end path
//! file → io_uring O_DIRECT → ingest region registered with the CUDA backend → HASH64 slots
//! reading it in place on the GPU, every hash checked against the host's xxh64 of the same
//! file bytes (`bench_ingest_cuda.rs`).

use std::fmt::Write as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;
use vyre_ingest::{CpuTimes, EngineKind, Event, Ingest, IngestConfig};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to generate the files (reused when they are already there).
    #[arg(long, default_value = "/var/tmp/vyre-bench-ingest")]
    pub(crate) dir: PathBuf,
    /// Large files [default: 4; 2 with `--backend wgpu`].
    #[arg(long)]
    pub(crate) large_files: Option<usize>,
    /// Size of each large file, MiB [default: 512; 64 with `--backend wgpu`]. Files of
    /// another size than 512 MiB live in their own directory (`large-<MiB>m`).
    #[arg(long)]
    pub(crate) large_mib: Option<u64>,
    /// Small files.
    #[arg(long, default_value_t = 12_000)]
    pub(crate) small_files: usize,
    /// Size of each small file, KiB (a multiple of 4).
    #[arg(long, default_value_t = 64)]
    pub(crate) small_kib: u64,
    /// Block size, KiB.
    #[arg(long, default_value_t = 1024)]
    pub(crate) bs_kib: usize,
    /// Queue depth.
    #[arg(long, default_value_t = 32)]
    pub(crate) qd: u32,
    /// The fio binary.
    #[arg(long, default_value = "fio")]
    pub(crate) fio: PathBuf,
    /// Also write the table (markdown) to this file.
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
    /// `cpu`: ingest alone against fio and a read loop. `cuda`: disk rate, host-to-device
    /// rate and file → GPU end to end in one run (needs a build with the `cuda` feature).
    /// `wgpu`: disk rate, upload rate through `queue.write_buffer` and file → ingest →
    /// write_buffer → HASH64 on the wgpu megakernel (needs the `wgpu` feature).
    #[arg(long, default_value = "cpu")]
    pub(crate) backend: String,
    /// cuda: staging buffers held by chunks on the GPU, beyond the queue depth (chunks in
    /// flight on the GPU at once).
    #[arg(long, default_value_t = 224)]
    pub(crate) in_flight: u32,
    /// cuda: HASH64 slots per chunk (`auto`: the fewest whose in-place GPU rate, measured
    /// first, is at least 4 × min(disk, copy): reading and hashing share the pipeline).
    #[arg(long, default_value = "auto")]
    pub(crate) split: String,
    /// cuda: bytes per host-to-device copy when measuring its rate, MiB.
    #[arg(long, default_value_t = 1024)]
    pub(crate) htod_mib: usize,
}

impl Args {
    /// Number of large files (the default depends on the backend: lavapipe is slow).
    pub(crate) fn large_files(&self) -> usize {
        self.large_files
            .unwrap_or(if self.backend == "wgpu" { 2 } else { 4 })
    }
    /// Size of each large file, MiB.
    pub(crate) fn large_mib(&self) -> u64 {
        self.large_mib
            .unwrap_or(if self.backend == "wgpu" { 64 } else { 512 })
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Measure {
    pub(crate) bytes: u64,
    pub(crate) secs: f64,
    pub(crate) user: f64,
    pub(crate) sys: f64,
    /// vyre only: CPU (user + system) of `Ingest::new` (mapping and pinning the staging
    /// buffers), not included in `user`/`sys` (fio's accounting leaves its setup out too).
    pub(crate) setup_cpu: f64,
}

impl Measure {
    pub(crate) fn gbps(&self) -> f64 {
        self.bytes as f64 / self.secs / 1e9
    }
    pub(crate) fn gib(&self) -> f64 {
        self.bytes as f64 / (1u64 << 30) as f64
    }
    /// `bytes` in `secs`, with the process's CPU time `cpu` over them (no setup).
    pub(crate) fn timed(bytes: u64, secs: f64, cpu: CpuTimes) -> Measure {
        Measure {
            bytes,
            secs,
            user: cpu.user.as_secs_f64(),
            sys: cpu.system.as_secs_f64(),
            setup_cpu: 0.0,
        }
    }
    fn cpu_per_gib(&self) -> (f64, f64) {
        (self.user / self.gib(), self.sys / self.gib())
    }
}

pub(crate) struct Set {
    name: &'static str,
    pub(crate) paths: Vec<PathBuf>,
    /// fio's file arguments.
    fio_files: Vec<String>,
    fio_bs: String,
}

fn ensure_file(p: &Path, len: u64, seed: u64) -> std::io::Result<()> {
    if std::fs::metadata(p).is_ok_and(|m| m.len() == len) {
        return Ok(());
    }
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut buf = vec![0u8; (1 << 20).min(len as usize)];
    let mut f = std::io::BufWriter::new(std::fs::File::create(p)?);
    let mut left = len;
    while left > 0 {
        for w in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        std::io::Write::write_all(&mut f, &buf[..n])?;
        left -= n as u64;
    }
    std::io::Write::flush(&mut f)
}

fn generate(a: &Args) -> std::io::Result<(Set, Set)> {
    Ok((large_set(a)?, small_set(a)?))
}

/// The large files (generated, or reused when they are already there).
pub(crate) fn large_set(a: &Args) -> std::io::Result<Set> {
    let mib = a.large_mib();
    let large_dir = if mib == 512 {
        a.dir.join("large")
    } else {
        a.dir.join(format!("large-{mib}m"))
    };
    std::fs::create_dir_all(&large_dir)?;
    let mut large = Vec::new();
    for i in 0..a.large_files() {
        let p = large_dir.join(format!("large{i}"));
        ensure_file(&p, mib << 20, i as u64 + 1)?;
        large.push(p);
    }
    let large_files = vec![format!(
        "--filename={}",
        large
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    )];
    Ok(Set {
        name: "large",
        paths: large,
        fio_files: [large_files, vec!["--file_service_type=sequential".into()]].concat(),
        fio_bs: format!("{}k", a.bs_kib),
    })
}

/// The small files (generated, or reused when they are already there).
fn small_set(a: &Args) -> std::io::Result<Set> {
    let small_dir = a.dir.join("small");
    std::fs::create_dir_all(&small_dir)?;
    let mut small = Vec::new();
    for i in 0..a.small_files {
        let p = small_dir.join(format!("s{i:06}"));
        ensure_file(&p, a.small_kib << 10, i as u64 + 1000)?;
        small.push(p);
    }
    // Nothing else may sit in the small directory: fio reads all of it.
    for e in std::fs::read_dir(&small_dir)? {
        let p = e?.path();
        if !small.contains(&p) {
            std::fs::remove_file(&p)?;
        }
    }
    Ok(Set {
        name: "small",
        paths: small,
        fio_files: vec![format!("--opendir={}", small_dir.display())],
        fio_bs: format!("{}k", a.small_kib),
    })
}

/// Drops the page cache; `false` where not permitted.
pub(crate) fn drop_caches() -> bool {
    let _ = std::process::Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok()
}

fn run_vyre(a: &Args, paths: &[PathBuf]) -> Result<Measure, String> {
    let cfg = IngestConfig {
        queue_depth: a.qd,
        block_size: a.bs_kib << 10,
        buffers: a.qd * 2,
        ..IngestConfig::default()
    };
    let setup0 = CpuTimes::now();
    let t = Instant::now();
    let mut ing = Ingest::paths(cfg, paths.to_vec()).map_err(|e| e.to_string())?;
    if let EngineKind::Plain { reason } = ing.engine() {
        return Err(format!("vyre ingest is not on io_uring here: {reason}"));
    }
    let cpu0 = CpuTimes::now();
    let setup = cpu0.since(setup0);
    let mut bytes = 0u64;
    let mut check = 0u8;
    while let Some(e) = ing.next_event() {
        match e {
            Event::Chunk(c) => {
                bytes += c.len as u64;
                // Touch the data once so that nothing is measured that a consumer could not use.
                check ^= c.bytes()[c.len - 1];
            }
            Event::End(_) => {}
            Event::Error(e) => return Err(format!("vyre: {e}")),
        }
    }
    drop(ing);
    let secs = t.elapsed().as_secs_f64();
    let cpu = CpuTimes::now().since(cpu0);
    std::hint::black_box(check);
    Ok(Measure {
        setup_cpu: (setup.user + setup.system).as_secs_f64(),
        ..Measure::timed(bytes, secs, cpu)
    })
}

fn run_std(a: &Args, paths: &[PathBuf]) -> Result<Measure, String> {
    let cpu0 = CpuTimes::now();
    let t = Instant::now();
    let mut buf = vec![0u8; a.bs_kib << 10];
    let mut bytes = 0u64;
    let mut check = 0u8;
    for p in paths {
        let mut f = std::fs::File::open(p).map_err(|e| format!("{}: {e}", p.display()))?;
        loop {
            let n = f
                .read(&mut buf)
                .map_err(|e| format!("{}: {e}", p.display()))?;
            if n == 0 {
                break;
            }
            check ^= buf[n - 1];
            bytes += n as u64;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let cpu = CpuTimes::now().since(cpu0);
    std::hint::black_box(check);
    Ok(Measure::timed(bytes, secs, cpu))
}

/// The per-file floor: open, fstat and close every file, reading nothing. `bytes` is the
/// files' size, so CPU per GiB compares with the reading rows.
fn run_opens(paths: &[PathBuf]) -> Result<Measure, String> {
    let cpu0 = CpuTimes::now();
    let t = Instant::now();
    let mut bytes = 0u64;
    for p in paths {
        let f = std::fs::File::open(p).map_err(|e| format!("{}: {e}", p.display()))?;
        bytes += f
            .metadata()
            .map_err(|e| format!("{}: {e}", p.display()))?
            .len();
    }
    let secs = t.elapsed().as_secs_f64();
    let cpu = CpuTimes::now().since(cpu0);
    Ok(Measure::timed(bytes, secs, cpu))
}

/// The per-read floor: fio reading `bytes` of one large file in `bs` requests (the same
/// number of reads as the small set, no file opened during its accounting).
fn run_fio_one_file(
    a: &Args,
    file: &Path,
    bs: &str,
    bytes: u64,
) -> Result<(Measure, String), String> {
    let set = Set {
        name: "one file",
        paths: vec![file.to_path_buf()],
        fio_files: vec![
            format!("--filename={}", file.display()),
            format!("--size={bytes}"),
        ],
        fio_bs: bs.to_string(),
    };
    run_fio(a, &set)
}

/// The number after `"key" :` at or after `from`.
fn json_num(s: &str, key: &str, from: usize) -> Option<f64> {
    let at = s[from..].find(&format!("\"{key}\""))? + from + key.len() + 2;
    let rest = s[at..].trim_start().strip_prefix(':')?.trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == 'e' || c == '+'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

pub(crate) fn run_fio(a: &Args, set: &Set) -> Result<(Measure, String), String> {
    let mut cmd = std::process::Command::new(&a.fio);
    cmd.args([
        "--name=vyre-compare",
        "--ioengine=io_uring",
        "--direct=1",
        "--fixedbufs",
        "--registerfiles",
        "--rw=read",
        "--output-format=json",
    ])
    .arg(format!("--bs={}", set.fio_bs))
    .arg(format!("--iodepth={}", a.qd))
    .args(&set.fio_files);
    let shown = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| {
        format!(
            "cannot run {}: {e} (install it: apt-get install -y fio)",
            a.fio.display()
        )
    })?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let start = text.find('{').ok_or_else(|| {
        format!(
            "fio printed no JSON: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let j = &text[start..];
    let read = j
        .find("\"read\"")
        .ok_or("fio JSON without a read section")?;
    let bytes = json_num(j, "io_bytes", read).ok_or("fio JSON: no io_bytes")? as u64;
    let runtime_ms = json_num(j, "runtime", read).ok_or("fio JSON: no runtime")?;
    let job_ms = json_num(j, "job_runtime", 0).unwrap_or(runtime_ms);
    let usr = json_num(j, "usr_cpu", 0).ok_or("fio JSON: no usr_cpu")?;
    let sys = json_num(j, "sys_cpu", 0).ok_or("fio JSON: no sys_cpu")?;
    let err = json_num(j, "error", 0).unwrap_or(0.0);
    if err != 0.0 || bytes == 0 {
        return Err(format!(
            "fio failed (error {err}, {bytes} bytes read): {shown}"
        ));
    }
    Ok((
        Measure {
            bytes,
            secs: runtime_ms / 1e3,
            user: usr / 100.0 * job_ms / 1e3,
            sys: sys / 100.0 * job_ms / 1e3,
            setup_cpu: 0.0,
        },
        shown,
    ))
}

/// `--backend {backend}` on a vyre built without the feature of the same name.
#[cfg(any(not(feature = "cuda"), not(feature = "wgpu")))]
fn not_built(backend: &str) -> String {
    format!(
        "--backend {backend}: this vyre was built without the `{backend}` feature; rebuild with `cargo build --release -p vyre-cli --features {backend}`"
    )
}

pub fn main(a: Args) -> Result<ExitCode, Box<dyn std::error::Error>> {
    if a.small_kib % 4 != 0 || a.bs_kib % 4 != 0 {
        return Err("--small-kib and --bs-kib must be multiples of 4 (O_DIRECT)".into());
    }
    match a.backend.as_str() {
        "cpu" => {}
        #[cfg(feature = "cuda")]
        "cuda" => return crate::bench_ingest_cuda::main(&a),
        #[cfg(not(feature = "cuda"))]
        "cuda" => return Err(not_built("cuda").into()),
        #[cfg(feature = "wgpu")]
        "wgpu" => return crate::bench_ingest_wgpu::main(&a),
        #[cfg(not(feature = "wgpu"))]
        "wgpu" => return Err(not_built("wgpu").into()),
        other => {
            return Err(format!("--backend {other}: expected `cpu`, `cuda` or `wgpu`").into());
        }
    }
    eprintln!(
        "generating (or reusing) files under {} ...",
        a.dir.display()
    );
    let (large, small) = generate(&a)?;
    let mut table = String::new();
    let mut notes = Vec::new();
    let mut fio_cmds = Vec::new();
    writeln!(
        table,
        "| set | cache | method | GiB | s | GB/s | user s/GiB | sys s/GiB | vyre/fio GB/s | vyre/fio CPU |"
    )?;
    writeln!(table, "|---|---|---|---|---|---|---|---|---|---|")?;
    let mut verdicts = Vec::new();
    let mut floors: Vec<String> = Vec::new();
    for set in [&large, &small] {
        for cache in ["cold", "warm"] {
            if cache == "warm" {
                // One buffered pass puts the files in the page cache.
                run_std(&a, &set.paths)?;
            }
            let mut row = |method: &str, r: &mut dyn FnMut() -> Result<Measure, String>| {
                if cache == "cold" && !drop_caches() {
                    notes.push(format!(
                        "{} {method}: could not drop the page cache (not permitted); 'cold' is not cold",
                        set.name
                    ));
                }
                r()
            };
            let v = row("vyre", &mut || run_vyre(&a, &set.paths))?;
            let mut shown = String::new();
            let f = row("fio", &mut || {
                run_fio(&a, set).map(|(m, s)| {
                    shown = s;
                    m
                })
            })?;
            fio_cmds.push(shown);
            let s = row("std", &mut || run_std(&a, &set.paths))?;
            if set.name == "small" {
                // Floors for this set: what opening the files costs alone, and what reading
                // the same bytes in as many requests of one file costs fio.
                let o = row("opens", &mut || run_opens(&set.paths))?;
                let mut shown1 = String::new();
                let one = row("fio one file", &mut || {
                    run_fio_one_file(&a, &large.paths[0], &set.fio_bs, v.bytes).map(|(m, s)| {
                        shown1 = s;
                        m
                    })
                })?;
                fio_cmds.push(shown1);
                floors.push(format!(
                    "| {} | {cache} | {:.2} | {:.2} | {:.2} | {:.3} | {:.3} |",
                    set.name,
                    o.user / o.gib(),
                    o.sys / o.gib(),
                    o.secs / set.paths.len() as f64 * 1e6,
                    one.user / one.gib(),
                    one.sys / one.gib(),
                ));
            }
            let cpu = |m: &Measure| m.user + m.sys;
            for (name, m) in [("vyre", &v), ("fio", &f), ("std", &s)] {
                let (u, sy) = m.cpu_per_gib();
                let ratio = if name == "fio" {
                    "1".to_string()
                } else {
                    format!("{:.2}", m.gbps() / f.gbps())
                };
                let cratio = if name == "fio" {
                    "1".to_string()
                } else {
                    format!("{:.2}", cpu(m) / m.gib() / (cpu(&f) / f.gib()))
                };
                writeln!(
                    table,
                    "| {} | {cache} | {name} | {:.2} | {:.2} | {:.2} | {:.3} | {:.3} | {ratio} | {cratio} |",
                    set.name,
                    m.gib(),
                    m.secs,
                    m.gbps(),
                    u,
                    sy
                )?;
            }
            let ratio = v.gbps() / f.gbps();
            let sys = v.cpu_per_gib().1;
            verdicts.push(format!(
                "{} {cache}: vyre/fio = {ratio:.2} (target >= 0.95: {}); vyre system CPU {sys:.3} s/GiB (target <= 0.05: {}); vyre setup (map + pin {} MiB of buffers, wall time included above, CPU not) {:.3} s CPU",
                set.name,
                if ratio >= 0.95 { "met" } else { "NOT met" },
                if sys <= 0.05 { "met" } else { "NOT met" },
                (a.bs_kib * 2 * a.qd as usize) >> 10,
                v.setup_cpu,
            ));
        }
    }
    let mut report = String::new();
    writeln!(
        report,
        "block size {} KiB, queue depth {}; large: {} x {} MiB; small: {} x {} KiB\n",
        a.bs_kib,
        a.qd,
        a.large_files(),
        a.large_mib(),
        a.small_files,
        a.small_kib
    )?;
    report.push_str(&table);
    report.push('\n');
    for v in &verdicts {
        writeln!(report, "- {v}")?;
    }
    notes.sort();
    notes.dedup();
    for n in &notes {
        writeln!(report, "- note: {n}")?;
    }
    if !floors.is_empty() {
        writeln!(
            report,
            "\nFloors on the small set, CPU s per GiB of its files: `opens` = open + fstat + close of every file, nothing read (what vyre pays per file and fio's accounting leaves out: fio opens and stats every file before it starts counting); `fio one file` = fio reading as many bytes of one large file in requests of the small file size (the per-request cost, no file opened).\n"
        )?;
        writeln!(
            report,
            "| set | cache | opens user s/GiB | opens sys s/GiB | opens µs/file (wall) | fio one file user s/GiB | fio one file sys s/GiB |"
        )?;
        writeln!(report, "|---|---|---|---|---|---|---|")?;
        for f in &floors {
            writeln!(report, "{f}")?;
        }
    }
    writeln!(report, "\nfio commands:\n")?;
    let mut seen = std::collections::HashSet::new();
    fio_cmds.retain(|c| seen.insert(c.clone()));
    for c in &fio_cmds {
        writeln!(report, "    {c}")?;
    }
    print!("{report}");
    if let Some(out) = &a.out {
        std::fs::write(out, &report)?;
    }
    Ok(ExitCode::SUCCESS)
}
