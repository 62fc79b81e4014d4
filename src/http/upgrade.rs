//! Taking over upgraded connections.
//!
//! The HTTP/1 dispatcher hands every `Upgrade: websocket` request, with the
//! connection itself, to this service instead of answering it. The service
//! runs the request through the same application as any other (routes,
//! middleware, admission, error bodies), writes the response, and when that
//! is a `101` carrying a [`Ticket`] gives the bare socket, and any bytes
//! the client sent behind its request, to a new session actor. The
//! dispatcher, with its buffers, is gone from then on: a connection costs
//! what its session holds and nothing more (see `docs/architecture.md`).

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use actix_codec::Framed;
use actix_http::body::{BodySize, MessageBody};
use actix_http::h1::{Codec, Message};
use actix_http::HttpMessage;
use actix_http::{ConnectionType, Request, Response, StatusCode};
use actix_service::{fn_factory, fn_service, Service, ServiceFactory};
use actix_web::dev::{AppConfig, ServiceResponse};
use bytes::BytesMut;
use tokio::net::TcpStream;

use crate::session::{self, Ticket};

/// Marks a request that came through this service, so that the WebSocket
/// handlers accept only upgrades that can really happen.
pub(crate) struct ViaUpgrade;

/// The upgrade service of one worker, around its own instance of the
/// application. `time_limit` bounds writing a response to a client that
/// does not read it.
pub(crate) fn factory<F, SF, B>(
    make_app: F,
    time_limit: Duration,
) -> impl ServiceFactory<
    (Request, Framed<TcpStream, Codec>),
    Config = (),
    Response = (),
    Error = actix_web::Error,
    InitError = (),
>
where
    F: Fn() -> SF + 'static,
    SF: ServiceFactory<
            Request,
            Config = AppConfig,
            Response = ServiceResponse<B>,
            Error = actix_web::Error,
        > + 'static,
    SF::Service: 'static,
    B: MessageBody + 'static,
{
    fn_factory(move || {
        let app = make_app().new_service(AppConfig::default());
        async move {
            let app = Rc::new(app.await.map_err(|_| ())?);
            Ok(fn_service(move |(req, framed)| {
                let app = app.clone();
                async move {
                    let done = match tokio::time::timeout(time_limit, serve(app, req, framed)).await
                    {
                        Ok(done) => done,
                        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
                    };
                    done.map_err(actix_web::Error::from)
                }
            }))
        }
    })
}

async fn serve<S, B>(
    app: Rc<S>,
    req: Request,
    mut framed: Framed<TcpStream, Codec>,
) -> std::io::Result<()>
where
    S: Service<Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody + 'static,
{
    req.extensions_mut().insert(ViaUpgrade);
    let res: Response<_> = match app.call(req).await {
        Ok(res) => res.map_into_boxed_body().into(),
        Err(e) => e.as_response_error().error_response().into(),
    };
    let (mut head, body) = res.into_parts();
    let ticket = head.extensions_mut().remove::<Ticket>();
    match ticket {
        Some(ticket) if head.status() == StatusCode::SWITCHING_PROTOCOLS => {
            drop(body);
            write(&mut framed, Message::Item((head, BodySize::None)))?;
            flush(&mut framed).await?;
            let parts = framed.into_parts();
            // The dispatcher's buffers stay behind: only bytes the client
            // already sent past its request are kept, in a buffer of their size.
            let unread = match parts.read_buf.is_empty() {
                true => BytesMut::new(),
                false => BytesMut::from(&parts.read_buf[..]),
            };
            session::start(ticket, parts.io, unread);
        }
        _ => {
            // Refused: the answer, then the connection ends (it cannot go
            // back to plain HTTP once upgrade bytes may be on the wire).
            let body = actix_http::body::to_bytes(body).await.unwrap_or_default();
            head.head_mut().set_connection_type(ConnectionType::Close);
            let size = BodySize::Sized(body.len() as u64);
            write(&mut framed, Message::Item((head, size)))?;
            write(&mut framed, Message::Chunk(Some(body)))?;
            write(&mut framed, Message::Chunk(None))?;
            flush(&mut framed).await?;
        }
    }
    Ok(())
}

fn write(
    framed: &mut Framed<TcpStream, Codec>,
    item: Message<(Response<()>, BodySize)>,
) -> std::io::Result<()> {
    Pin::new(framed).write(item)
}

fn flush(framed: &mut Framed<TcpStream, Codec>) -> impl Future<Output = std::io::Result<()>> + '_ {
    poll_fn(move |cx| Pin::new(&mut *framed).flush(cx))
}
