//! Counts per event that do not depend on the machine's load: the
//! instructions a warm function executes (all its threads, callgrind) and
//! the system calls it makes (strace, attached to every thread), over
//! several 1,000-record batches after a first one that warms it up.
//! (`perf stat -e instructions` would be cheaper, but this kernel has no
//! hardware counters.) `scripts/tools.sh` installs valgrind and strace.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use lapin::Channel;
use serde_json::{Value, json};
use testkit::{Function, Launch, runtime_api::Outcome};

/// What one build of the function costs per event.
pub struct Counts {
    /// Instructions per event (callgrind's `Ir`, every thread).
    pub instructions: f64,
    /// CPU time per event, every thread, untraced (the kernel's
    /// `schedstat`): a figure of this machine and its load, unlike the others.
    pub cpu: Duration,
    /// System calls per event, every thread.
    pub syscalls: f64,
    /// The same by system call, most frequent first.
    pub by_call: Vec<(String, f64)>,
}

/// Measures `program` (the function this bench built when `None`): `batches`
/// batches of `event` (of `records` records) after one to warm it up.
pub async fn measure(
    program: Option<&str>,
    env: &[(&str, &str)],
    event: &Value,
    records: usize,
    batches: usize,
    admin: &Channel,
    queue: &str,
) -> anyhow::Result<Counts> {
    let binary = program.map_or_else(|| testkit::cargo_bin("event-forwarder"), PathBuf::from);
    let work = std::env::temp_dir().join(format!("ef-counts-{}", testkit::unique("c")));
    std::fs::create_dir_all(&work)?;
    let result = async {
        let instructions = instructions(&binary, env, event, records, batches, admin, queue, &work)
            .await
            .context("callgrind")?;
        let (cpu, by_call) = syscalls(&binary, env, event, records, batches, admin, queue, &work)
            .await
            .context("strace")?;
        let events = (records * batches) as f64;
        let mut by_call: Vec<(String, f64)> = by_call
            .into_iter()
            .map(|(name, n)| (name, n as f64 / events))
            .collect();
        by_call.sort_by(|a, b| b.1.total_cmp(&a.1));
        Ok(Counts {
            instructions: instructions as f64 / events,
            cpu: cpu.div_f64(events),
            syscalls: by_call.iter().map(|(_, n)| n).sum(),
            by_call,
        })
    }
    .await;
    if std::env::var_os("EF_COUNTS_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&work);
    } else {
        eprintln!(
            "counts: the callgrind and strace outputs are in {}",
            work.display()
        );
    }
    result
}

async fn start(launch: Launch, env: &[(&str, &str)]) -> anyhow::Result<Function> {
    let function = launch.env_remove("QUEUE_TYPE").envs(env).start().await;
    let until = Instant::now() + Duration::from_secs(60);
    while function.api().first_poll().is_none() {
        ensure!(Instant::now() < until, "the function never polled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(function)
}

async fn invoke(
    function: &Function,
    event: &Value,
    records: usize,
    admin: &Channel,
    queue: &str,
) -> anyhow::Result<()> {
    let answer = function.api().invoke(event, Duration::from_secs(300)).await;
    ensure!(
        matches!(&answer, Some(Outcome::Response(r)) if r == &json!({"batchItemFailures": []})),
        "{answer:?}"
    );
    super::purge(admin, queue, records).await
}

/// Instructions of `batches` warm batches: callgrind's counters are zeroed
/// after the first batch and dumped after the last.
#[allow(clippy::too_many_arguments)]
async fn instructions(
    binary: &Path,
    env: &[(&str, &str)],
    event: &Value,
    records: usize,
    batches: usize,
    admin: &Channel,
    queue: &str,
    work: &Path,
) -> anyhow::Result<u64> {
    let out = work.join("callgrind.out");
    let launch = Launch::program(&[
        "valgrind".into(),
        "--tool=callgrind".into(),
        format!("--callgrind-out-file={}", out.display()),
        binary.display().to_string(),
    ]);
    let mut function = start(launch, env).await?;
    let pid = function.pid().to_string();
    invoke(&function, event, records, admin, queue).await?;
    control(&["-z", &pid])?;
    for _ in 0..batches {
        invoke(&function, event, records, admin, queue).await?;
    }
    control(&["-d", &pid])?;
    function.terminate();
    // The dump names the file after the run's own with a counter: `.1`.
    let dump = std::fs::read_dir(work)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "1"))
        .context("no callgrind dump")?;
    let text = std::fs::read_to_string(&dump)?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no totals in the callgrind dump")
}

fn control(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("callgrind_control")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("callgrind_control (valgrind: scripts/tools.sh)")?;
    ensure!(out.status.success(), "callgrind_control {args:?}: {out:?}");
    Ok(())
}

/// CPU time of `batches` warm batches untraced, then their system calls by
/// name: strace attaches to every thread of the warm function, and is
/// stopped after the last batch.
#[allow(clippy::too_many_arguments)]
async fn syscalls(
    binary: &Path,
    env: &[(&str, &str)],
    event: &Value,
    records: usize,
    batches: usize,
    admin: &Channel,
    queue: &str,
    work: &Path,
) -> anyhow::Result<(Duration, BTreeMap<String, u64>)> {
    let out = work.join("strace.txt");
    let mut function = start(Launch::program(&[binary]), env).await?;
    let pid = function.pid();
    invoke(&function, event, records, admin, queue).await?;
    let before = cpu_time(pid)?;
    for _ in 0..batches {
        invoke(&function, event, records, admin, queue).await?;
    }
    let cpu = cpu_time(pid)?.saturating_sub(before);
    let mut strace = Command::new("strace")
        .args(["-f", "-c", "-q", "-U", "name,calls", "-o"])
        .arg(&out)
        .args(["-p", &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("strace (scripts/tools.sh)")?;
    let until = Instant::now() + Duration::from_secs(10);
    while !traced(pid) {
        if Instant::now() > until {
            let _ = strace.kill();
            bail!("strace did not attach to {pid}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..batches {
        invoke(&function, event, records, admin, queue).await?;
    }
    // SIGINT detaches strace, which then writes its summary.
    let stopped = Command::new("kill")
        .args(["-INT", &strace.id().to_string()])
        .status()?;
    ensure!(stopped.success(), "kill -INT strace");
    strace.wait()?;
    function.terminate();
    let text = std::fs::read_to_string(&out)?;
    Ok((cpu, parse_strace(&text)))
}

/// Time on a CPU of every thread of `pid` so far (the first field of each
/// thread's `schedstat`, in nanoseconds).
fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let stat = std::fs::read_to_string(task?.path().join("schedstat"))?;
        total += stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .context("schedstat")?;
    }
    Ok(Duration::from_nanos(total))
}

/// Whether every thread of `pid` has a tracer.
fn traced(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.filter_map(Result::ok).all(|t| {
        std::fs::read_to_string(t.path().join("status")).is_ok_and(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("TracerPid:"))
                .is_some_and(|v| v.trim() != "0")
        })
    })
}

/// `strace -c -U name,calls`: a row per system call, then `total`.
fn parse_strace(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let mut cols = l.split_whitespace();
            let name = cols.next()?;
            let calls = cols.next()?.parse().ok()?;
            (name != "total").then(|| (name.to_owned(), calls))
        })
        .collect()
}
