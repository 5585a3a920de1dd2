//! Memory for a VM with passthrough: huge pages per size (total, free,
//! hugetlbfs mounted) against `--memory`, and RLIMIT_MEMLOCK or
//! CAP_IPC_LOCK, since VFIO pins all guest RAM.

use super::{dir_names, read_text, read_value, Line};
use crate::config::format_size;
use crate::host::checks::{memlock_sufficient, parse_cap_eff, HostPaths, CAP_IPC_LOCK};

/// The huge page size `vflaunch run --hugepages` uses.
const HUGE_2M: u64 = 2 << 20;

/// The soft "Max locked memory" from `/proc/<pid>/limits` (`u64::MAX` = unlimited).
pub(crate) fn parse_memlock_limit(limits: &str) -> Option<u64> {
    let rest = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max locked memory"))?;
    match rest.split_whitespace().next()? {
        "unlimited" => Some(u64::MAX),
        n => n.parse().ok(),
    }
}

fn hugepages(p: &HostPaths, memory: u64, out: &mut Vec<Line>) {
    let mounts = read_text(&p.proc.join("mounts")).unwrap_or_default();
    let mount = mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, dir, kind) = (f.next()?, f.next()?, f.next()?);
        (kind == "hugetlbfs").then(|| dir.to_string())
    });
    let mount = match mount {
        Some(dir) => format!("hugetlbfs mounted at {dir}"),
        None => "hugetlbfs not mounted (vflaunch does not need it)".to_string(),
    };
    let root = p.sys.join("kernel/mm/hugepages");
    let mut sizes: Vec<(u64, u64, u64)> = dir_names(&root)
        .into_iter()
        .filter_map(|d| {
            let kib: u64 = d
                .strip_prefix("hugepages-")?
                .strip_suffix("kB")?
                .parse()
                .ok()?;
            let num =
                |f: &str| read_value(&root.join(&d).join(f)).and_then(|v| v.parse::<u64>().ok());
            Some((kib << 10, num("nr_hugepages")?, num("free_hugepages")?))
        })
        .collect();
    sizes.sort();
    if sizes.is_empty() {
        out.push(Line::warn(
            "huge pages",
            format!("no huge page sizes in /sys/kernel/mm/hugepages; {mount}"),
            "use a kernel with CONFIG_HUGETLBFS, or run without --hugepages",
        ));
        return;
    }
    for (size, total, free) in sizes {
        let name = format!("huge pages {}", format_size(size));
        let saw = format!("{total} reserved, {free} free; {mount}");
        if size != HUGE_2M {
            out.push(Line::ok(
                name,
                format!("{saw} (vflaunch --hugepages uses 2 MiB pages)"),
            ));
            continue;
        }
        let need = memory.div_ceil(HUGE_2M);
        if free >= need {
            out.push(Line::ok(
                name,
                format!("{saw}: enough for --hugepages with {}", format_size(memory)),
            ));
        } else {
            out.push(Line::warn(
                name,
                format!("{saw}: --hugepages with {} needs {need} free", format_size(memory)),
                format!("echo {} > /proc/sys/vm/nr_hugepages (or hugepages={} on the kernel command line), or run without --hugepages", total + need - free, total + need - free),
            ));
        }
    }
}

fn memlock(p: &HostPaths, memory: u64, out: &mut Vec<Line>) {
    let name = "locked memory";
    let limit = read_text(&p.proc.join("self/limits"))
        .ok()
        .and_then(|s| parse_memlock_limit(&s));
    let cap = read_text(&p.proc.join("self/status"))
        .ok()
        .and_then(|s| parse_cap_eff(&s))
        .is_some_and(|c| c & (1 << CAP_IPC_LOCK) != 0);
    let Some(limit) = limit else {
        out.push(Line::warn(
            name,
            "cannot read RLIMIT_MEMLOCK from /proc/self/limits",
            "check `ulimit -l`",
        ));
        return;
    };
    let shown = if limit == u64::MAX {
        "unlimited".to_string()
    } else {
        format_size(limit)
    };
    let capped = if cap {
        ", CAP_IPC_LOCK"
    } else {
        ", no CAP_IPC_LOCK"
    };
    let saw = format!("RLIMIT_MEMLOCK {shown}{capped}");
    out.push(if memlock_sufficient(limit, cap, memory) {
        Line::ok(name, format!("{saw}: VFIO can pin {}", format_size(memory)))
    } else {
        Line::failed(
            name,
            format!("{saw}: VFIO must pin {} of guest RAM", format_size(memory)),
            "ulimit -l unlimited (LimitMEMLOCK=infinity in a systemd unit, the pod's memlock ulimit), or grant CAP_IPC_LOCK",
        )
    });
}

pub(super) fn check(p: &HostPaths, memory: u64, out: &mut Vec<Line>) {
    hugepages(p, memory, out);
    memlock(p, memory, out);
}
