//! What the hedging layer tells its listener.

use std::time::Duration;

/// Something the hedging layer did. `name` is the layer's name.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HedgeEvent<'a> {
    /// The first attempt had not answered after `delay`: a second attempt was sent.
    Sent {
        /// The layer.
        name: &'a str,
        /// The hedge delay the call waited (the percentile, clamped).
        delay: Duration,
    },
    /// The second attempt answered first, with a success; the first was cancelled.
    Won {
        /// The layer.
        name: &'a str,
    },
    /// A hedge was due but the budget was spent: the call waits for its first attempt only.
    BudgetExhausted {
        /// The layer.
        name: &'a str,
    },
}

impl HedgeEvent<'_> {
    /// A fixed lowercase name, fit for a metric label: `sent`, `won`, `budget_exhausted`.
    ///
    /// ```
    /// use tower_deepseek::hedge::HedgeEvent;
    /// assert_eq!(HedgeEvent::Won { name: "deepseek" }.as_str(), "won");
    /// ```
    pub fn as_str(&self) -> &'static str {
        match self {
            HedgeEvent::Sent { .. } => "sent",
            HedgeEvent::Won { .. } => "won",
            HedgeEvent::BudgetExhausted { .. } => "budget_exhausted",
        }
    }
}

/// A hook for [`HedgeEvent`]s, e.g. the metrics handle's `<prefix>_hedges_total` counter.
/// Closures `Fn(&HedgeEvent<'_>)` implement it. Called synchronously on the request path:
/// keep it short.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use tower_deepseek::hedge::{HedgeEvent, HedgeLayer};
///
/// # fn main() -> Result<(), tower_deepseek::Error> {
/// let sent = Arc::new(AtomicUsize::new(0));
/// let counter = Arc::clone(&sent);
/// let layer = HedgeLayer::builder()
///     .listener(move |event: &HedgeEvent<'_>| {
///         if let HedgeEvent::Sent { .. } = event {
///             counter.fetch_add(1, Ordering::Relaxed);
///         }
///     })
///     .build()?;
/// # let _ = layer;
/// # Ok(())
/// # }
/// ```
pub trait HedgeListener: Send + Sync + 'static {
    /// Hears one event.
    fn on_event(&self, event: &HedgeEvent<'_>);
}

impl<F> HedgeListener for F
where
    F: Fn(&HedgeEvent<'_>) + Send + Sync + 'static,
{
    fn on_event(&self, event: &HedgeEvent<'_>) {
        self(event)
    }
}
