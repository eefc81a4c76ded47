//! Hedged requests: a non-streaming call that is slower than most gets a second attempt, and
//! whichever answers first is used. Off unless you add [`HedgeLayer`] to a stack.
//!
//! # What happens
//!
//! - **Which calls.** Non-streaming calls whose body can be replayed ([`ReplayBody`]: the
//!   client's `RequestBody` is). A streaming call (`accept: text/event-stream`, which
//!   [`DeepSeekClient::chat_stream`](crate::DeepSeekClient::chat_stream) sets) passes through
//!   unhedged: a stream's latency is its whole answer, and two streams cannot be merged.
//! - **When.** A call still unanswered after the hedge delay gets a second attempt. The delay
//!   is a percentile (default p95) of recent successful calls, clamped to
//!   [`min_delay`](HedgeLayerBuilder::min_delay) and
//!   [`max_delay`](HedgeLayerBuilder::max_delay); no call is hedged until the window holds
//!   [`min_samples`](HedgeLayerBuilder::min_samples) successes. The tracker is a lock-free
//!   histogram (log-spaced buckets, four per doubling) whose two generations rotate every
//!   [`window`](HedgeLayerBuilder::window); a call reads one cached atomic, never the
//!   histogram, and nothing is allocated per sample.
//! - **What "answered" means.** An error, a non-success status or a stream head is an answer
//!   at once. A successful JSON response is an answer at its first non-whitespace byte (or
//!   its end): DeepSeek sends a `200` head and then blank lines while a non-streaming request
//!   waits for capacity, so the head alone says nothing about when the answer comes. The
//!   frames read meanwhile (blank lines included) reach the caller unchanged.
//! - **Who wins.** The first attempt's answer, whatever it is, ends the call and cancels the
//!   hedge. The hedge ends the call only with a success (by the layer's
//!   [`Classify`](crate::classify::Classify)); a failed hedge is dropped and the first attempt
//!   carries on. So hedging can turn a slow answer into a fast success but never an answer
//!   into a failure, and a first attempt that fails fast is not hedged at all: failures are
//!   the [retry](crate::retry) layer's job. The loser's future is dropped: its request is
//!   cancelled and, over HTTP/1, its connection closed (HTTP/2 resets the stream).
//! - **How many.** A budget bounds hedges to
//!   [`max_extra_percent`](HedgeLayerBuilder::max_extra_percent) (default 5 %) of hedgeable
//!   calls: a token bucket, lock-free, that each hedgeable call fills by that fraction of a
//!   hedge and each hedge empties by one, saving at most
//!   [`burst`](HedgeLayerBuilder::burst) hedges. A hedge that is due when the bucket is
//!   empty is not sent ([`HedgeEvent::BudgetExhausted`]).
//!
//! # The token cost
//!
//! DeepSeek bills the tokens it generates. Cancelling the losing attempt closes its
//! connection, but the upstream may already have generated some or all of its answer (and
//! may go on until it notices the closed connection), so **a hedged call can be billed for
//! both attempts**: up to twice its prompt tokens and twice its output. The budget bounds this
//! to about `max_extra_percent` extra calls (5 % by default, so at most about 5 % more tokens
//! billed, less when losers are cut off early). Keep the percentile high: hedging the slowest
//! few percent is where the latency gain is and the cost is small.
//!
//! # Where it goes
//!
//! Inside the retry layer and outside the circuit breaker: a retry covers a failed call
//! (hedged or not), and every attempt the hedge sends goes through the breaker and the rate
//! limiter, so an open breaker refuses a hedge (the refusal is dropped; the first attempt
//! carries on) and hedges count against the upstream's rate limit like any call.
//!
//! ```
//! use std::time::Duration;
//! use tower::ServiceBuilder;
//! use tower_deepseek::circuit_breaker::CircuitBreakerLayer;
//! use tower_deepseek::hedge::HedgeLayer;
//! use tower_deepseek::retry::RetryLayer;
//!
//! # fn main() -> Result<(), tower_deepseek::Error> {
//! let stack = ServiceBuilder::new()
//!     .layer(RetryLayer::builder().build()?)
//!     .layer(
//!         HedgeLayer::builder()
//!             .percentile(95.0)
//!             .max_extra_percent(5.0)
//!             .min_delay(Duration::from_secs(1))
//!             .build()?,
//!     )
//!     .layer(CircuitBreakerLayer::builder().build()?);
//! # let _ = stack;
//! # Ok(())
//! # }
//! ```
//!
//! [`ReplayBody`]: crate::retry::ReplayBody

mod budget;
mod config;
mod events;
mod latency;
mod layer;
#[cfg(test)]
mod tests;

pub use config::HedgeLayerBuilder;
pub use events::{HedgeEvent, HedgeListener};
pub use layer::{HedgeBody, HedgeLayer, HedgeService, ResponseFuture};
