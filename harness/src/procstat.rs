//! CPU time and peak memory of processes on this host, read from `/proc` (Linux).
//!
//! `kessai bench` reports CPU milliseconds per saga for every process that does the
//! work — its own, its child services, and the PostgreSQL, RabbitMQ or SQS-emulator
//! processes it finds — because CPU per saga, unlike sagas per second, compares across
//! machines. Read by hand: the two fields needed (`utime + stime` of `/proc/PID/stat`,
//! `VmHWM` of `/proc/PID/status`) do not justify a process-inspection crate.

use std::collections::BTreeMap;
use std::path::Path;

/// A named group of processes whose CPU is summed (e.g. every PostgreSQL backend).
#[derive(Clone, Debug)]
pub struct ProcessGroup {
    pub name: String,
    pub members: Members,
}

/// Which processes belong to a group.
#[derive(Clone, Debug)]
pub enum Members {
    /// These processes (kessai's own, its children).
    Pids(Vec<u32>),
    /// Whatever processes match (command name, command line) when a snapshot is taken:
    /// servers start backends as clients connect.
    Matching(Matcher),
}

/// Whether a process (command name, command line) belongs to a group.
pub type Matcher = fn(&str, &str) -> bool;

impl ProcessGroup {
    pub fn pids(name: impl Into<String>, pids: Vec<u32>) -> Self {
        ProcessGroup {
            name: name.into(),
            members: Members::Pids(pids),
        }
    }

    fn current(&self) -> Vec<u32> {
        match &self.members {
            Members::Pids(p) => p.clone(),
            Members::Matching(m) => find(m),
        }
    }
}

/// CPU seconds of each process of each group at one moment.
#[derive(Clone, Debug, Default)]
pub struct CpuSnapshot(BTreeMap<String, BTreeMap<u32, f64>>);

/// CPU seconds used so far by one process (user + system), or `None` if it is gone.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: split after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks_per_second())
}

/// Peak resident memory of one process in MiB (`VmHWM`), or `None` if it is gone.
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a constant of the running system; no memory is touched.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// Every process whose command name or command line matches, by pid.
pub fn find(matches: &dyn Fn(&str, &str) -> bool) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let dir = Path::new("/proc").join(pid.to_string());
            let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
            let cmdline = std::fs::read(dir.join("cmdline"))
                .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
                .unwrap_or_default();
            matches(comm.trim(), &cmdline)
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// The servers kessai talks to, if they run on this host: PostgreSQL (the postmaster
/// and its backends), RabbitMQ (the Erlang VM) and the SQS emulator (moto).
pub fn servers() -> Vec<ProcessGroup> {
    let groups: [(&str, Matcher); 3] = [
        ("postgresql", |comm, _| comm == "postgres"),
        ("rabbitmq", |comm, _| comm == "beam.smp"),
        ("sqs-emulator", |_, cmdline| cmdline.contains("moto_server")),
    ];
    groups
        .into_iter()
        .filter(|(_, m)| !find(m).is_empty())
        .map(|(name, m)| ProcessGroup {
            name: name.to_owned(),
            members: Members::Matching(m),
        })
        .collect()
}

/// Each group's processes and their CPU seconds now, for [`cpu_between`].
pub fn snapshot(groups: &[ProcessGroup]) -> CpuSnapshot {
    CpuSnapshot(
        groups
            .iter()
            .map(|g| {
                let pids = g
                    .current()
                    .into_iter()
                    .filter_map(|p| Some((p, cpu_seconds(p)?)))
                    .collect();
                (g.name.clone(), pids)
            })
            .collect(),
    )
}

/// CPU seconds each group spent between two snapshots. A process born in between
/// counts whole; one that ended in between is lost (its last reading is unknown).
pub fn cpu_between(before: &CpuSnapshot, after: &CpuSnapshot) -> BTreeMap<String, f64> {
    after
        .0
        .iter()
        .map(|(name, pids)| {
            let earlier = before.0.get(name);
            let spent = pids
                .iter()
                .map(|(pid, cpu)| (cpu - earlier.and_then(|e| e.get(pid)).copied().unwrap_or(0.0)).max(0.0))
                .sum();
            (name.clone(), spent)
        })
        .collect()
}

/// Peak RSS of each group: the largest of its processes (PostgreSQL's backends share
/// most of their memory, so a sum would overstate it).
pub fn peak_rss(groups: &[ProcessGroup]) -> BTreeMap<String, f64> {
    groups
        .iter()
        .map(|g| {
            let peak = g.current().into_iter().filter_map(peak_rss_mib).fold(0.0, f64::max);
            (g.name.clone(), peak)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let me = std::process::id();
        let before = cpu_seconds(me).expect("own /proc entry");
        // Burn a little CPU so the counter moves.
        let mut x = 0u64;
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_millis(100) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let after = cpu_seconds(me).expect("own /proc entry");
        assert!(after > before, "cpu {before} → {after}");
        assert!(peak_rss_mib(me).expect("own status") > 1.0);
        assert!(find(&|_, _| true).contains(&me));
        let me_group = [ProcessGroup::pids("me", vec![me])];
        let (a, b) = (snapshot(&me_group), snapshot(&me_group));
        assert!(cpu_between(&a, &b)["me"] >= 0.0);
        assert!(cpu_between(&CpuSnapshot::default(), &b)["me"] > 0.0);
        assert_eq!(cpu_seconds(u32::MAX), None);
    }
}
