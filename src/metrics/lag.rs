//! How long work that became ready waits for the threads serving connections,
//! reads and callbacks. A read's wait there is what a submission flood adds
//! to it (`docs/performance-log.md`, "The floor under a flood"); the service's own
//! timing of a call starts only once it is polled, so it cannot show this.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::Metrics;

/// How often the wait is sampled: often enough to catch a flood of a second,
/// rarely enough to cost nothing measurable.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Samples the wait every `every` until `shutdown`, on the runtime it is
/// spawned on. A task that yields is run again after the tasks already
/// queued and the next check for socket events, as a connection whose
/// request just arrived is.
pub async fn sample(metrics: Arc<Metrics>, every: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let asked = Instant::now();
        tokio::task::yield_now().await;
        metrics.runtime_lag.observe(asked.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    /// The `_count` and `_sum` of the lag histogram in `metrics`' text.
    fn lag_in(metrics: &Metrics) -> (f64, f64) {
        let text = metrics.render();
        let value = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.trim().parse::<f64>().ok())
                .unwrap_or_default()
        };
        (
            value("selfie_auth_runtime_lag_seconds_count"),
            value("selfie_auth_runtime_lag_seconds_sum"),
        )
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_thread_held_by_other_work_shows_as_lag() {
        let metrics = Arc::new(Metrics::default());
        let shutdown = CancellationToken::new();
        let sampler = crate::task::spawn(sample(metrics.clone(), Duration::from_millis(2), shutdown.clone()));
        for _ in 0..200 {
            if lag_in(&metrics).0 >= 5.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let (idle_count, idle_sum) = lag_in(&metrics);
        assert!(idle_count >= 5.0, "{idle_count} samples in 400 ms");
        assert!(
            idle_sum < 0.01 * idle_count,
            "idle: {idle_sum} s over {idle_count} samples"
        );

        // A task that holds the one thread 20 ms at each turn, as a flood's
        // connections would hold it in turn.
        let hogging = Arc::new(AtomicBool::new(true));
        let hog = {
            let hogging = hogging.clone();
            crate::task::spawn(async move {
                while hogging.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                    tokio::task::yield_now().await;
                }
            })
        };
        for _ in 0..50 {
            if lag_in(&metrics).1 - idle_sum >= 0.015 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        hogging.store(false, Ordering::Relaxed);
        hog.await.expect("the hog ends");
        let (count, sum) = lag_in(&metrics);
        assert!(
            sum - idle_sum >= 0.015,
            "{} samples beside the hog waited {} s in all",
            count - idle_count,
            sum - idle_sum
        );
        shutdown.cancel();
        sampler.await.expect("the sampler ends when told to");
    }
}
