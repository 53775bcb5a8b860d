//! The standard `process_*` metrics, read from `/proc/self` at each scrape.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

/// The standard `process_*` metrics, read from `/proc/self` at each scrape.
#[derive(Debug)]
pub(super) struct ProcessCollector;

/// Clock ticks per second of `/proc/self/stat`'s CPU times (Linux's USER_HZ).
const TICKS_PER_SECOND: f64 = 100.0;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(process) = ProcessSample::read() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(process.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu",
            "User and system CPU time spent",
            Some(&Unit::Seconds),
            cpu.metric_type(),
        )?)?;
        for (name, help, value) in [
            (
                "process_resident_memory",
                "Resident memory size",
                process.resident_bytes,
            ),
            ("process_virtual_memory", "Virtual memory size", process.virtual_bytes),
        ] {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, Some(&Unit::Bytes), gauge.metric_type())?)?;
        }
        let fds = ConstGauge::new(process.open_fds);
        fds.encode(encoder.encode_descriptor("process_open_fds", "Open file descriptors", None, fds.metric_type())?)?;
        let start = ConstGauge::new(process.start_time_seconds);
        start.encode(encoder.encode_descriptor(
            "process_start_time",
            "Start time of the process since the Unix epoch",
            Some(&Unit::Seconds),
            start.metric_type(),
        )?)?;
        Ok(())
    }
}

struct ProcessSample {
    cpu_seconds: f64,
    resident_bytes: i64,
    virtual_bytes: i64,
    open_fds: i64,
    start_time_seconds: f64,
}

impl ProcessSample {
    fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name, which may itself hold spaces and parentheses.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let field = |index: usize| fields.get(index).and_then(|value| value.parse::<f64>().ok());
        let (utime, stime, start_ticks) = (field(11)?, field(12)?, field(19)?);
        let int_field = |index: usize| fields.get(index).and_then(|value| value.parse::<i64>().ok());
        let virtual_bytes = int_field(20)?;
        let resident_pages = int_field(21)?;
        let page_size = 4096;
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|line| line.strip_prefix("btime "))
            .and_then(|value| value.trim().parse::<f64>().ok())?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count();
        Some(Self {
            cpu_seconds: (utime + stime) / TICKS_PER_SECOND,
            resident_bytes: resident_pages.saturating_mul(page_size),
            virtual_bytes,
            open_fds: i64::try_from(open_fds).unwrap_or(i64::MAX),
            start_time_seconds: boot_time + start_ticks / TICKS_PER_SECOND,
        })
    }
}
