//! Per-service concurrency that adapts to throttling (AIMD): each cloud
//! service gets a limit on operations in flight; a throttling answer halves
//! it (at most once a second), every operation that succeeds raises it by
//! 1/limit, up to the apply's parallelism. One service that throttles slows
//! down alone; the others keep their pace.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct ServiceLimits {
    max: std::sync::atomic::AtomicUsize,
    services: Mutex<HashMap<String, Arc<Limiter>>>,
}

impl ServiceLimits {
    pub fn new(max: usize) -> ServiceLimits {
        ServiceLimits {
            max: std::sync::atomic::AtomicUsize::new(max.max(1)),
            services: Mutex::new(HashMap::new()),
        }
    }

    /// The ceiling for services not seen yet (the apply's parallelism).
    pub fn set_max(&self, max: usize) {
        self.max
            .store(max.max(1), std::sync::atomic::Ordering::SeqCst);
    }

    pub fn service(&self, name: &str) -> Arc<Limiter> {
        let max = self.max.load(std::sync::atomic::Ordering::SeqCst) as f64;
        let mut map = self.services.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(Limiter {
                    state: Mutex::new(State {
                        limit: max,
                        in_flight: 0,
                        last_cut: None,
                        throttles: 0,
                    }),
                    max,
                    notify: tokio::sync::Notify::new(),
                })
            })
            .clone()
    }

    /// (service, current limit, throttles seen), for summaries.
    pub fn report(&self) -> Vec<(String, f64, u64)> {
        let map = self.services.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<(String, f64, u64)> = map
            .iter()
            .map(|(k, l)| {
                let s = l.state.lock().unwrap_or_else(|e| e.into_inner());
                (k.clone(), s.limit, s.throttles)
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

struct State {
    limit: f64,
    in_flight: usize,
    last_cut: Option<Instant>,
    throttles: u64,
}

pub struct Limiter {
    state: Mutex<State>,
    max: f64,
    notify: tokio::sync::Notify,
}

/// Held while an operation runs.
pub struct Permit(Arc<Limiter>);

impl Drop for Permit {
    fn drop(&mut self) {
        let mut s = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
        s.in_flight = s.in_flight.saturating_sub(1);
        drop(s);
        self.0.notify.notify_waiters();
    }
}

impl Limiter {
    pub async fn acquire(self: &Arc<Self>) -> Permit {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
                if (s.in_flight as f64) < s.limit.floor().max(1.0) {
                    s.in_flight += 1;
                    return Permit(self.clone());
                }
            }
            // A permit is released, or the limit grows; recheck now and then.
            let _ = tokio::time::timeout(Duration::from_millis(250), notified).await;
        }
    }

    pub fn throttled(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.throttles += 1;
        if s.last_cut
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            s.limit = (s.limit / 2.0).max(1.0);
            s.last_cut = Some(Instant::now());
        }
    }

    pub fn succeeded(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.limit = (s.limit + 1.0 / s.limit).min(self.max);
        drop(s);
        self.notify.notify_waiters();
    }

    pub fn limit(&self) -> f64 {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn halves_on_throttling_and_recovers_on_success() {
        let limits = ServiceLimits::new(8);
        let ec2 = limits.service("ec2");
        let rds = limits.service("rds");
        ec2.throttled();
        assert_eq!(ec2.limit(), 4.0);
        ec2.throttled(); // within a second: one cut per burst
        assert_eq!(ec2.limit(), 4.0);
        assert_eq!(rds.limit(), 8.0, "other services keep their pace");
        for _ in 0..40 {
            ec2.succeeded();
        }
        assert_eq!(ec2.limit(), 8.0);
    }

    #[tokio::test]
    async fn never_more_in_flight_than_the_limit() {
        let limits = ServiceLimits::new(2);
        let l = limits.service("eks");
        let a = l.acquire().await;
        let _b = l.acquire().await;
        let waiting = tokio::spawn({
            let l = l.clone();
            async move { l.acquire().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "a third operation must wait");
        drop(a);
        let _c = tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("released")
            .expect("join");
    }
}
