//! The response body that holds a call's concurrency slot until the body ends.

use std::error::Error as StdError;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::adaptive::AdaptiveSlot;
use super::fixed::FixedPermit;
use crate::error::{BoxError, Error};

/// What a body holds: nothing (released already), a fixed limit's permit, or an adaptive
/// limit's slot (which may still owe its sample).
pub(crate) enum Slot {
    Released,
    // Held only for its `Drop`, which gives the permit back.
    Fixed(#[allow(dead_code)] FixedPermit),
    Adaptive(AdaptiveSlot),
}

impl Slot {
    /// The body ended cleanly: release (and sample, when measuring to the body's end).
    fn end(&mut self) {
        if let Slot::Adaptive(slot) = self {
            slot.body_ended();
        }
        *self = Slot::Released;
    }

    /// The body failed: release (a timeout counts as a drop for the adaptive limit).
    fn fail(&mut self, error: &(dyn StdError + 'static)) {
        if let Slot::Adaptive(slot) = self {
            slot.body_failed(error);
        }
        *self = Slot::Released;
    }

    fn is_held(&self) -> bool {
        !matches!(self, Slot::Released)
    }
}

pin_project! {
    /// The response body of both concurrency layers: the inner body, holding the call's slot
    /// until it ends (its last frame is read), fails, or is dropped. A stream that generates
    /// for minutes occupies its slot for minutes, as it occupies upstream capacity.
    ///
    /// Its errors are the inner body's, boxed.
    ///
    /// ```
    /// use http::{Request, Response};
    /// use http_body_util::{BodyExt, Full};
    /// use tower::{Service, ServiceExt};
    /// use tower_deepseek::concurrency::ConcurrencyLimitLayer;
    /// use tower_layer::Layer;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tower_deepseek::Error> {
    /// let limit = ConcurrencyLimitLayer::builder().max_in_flight(1).build()?;
    /// let mut service = limit.layer(tower::service_fn(|_: Request<()>| async {
    ///     Ok::<_, std::convert::Infallible>(Response::new(Full::new(bytes::Bytes::from("hi"))))
    /// }));
    /// let response = service.ready().await?.call(Request::new(())).await?;
    /// assert_eq!(limit.in_flight(), 1);
    /// let body = response.into_body().collect().await.unwrap().to_bytes();
    /// assert_eq!(body, "hi");
    /// assert_eq!(limit.in_flight(), 0); // released at the end of the body
    /// # Ok(())
    /// # }
    /// ```
    pub struct ConcurrencyBody<B> {
        #[pin]
        inner: B,
        slot: Slot,
    }
}

impl<B> ConcurrencyBody<B> {
    pub(crate) fn new(inner: B, slot: Slot) -> ConcurrencyBody<B> {
        ConcurrencyBody { inner, slot }
    }

    /// Whether the body still holds its slot.
    pub fn holds_slot(&self) -> bool {
        self.slot.is_held()
    }

    /// The wrapped body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }
}

impl<B> fmt::Debug for ConcurrencyBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyBody")
            .field("holds_slot", &self.slot.is_held())
            .finish_non_exhaustive()
    }
}

impl<B> Body for ConcurrencyBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    // The crate's error (a `std::error::Error`), so layers that observe bodies (metrics, the
    // breaker) stack directly over this one; an inner crate error passes through unchanged.
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let polled = ready!(this.inner.as_mut().poll_frame(cx));
        Poll::Ready(match polled {
            Some(Ok(frame)) => {
                // Release with the last frame when the body knows it is the last one, so a
                // reader that stops at the final frame does not hold the slot.
                if this.slot.is_held() && this.inner.is_end_stream() {
                    this.slot.end();
                }
                Some(Ok(frame))
            }
            Some(Err(error)) => {
                let error = Error::from_boxed(error.into());
                this.slot.fail(&error);
                Some(Err(error))
            }
            None => {
                this.slot.end();
                None
            }
        })
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
