//! Token budgets: tokens per minute, reserved when a call starts, reconciled with the usage
//! the response reports.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::future::{Future, Ready};
use std::hash::Hash;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::backend::{Decide, Decision, DirectLimiter, KeyedLimiter, RateLimitBackend};
use super::builder::RateLimitBuilder;
use super::events::{RateLimitEvent, RateLimitListener};
use super::key::{Global, KeyExtractor};
use super::layer::Limits;
use super::usage_scan::UsageScan;
use crate::body::{BodyEvent, BodyFormat, BodyObserver, ObservedBody};
use crate::deepseek::TokenEstimate;
use crate::error::{BoxError, Error, ErrorKind};

/// The most keys whose balance a [`TokenLimitLayer`] remembers; past it the ledger is cleared.
pub const MAX_LEDGER_KEYS: usize = 100_000;

/// Default reservation for a request without a [`TokenEstimate`].
pub const DEFAULT_TOKEN_ESTIMATE: u32 = 1_000;

/// Default completion allowance added to the prompt estimate when a request sets no
/// `max_tokens`.
pub const DEFAULT_COMPLETION_ALLOWANCE: u32 = 1_000;

/// State shared by every service of one [`TokenLimitLayer`].
struct Budget<K, Bk> {
    limits: Limits<Bk>,
    /// Per key: tokens owed back (`> 0`, the call used fewer than it reserved) or still to
    /// charge (`< 0`, it used more than it reserved and the bucket had no room then). Applied
    /// to the key's next reservation.
    ledger: Mutex<HashMap<K, i64>>,
    default_estimate: u32,
    completion_allowance: u32,
    burst: u32,
}

impl<K: Hash + Eq, Bk> Budget<K, Bk> {
    fn ledger(&self) -> std::sync::MutexGuard<'_, HashMap<K, i64>> {
        self.ledger
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn credit(&self, key: K, tokens: i64) {
        if tokens == 0 {
            return;
        }
        let mut ledger = self.ledger();
        if ledger.len() >= MAX_LEDGER_KEYS && !ledger.contains_key(&key) {
            // Bounded memory: forget every balance rather than grow without limit.
            ledger.clear();
        }
        match ledger.entry(key) {
            Entry::Occupied(mut balance) => {
                *balance.get_mut() += tokens;
                if *balance.get() == 0 {
                    balance.remove(); // Nothing owed either way: keep the ledger small.
                }
            }
            Entry::Vacant(slot) => {
                slot.insert(tokens);
            }
        }
    }
}

/// A token-per-minute budget (per key, or global), stacked with a [`RateLimitLayer`]
/// (requests per minute) when both limits apply.
///
/// - **Reserve**: when a call starts, its estimate is taken from the budget: the
///   [`TokenEstimate`] that [`DeepSeekClient`](crate::DeepSeekClient) puts in each chat request
///   (prompt estimate plus `max_tokens`, or plus the
///   [completion allowance](TokenLimitBuilder::completion_allowance) when it sets none), or the
///   [default estimate](TokenLimitBuilder::default_estimate) for a request without one. A
///   call the budget cannot take now is refused with [`ErrorKind::RateLimited`] and the wait;
///   one larger than the burst can never pass and is refused with
///   [`ErrorKind::InvalidRequest`].
/// - **Reconcile**: the response reports its real usage: the final chunk of a stream
///   ([`BodyEvent::Usage`]) or the `"total_tokens"` of a JSON body (a lean byte scan, no
///   parse). A call that used more than it reserved is charged the difference at once, as far
///   as the bucket has room; the rest is owed. One that used less is credited the difference.
///   Debts and credits are applied to the key's next reservation. A call that failed (an error,
///   a non-2xx head) gives its whole reservation back; one whose body never reported usage
///   keeps it.
///
/// **The approximation, honestly**: GCRA cannot give cells back, so a refund is a credit spent
/// by the next call of the same key instead of capacity available at once; a key that goes
/// quiet never gets its credit (it loses nothing: its bucket refills anyway). Debts larger than
/// a burst are capped to the burst when applied. The ledger holds only keys with a non-zero
/// balance, at most [`MAX_LEDGER_KEYS`] of them (when full, it is cleared: balances are
/// forgotten, never invented), and is read and written under one short lock per call (an LLM
/// call: tens of nanoseconds against seconds).
///
/// Token limits refuse at once: they never wait (a token wait would be long and its length
/// unknown until the call before it ends).
///
/// ```
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_deepseek::ErrorKind;
/// use tower_deepseek::deepseek::TokenEstimate;
/// use tower_deepseek::rate_limit::TokenLimitLayer;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), tower_deepseek::Error> {
/// let layer = TokenLimitLayer::builder().per_minute(1_000).build()?;
/// let service = ServiceBuilder::new().layer(layer).service_fn(|_req: http::Request<()>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
/// });
/// let call = |prompt| {
///     let mut request = http::Request::new(());
///     request.extensions_mut().insert(TokenEstimate::new(prompt, Some(100)));
///     service.clone().oneshot(request)
/// };
/// call(700).await?; // reserves 800 of 1000
/// let refused = call(300).await.unwrap_err(); // 400 do not fit
/// assert_eq!(refused.kind(), ErrorKind::RateLimited);
/// let never = call(5_000).await.unwrap_err(); // larger than the burst
/// assert_eq!(never.kind(), ErrorKind::InvalidRequest);
/// # Ok(())
/// # }
/// ```
///
/// [`RateLimitLayer`]: super::RateLimitLayer
pub struct TokenLimitLayer<E = Global, K = (), Bk = DirectLimiter> {
    extractor: Arc<E>,
    budget: Arc<Budget<K, Bk>>,
}

impl<E, K, Bk> Clone for TokenLimitLayer<E, K, Bk> {
    fn clone(&self) -> Self {
        TokenLimitLayer {
            extractor: Arc::clone(&self.extractor),
            budget: Arc::clone(&self.budget),
        }
    }
}

impl<E, K, Bk> fmt::Debug for TokenLimitLayer<E, K, Bk> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenLimitLayer")
            .field("name", &self.budget.limits.name)
            .field("burst", &self.budget.burst)
            .finish_non_exhaustive()
    }
}

impl TokenLimitLayer {
    /// A builder: set the tokens per minute, then build.
    pub fn builder() -> TokenLimitBuilder {
        TokenLimitBuilder {
            inner: RateLimitBuilder::default().name("tokens"),
            default_estimate: DEFAULT_TOKEN_ESTIMATE,
            completion_allowance: DEFAULT_COMPLETION_ALLOWANCE,
        }
    }
}

impl<E, K, Bk> TokenLimitLayer<E, K, Bk> {
    /// The shared backend (e.g. a [`KeyedLimiter`], to read its size).
    pub fn backend(&self) -> &Bk {
        &self.budget.limits.backend
    }

    /// The credit (`> 0`) or debt (`< 0`) in tokens the ledger holds for `key`.
    pub fn balance(&self, key: &K) -> i64
    where
        K: Hash + Eq,
    {
        self.budget.ledger().get(key).copied().unwrap_or(0)
    }
}

impl<S, E, K, Bk> Layer<S> for TokenLimitLayer<E, K, Bk> {
    type Service = TokenLimitService<S, E, K, Bk>;

    fn layer(&self, inner: S) -> Self::Service {
        TokenLimitService {
            inner,
            extractor: Arc::clone(&self.extractor),
            budget: Arc::clone(&self.budget),
        }
    }
}

/// Builds a [`TokenLimitLayer`].
///
/// ```
/// use tower_deepseek::rate_limit::{HeaderKey, TokenLimitLayer};
///
/// # fn main() -> Result<(), tower_deepseek::Error> {
/// let layer = TokenLimitLayer::builder()
///     .name("outbound-tokens")
///     .per_minute(200_000)
///     .default_estimate(2_000)
///     .build_keyed::<_, u64>(HeaderKey::authorization())?;
/// # let _ = layer;
/// assert!(TokenLimitLayer::builder().per_minute(0).build().is_err());
/// # Ok(())
/// # }
/// ```
pub struct TokenLimitBuilder {
    inner: RateLimitBuilder,
    default_estimate: u32,
    completion_allowance: u32,
}

impl fmt::Debug for TokenLimitBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenLimitBuilder")
            .field("inner", &self.inner)
            .field("default_estimate", &self.default_estimate)
            .field("completion_allowance", &self.completion_allowance)
            .finish()
    }
}

impl TokenLimitBuilder {
    /// Names the layer (in errors, logs and events). Default `"tokens"`.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.inner = self.inner.name(name);
        self
    }

    /// `tokens` per minute (the burst defaults to the same number).
    pub fn per_minute(mut self, tokens: u32) -> Self {
        self.inner = self.inner.per_minute(tokens);
        self
    }

    /// `tokens` per `period`.
    pub fn rate(mut self, tokens: u32, period: Duration) -> Self {
        self.inner = self.inner.rate(tokens, period);
        self
    }

    /// The most tokens that can be reserved at once. Default: the rate's count.
    pub fn burst(mut self, tokens: u32) -> Self {
        self.inner = self.inner.burst(tokens);
        self
    }

    /// Reservation for a request without a [`TokenEstimate`]. Default
    /// [`DEFAULT_TOKEN_ESTIMATE`].
    pub fn default_estimate(mut self, tokens: u32) -> Self {
        self.default_estimate = tokens;
        self
    }

    /// Completion tokens reserved on top of the prompt estimate when a request sets no
    /// `max_tokens`. Default [`DEFAULT_COMPLETION_ALLOWANCE`].
    pub fn completion_allowance(mut self, tokens: u32) -> Self {
        self.completion_allowance = tokens;
        self
    }

    /// How often a keyed budget sweeps idle keys (see [`KeyedLimiter`]).
    pub fn evict_every(mut self, every: Duration) -> Self {
        self.inner = self.inner.evict_every(every);
        self
    }

    /// Hears every [`RateLimitEvent`] (refusals and reconciliations).
    pub fn listener(mut self, listener: impl RateLimitListener) -> Self {
        self.inner = self.inner.listener(listener);
        self
    }

    fn budget<K, Bk>(self, backend: Bk, burst: u32) -> Budget<K, Bk> {
        Budget {
            limits: self.inner.into_limits(backend),
            ledger: Mutex::new(HashMap::new()),
            default_estimate: self.default_estimate,
            completion_allowance: self.completion_allowance,
            burst,
        }
    }

    /// One global budget.
    pub fn build(self) -> Result<TokenLimitLayer, Error> {
        let backend = DirectLimiter::from_quota(self.inner.checked_quota()?);
        let burst = backend.burst();
        Ok(TokenLimitLayer {
            extractor: Arc::new(Global),
            budget: Arc::new(self.budget(backend, burst)),
        })
    }

    /// One budget per key, the key picked by `extractor`.
    pub fn build_keyed<E, K>(
        self,
        extractor: E,
    ) -> Result<TokenLimitLayer<E, K, KeyedLimiter<K>>, Error>
    where
        K: Hash + Eq + Clone + Send + Sync + 'static,
    {
        let backend = self.inner.keyed_backend()?;
        let burst = backend.burst();
        Ok(TokenLimitLayer {
            extractor: Arc::new(extractor),
            budget: Arc::new(self.budget(backend, burst)),
        })
    }
}

/// The service made by [`TokenLimitLayer`].
pub struct TokenLimitService<S, E = Global, K = (), Bk = DirectLimiter> {
    inner: S,
    extractor: Arc<E>,
    budget: Arc<Budget<K, Bk>>,
}

impl<S: Clone, E, K, Bk> Clone for TokenLimitService<S, E, K, Bk> {
    fn clone(&self) -> Self {
        TokenLimitService {
            inner: self.inner.clone(),
            extractor: Arc::clone(&self.extractor),
            budget: Arc::clone(&self.budget),
        }
    }
}

impl<S, E, K, Bk> fmt::Debug for TokenLimitService<S, E, K, Bk> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenLimitService")
            .field("name", &self.budget.limits.name)
            .finish_non_exhaustive()
    }
}

/// The response body of a [`TokenLimitService`]: the inner body, observed for its usage.
pub type TokenLimitBody<B, K, Bk> = ObservedBody<B, TokenObserver<K, Bk>>;

impl<S, E, K, Bk, ReqB, RespB> Service<Request<ReqB>> for TokenLimitService<S, E, K, Bk>
where
    S: Service<Request<ReqB>, Response = Response<RespB>>,
    S::Error: Into<BoxError>,
    E: KeyExtractor<ReqB, Key = K>,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    Bk: RateLimitBackend<K, Future = Ready<Decision>>,
    RespB: http_body::Body,
{
    type Response = Response<TokenLimitBody<RespB, K, Bk>>;
    type Error = Error;
    type Future = TokenResponseFuture<S::Future, K, Bk>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|error| Error::from_boxed(error.into()))
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        let budget = &*self.budget;
        let key = self.extractor.extract(&request);
        let estimate = match request.extensions().get::<TokenEstimate>() {
            Some(estimate) => estimate
                .prompt
                .saturating_add(estimate.max_tokens.unwrap_or(budget.completion_allowance)),
            None => budget.default_estimate,
        }
        .max(1);
        let limits = &budget.limits;
        if u64::from(estimate) > u64::from(budget.burst) {
            return TokenResponseFuture::rejected(limits.exceeded(estimate, budget.burst.into()));
        }
        // Apply the key's balance: a credit lowers the cost, a debt raises it (to the burst).
        let balance = budget.ledger().remove(&key).unwrap_or(0);
        let cost = (i64::from(estimate) - balance).clamp(0, i64::from(budget.burst));
        let decision = match u32::try_from(cost).ok().and_then(NonZeroU32::new) {
            // The credit covers the whole call: nothing to take.
            None => Decision::Allowed,
            Some(cost) => match limits.backend.decide(&key, cost) {
                Decide::Now(decision) => decision,
                Decide::Later(ready) => ready.into_inner(),
            },
        };
        let error = match decision {
            Decision::Allowed => None,
            Decision::Limited { retry_after, info } => Some(limits.reject(retry_after, info)),
            Decision::Exceeded { limit } => Some(limits.exceeded(estimate, limit)),
            Decision::Unavailable { fail_open } => {
                limits.unavailable(fail_open, budget.burst.into())
            }
        };
        if let Some(error) = error {
            budget.credit(key, balance); // Refused: the balance stays as it was.
            return TokenResponseFuture::rejected(error);
        }
        // What the call consumed, net of the balance: `estimate` tokens are its reservation.
        let leftover = balance - (i64::from(estimate) - cost);
        budget.credit(key.clone(), leftover);
        TokenResponseFuture {
            state: TokenState::Called {
                future: self.inner.call(request),
                ticket: Some(Ticket {
                    key,
                    reserved: estimate,
                    budget: Arc::clone(&self.budget),
                }),
            },
        }
    }
}

/// One call's reservation, settled once.
struct Ticket<K, Bk> {
    key: K,
    reserved: u32,
    budget: Arc<Budget<K, Bk>>,
}

impl<K, Bk> Ticket<K, Bk>
where
    K: Hash + Eq + Clone,
    Bk: RateLimitBackend<K>,
{
    /// Charges or credits the difference between the reservation and `used` (`None`: no
    /// usage known, the reservation stands).
    fn settle(self, used: Option<u64>) {
        let budget = &*self.budget;
        budget.limits.emit(RateLimitEvent::Reconciled {
            limiter: &budget.limits.name,
            reserved: self.reserved,
            used,
        });
        let Some(used) = used else {
            return;
        };
        let reserved = u64::from(self.reserved);
        if used > reserved {
            let extra = u32::try_from(used - reserved).unwrap_or(u32::MAX);
            let taken = budget.limits.backend.charge(&self.key, extra);
            budget.credit(self.key, -i64::from(extra - taken));
        } else {
            budget.credit(self.key, i64::try_from(reserved - used).unwrap_or(0));
        }
    }

    /// The call failed: the whole reservation goes back.
    fn refund(self) {
        self.settle(Some(0));
    }
}

pin_project! {
    /// The future of a [`TokenLimitService`] call.
    pub struct TokenResponseFuture<F, K, Bk> {
        #[pin]
        state: TokenState<F, K, Bk>,
    }
}

pin_project! {
    #[project = TokenStateProj]
    enum TokenState<F, K, Bk> {
        Called {
            #[pin]
            future: F,
            ticket: Option<Ticket<K, Bk>>,
        },
        Rejected {
            error: Option<Error>,
        },
    }
}

impl<F, K, Bk> TokenResponseFuture<F, K, Bk> {
    fn rejected(error: Error) -> Self {
        TokenResponseFuture {
            state: TokenState::Rejected { error: Some(error) },
        }
    }
}

impl<F, K, Bk> fmt::Debug for TokenResponseFuture<F, K, Bk> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            TokenState::Called { .. } => "called",
            TokenState::Rejected { .. } => "rejected",
        };
        f.debug_struct("TokenResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<F, K, Bk, B, E> Future for TokenResponseFuture<F, K, Bk>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    K: Hash + Eq + Clone,
    Bk: RateLimitBackend<K>,
    B: http_body::Body,
{
    type Output = Result<Response<TokenLimitBody<B, K, Bk>>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            TokenStateProj::Rejected { error } => {
                Poll::Ready(Err(error.take().unwrap_or_else(|| {
                    Error::new(
                        ErrorKind::InvalidRequest,
                        "a token limit response future was polled after it completed",
                    )
                })))
            }
            TokenStateProj::Called { future, ticket } => {
                let result = ready!(future.poll(cx));
                let ticket = ticket.take();
                match result {
                    Err(error) => {
                        if let Some(ticket) = ticket {
                            ticket.refund();
                        }
                        Poll::Ready(Err(Error::from_boxed(error.into())))
                    }
                    Ok(response) => {
                        let (parts, body) = response.into_parts();
                        let format = BodyFormat::from_headers(&parts.headers);
                        let ticket = match ticket {
                            Some(ticket) if !parts.status.is_success() => {
                                ticket.refund();
                                None
                            }
                            ticket => ticket,
                        };
                        let observer = TokenObserver {
                            ticket,
                            scan: (format == BodyFormat::Json).then(UsageScan::default),
                            used: None,
                        };
                        Poll::Ready(Ok(Response::from_parts(
                            parts,
                            ObservedBody::new(body, format, observer),
                        )))
                    }
                }
            }
        }
    }
}

/// The token budget's [`BodyObserver`]: holds the call's reservation until the body reports
/// its usage (or ends without it).
pub struct TokenObserver<K, Bk> {
    ticket: Option<Ticket<K, Bk>>,
    scan: Option<UsageScan>,
    used: Option<u64>,
}

impl<K, Bk> fmt::Debug for TokenObserver<K, Bk> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenObserver")
            .field(
                "reserved",
                &self.ticket.as_ref().map(|ticket| ticket.reserved),
            )
            .field("used", &self.used)
            .finish()
    }
}

impl<K, Bk> BodyObserver for TokenObserver<K, Bk>
where
    K: Hash + Eq + Clone,
    Bk: RateLimitBackend<K>,
{
    fn observe(&mut self, event: BodyEvent<'_>) {
        match event {
            BodyEvent::Usage(usage) => self.used = Some(usage.total_tokens),
            BodyEvent::Chunk(bytes) => {
                if let Some(scan) = &mut self.scan
                    && let Some(total) = scan.feed(bytes)
                {
                    self.used = Some(total);
                }
            }
            BodyEvent::End(_) | BodyEvent::Dropped(_) | BodyEvent::Error(_) => {
                if let Some(ticket) = self.ticket.take() {
                    ticket.settle(self.used);
                }
            }
            _ => {}
        }
    }

    fn is_done(&self) -> bool {
        self.ticket.is_none()
    }
}
