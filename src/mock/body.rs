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

use super::content::MALFORMED_JSON;
use super::script::Reply;

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

/// How many units (chunks or bytes) to deliver, and how to end.
fn delivery(reply: &Reply) -> (Option<usize>, Ending) {
    match (reply.cut_after, reply.reset_after) {
        (None, None) => (None, Ending::Close),
        (Some(cut), None) => (Some(cut), Ending::Close),
        (None, Some(reset)) => (Some(reset), Ending::Reset),
        (Some(cut), Some(reset)) if reset <= cut => (Some(reset), Ending::Reset),
        (Some(cut), Some(_)) => (Some(cut), Ending::Close),
    }
}

/// A streamed answer: keep-alive comments, then the events with `chunk_delay` between them.
pub(super) fn stream_plan(reply: &Reply, events: Vec<Bytes>) -> BodyPlan {
    let (limit, ending) = delivery(reply);
    let mut steps = Vec::with_capacity(events.len() * 2 + 1);
    if reply.keep_alives > 0 {
        steps.push(Step::Repeat {
            count: reply.keep_alives,
            interval: reply.keep_alive_interval,
            frame: Bytes::from_static(b": keep-alive\n\n"),
        });
    }
    for (index, event) in events
        .into_iter()
        .take(limit.unwrap_or(usize::MAX))
        .enumerate()
    {
        if index > 0 && !reply.chunk_delay.is_zero() {
            steps.push(Step::Wait(reply.chunk_delay));
        }
        if reply.malformed_at == Some(index) {
            steps.push(Step::Send(Bytes::from(format!(
                "data: {MALFORMED_JSON}\n\n"
            ))));
        } else {
            steps.push(Step::Send(event));
        }
    }
    BodyPlan { steps, ending }
}

/// Any other body: blank-line keep-alives, then the body (possibly malformed or cut to a number
/// of bytes) as one frame.
pub(super) fn bytes_plan(reply: &Reply, body: Bytes) -> BodyPlan {
    let (limit, ending) = delivery(reply);
    let mut steps = Vec::with_capacity(2);
    if reply.keep_alives > 0 {
        steps.push(Step::Repeat {
            count: reply.keep_alives,
            interval: reply.keep_alive_interval,
            frame: Bytes::from_static(b"\n"),
        });
    }
    let mut body = if reply.malformed_at.is_some() {
        Bytes::from_static(MALFORMED_JSON.as_bytes())
    } else {
        body
    };
    if let Some(limit) = limit {
        body.truncate(limit);
    }
    if !body.is_empty() {
        steps.push(Step::Send(body));
    }
    BodyPlan { steps, ending }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(count: usize) -> Vec<Bytes> {
        (0..count).map(|i| Bytes::from(format!("e{i}"))).collect()
    }

    fn sent(plan: &BodyPlan) -> Vec<Bytes> {
        plan.steps
            .iter()
            .filter_map(|step| match step {
                Step::Send(bytes) => Some(bytes.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn cut_and_reset_deliver_the_first_n_chunks() {
        let plan = stream_plan(&Reply::ok().cut_after(2), events(5));
        assert_eq!(sent(&plan), events(2));
        assert_eq!(plan.ending, Ending::Close);
        let plan = stream_plan(&Reply::ok().reset_after(3).cut_after(3), events(5));
        assert_eq!(sent(&plan), events(3));
        assert_eq!(plan.ending, Ending::Reset);
        let plan = stream_plan(&Reply::ok().reset_after(4).cut_after(1), events(5));
        assert_eq!(sent(&plan).len(), 1);
        assert_eq!(plan.ending, Ending::Close);
    }

    #[test]
    fn malformed_replaces_the_chunk_at_its_index() {
        let plan = stream_plan(&Reply::ok().malformed_at(1), events(3));
        let frames = sent(&plan);
        assert_eq!(frames[0], "e0");
        assert_eq!(frames[1], "data: {\"id\": oops\n\n");
        assert_eq!(frames[2], "e2");
    }

    #[test]
    fn delays_go_between_chunks_and_keep_alives_first() {
        let reply = Reply::ok()
            .keep_alives(2)
            .keep_alive_interval(Duration::from_secs(1))
            .chunk_delay(Duration::from_millis(5));
        let plan = stream_plan(&reply, events(2));
        assert_eq!(
            plan.steps,
            vec![
                Step::Repeat {
                    count: 2,
                    interval: Duration::from_secs(1),
                    frame: Bytes::from_static(b": keep-alive\n\n"),
                },
                Step::Send(Bytes::from_static(b"e0")),
                Step::Wait(Duration::from_millis(5)),
                Step::Send(Bytes::from_static(b"e1")),
            ]
        );
    }

    #[test]
    fn byte_bodies_count_bytes() {
        let plan = bytes_plan(&Reply::ok().cut_after(3), Bytes::from_static(b"{\"a\":1}"));
        assert_eq!(sent(&plan), vec![Bytes::from_static(b"{\"a")]);
        let plan = bytes_plan(&Reply::ok().malformed_at(0), Bytes::from_static(b"{}"));
        assert_eq!(
            sent(&plan),
            vec![Bytes::from_static(MALFORMED_JSON.as_bytes())]
        );
    }
}
