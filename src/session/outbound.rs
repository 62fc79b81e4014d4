//! The outbound half of a session: the queue of encoded frames for one
//! client, and the response body that hands them to the HTTP dispatcher.
//!
//! Frames arrive already encoded (see [`crate::protocol`]), shared by every
//! recipient, so writing one costs a reference count here and one copy into
//! the connection's write buffer. The session actor pushes without ever
//! waiting; the body is polled by actix-web's HTTP/1 dispatcher on the same
//! thread whenever the socket can take more. Inbound frames still come from
//! actix-ws (see `docs/architecture.md` for why the two halves differ).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use actix_http::ws::OpCode;
use actix_web::body::{BodySize, BoxBody, MessageBody};
use bytes::Bytes;

use crate::limits::ConnectionSlot;
use crate::protocol::{close_frame, ws_frame, Close};

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// The close frame is the last queued frame: nothing more is accepted.
    Closing,
    /// The peer is gone: drop the connection without a close frame.
    Aborted,
}

pub(crate) struct Outbound {
    data: RefCell<VecDeque<Bytes>>,
    /// Pings and pongs: they go out before queued data, in their own order.
    control: RefCell<VecDeque<Bytes>>,
    waker: Cell<Option<Waker>>,
    state: Cell<State>,
    /// Bytes of the frames queued for this client and not yet handed to the
    /// dispatcher: every frame is added when queued (by the room, before it
    /// hands a frame over, or here) and subtracted when it goes out.
    pub(crate) pending: Arc<AtomicUsize>,
}

impl Outbound {
    pub(crate) fn new() -> Rc<Self> {
        Rc::new(Outbound {
            data: RefCell::new(VecDeque::new()),
            control: RefCell::new(VecDeque::new()),
            waker: Cell::new(None),
            state: Cell::new(State::Open),
            pending: Arc::new(AtomicUsize::new(0)),
        })
    }

    fn wake(&self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Queues a frame whose bytes are already counted in `pending`.
    pub(crate) fn push_counted(&self, frame: Bytes) {
        if self.state.get() == State::Open {
            self.data.borrow_mut().push_back(frame);
            self.wake();
        } else {
            self.pending.fetch_sub(frame.len(), Ordering::Relaxed);
        }
    }

    /// Queues a frame the session produced itself.
    pub(crate) fn push(&self, frame: Bytes) {
        self.pending.fetch_add(frame.len(), Ordering::Relaxed);
        self.push_counted(frame);
    }

    /// Queues a ping or pong ahead of queued data.
    pub(crate) fn push_control(&self, op: OpCode, payload: &[u8]) {
        if self.state.get() == State::Open {
            let frame = ws_frame(op, payload);
            self.pending.fetch_add(frame.len(), Ordering::Relaxed);
            self.control.borrow_mut().push_back(frame);
            self.wake();
        }
    }

    /// Queues the close frame after what is queued (or instead of it, with
    /// `discard`, for a client that is not reading anyway).
    pub(crate) fn close(&self, close: Close, discard: bool) {
        self.close_with(close.code(), close.reason_text(), discard);
    }

    /// Queues a close frame with any code (echoing a client's close).
    pub(crate) fn close_with(&self, code: u16, reason: &str, discard: bool) {
        if self.state.get() != State::Open {
            return;
        }
        let mut data = self.data.borrow_mut();
        if discard {
            let dropped: usize = data.drain(..).map(|f| f.len()).sum();
            self.pending.fetch_sub(dropped, Ordering::Relaxed);
        }
        let frame = close_frame(code, reason);
        self.pending.fetch_add(frame.len(), Ordering::Relaxed);
        data.push_back(frame);
        self.state.set(State::Closing);
        self.wake();
    }

    /// Drops the connection without a close frame.
    pub(crate) fn abort(&self) {
        self.state.set(State::Aborted);
        self.data.borrow_mut().clear();
        self.control.borrow_mut().clear();
        self.wake();
    }

    fn pop(&self) -> Option<Bytes> {
        let control = self.control.borrow_mut().pop_front();
        control.or_else(|| self.data.borrow_mut().pop_front())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("websocket finished")]
struct Finished;

enum Phase {
    Streaming,
    /// The close frame is out; one more poll lets the dispatcher flush it.
    Flushing,
    Done,
}

/// The WebSocket response body.
///
/// When the session has ended it fails on purpose: actix-web's HTTP/1
/// dispatcher keeps an upgraded connection open after a body that simply
/// ends, waiting for the client to hang up (the request side of an upgrade
/// never ends), while RFC 6455 has the server close the TCP connection after
/// the close frames. A failed body makes the dispatcher drop the connection.
pub(crate) struct OutboundBody {
    out: Rc<Outbound>,
    phase: Phase,
    /// actix-ws's own body, never polled: dropping it is what tells the
    /// inbound `MessageStream` that the connection is gone.
    _ws_body: BoxBody,
    /// The connection's slot is given back only when the connection ends, so
    /// a client that stops reading still counts against the limits.
    _slot: ConnectionSlot,
}

impl OutboundBody {
    pub(crate) fn new(out: Rc<Outbound>, ws_body: BoxBody, slot: ConnectionSlot) -> Self {
        OutboundBody {
            out,
            phase: Phase::Streaming,
            _ws_body: ws_body,
            _slot: slot,
        }
    }
}

impl MessageBody for OutboundBody {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        BodySize::Stream
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.get_mut();
        match this.phase {
            Phase::Done => Poll::Ready(None),
            Phase::Flushing => {
                this.phase = Phase::Done;
                Poll::Ready(Some(Err(Box::new(Finished))))
            }
            Phase::Streaming => {
                let out = &this.out;
                if out.state.get() == State::Aborted {
                    this.phase = Phase::Done;
                    return Poll::Ready(Some(Err(Box::new(Finished))));
                }
                if let Some(frame) = out.pop() {
                    out.pending.fetch_sub(frame.len(), Ordering::Relaxed);
                    return Poll::Ready(Some(Ok(frame)));
                }
                if out.state.get() == State::Closing {
                    // The close frame was the last one out.
                    this.phase = Phase::Flushing;
                    cx.waker().wake_by_ref();
                } else {
                    let w = match out.waker.take() {
                        Some(w) if w.will_wake(cx.waker()) => w,
                        _ => cx.waker().clone(),
                    };
                    out.waker.set(Some(w));
                }
                Poll::Pending
            }
        }
    }
}

/// Frames for the echo route.
pub(crate) fn echo_frame(text: bool, payload: &[u8]) -> Bytes {
    ws_frame(if text { OpCode::Text } else { OpCode::Binary }, payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::ConnectionLimiter;

    fn body(out: &Rc<Outbound>) -> OutboundBody {
        let limiter = Arc::new(ConnectionLimiter::new(1, 1));
        let slot = limiter.acquire([127, 0, 0, 1].into()).unwrap();
        OutboundBody::new(out.clone(), BoxBody::new(()), slot)
    }

    fn poll(b: &mut OutboundBody) -> Poll<Option<Result<Bytes, Box<dyn std::error::Error>>>> {
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(b).poll_next(&mut cx)
    }

    #[test]
    fn control_frames_overtake_data_and_every_byte_is_accounted() {
        let out = Outbound::new();
        let mut b = body(&out);
        out.push(Bytes::from_static(b"data-1"));
        out.push_control(OpCode::Pong, b"p1");
        out.push_control(OpCode::Pong, b"p2");
        out.push(Bytes::from_static(b"data-2"));
        assert!(out.pending.load(Ordering::Relaxed) > 12);
        let mut got = Vec::new();
        while let Poll::Ready(Some(Ok(f))) = poll(&mut b) {
            got.push(f);
        }
        assert_eq!(got.len(), 4);
        assert_eq!(&got[0][2..], b"p1");
        assert_eq!(&got[1][2..], b"p2");
        assert_eq!(&got[2][..], b"data-1");
        assert_eq!(out.pending.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_close_goes_after_queued_data_then_the_body_fails_to_drop_the_connection() {
        let out = Outbound::new();
        let mut b = body(&out);
        out.push(Bytes::from_static(b"data"));
        out.close(Close::Leave, false);
        out.push(Bytes::from_static(b"too late"));
        assert!(matches!(poll(&mut b), Poll::Ready(Some(Ok(f))) if &f[..] == b"data"));
        assert!(matches!(poll(&mut b), Poll::Ready(Some(Ok(f))) if f[0] == 0x88));
        assert!(
            poll(&mut b).is_pending(),
            "one round for the dispatcher to flush"
        );
        assert!(matches!(poll(&mut b), Poll::Ready(Some(Err(_)))));
        assert_eq!(out.pending.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_discarding_close_drops_queued_data() {
        let out = Outbound::new();
        let mut b = body(&out);
        out.push(Bytes::from_static(b"queued"));
        out.close(Close::SlowConsumer, true);
        assert!(matches!(poll(&mut b), Poll::Ready(Some(Ok(f))) if f[0] == 0x88));
        assert_eq!(out.pending.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn an_abort_ends_the_connection_without_a_close_frame() {
        let out = Outbound::new();
        let mut b = body(&out);
        out.push(Bytes::from_static(b"queued"));
        out.abort();
        assert!(matches!(poll(&mut b), Poll::Ready(Some(Err(_)))));
    }
}
