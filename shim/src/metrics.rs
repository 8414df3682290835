//! cgroup metrics in the types containerd reads: io.containerd.cgroups.v1
//! and v2 Metrics, packed in an Any.

use containerd_shim::protos::cgroups::metrics as v1;
use containerd_shim::protos::cgroups_v2::metrics as v2;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{Message, MessageField};
use hybrid_runtime::{CgroupStats, CgroupVersion};

const V1_TYPE_URL: &str = "io.containerd.cgroups.v1.Metrics";
const V2_TYPE_URL: &str = "io.containerd.cgroups.v2.Metrics";

pub fn to_any(stats: &CgroupStats, version: CgroupVersion) -> Result<Any, containerd_shim::protos::protobuf::Error> {
    let (type_url, value) = match version {
        CgroupVersion::V1 => (V1_TYPE_URL, v1_metrics(stats).write_to_bytes()?),
        CgroupVersion::V2 => (V2_TYPE_URL, v2_metrics(stats).write_to_bytes()?),
    };
    Ok(Any { type_url: type_url.to_string(), value, ..Default::default() })
}

fn v1_metrics(stats: &CgroupStats) -> v1::Metrics {
    let mem = &stats.memory;
    let entry = |d: &hybrid_runtime::container::MemoryData| v1::MemoryEntry {
        limit: d.limit,
        usage: d.usage,
        max: d.max_usage,
        failcnt: d.fail_count,
        ..Default::default()
    };
    let stat = |key: &str| mem.stats.get(key).copied().unwrap_or_default();
    v1::Metrics {
        pids: MessageField::some(v1::PidsStat { current: stats.pids.current, limit: stats.pids.limit, ..Default::default() }),
        cpu: MessageField::some(v1::CPUStat {
            usage: MessageField::some(v1::CPUUsage {
                total: stats.cpu.usage.usage_total,
                kernel: stats.cpu.usage.usage_kernel,
                user: stats.cpu.usage.usage_user,
                per_cpu: stats.cpu.usage.per_core_usage_total.clone(),
                ..Default::default()
            }),
            throttling: MessageField::some(v1::Throttle {
                periods: stats.cpu.throttling.periods,
                throttled_periods: stats.cpu.throttling.throttled_periods,
                throttled_time: stats.cpu.throttling.throttled_time,
                ..Default::default()
            }),
            ..Default::default()
        }),
        memory: MessageField::some(v1::MemoryStat {
            cache: mem.cache,
            rss: stat("rss"),
            rss_huge: stat("rss_huge"),
            mapped_file: stat("mapped_file"),
            pg_fault: stat("pgfault"),
            pg_maj_fault: stat("pgmajfault"),
            total_cache: stat("total_cache"),
            total_rss: stat("total_rss"),
            usage: MessageField::some(entry(&mem.memory)),
            swap: MessageField::some(entry(&mem.memswap)),
            kernel: MessageField::some(entry(&mem.kernel)),
            kernel_tcp: MessageField::some(entry(&mem.kernel_tcp)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn v2_metrics(stats: &CgroupStats) -> v2::Metrics {
    let mem = &stats.memory;
    let stat = |key: &str| mem.stats.get(key).copied().unwrap_or_default();
    v2::Metrics {
        pids: MessageField::some(v2::PidsStat { current: stats.pids.current, limit: stats.pids.limit, ..Default::default() }),
        cpu: MessageField::some(v2::CPUStat {
            // libcgroups reports v2 cpu time as cpu.stat has it, in µs.
            usage_usec: stats.cpu.usage.usage_total,
            user_usec: stats.cpu.usage.usage_user,
            system_usec: stats.cpu.usage.usage_kernel,
            nr_periods: stats.cpu.throttling.periods,
            nr_throttled: stats.cpu.throttling.throttled_periods,
            throttled_usec: stats.cpu.throttling.throttled_time,
            ..Default::default()
        }),
        memory: MessageField::some(v2::MemoryStat {
            anon: stat("anon"),
            file: stat("file"),
            usage: mem.memory.usage,
            usage_limit: mem.memory.limit,
            swap_usage: mem.memswap.usage,
            swap_limit: mem.memswap.limit,
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim::protos::protobuf::Message;

    #[test]
    fn v1_metrics_round_trip_with_containerds_type_url() {
        let mut stats = CgroupStats::default();
        stats.pids.current = 3;
        stats.memory.memory.usage = 4096;
        stats.cpu.usage.usage_total = 1_000_000;
        let any = to_any(&stats, CgroupVersion::V1).expect("encode");
        assert_eq!(any.type_url, "io.containerd.cgroups.v1.Metrics");
        let back = v1::Metrics::parse_from_bytes(&any.value).expect("decode");
        assert_eq!(back.pids.current, 3);
        assert_eq!(back.memory.usage.usage, 4096);
        assert_eq!(back.cpu.usage.total, 1_000_000);
    }

    #[test]
    fn v2_metrics_carry_usec_and_memory() {
        let mut stats = CgroupStats::default();
        stats.cpu.usage.usage_total = 7730;
        stats.memory.memory.usage = 8192;
        let any = to_any(&stats, CgroupVersion::V2).expect("encode");
        assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
        let back = v2::Metrics::parse_from_bytes(&any.value).expect("decode");
        assert_eq!(back.cpu.usage_usec, 7730);
        assert_eq!(back.memory.usage, 8192);
    }
}
