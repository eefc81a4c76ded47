//! The fixed limit: an atomic count of calls in flight, with an optional bounded, first come
//! first served wait.
//!
//! Not tokio's `Semaphore`: giving a permit back to it takes the lock of its waiter list on
//! every call, waiters or not. Here admission is one compare-and-swap on the count, release one
//! subtraction, and only calls that must wait touch anything else (a `Notify`).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::sync::Notify;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use super::body::{ConcurrencyBody, Slot};
use super::{ConcurrencyEvent, ConcurrencyListener, DEFAULT_RETRY_AFTER};
use crate::error::{BoxError, Error, ErrorKind};

/// What the fixed limit shares between its layer, services and waiting calls.
pub(crate) struct Shared {
    name: Arc<str>,
    in_flight: AtomicUsize,
    // Wakes waiting calls when a slot frees; touched only while calls wait.
    slot_freed: Notify,
    max_in_flight: usize,
    max_wait: Duration,
    max_queue: Option<usize>,
    queued: AtomicUsize,
    retry_after: Duration,
    release_at_head: bool,
    listener: Option<Arc<dyn ConcurrencyListener>>,
}

impl Shared {
    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Takes a slot if one is free. A call arriving while others wait does not pass them
    /// (`waiter` is false): it queues behind them.
    ///
    /// The count and the queue length are read and written `SeqCst`, pairing with
    /// [`release`](Self::release): either a waiter sees the freed slot here, or the release
    /// sees the waiter and wakes it. No wake-up is lost.
    #[inline]
    fn try_admit(&self, waiter: bool) -> bool {
        if !waiter && self.queued.load(Ordering::SeqCst) > 0 {
            return false;
        }
        let mut current = self.in_flight.load(Ordering::SeqCst);
        loop {
            if current >= self.max_in_flight {
                return false;
            }
            match self.in_flight.compare_exchange_weak(
                current,
                current + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    #[inline]
    fn release(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if self.queued.load(Ordering::SeqCst) > 0 {
            // Wakes the longest waiter (or leaves a permit for the next one to look).
            self.slot_freed.notify_one();
        }
    }

    fn shed(&self) -> Error {
        let in_flight = self.in_flight();
        if let Some(listener) = &self.listener {
            listener.on_event(&ConcurrencyEvent::Shed {
                limiter: &self.name,
                in_flight,
                limit: self.max_in_flight,
            });
        }
        tracing::debug!(limiter = %self.name, in_flight, limit = self.max_in_flight, "call shed");
        super::overloaded(&self.name, in_flight, self.max_in_flight, self.retry_after)
    }
}

/// At most `max_in_flight` calls at once; a call over the limit waits up to `max_wait` for a
/// slot (at most `max_queue` of them wait), or is shed with
/// [`ErrorKind::Overloaded`](crate::ErrorKind::Overloaded) and a `Retry-After` hint. The slot
/// is held until the response body ends (see the [module docs](super)). All services made by
/// one layer (and their clones) share the limit.
///
/// Reference: resilience4j's `SemaphoreBulkhead` (`maxConcurrentCalls`, `maxWaitDuration`,
/// fair) and tower's `ConcurrencyLimit`, with the wait bounded and the slot kept for the body.
///
/// ```
/// use std::time::Duration;
/// use tower_deepseek::concurrency::ConcurrencyLimitLayer;
///
/// # fn main() -> Result<(), tower_deepseek::Error> {
/// let inbound = ConcurrencyLimitLayer::builder()
///     .name("inbound")
///     .max_in_flight(10)
///     .max_wait(Duration::from_millis(500))
///     .max_queue(100)
///     .build()?;
/// assert_eq!(inbound.limit(), 10);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct ConcurrencyLimitLayer {
    shared: Arc<Shared>,
}

impl fmt::Debug for ConcurrencyLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        debug_shared(f, "ConcurrencyLimitLayer", &self.shared)
    }
}

fn debug_shared(f: &mut fmt::Formatter<'_>, name: &str, shared: &Shared) -> fmt::Result {
    f.debug_struct(name)
        .field("name", &shared.name)
        .field("max_in_flight", &shared.max_in_flight)
        .field("in_flight", &shared.in_flight())
        .field("max_wait", &shared.max_wait)
        .field("max_queue", &shared.max_queue)
        .field("retry_after", &shared.retry_after)
        .field("release_at_head", &shared.release_at_head)
        .finish_non_exhaustive()
}

impl ConcurrencyLimitLayer {
    /// A builder: 10 calls in flight, no wait (shed at once), `Retry-After` 1 s.
    pub fn builder() -> ConcurrencyLimitLayerBuilder {
        ConcurrencyLimitLayerBuilder {
            name: Arc::from("concurrency"),
            max_in_flight: 10,
            max_wait: Duration::ZERO,
            max_queue: None,
            retry_after: DEFAULT_RETRY_AFTER,
            release_at_head: false,
            listener: None,
        }
    }

    /// The limiter's name (in errors, events and logs).
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Calls holding a slot now.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight()
    }

    /// Calls waiting for a slot now.
    pub fn queued(&self) -> usize {
        self.shared.queued.load(Ordering::Relaxed)
    }

    /// The limit (`max_in_flight`).
    pub fn limit(&self) -> usize {
        self.shared.max_in_flight
    }
}

impl<S> Layer<S> for ConcurrencyLimitLayer {
    type Service = ConcurrencyLimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ConcurrencyLimitService {
            inner,
            layer: self.clone(),
        }
    }
}

/// Builds a [`ConcurrencyLimitLayer`].
///
/// ```
/// use tower_deepseek::concurrency::ConcurrencyLimitLayer;
/// let error = ConcurrencyLimitLayer::builder().max_in_flight(0).build().unwrap_err();
/// assert!(error.to_string().contains("max_in_flight"));
/// ```
pub struct ConcurrencyLimitLayerBuilder {
    name: Arc<str>,
    max_in_flight: usize,
    max_wait: Duration,
    max_queue: Option<usize>,
    retry_after: Duration,
    release_at_head: bool,
    listener: Option<Arc<dyn ConcurrencyListener>>,
}

impl fmt::Debug for ConcurrencyLimitLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyLimitLayerBuilder")
            .field("name", &self.name)
            .field("max_in_flight", &self.max_in_flight)
            .field("max_wait", &self.max_wait)
            .field("max_queue", &self.max_queue)
            .field("retry_after", &self.retry_after)
            .field("release_at_head", &self.release_at_head)
            .field("listener", &self.listener.is_some())
            .finish()
    }
}

impl ConcurrencyLimitLayerBuilder {
    /// Names the limiter in errors, events and logs (default `"concurrency"`).
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Calls allowed in flight at once, at least 1 (default 10).
    pub fn max_in_flight(mut self, max: usize) -> Self {
        self.max_in_flight = max;
        self
    }

    /// How long a call over the limit waits for a slot before it is shed (default zero: shed
    /// at once). A freed slot wakes the longest waiter; a call arriving while others wait
    /// queues behind them, though it may take a slot freed at the very moment it joins the
    /// queue, before the woken waiter runs (which then waits on).
    pub fn max_wait(mut self, wait: Duration) -> Self {
        self.max_wait = wait;
        self
    }

    /// At most this many calls wait for a slot; more are shed at once (default: no bound
    /// other than `max_wait`).
    pub fn max_queue(mut self, max: usize) -> Self {
        self.max_queue = Some(max);
        self
    }

    /// The `Retry-After` hint of a shed call, above zero (default 1 s; a server sends it
    /// in whole seconds, rounded up).
    pub fn retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = wait;
        self
    }

    /// Releases the slot when the response head arrives instead of when its body ends
    /// (default `false`). Only for calls whose body is short or read later: a stream then
    /// occupies the upstream without counting.
    pub fn release_at_head(mut self, release: bool) -> Self {
        self.release_at_head = release;
        self
    }

    /// Hears every [`ConcurrencyEvent`].
    pub fn listener(mut self, listener: impl ConcurrencyListener) -> Self {
        self.listener = Some(Arc::new(listener));
        self
    }

    /// Validates the settings and builds the layer.
    pub fn build(self) -> Result<ConcurrencyLimitLayer, Error> {
        if self.max_in_flight == 0 || self.max_in_flight == usize::MAX {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "concurrency limit: max_in_flight {} must be in [1, {}]",
                    self.max_in_flight,
                    usize::MAX - 1
                ),
            ));
        }
        super::validate_retry_after(self.retry_after)?;
        Ok(ConcurrencyLimitLayer {
            shared: Arc::new(Shared {
                name: self.name,
                in_flight: AtomicUsize::new(0),
                slot_freed: Notify::new(),
                max_in_flight: self.max_in_flight,
                max_wait: self.max_wait,
                max_queue: self.max_queue,
                queued: AtomicUsize::new(0),
                retry_after: self.retry_after,
                release_at_head: self.release_at_head,
                listener: self.listener,
            }),
        })
    }
}

/// The service made by [`ConcurrencyLimitLayer`].
///
/// `poll_ready` is the inner service's: nothing is reserved there, so a ready clone that is
/// never called holds no slot, and a `call` without `poll_ready` is admitted or shed like any
/// other. Admission happens in `call`; a call that must wait waits in its response future.
#[derive(Clone)]
pub struct ConcurrencyLimitService<S> {
    inner: S,
    layer: ConcurrencyLimitLayer,
}

impl<S> fmt::Debug for ConcurrencyLimitService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        debug_shared(f, "ConcurrencyLimitService", &self.layer.shared)
    }
}

impl<S> ConcurrencyLimitService<S> {
    /// The layer (its name, `in_flight()`, `queued()`, `limit()`).
    pub fn layer(&self) -> &ConcurrencyLimitLayer {
        &self.layer
    }

    /// Calls holding a slot now.
    pub fn in_flight(&self) -> usize {
        self.layer.in_flight()
    }

    /// The limit.
    pub fn limit(&self) -> usize {
        self.layer.limit()
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, ReqB, RespB> Service<Request<ReqB>> for ConcurrencyLimitService<S>
where
    S: Service<Request<ReqB>, Response = Response<RespB>> + Clone,
    S::Error: Into<BoxError>,
    RespB: http_body::Body,
{
    type Response = Response<ConcurrencyBody<RespB>>;
    type Error = Error;
    type Future = FixedResponseFuture<S::Future, S, Request<ReqB>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|error| Error::from_boxed(error.into()))
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        let shared = &self.layer.shared;
        let state = if shared.try_admit(false) {
            // The permit exists before the inner call, so even a panicking `call` gives
            // the slot back.
            let permit = FixedPermit {
                shared: Arc::clone(shared),
            };
            FixedState::Calling {
                future: self.inner.call(request),
                permit: Some(permit),
                release_at_head: shared.release_at_head,
            }
        } else {
            self.queue_or_shed(request)
        };
        FixedResponseFuture { state }
    }
}

impl<S: Clone> ConcurrencyLimitService<S> {
    /// The slow path of `call`, out of line so the admitted path stays small.
    #[cold]
    #[inline(never)]
    fn queue_or_shed<R, F>(&mut self, request: R) -> FixedState<F, S, R> {
        let shared = &self.layer.shared;
        if shared.max_wait.is_zero() {
            return FixedState::Shed {
                error: Some(shared.shed()),
            };
        }
        let Some(ticket) = QueueTicket::take(shared) else {
            return FixedState::Shed {
                error: Some(shared.shed()),
            };
        };
        // The ready service goes with the waiting call (it was driven to ready for this
        // request); `self` keeps a fresh clone, which its next caller drives to ready.
        let clone = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, clone);
        FixedState::Waiting {
            waiting: Box::new(Waiting {
                acquire: acquire(shared),
                service: Some(service),
                request: Some(request),
                ticket,
                since: Instant::now(),
            }),
        }
    }
}

/// A slot of the fixed limit, given back when dropped.
pub(crate) struct FixedPermit {
    shared: Arc<Shared>,
}

impl Drop for FixedPermit {
    #[inline]
    fn drop(&mut self) {
        self.shared.release();
    }
}

/// The wait for a slot, bounded by `max_wait`; `None` when the wait ran out.
///
/// Boxed, because tokio's `Notified` future borrows the `Notify` it waits on, which this
/// future owns (through `Arc<Shared>`): a self-referential future that only an `async` block
/// can hold. Only a call that must wait pays for the box: the fast path allocates nothing.
type AcquireFuture = Pin<Box<dyn Future<Output = Option<FixedPermit>> + Send>>;

fn acquire(shared: &Arc<Shared>) -> AcquireFuture {
    let shared = Arc::clone(shared);
    // The deadline is set now, at `call`; the timer is made on the first poll (inside the
    // runtime), so building the future never needs a runtime.
    let deadline = Instant::now().checked_add(shared.max_wait);
    Box::pin(async move {
        let admitted = loop {
            let mut slot_freed = std::pin::pin!(shared.slot_freed.notified());
            // Registered before looking, so a slot freed after the look wakes this call.
            slot_freed.as_mut().enable();
            if shared.try_admit(true) {
                break true;
            }
            match deadline {
                Some(deadline) => {
                    if tokio::time::timeout_at(deadline, slot_freed).await.is_err() {
                        break shared.try_admit(true);
                    }
                }
                // A wait too long to represent: wait as long as it takes.
                None => slot_freed.await,
            }
        };
        // A woken call that is dropped instead (timed out, cancelled) passes its wake-up on:
        // tokio's `Notified` forwards an unconsumed `notify_one` to the next waiter.
        admitted.then(|| FixedPermit { shared })
    })
}

/// One place in the queue of waiting calls; gives it back when dropped.
struct QueueTicket {
    shared: Arc<Shared>,
}

impl QueueTicket {
    fn take(shared: &Arc<Shared>) -> Option<QueueTicket> {
        // `SeqCst`: pairs with `Shared::release` (see `Shared::try_admit`).
        let before = shared.queued.fetch_add(1, Ordering::SeqCst);
        if shared.max_queue.is_some_and(|max| before >= max) {
            shared.queued.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(QueueTicket {
            shared: Arc::clone(shared),
        })
    }
}

impl Drop for QueueTicket {
    fn drop(&mut self) {
        self.shared.queued.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A call waiting for a slot. Boxed in the future (the waiting path allocates anyway), so the
/// future of an admitted call stays small: it is moved on every call.
struct Waiting<S, R> {
    acquire: AcquireFuture,
    service: Option<S>,
    request: Option<R>,
    ticket: QueueTicket,
    since: Instant,
}

pin_project! {
    /// The future of a [`ConcurrencyLimitService`] call: waiting for a slot, the inner call
    /// holding its slot, or a shed call's error. A pinned enum of states; only the wait is
    /// boxed (see the source).
    pub struct FixedResponseFuture<F, S, R> {
        #[pin]
        state: FixedState<F, S, R>,
    }
}

pin_project! {
    #[project = FixedStateProj]
    enum FixedState<F, S, R> {
        Waiting {
            waiting: Box<Waiting<S, R>>,
        },
        Calling {
            #[pin]
            future: F,
            permit: Option<FixedPermit>,
            release_at_head: bool,
        },
        Shed {
            error: Option<Error>,
        },
    }
}

impl<F, S, R> fmt::Debug for FixedResponseFuture<F, S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            FixedState::Waiting { .. } => "waiting",
            FixedState::Calling { .. } => "calling",
            FixedState::Shed { .. } => "shed",
        };
        f.debug_struct("FixedResponseFuture")
            .field("state", &state)
            .finish()
    }
}

fn polled_after_completion() -> Error {
    Error::new(
        ErrorKind::InvalidRequest,
        "a concurrency limit response future was polled after it completed",
    )
}

impl<F, S, R, B, E> Future for FixedResponseFuture<F, S, R>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    S: Service<R, Future = F>,
    B: http_body::Body,
{
    type Output = Result<Response<ConcurrencyBody<B>>, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut state = self.as_mut().project().state;
            match state.as_mut().project() {
                FixedStateProj::Waiting { waiting } => {
                    let Waiting {
                        acquire,
                        service,
                        request,
                        ticket,
                        since,
                    } = &mut **waiting;
                    let acquired = ready!(acquire.as_mut().poll(cx));
                    let shared = Arc::clone(&ticket.shared);
                    let (Some(permit), Some(mut service), Some(request)) =
                        (acquired, service.take(), request.take())
                    else {
                        let error = shared.shed();
                        state.set(FixedState::Shed { error: None });
                        return Poll::Ready(Err(error));
                    };
                    let waited = since.elapsed();
                    if let Some(listener) = &shared.listener {
                        listener.on_event(&ConcurrencyEvent::Queued {
                            limiter: &shared.name,
                            waited,
                        });
                    }
                    let future = service.call(request);
                    // Setting the state drops the ticket: the call leaves the queue.
                    state.set(FixedState::Calling {
                        future,
                        permit: Some(permit),
                        release_at_head: shared.release_at_head,
                    });
                }
                FixedStateProj::Calling {
                    future,
                    permit,
                    release_at_head,
                } => {
                    let result = ready!(future.poll(cx));
                    let Some(permit) = permit.take() else {
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    return Poll::Ready(match result {
                        Ok(response) => {
                            let slot = if *release_at_head || response.body().is_end_stream() {
                                drop(permit);
                                Slot::Released
                            } else {
                                Slot::Fixed(permit)
                            };
                            Ok(response.map(|body| ConcurrencyBody::new(body, slot)))
                        }
                        // The permit is dropped here: an error frees the slot.
                        Err(error) => Err(Error::from_boxed(error.into())),
                    });
                }
                FixedStateProj::Shed { error } => {
                    return Poll::Ready(Err(error.take().unwrap_or_else(polled_after_completion)));
                }
            }
        }
    }
}
