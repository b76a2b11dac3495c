//! Project automation: `cargo xtask ci | bench [filter] | test-gpu | help` (checks, benchmarks into BENCHMARKS.md, GPU tests).
//!
//! Run from anywhere inside the workspace through the `cargo xtask` alias of
//! `.cargo/config.toml`. Every step runs a `cargo` command in the workspace
//! root and stops at the first failure with the step's name and exit status.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::SystemTime;

const HELP: &str = "\
cargo xtask <command>

Commands:
  ci              cargo fmt --all -- --check
                  cargo clippy --workspace --all-targets -- -D warnings
                  cargo doc --workspace --no-deps   (RUSTDOCFLAGS=-Dwarnings)
                  cargo test --workspace --release
                  Stops at the first failing step.
  bench [filter]  cargo bench --workspace [-- filter], then collects the criterion
                  results this run wrote (target/criterion/**/new/{estimates,benchmark}.json)
                  into BENCHMARKS.md (table + machine + command) and prints the table.
                  Groups whose name contains `flop` count FLOPs as elements and are
                  reported in GFLOP/s; a bench whose name starts with `baseline` is the
                  reference for the other benches of its group with the same parameter
                  (column `vs baseline`).
  bench --collect-only
                  Writes BENCHMARKS.md from every result already in target/criterion,
                  without running anything.
  test-gpu        RATE_REQUIRE_GPU=1 cargo test -p backend-wgpu --release
                  (the wgpu backend's tests alone: primitives, the conformance suite and whole
                  models against the CPU backend; they fail rather than skip without an adapter).
  help            This text.
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    let result = match args.first().map(String::as_str) {
        Some("ci") if args.len() == 1 => ci(&root),
        Some("bench") => bench(&root, &args[1..]),
        Some("test-gpu") if args.len() == 1 => test_gpu(&root),
        None | Some("help" | "-h" | "--help") => {
            print!("{HELP}");
            Ok(())
        }
        Some(_) => Err(format!("unknown command or arguments: `{}`\n\n{HELP}", args.join(" "))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root: the parent of this crate's manifest directory.
fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Runs `cargo <args>` in `root` with extra environment variables; an error names the step.
fn run_cargo(root: &Path, step: &str, args: &[&str], env: &[(&str, &str)]) -> Result<(), String> {
    let shown = format!("cargo {}", args.join(" "));
    let env_shown: String = env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
    eprintln!("\n==> [{step}] {env_shown}{shown}");
    let mut cmd = Command::new(cargo());
    cmd.args(args).current_dir(root);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let status = cmd.status().map_err(|e| format!("[{step}] could not start `{shown}`: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("[{step}] FAILED: `{env_shown}{shown}` exited with {status}"))
    }
}

fn ci(root: &Path) -> Result<(), String> {
    run_cargo(root, "fmt", &["fmt", "--all", "--", "--check"], &[])?;
    run_cargo(root, "clippy", &["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"], &[])?;
    run_cargo(root, "doc", &["doc", "--workspace", "--no-deps"], &[("RUSTDOCFLAGS", "-Dwarnings")])?;
    run_cargo(root, "test", &["test", "--workspace", "--release"], &[])?;
    eprintln!("\nxtask ci: all steps passed (fmt, clippy, doc, test)");
    Ok(())
}

fn test_gpu(root: &Path) -> Result<(), String> {
    run_cargo(root, "test-gpu", &["test", "-p", "backend-wgpu", "--release"], &[("RATE_REQUIRE_GPU", "1")])
}

fn bench(root: &Path, args: &[String]) -> Result<(), String> {
    let collect_only = args.iter().any(|a| a == "--collect-only");
    let filters: Vec<&str> = args.iter().map(String::as_str).filter(|a| *a != "--collect-only").collect();
    if filters.len() > 1 || (collect_only && !filters.is_empty()) {
        return Err(format!("bench takes at most one filter, or --collect-only alone\n\n{HELP}"));
    }
    let target = target_dir(root);
    let criterion_dir = target.join("criterion");
    let mut command = vec!["bench", "--workspace"];
    if let Some(f) = filters.first() {
        command.extend(["--", f]);
    }
    let load_start = load_average();
    let (since, shown_command) = if collect_only {
        (None, "`cargo xtask bench --collect-only` (results already in target/criterion)".to_string())
    } else {
        let start = SystemTime::now();
        run_cargo(root, "bench", &command, &[])?;
        let xtask = match filters.first() {
            Some(f) => format!("cargo xtask bench {f}"),
            None => "cargo xtask bench".into(),
        };
        (Some(start), format!("`{xtask}` (runs `cargo {}`)", command.join(" ")))
    };
    let mut results = collect(&criterion_dir, since)?;
    if results.is_empty() {
        return Err(format!(
            "no criterion results {} under {}",
            if since.is_some() { "written by this run" } else { "found" },
            criterion_dir.display()
        ));
    }
    results.sort_by(|a, b| {
        (&a.group, natural(&a.value), &a.function).cmp(&(&b.group, natural(&b.value), &b.function))
    });
    let table = markdown_table(&results);
    let adapters = wgpu_adapters(&results);
    let load = if collect_only {
        format!("- load average (1, 5, 15 min) now: {load_start}\n")
    } else {
        format!("- load average (1, 5, 15 min) at start: {load_start}; at end: {}\n", load_average())
    };
    println!("\n{table}");
    let report = format!(
        "# Benchmarks\n\nGenerated by `cargo xtask bench`; do not edit by hand.\n\n\
         ## Machine\n\n{}{load}{adapters}\n## Command\n\n{shown_command}\n\n\
         Mean time is criterion's mean estimate per iteration, with the half-width of its 95% \
         confidence interval; throughput divides the iteration's element count (FLOPs for groups \
         named `*flop*`) by that mean. `vs baseline` is the baseline's mean time divided by this \
         row's (above 100% is faster), where the group has a bench named `baseline*` with the same \
         parameter. Wall-clock times: other load on the machine (see the load average) slows them.\n\n\
         ## Results\n\n{table}",
        machine(root)
    );
    let path = root.join("BENCHMARKS.md");
    std::fs::write(&path, report).map_err(|e| format!("writing {}: {e}", path.display()))?;
    eprintln!("xtask bench: wrote {} ({} results)", path.display(), results.len());
    Ok(())
}

/// The machine-section line naming the wgpu adapter(s) of the results: the benches of
/// `crates/backend-wgpu/benches/wgpu.rs` name their groups `wgpu <what> (<adapter> [<kind>])`.
fn wgpu_adapters(results: &[BenchResult]) -> String {
    let mut adapters: Vec<&str> = results
        .iter()
        .filter(|r| r.group.starts_with("wgpu "))
        .filter_map(|r| r.group.split_once(" (").and_then(|(_, rest)| rest.strip_suffix(')')))
        .collect();
    adapters.sort_unstable();
    adapters.dedup();
    if adapters.is_empty() {
        "- wgpu adapter: none in these results (no adapter was found, so the wgpu benches skipped, or a filter left them out)\n"
            .into()
    } else {
        format!("- wgpu adapter: {}\n", adapters.join("; "))
    }
}

fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => root.join(d),
        None => root.join("target"),
    }
}

/// Sort key that orders numeric parameters by value (`256 < 1024`).
fn natural(s: &str) -> (u64, String) {
    let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
    (digits.parse().unwrap_or(u64::MAX), s.to_string())
}

/// One criterion result.
struct BenchResult {
    group: String,
    function: String,
    value: String,
    mean_ns: f64,
    /// Half-width of the 95% confidence interval of the mean, in ns.
    ci_half_ns: f64,
    /// `(count, kind)` per iteration, kind one of Elements, Bytes, BytesDecimal, Bits.
    throughput: Option<(f64, String)>,
}

/// Every `new/benchmark.json` + `new/estimates.json` pair under `dir`, written at or after `since` if given.
fn collect(dir: &Path, since: Option<SystemTime>) -> Result<Vec<BenchResult>, String> {
    let mut found = Vec::new();
    if !dir.exists() {
        return Ok(found);
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| format!("reading {}: {e}", d.display()))?;
        for entry in entries {
            let path = entry.map_err(|e| format!("reading {}: {e}", d.display()))?.path();
            if !path.is_dir() {
                continue;
            }
            if path.file_name().is_some_and(|n| n == "new") {
                let (bench, est) = (path.join("benchmark.json"), path.join("estimates.json"));
                if !(bench.is_file() && est.is_file()) {
                    continue;
                }
                if let Some(t) = since {
                    let modified = std::fs::metadata(&est).and_then(|m| m.modified());
                    if modified.map(|m| m < t).unwrap_or(true) {
                        continue;
                    }
                }
                found.push(read_result(&bench, &est)?);
            } else {
                stack.push(path);
            }
        }
    }
    Ok(found)
}

fn read_json(path: &Path) -> Result<serde_json::Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("parsing {}: {e}", path.display()))
}

fn read_result(bench: &Path, est: &Path) -> Result<BenchResult, String> {
    let b = read_json(bench)?;
    let e = read_json(est)?;
    let text = |key: &str| b.get(key).and_then(|v| v.as_str()).unwrap_or("").to_string();
    let group = text("group_id");
    if group.is_empty() {
        return Err(format!("{}: no `group_id`", bench.display()));
    }
    let mean_ns = e
        .pointer("/mean/point_estimate")
        .and_then(|v| v.as_f64())
        .ok_or_else(|| format!("{}: no `mean.point_estimate`", est.display()))?;
    let bound = |key: &str| e.pointer(&format!("/mean/confidence_interval/{key}")).and_then(|v| v.as_f64());
    let ci_half_ns = match (bound("lower_bound"), bound("upper_bound")) {
        (Some(lo), Some(hi)) => (hi - lo) / 2.0,
        _ => f64::NAN,
    };
    let throughput = b
        .get("throughput")
        .and_then(|t| t.as_object())
        .and_then(|t| t.iter().next().and_then(|(kind, count)| count.as_f64().map(|c| (c, kind.clone()))));
    Ok(BenchResult {
        group,
        function: text("function_id"),
        value: text("value_str"),
        mean_ns,
        ci_half_ns,
        throughput,
    })
}

fn format_time(ns: f64) -> String {
    match ns {
        x if x >= 1e9 => format!("{:.3} s", x / 1e9),
        x if x >= 1e6 => format!("{:.3} ms", x / 1e6),
        x if x >= 1e3 => format!("{:.3} µs", x / 1e3),
        x if x.is_nan() => "?".into(),
        x => format!("{x:.1} ns"),
    }
}

fn format_throughput(r: &BenchResult) -> String {
    let Some((count, kind)) = &r.throughput else { return "-".into() };
    let per_s = count / (r.mean_ns * 1e-9);
    let scaled = |unit: &str| {
        let (v, prefix) = match per_s {
            x if x >= 1e9 => (x / 1e9, "G"),
            x if x >= 1e6 => (x / 1e6, "M"),
            x if x >= 1e3 => (x / 1e3, "k"),
            x => (x, ""),
        };
        format!("{v:.2} {prefix}{unit}/s")
    };
    match kind.as_str() {
        "Elements" if r.group.to_lowercase().contains("flop") => format!("{:.2} GFLOP/s", per_s / 1e9),
        "Elements" => scaled("elem"),
        "Bits" => scaled("bit"),
        "BytesDecimal" => scaled("B"),
        _ => format!("{:.2} MiB/s", per_s / (1024.0 * 1024.0)),
    }
}

fn markdown_table(results: &[BenchResult]) -> String {
    let mut t =
        String::from("| group | bench | mean time | throughput | vs baseline |\n|---|---|---:|---:|---:|\n");
    for r in results {
        let bench = match (r.function.is_empty(), r.value.is_empty()) {
            (false, false) => format!("{}/{}", r.function, r.value),
            (false, true) => r.function.clone(),
            (true, _) => r.value.clone(),
        };
        let baseline = results
            .iter()
            .find(|b| b.group == r.group && b.value == r.value && b.function.starts_with("baseline"));
        let versus = match baseline {
            Some(b) if !r.function.starts_with("baseline") => {
                format!("{} of {}", percent(100.0 * b.mean_ns / r.mean_ns), b.function)
            }
            _ => "-".into(),
        };
        let _ = writeln!(
            t,
            "| {} | {} | {} ± {} | {} | {} |",
            r.group,
            bench,
            format_time(r.mean_ns),
            format_time(r.ci_half_ns),
            format_throughput(r),
            versus
        );
    }
    t
}

/// `/proc/loadavg`'s first three fields, or `unknown`.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(", "))
        .unwrap_or_else(|| "unknown".into())
}

/// Output of a command, trimmed, or `unknown (why)`.
fn command_output(program: &str, args: &[&str], root: &Path) -> String {
    match Command::new(program).args(args).current_dir(root).output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        Ok(o) => format!("unknown (`{program}` exited with {})", o.status),
        Err(e) => format!("unknown ({program}: {e})"),
    }
}

fn machine(root: &Path) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        cpuinfo
            .lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let cpu = field("model name").unwrap_or_else(|| "unknown (no model name in /proc/cpuinfo)".into());
    let logical = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
    let available = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let flags = field("flags").unwrap_or_default();
    let simd: Vec<&str> = ["avx2", "fma", "avx512f"]
        .into_iter()
        .filter(|f| flags.split_whitespace().any(|x| x == *f))
        .collect();
    let rustc = command_output("rustc", &["-V"], root);
    let mut commit = command_output("git", &["rev-parse", "--short", "HEAD"], root);
    if !command_output("git", &["status", "--porcelain", "--untracked-files=no"], root).is_empty() {
        commit.push_str(" (with uncommitted changes)");
    }
    let rayon = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "unset".into());
    format!(
        "- CPU: {cpu} ({logical} logical CPUs in /proc/cpuinfo, {available} available to this process; SIMD: {})\n\
         - rustc: {rustc}\n- date (UTC): {}\n- git commit: {commit}\n- RAYON_NUM_THREADS: {rayon}\n",
        if simd.is_empty() { "none of avx2/fma/avx512f".to_string() } else { simd.join(", ") },
        utc_now()
    )
}

/// The current UTC date and time as `YYYY-MM-DD HH:MM`.
fn utc_now() -> String {
    let secs = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}", rem / 3600, rem % 3600 / 60)
}

/// A percentage with whole digits from 10% up and two significant digits
/// below (a wgpu row on a software adapter can be a fraction of a percent).
fn percent(p: f64) -> String {
    if p >= 10.0 || p == 0.0 || !p.is_finite() {
        format!("{p:.0}%")
    } else {
        let decimals = (1 - p.log10().floor() as i32).max(0) as usize;
        format!("{p:.decimals$}%")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throughput_units() {
        let r = |group: &str, kind: &str| BenchResult {
            group: group.into(),
            function: "f".into(),
            value: "1".into(),
            mean_ns: 1e6,
            ci_half_ns: 1e4,
            throughput: Some((2e9, kind.into())),
        };
        assert_eq!(format_throughput(&r("matmul_f32_flop", "Elements")), "2000.00 GFLOP/s");
        assert_eq!(format_throughput(&r("fft", "Elements")), "2000.00 Gelem/s");
        assert_eq!(format_time(1.5e6), "1.500 ms");
    }

    #[test]
    fn baseline_column() {
        let r = |function: &str, mean_ns: f64| BenchResult {
            group: "g".into(),
            function: function.into(),
            value: "8".into(),
            mean_ns,
            ci_half_ns: 0.0,
            throughput: None,
        };
        let table = markdown_table(&[r("baseline_x", 2.0), r("ours", 4.0)]);
        assert!(table.contains("| g | ours/8 | 4.0 ns ± 0.0 ns | - | 50% of baseline_x |"), "{table}");
        assert_eq!(percent(0.3104), "0.31%");
        assert_eq!(percent(4.26), "4.3%");
        assert_eq!(percent(123.4), "123%");
        assert!(table.contains("| g | baseline_x/8 | 2.0 ns ± 0.0 ns | - | - |"), "{table}");
    }

    #[test]
    fn wgpu_adapter_is_named_from_the_groups() {
        let r = |group: &str| BenchResult {
            group: group.into(),
            function: "f".into(),
            value: "1".into(),
            mean_ns: 1.0,
            ci_half_ns: 0.0,
            throughput: None,
        };
        let named = wgpu_adapters(&[
            r("matmul_f32_flop"),
            r("wgpu matmul_f32_flop (llvmpipe (LLVM 19.1.7, 256 bits) [Cpu])"),
            r("wgpu fft_f32 (llvmpipe (LLVM 19.1.7, 256 bits) [Cpu])"),
        ]);
        assert_eq!(named, "- wgpu adapter: llvmpipe (LLVM 19.1.7, 256 bits) [Cpu]\n");
        assert!(wgpu_adapters(&[r("fft_f64")]).contains("none in these results"));
    }

    #[test]
    fn natural_order_of_sizes() {
        let mut v = vec!["1024", "256", "512"];
        v.sort_by_key(|s| natural(s));
        assert_eq!(v, ["256", "512", "1024"]);
    }
}
