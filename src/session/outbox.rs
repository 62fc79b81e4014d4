//! The outbound half of a session: a queue of frames for one client and the
//! writer task that feeds it into the actix-ws `Session`.
//!
//! actix-ws hands frames to the response body through a bounded channel and
//! its `send` is async, which an actor handler cannot await. So the actor
//! only pushes into this queue (never blocking) and a writer task on the same
//! thread drains it; the queue's size is bounded by the slow-consumer
//! threshold, counted in [`MemberHandle::pending`](crate::room::MemberHandle).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use actix_ws::{CloseCode, CloseReason, Message};
use bytestring::ByteString;
use futures_util::SinkExt;
use tokio::sync::Notify;
use tokio::time::{timeout_at, Duration, Instant};

use crate::limits::ConnectionSlot;
use crate::protocol::Close;

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// A close frame is queued: nothing more is accepted.
    Closing,
    /// The peer is gone: drop the connection without a close handshake.
    Aborted,
}

pub(crate) struct Outbox {
    queue: RefCell<VecDeque<Message>>,
    /// Pings and pongs: they go out before queued data, in their own order.
    control: RefCell<VecDeque<Message>>,
    notify: Notify,
    state: Cell<State>,
    /// Bytes of text frames queued and not yet written (shared with rooms).
    pub(crate) pending: Arc<AtomicUsize>,
}

impl Outbox {
    pub(crate) fn new() -> Rc<Self> {
        Rc::new(Outbox {
            queue: RefCell::new(VecDeque::new()),
            control: RefCell::new(VecDeque::new()),
            notify: Notify::new(),
            state: Cell::new(State::Open),
            pending: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Queues a text frame whose bytes are already counted in `pending`.
    pub(crate) fn push_counted(&self, frame: ByteString) {
        if self.state.get() == State::Open {
            self.queue.borrow_mut().push_back(Message::Text(frame));
            self.notify.notify_one();
        } else {
            self.pending.fetch_sub(frame.len(), Ordering::Relaxed);
        }
    }

    /// Queues a text frame the session produced itself.
    pub(crate) fn push_text(&self, frame: ByteString) {
        self.pending.fetch_add(frame.len(), Ordering::Relaxed);
        self.push_counted(frame);
    }

    /// Queues a binary frame (the echo endpoint only).
    pub(crate) fn push_binary(&self, data: bytes::Bytes) {
        if self.state.get() == State::Open {
            self.pending.fetch_add(data.len(), Ordering::Relaxed);
            self.queue.borrow_mut().push_back(Message::Binary(data));
            self.notify.notify_one();
        }
    }

    /// Queues a control frame ahead of queued data.
    pub(crate) fn push_control(&self, msg: Message) {
        if self.state.get() == State::Open {
            self.control.borrow_mut().push_back(msg);
            self.notify.notify_one();
        }
    }

    /// Queues the close frame after what is queued (or instead of it, with
    /// `discard`, for a client that is not reading anyway).
    pub(crate) fn close(&self, close: Close, discard: bool) {
        self.close_with(
            CloseReason {
                code: CloseCode::from(close.code()),
                description: Some(close.reason_text().to_owned()).filter(|d| !d.is_empty()),
            },
            discard,
        );
    }

    /// Queues an arbitrary close frame (echoing a client's close).
    pub(crate) fn close_with(&self, reason: CloseReason, discard: bool) {
        if self.state.get() != State::Open {
            return;
        }
        let mut q = self.queue.borrow_mut();
        if discard {
            let dropped: usize = q
                .drain(..)
                .map(|m| match m {
                    Message::Text(t) => t.len(),
                    Message::Binary(b) => b.len(),
                    _ => 0,
                })
                .sum();
            self.pending.fetch_sub(dropped, Ordering::Relaxed);
        }
        q.push_back(Message::Close(Some(reason)));
        self.state.set(State::Closing);
        self.notify.notify_one();
    }

    /// Drops the connection without a close frame.
    pub(crate) fn abort(&self) {
        self.state.set(State::Aborted);
        self.queue.borrow_mut().clear();
        self.control.borrow_mut().clear();
        self.notify.notify_one();
    }

    fn pop(&self) -> Option<Message> {
        let control = self.control.borrow_mut().pop_front();
        control.or_else(|| self.queue.borrow_mut().pop_front())
    }

    /// Feeds queued frames to the client until a close frame has gone out,
    /// the outbox is aborted, or the client is gone. Once the session is
    /// closing, everything left must go out within `close_grace`: a client
    /// that does not read would otherwise hold the connection forever. The
    /// connection's slot is held until then, so such clients still count
    /// against `MAX_CONNS_PER_IP` and `MAX_TOTAL_CONNECTIONS`.
    pub(crate) async fn run_writer(
        self: Rc<Self>,
        mut session: actix_ws::Session,
        slot: ConnectionSlot,
        close_grace: Duration,
    ) {
        let mut deadline: Option<Instant> = None;
        'frames: loop {
            match self.state.get() {
                State::Aborted => break,
                State::Closing if deadline.is_none() => {
                    deadline = Some(Instant::now() + close_grace)
                }
                _ => {}
            }
            let Some(msg) = self.pop() else {
                match deadline {
                    Some(d) => {
                        if timeout_at(d, self.notify.notified()).await.is_err() {
                            break;
                        }
                    }
                    None => self.notify.notified().await,
                }
                continue;
            };
            let (len, last) = match &msg {
                Message::Text(t) => (t.len(), false),
                Message::Binary(b) => (b.len(), false),
                Message::Close(_) => (0, true),
                _ => (0, false),
            };
            let feed = session.feed(msg);
            tokio::pin!(feed);
            let sent = loop {
                if let Some(d) = deadline {
                    match timeout_at(d, &mut feed).await {
                        Ok(r) => break r,
                        Err(_) => break 'frames,
                    }
                }
                tokio::select! {
                    r = &mut feed => break r,
                    // The session may start closing (or be aborted) while
                    // this frame waits for a client that is not reading.
                    _ = self.notify.notified() => match self.state.get() {
                        State::Aborted => break 'frames,
                        State::Closing => deadline = Some(Instant::now() + close_grace),
                        State::Open => {}
                    },
                }
            };
            self.pending.fetch_sub(len, Ordering::Relaxed);
            if sent.is_err() || last {
                break;
            }
        }
        // Dropping the session's last handle ends the response body, which
        // closes the connection.
        self.abort();
        drop(session);
        drop(slot);
    }
}
