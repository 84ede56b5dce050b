//! A bounded worker-thread pool, as anyio's `CapacityLimiter` around `to_thread.run_sync`
//! (FastAPI's `def` routes, 40 tokens by default) and libuv's 4-thread pool (Node's fs, crypto,
//! zlib). Jobs beyond the capacity wait in FIFO order; the busy and queued counts are exported.

use std::sync::Arc;

use prometheus::IntGauge;
use tokio::sync::Semaphore;

/// A pool of at most `capacity` concurrently running blocking jobs.
#[derive(Clone)]
pub struct BoundedPool {
    permits: Arc<Semaphore>,
    busy: IntGauge,
    queued: IntGauge,
}

/// Decrements a gauge when dropped, so a request cancelled while queued (client gone) does not
/// leave the queue-depth gauge too high.
struct GaugeGuard(IntGauge);

impl GaugeGuard {
    fn enter(gauge: &IntGauge) -> Self {
        gauge.inc();
        GaugeGuard(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl BoundedPool {
    /// `busy` and `queued` are the gauges this pool keeps current.
    pub fn new(capacity: usize, busy: IntGauge, queued: IntGauge) -> Self {
        BoundedPool {
            permits: Arc::new(Semaphore::new(capacity)),
            busy,
            queued,
        }
    }

    /// Runs `job` on a pool thread once a slot is free. The job runs to completion even if the
    /// caller stops waiting, as a Python thread or a libuv work item would.
    pub async fn run<R: Send + 'static>(&self, job: impl FnOnce() -> R + Send + 'static) -> R {
        let permit = {
            let _queued = GaugeGuard::enter(&self.queued);
            self.permits
                .clone()
                .acquire_owned()
                .await
                .expect("the pool's semaphore is never closed")
        };
        let busy = self.busy.clone();
        let handle = tokio::task::spawn_blocking(move || {
            let busy = GaugeGuard::enter(&busy);
            let out = job();
            // Leave the busy gauge before giving the slot back: the other order lets the next
            // job enter the gauge first, and a scrape in between reads capacity + 1.
            drop(busy);
            drop(permit);
            out
        });
        match handle.await {
            Ok(out) => out,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// A pool of `capacity` with its busy and queued gauges, for the tests to read.
    fn pool_with_gauges(capacity: usize) -> (BoundedPool, IntGauge, IntGauge) {
        let busy = IntGauge::new("busy", "busy").unwrap();
        let queued = IntGauge::new("queued", "queued").unwrap();
        (
            BoundedPool::new(capacity, busy.clone(), queued.clone()),
            busy,
            queued,
        )
    }

    /// The busy gauge must never read above the capacity, even for an instant: a job that has
    /// given back its slot but not yet left the gauge would let the next job count twice.
    /// Many jobs of no work on one slot make the hand-over happen thousands of times.
    #[test]
    fn the_busy_gauge_never_reads_above_the_capacity_across_hand_overs() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (pool, busy, _queued) = pool_with_gauges(1);
            let max_seen = Arc::new(AtomicUsize::new(0));
            let jobs: Vec<_> = (0..20_000)
                .map(|_| {
                    let (pool, busy, max_seen) = (pool.clone(), busy.clone(), max_seen.clone());
                    tokio::spawn(async move {
                        pool.run(move || {
                            max_seen.fetch_max(busy.get() as usize, Ordering::SeqCst);
                        })
                        .await
                    })
                })
                .collect();
            for j in jobs {
                j.await.unwrap();
            }
            assert_eq!(max_seen.load(Ordering::SeqCst), 1, "busy read above 1");
            assert_eq!(busy.get(), 0);
        });
    }

    #[test]
    fn runs_at_most_capacity_jobs_at_once_and_reports_the_queue() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (pool, busy, queued) = pool_with_gauges(2);
            let inside = Arc::new(AtomicUsize::new(0));
            let max_inside = Arc::new(AtomicUsize::new(0));
            let release = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let jobs: Vec<_> = (0..6)
                .map(|_| {
                    let (pool, inside, max_inside, release) = (
                        pool.clone(),
                        inside.clone(),
                        max_inside.clone(),
                        release.clone(),
                    );
                    tokio::spawn(async move {
                        pool.run(move || {
                            let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                            max_inside.fetch_max(n, Ordering::SeqCst);
                            while !release.load(Ordering::SeqCst) {
                                std::thread::sleep(Duration::from_millis(1));
                            }
                            inside.fetch_sub(1, Ordering::SeqCst);
                        })
                        .await
                    })
                })
                .collect();
            // Jobs hold their slots until released, so this state is stable once reached.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !(busy.get() == 2 && queued.get() == 4) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "busy {} queued {}",
                    busy.get(),
                    queued.get()
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert_eq!((busy.get(), queued.get()), (2, 4));
            release.store(true, Ordering::SeqCst);
            for j in jobs {
                j.await.unwrap();
            }
            assert_eq!(max_inside.load(Ordering::SeqCst), 2);
            assert_eq!(busy.get(), 0);
            assert_eq!(queued.get(), 0);
        });
    }
}
