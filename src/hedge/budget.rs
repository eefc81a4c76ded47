//! The hedge budget: a token bucket that every hedgeable call fills a little and every hedge
//! empties by one whole hedge, so hedges never exceed `max_extra_percent` of calls.

use std::sync::atomic::{AtomicU64, Ordering};

/// One hedge costs this many units; a call deposits `max_extra_percent × 1000` of them, so
/// 5 % deposits 5,000 and twenty calls pay for one hedge.
const HEDGE_COST: u64 = 100_000;

pub(crate) struct HedgeBudget {
    balance: AtomicU64,
    deposit: u64,
    cap: u64,
}

impl HedgeBudget {
    /// `percent` in (0, 100]; `burst`: the most hedges saved up while calls were fast.
    pub(crate) fn new(percent: f64, burst: u32) -> HedgeBudget {
        let deposit = (percent * 1000.0).round().clamp(1.0, HEDGE_COST as f64) as u64;
        HedgeBudget {
            balance: AtomicU64::new(0),
            deposit,
            cap: u64::from(burst.max(1)) * HEDGE_COST,
        }
    }

    /// A hedgeable call started.
    pub(crate) fn deposit(&self) {
        let _ = self
            .balance
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |balance| {
                Some((balance + self.deposit).min(self.cap))
            });
    }

    /// A hedge wants to go out: `true` takes its cost. The check and the withdrawal are one
    /// compare-and-swap, so concurrent hedges can never overdraw the bucket.
    pub(crate) fn try_withdraw(&self) -> bool {
        self.balance
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |balance| {
                balance.checked_sub(HEDGE_COST)
            })
            .is_ok()
    }

    /// Whole hedges the bucket holds now.
    pub(crate) fn available(&self) -> u64 {
        self.balance.load(Ordering::Acquire) / HEDGE_COST
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn five_percent_is_one_hedge_per_twenty_calls() {
        let budget = HedgeBudget::new(5.0, 10);
        for _ in 0..19 {
            budget.deposit();
        }
        assert!(!budget.try_withdraw());
        budget.deposit();
        assert!(budget.try_withdraw());
        assert!(!budget.try_withdraw());
    }

    #[test]
    fn savings_are_capped_at_the_burst() {
        let budget = HedgeBudget::new(50.0, 3);
        for _ in 0..1000 {
            budget.deposit();
        }
        assert_eq!(budget.available(), 3);
        let hedges = (0..10).filter(|_| budget.try_withdraw()).count();
        assert_eq!(hedges, 3);
    }

    #[test]
    fn concurrent_hedges_never_overdraw() {
        let budget = Arc::new(HedgeBudget::new(5.0, 1000));
        for _ in 0..1000 {
            budget.deposit();
        }
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let budget = Arc::clone(&budget);
                std::thread::spawn(move || (0..100).filter(|_| budget.try_withdraw()).count())
            })
            .collect();
        let hedges: usize = threads.into_iter().map(|t| t.join().unwrap_or(0)).sum();
        assert_eq!(hedges, 50);
    }
}
