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
    /// `SLOW_CONSUMER_BUFFER_THRESHOLD`, when slow-consumer protection is on.
    limit: Option<usize>,
}

/// The client is not reading: more would pass the slow-consumer threshold.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Backlogged;

impl Outbound {
    pub(crate) fn new(limit: Option<usize>) -> Rc<Self> {
        Rc::new(Outbound {
            data: RefCell::new(VecDeque::new()),
            control: RefCell::new(VecDeque::new()),
            waker: Cell::new(None),
            state: Cell::new(State::Open),
            pending: Arc::new(AtomicUsize::new(0)),
            limit,
        })
    }

    /// Counts `len` more bytes unless that passes the threshold.
    fn reserve(&self, len: usize) -> Result<(), Backlogged> {
        let before = self.pending.fetch_add(len, Ordering::Relaxed);
        if self
            .limit
            .is_some_and(|limit| before.saturating_add(len) > limit)
        {
            self.pending.fetch_sub(len, Ordering::Relaxed);
            return Err(Backlogged);
        }
        Ok(())
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

    /// Queues a frame the session produced itself (an error, an echo), under
    /// the same threshold as the frames rooms hand over.
    pub(crate) fn push(&self, frame: Bytes) -> Result<(), Backlogged> {
        self.reserve(frame.len())?;
        self.push_counted(frame);
        Ok(())
    }

    /// Queues a ping or pong ahead of queued data, under the threshold too:
    /// a client that sends pings but reads nothing must not grow this queue.
    pub(crate) fn push_control(&self, op: OpCode, payload: &[u8]) -> Result<(), Backlogged> {
        if self.state.get() == State::Open {
            let frame = ws_frame(op, payload);
            self.reserve(frame.len())?;
            self.control.borrow_mut().push_back(frame);
            self.wake();
        }
        Ok(())
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
    Done,
}

/// The WebSocket response body.
///
/// After the close frame it ends; the HTTP server runs with
/// `client_disconnect_timeout` zero, so the dispatcher then flushes what is
/// left and closes the TCP connection itself, as RFC 6455 has the server do
/// (with a timeout it would linger, waiting for the client to hang up
/// first). An aborted session (the peer is gone) fails the body instead,
/// which drops the connection at once.
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
                    this.phase = Phase::Done;
                    return Poll::Ready(None);
                }
                let w = match out.waker.take() {
                    Some(w) if w.will_wake(cx.waker()) => w,
                    _ => cx.waker().clone(),
                };
                out.waker.set(Some(w));
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
        let out = Outbound::new(None);
        let mut b = body(&out);
        out.push(Bytes::from_static(b"data-1")).unwrap();
        out.push_control(OpCode::Pong, b"p1").unwrap();
        out.push_control(OpCode::Pong, b"p2").unwrap();
        out.push(Bytes::from_static(b"data-2")).unwrap();
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
    fn a_close_goes_after_queued_data_and_ends_the_body() {
        let out = Outbound::new(None);
        let mut b = body(&out);
        out.push(Bytes::from_static(b"data")).unwrap();
        out.close(Close::Leave, false);
        out.push(Bytes::from_static(b"too late")).unwrap();
        assert!(matches!(poll(&mut b), Poll::Ready(Some(Ok(f))) if &f[..] == b"data"));
        assert!(matches!(poll(&mut b), Poll::Ready(Some(Ok(f))) if f[0] == 0x88));
        assert!(matches!(poll(&mut b), Poll::Ready(None)));
        assert_eq!(out.pending.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn frames_the_session_queues_itself_respect_the_threshold() {
        let out = Outbound::new(Some(100));
        assert!(out.push(Bytes::from(vec![b'x'; 90])).is_ok());
        assert_eq!(out.push(Bytes::from(vec![b'x'; 20])), Err(Backlogged));
        assert_eq!(out.push_control(OpCode::Pong, &[0u8; 20]), Err(Backlogged));
        assert_eq!(out.pending.load(Ordering::Relaxed), 90);
    }

    #[test]
    fn a_discarding_close_drops_queued_data() {
        let out = Outbound::new(None);
        let mut b = body(&out);
        out.push(Bytes::from_static(b"queued")).unwrap();
        out.close(Close::SlowConsumer, true);
        assert!(matches!(poll(&mut b), Poll::Ready(Some(Ok(f))) if f[0] == 0x88));
        assert_eq!(out.pending.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn an_abort_ends_the_connection_without_a_close_frame() {
        let out = Outbound::new(None);
        let mut b = body(&out);
        out.push(Bytes::from_static(b"queued")).unwrap();
        out.abort();
        assert!(matches!(poll(&mut b), Poll::Ready(Some(Err(_)))));
    }
}
