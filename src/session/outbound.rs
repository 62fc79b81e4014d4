//! The outbound half of a session: the queue of encoded frames for one
//! client, written straight to its socket.
//!
//! Frames arrive already encoded (see [`crate::protocol`]) and shared by
//! every recipient, so queueing one costs a reference count. Whatever is
//! queued when the session's connection pump runs goes out in one
//! `writev`, however many frames that is; nothing is copied into a write
//! buffer, and an idle session owns no buffer at all.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use actix_http::ws::OpCode;
use bytes::Bytes;
use tokio::net::TcpStream;

use crate::protocol::{close_frame, ws_frame, Close};

/// Most frames handed to one `writev`.
const MAX_IOVECS: usize = 64;
/// A queue that grew past this many slots in a burst gives them back once
/// empty: an idle member holds no queue.
const KEEP_SLOTS: usize = 8;

pub(crate) struct Outbound {
    frames: VecDeque<Bytes>,
    /// Bytes of the front frame already written.
    written: usize,
    /// The close frame is queued: nothing more is accepted.
    closing: bool,
    /// Bytes of the frames queued for this client and not yet written to
    /// the socket: every frame is added when queued (by the room, before it
    /// hands a frame over, or here) and subtracted once the kernel took it.
    pub(crate) pending: Arc<AtomicUsize>,
    /// `SLOW_CONSUMER_BUFFER_THRESHOLD`, when slow-consumer protection is on.
    limit: Option<usize>,
}

/// The client is not reading: more would pass the slow-consumer threshold.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Backlogged;

impl Outbound {
    pub(crate) fn new(limit: Option<usize>) -> Self {
        Outbound {
            frames: VecDeque::new(),
            written: 0,
            closing: false,
            pending: Arc::new(AtomicUsize::new(0)),
            limit,
        }
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

    pub(crate) fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Queues a frame whose bytes are already counted in `pending`.
    pub(crate) fn push_counted(&mut self, frame: Bytes) {
        if self.closing {
            self.pending.fetch_sub(frame.len(), Ordering::Relaxed);
        } else {
            self.frames.push_back(frame);
        }
    }

    /// Queues a frame the session produced itself (an error, an echo), under
    /// the same threshold as the frames rooms hand over.
    pub(crate) fn push(&mut self, frame: Bytes) -> Result<(), Backlogged> {
        self.reserve(frame.len())?;
        self.push_counted(frame);
        Ok(())
    }

    /// Queues a ping or pong, under the threshold too: a client that sends
    /// pings but reads nothing must not grow this queue.
    pub(crate) fn push_control(&mut self, op: OpCode, payload: &[u8]) -> Result<(), Backlogged> {
        if self.closing {
            return Ok(());
        }
        self.push(ws_frame(op, payload))
    }

    /// Queues the close frame after what is queued (or instead of it, with
    /// `discard`, for a client that is not reading anyway).
    pub(crate) fn close(&mut self, close: Close, discard: bool) {
        self.close_with(close.code(), close.reason_text(), discard);
    }

    /// Queues a close frame with any code (echoing a client's close).
    pub(crate) fn close_with(&mut self, code: u16, reason: &str, discard: bool) {
        if self.closing {
            return;
        }
        if discard {
            // A frame already partly written must be finished, or the client
            // could not parse the close frame behind it.
            let keep = usize::from(self.written > 0).min(self.frames.len());
            let dropped: usize = self.frames.drain(keep..).map(|f| f.len()).sum();
            self.pending.fetch_sub(dropped, Ordering::Relaxed);
        }
        let frame = close_frame(code, reason);
        self.pending.fetch_add(frame.len(), Ordering::Relaxed);
        self.frames.push_back(frame);
        self.closing = true;
    }

    /// Forgets what is queued (the connection is gone).
    pub(crate) fn clear(&mut self) {
        let dropped: usize = self.frames.drain(..).map(|f| f.len()).sum();
        self.pending
            .fetch_sub(dropped.saturating_sub(self.written), Ordering::Relaxed);
        self.written = 0;
    }

    /// Writes as much as the socket takes without waiting: `Ok(true)` once
    /// the queue is empty, `Ok(false)` when the socket is full.
    pub(crate) fn write_to(&mut self, stream: &TcpStream) -> io::Result<bool> {
        while !self.frames.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let mut n = 0;
            for (i, f) in self.frames.iter().take(MAX_IOVECS).enumerate() {
                let skip = if i == 0 { self.written } else { 0 };
                slices[i] = IoSlice::new(&f[skip..]);
                n += 1;
            }
            match stream.try_write_vectored(&slices[..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => self.advance(written),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        if self.frames.capacity() > KEEP_SLOTS {
            self.frames = VecDeque::new();
        }
        Ok(true)
    }

    fn advance(&mut self, mut n: usize) {
        self.pending.fetch_sub(n, Ordering::Relaxed);
        while n > 0 {
            let left = self.frames[0].len() - self.written;
            if n < left {
                self.written += n;
                return;
            }
            n -= left;
            self.written = 0;
            self.frames.pop_front();
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

    fn frames(out: &Outbound) -> Vec<Bytes> {
        out.frames.iter().cloned().collect()
    }

    #[test]
    fn a_close_goes_after_queued_data_and_nothing_follows_it() {
        let mut out = Outbound::new(None);
        out.push(Bytes::from_static(b"data")).unwrap();
        out.close(Close::Leave, false);
        out.push(Bytes::from_static(b"too late")).unwrap();
        let f = frames(&out);
        assert_eq!(f.len(), 2);
        assert_eq!(&f[0][..], b"data");
        assert_eq!(f[1][0], 0x88);
        let total: usize = f.iter().map(|f| f.len()).sum();
        assert_eq!(out.pending.load(Ordering::Relaxed), total);
    }

    #[test]
    fn frames_the_session_queues_itself_respect_the_threshold() {
        let mut out = Outbound::new(Some(100));
        assert!(out.push(Bytes::from(vec![b'x'; 90])).is_ok());
        assert_eq!(out.push(Bytes::from(vec![b'x'; 20])), Err(Backlogged));
        assert_eq!(out.push_control(OpCode::Pong, &[0u8; 20]), Err(Backlogged));
        assert_eq!(out.pending.load(Ordering::Relaxed), 90);
    }

    #[test]
    fn a_discarding_close_keeps_only_a_partly_written_frame() {
        let mut out = Outbound::new(None);
        out.push(Bytes::from_static(b"first")).unwrap();
        out.push(Bytes::from_static(b"second")).unwrap();
        out.advance(2);
        out.close(Close::SlowConsumer, true);
        let f = frames(&out);
        assert_eq!(f.len(), 2);
        assert_eq!(&f[0][..], b"first");
        assert_eq!(f[1][0], 0x88);
        assert_eq!(out.pending.load(Ordering::Relaxed), 3 + f[1].len());
        out.clear();
        assert_eq!(out.pending.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn partial_writes_advance_through_frames_and_release_their_bytes() {
        let mut out = Outbound::new(None);
        out.push(Bytes::from_static(b"abc")).unwrap();
        out.push(Bytes::from_static(b"defg")).unwrap();
        out.advance(5);
        assert_eq!(out.frames.len(), 1);
        assert_eq!(out.written, 2);
        out.advance(2);
        assert!(out.is_empty());
        assert_eq!(out.pending.load(Ordering::Relaxed), 0);
    }
}
