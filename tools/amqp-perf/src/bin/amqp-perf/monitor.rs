//! CPU and memory of the broker process (`--broker-pid`) and of this one,
//! from /proc.

use crate::stats::{clock_ticks, sample_proc, ProcSample};
use crate::Cli;
use anyhow::{anyhow, Result};

/// Samples the broker process (if given) and this process.
pub struct Monitor {
    broker: Option<String>,
    /// Clock ticks per second, for CPU times.
    pub hz: f64,
}

#[derive(Clone, Copy, Default)]
pub struct Samples {
    pub broker: Option<ProcSample>,
    pub tool: Option<ProcSample>,
}

impl Monitor {
    pub fn new(cli: &Cli) -> Result<Monitor> {
        let broker = cli.broker_pid.map(|p| p.to_string());
        if let Some(pid) = &broker {
            sample_proc(pid).ok_or_else(|| anyhow!("cannot read /proc/{pid}"))?;
        }
        Ok(Monitor {
            broker,
            hz: clock_ticks(),
        })
    }

    pub fn sample(&self) -> Samples {
        Samples {
            broker: self.broker.as_deref().and_then(sample_proc),
            tool: sample_proc("self"),
        }
    }

    pub fn broker_rss(&self) -> Option<u64> {
        self.broker
            .as_deref()
            .and_then(sample_proc)
            .map(|s| s.rss_kb)
    }
}
