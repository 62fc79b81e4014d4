//! Ends the TCP connection when the WebSocket stream ends.
//!
//! actix-web's HTTP/1 dispatcher keeps an upgraded connection open after the
//! response body (the WebSocket's outbound stream) has finished, waiting for
//! the client to hang up, because the request "payload" (the inbound stream)
//! never ends. RFC 6455 wants the server to close the TCP connection once the
//! close frames have been exchanged; clients wait for that (a second or
//! more), and the idle connections hold server resources meanwhile. This
//! wrapper lets the dispatcher flush the last frame, then fails the body,
//! which makes the dispatcher drop the connection.

use std::pin::Pin;
use std::task::{Context, Poll};

use actix_web::body::{BodySize, BoxBody, MessageBody};
use bytes::Bytes;

#[derive(Debug, thiserror::Error)]
#[error("websocket finished")]
pub(crate) struct Finished;

enum State {
    Streaming,
    /// The stream ended; one more poll lets the dispatcher flush first.
    Flushing,
    Done,
}

pub(crate) struct DisconnectAtEnd {
    inner: BoxBody,
    state: State,
}

impl DisconnectAtEnd {
    pub(crate) fn new(inner: BoxBody) -> Self {
        DisconnectAtEnd {
            inner,
            state: State::Streaming,
        }
    }
}

impl MessageBody for DisconnectAtEnd {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        BodySize::Stream
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.get_mut();
        match this.state {
            State::Streaming => match Pin::new(&mut this.inner).poll_next(cx) {
                Poll::Ready(None) => {
                    this.state = State::Flushing;
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                other => other,
            },
            State::Flushing => {
                this.state = State::Done;
                Poll::Ready(Some(Err(Box::new(Finished))))
            }
            State::Done => Poll::Ready(None),
        }
    }
}
