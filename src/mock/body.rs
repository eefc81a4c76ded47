//! Response bodies: whole, or played frame by frame from a plan with waits in between.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{Notify, mpsc};

/// One step of a body plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Step {
    /// Wait before the next frame.
    Wait(Duration),
    /// Send one frame.
    Send(Bytes),
    /// Send `count` copies of a frame, waiting `interval` before each (kept as one step so a
    /// huge scripted count costs no memory).
    Repeat {
        count: u32,
        interval: Duration,
        frame: Bytes,
    },
}

/// What happens after the last step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ending {
    /// The body ends cleanly.
    Close,
    /// The connection is reset.
    Reset,
}

/// A body as a sequence of frames and waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct BodyPlan {
    pub(super) steps: Vec<Step>,
    pub(super) ending: Ending,
}

impl BodyPlan {
    /// The body's bytes when it is a single frame with no waits and a clean end.
    fn as_whole(&self) -> Option<Bytes> {
        if self.ending != Ending::Close {
            return None;
        }
        match self.steps.as_slice() {
            [] => Some(Bytes::new()),
            [Step::Send(bytes)] => Some(bytes.clone()),
            _ => None,
        }
    }
}

/// Asks the connection serving a request to abort with a TCP reset.
#[derive(Debug, Default)]
pub(super) struct ResetSwitch {
    triggered: AtomicBool,
    notify: Notify,
}

impl ResetSwitch {
    pub(super) fn trigger(&self) {
        self.triggered.store(true, Ordering::SeqCst);
        // A stored permit wakes the connection even if it is not waiting yet.
        self.notify.notify_one();
    }

    pub(super) fn is_triggered(&self) -> bool {
        self.triggered.load(Ordering::SeqCst)
    }

    pub(super) async fn triggered(&self) {
        self.notify.notified().await;
    }
}

/// The mock's response body.
#[derive(Debug)]
pub(super) enum MockBody {
    /// The whole body at once (with a `content-length`).
    Whole(Option<Bytes>),
    /// Frames as a player task sends them.
    Played(mpsc::Receiver<Bytes>),
}

impl MockBody {
    pub(super) fn whole(bytes: Bytes) -> MockBody {
        if bytes.is_empty() {
            MockBody::Whole(None)
        } else {
            MockBody::Whole(Some(bytes))
        }
    }

    /// A body for the plan: whole when it is one frame without waits, otherwise played by a
    /// task that ends as soon as the connection drops the body.
    pub(super) fn play(plan: BodyPlan, reset: Arc<ResetSwitch>) -> MockBody {
        if let Some(bytes) = plan.as_whole() {
            return MockBody::whole(bytes);
        }
        // Capacity one: the player learns when the connection has taken each frame.
        let (sender, receiver) = mpsc::channel(1);
        tokio::spawn(play(plan, sender, reset));
        MockBody::Played(receiver)
    }
}

/// How long the player waits, after the connection took the last frame, before a reset: time
/// for that frame to reach the socket, since a reset discards unsent data.
const FLUSH_GRACE: Duration = Duration::from_millis(20);

async fn play(plan: BodyPlan, sender: mpsc::Sender<Bytes>, reset: Arc<ResetSwitch>) {
    for step in plan.steps {
        match step {
            Step::Wait(duration) => {
                tokio::select! {
                    () = tokio::time::sleep(duration) => {}
                    () = sender.closed() => return,
                }
            }
            Step::Send(bytes) => {
                if sender.send(bytes).await.is_err() {
                    return;
                }
            }
            Step::Repeat {
                count,
                interval,
                frame,
            } => {
                for _ in 0..count {
                    tokio::select! {
                        () = tokio::time::sleep(interval) => {}
                        () = sender.closed() => return,
                    }
                    if sender.send(frame.clone()).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
    if plan.ending == Ending::Reset {
        // A free slot means the connection has taken the last frame.
        match sender.reserve().await {
            Ok(permit) => drop(permit),
            Err(_) => return,
        }
        tokio::select! {
            () = tokio::time::sleep(FLUSH_GRACE) => {}
            () = sender.closed() => return,
        }
        reset.trigger();
        // Keep the body open: ending it would let the connection finish the response cleanly.
        sender.closed().await;
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            MockBody::Whole(bytes) => Poll::Ready(bytes.take().map(|bytes| Ok(Frame::data(bytes)))),
            MockBody::Played(receiver) => receiver
                .poll_recv(cx)
                .map(|frame| frame.map(|bytes| Ok(Frame::data(bytes)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, MockBody::Whole(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            MockBody::Whole(Some(bytes)) => {
                SizeHint::with_exact(u64::try_from(bytes.len()).unwrap_or(u64::MAX))
            }
            MockBody::Whole(None) => SizeHint::with_exact(0),
            MockBody::Played(_) => SizeHint::default(),
        }
    }
}
