//! The subscription connection to a single Redis, spoken directly in RESP2.
//!
//! Every publication on a channel this instance subscribes arrives here,
//! its own included (Redis sends a publisher's messages back to it when it
//! subscribes the channel too), so this reader is on the path of every
//! remote message and of every own echo. redis-rs parses each reply into a
//! generic `Value` with a parser-combinator, allocating the channel and the
//! payload, before the caller can look at them: in the cluster benchmark
//! that parser was 28 % of the bridge thread's time. Here a publication is
//! recognised by its fixed shape, its origin is read in place, an own echo
//! is skipped without a copy or an allocation, and only another instance's
//! payload is copied out, once.
//!
//! A Redis Cluster (sharded pub/sub, RESP3 pushes) keeps redis-rs; so do
//! the publish lane and the request/response pool.

use std::io;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use redis::{ConnectionAddr, ConnectionInfo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::keys::NodeTag;
use super::wire;

/// Redis's own limit for one bulk string (`proto-max-bulk-len`): anything
/// longer is not Redis speaking.
const MAX_BULK: usize = 512 * 1024 * 1024;
/// Read-buffer growth step; a publication larger than this grows the
/// buffer (by doubling) until it fits, and it shrinks back once read.
const READ_CHUNK: usize = 64 * 1024;

/// One publication from another instance: its channel and payload.
pub(crate) struct Publication {
    pub channel: String,
    pub payload: Bytes,
}

/// What the connection answered to a command of ours.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    /// One `subscribe` confirmation (one per channel of a `SUBSCRIBE`).
    Subscribed,
    /// One `unsubscribe` confirmation.
    Unsubscribed,
    /// The answer to `PING` (`pong` while subscribed, `+PONG` otherwise).
    Pong,
    /// `+OK` (to `AUTH`).
    Ok,
    /// An error reply: it answers the whole command.
    Error(String),
}

/// One parsed frame, borrowing from the read buffer.
#[derive(Debug, PartialEq, Eq)]
enum Frame<'a> {
    Message {
        channel: &'a [u8],
        payload: &'a [u8],
    },
    Reply(Reply),
    /// A well-formed frame we have no use for (a `psubscribe` confirmation,
    /// another simple string).
    Other,
}

/// One element of a pub/sub array.
#[derive(Clone, Copy)]
enum Elem<'a> {
    Bulk(&'a [u8]),
    Null,
    Int,
}

fn bad(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("not a RESP2 pub/sub reply: {what}"),
    )
}

/// The line starting at `at` (without its CRLF) and where the next begins;
/// `None` while incomplete.
fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rest = buf.get(at..)?;
    let end = rest.windows(2).position(|w| w == b"\r\n")?;
    Some((&rest[..end], at + end + 2))
}

fn number(digits: &[u8]) -> io::Result<i64> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("a malformed length"))
}

/// One array element at `at`: a bulk string, a null, or an integer.
fn elem(buf: &[u8], at: usize) -> io::Result<Option<(Elem<'_>, usize)>> {
    let Some((head, body)) = line(buf, at) else {
        return Ok(None);
    };
    match head.first() {
        Some(b'$') => {
            let len = number(&head[1..])?;
            if len < 0 {
                return Ok(Some((Elem::Null, body)));
            }
            let len = usize::try_from(len).map_err(|_| bad("a negative length"))?;
            if len > MAX_BULK {
                return Err(bad("a bulk string longer than Redis allows"));
            }
            if buf.len() < body + len + 2 {
                return Ok(None);
            }
            if &buf[body + len..body + len + 2] != b"\r\n" {
                return Err(bad("a bulk string without its CRLF"));
            }
            Ok(Some((Elem::Bulk(&buf[body..body + len]), body + len + 2)))
        }
        Some(b':') => {
            number(&head[1..])?;
            Ok(Some((Elem::Int, body)))
        }
        _ => Err(bad("an unexpected array element")),
    }
}

/// The frame at the start of `buf` and its length; `None` while incomplete.
fn parse(buf: &[u8]) -> io::Result<Option<(Frame<'_>, usize)>> {
    let Some((head, mut at)) = line(buf, 0) else {
        return Ok(None);
    };
    let text = || String::from_utf8_lossy(&head[1..]).into_owned();
    match head.first() {
        Some(b'+') if &head[1..] == b"PONG" => Ok(Some((Frame::Reply(Reply::Pong), at))),
        Some(b'+') if &head[1..] == b"OK" => Ok(Some((Frame::Reply(Reply::Ok), at))),
        Some(b'+') => Ok(Some((Frame::Other, at))),
        Some(b'-') => Ok(Some((Frame::Reply(Reply::Error(text())), at))),
        Some(b'*') => {
            let n = number(&head[1..])?;
            if !(0..=4).contains(&n) {
                return Err(bad("an array of unexpected size"));
            }
            let mut elems = [Elem::Null; 4];
            for slot in elems.iter_mut().take(n as usize) {
                let Some((e, next)) = elem(buf, at)? else {
                    return Ok(None);
                };
                *slot = e;
                at = next;
            }
            let frame = match (n, elems) {
                (3, [Elem::Bulk(b"message"), Elem::Bulk(channel), Elem::Bulk(payload), _]) => {
                    Frame::Message { channel, payload }
                }
                (3, [Elem::Bulk(b"subscribe"), _, Elem::Int, _]) => Frame::Reply(Reply::Subscribed),
                (3, [Elem::Bulk(b"unsubscribe"), _, Elem::Int, _]) => {
                    Frame::Reply(Reply::Unsubscribed)
                }
                (2, [Elem::Bulk(b"pong"), _, _, _]) => Frame::Reply(Reply::Pong),
                _ => Frame::Other,
            };
            Ok(Some((frame, at)))
        }
        _ => Err(bad("an unexpected frame type")),
    }
}

/// Appends one command as a RESP array of bulk strings.
fn encode<'a>(out: &mut Vec<u8>, args: impl ExactSizeIterator<Item = &'a [u8]>) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

type Reader = Box<dyn AsyncRead + Send + Unpin>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// Reads frames off the connection: publications are returned, replies go
/// to the [`Sink`] that waits for them.
struct Incoming {
    read: Reader,
    buf: BytesMut,
    replies: mpsc::UnboundedSender<Reply>,
    own: NodeTag,
}

impl Incoming {
    /// The next publication from another instance; `None` when the
    /// connection has ended or spoke something that is not RESP2.
    async fn next(&mut self) -> Option<Publication> {
        loop {
            loop {
                let (frame, used) = match parse(&self.buf) {
                    Ok(Some(p)) => p,
                    Ok(None) => break,
                    Err(_) => return None,
                };
                let publication = match frame {
                    Frame::Message { channel, payload } => {
                        let theirs = wire::origin(payload).is_some_and(|o| o != self.own);
                        match (theirs, std::str::from_utf8(channel)) {
                            (true, Ok(channel)) => Some(Publication {
                                channel: channel.to_owned(),
                                payload: Bytes::copy_from_slice(payload),
                            }),
                            _ => None,
                        }
                    }
                    Frame::Reply(reply) => {
                        let _ = self.replies.send(reply);
                        None
                    }
                    Frame::Other => None,
                };
                self.buf.advance(used);
                if publication.is_some() {
                    return publication;
                }
            }
            if self.buf.capacity() > 4 * READ_CHUNK && self.buf.len() < READ_CHUNK / 2 {
                // A large publication has passed: its buffer goes with it.
                let mut fresh = BytesMut::with_capacity(READ_CHUNK);
                fresh.extend_from_slice(&self.buf);
                self.buf = fresh;
            } else if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
                self.buf.reserve(READ_CHUNK);
            }
            match self.read.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }
}

/// Sends SUBSCRIBE, UNSUBSCRIBE and PING, one at a time, and waits for
/// their answers.
pub(crate) struct Sink {
    write: Writer,
    replies: mpsc::UnboundedReceiver<Reply>,
    /// Answers still owed to the last command (one command is out at a
    /// time). If its caller stopped waiting (a timeout), they are read and
    /// dropped before the next command's.
    owed: usize,
    /// A write was cut off (its caller timed out): the connection holds
    /// half a command and cannot be used any more.
    broken: bool,
}

impl Sink {
    async fn command(&mut self, args: &[&[u8]], answers: usize, want: Reply) -> io::Result<()> {
        if self.broken {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "an earlier command was cut off mid-write",
            ));
        }
        while self.owed > 0 {
            self.take_one().await?;
        }
        let mut out = Vec::with_capacity(64);
        encode(&mut out, args.iter().copied());
        // `write_all` is not cancel-safe: if the caller's timeout drops it
        // midway, the flag stays set.
        self.broken = true;
        self.write.write_all(&out).await?;
        self.broken = false;
        self.owed = answers;
        let mut error = None;
        while self.owed > 0 {
            match self.take_one().await? {
                Reply::Error(e) => error = Some(e),
                r if r == want => {}
                r => error = Some(format!("unexpected answer {r:?}")),
            }
        }
        match error {
            None => Ok(()),
            Some(e) => Err(io::Error::other(e)),
        }
    }

    /// Takes one answer off the connection, accounting for what it settles:
    /// an error answers the whole command.
    async fn take_one(&mut self) -> io::Result<Reply> {
        let reply = self.replies.recv().await.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the subscription connection closed",
            )
        })?;
        self.owed = match &reply {
            Reply::Error(_) => 0,
            _ => self.owed.saturating_sub(1),
        };
        Ok(reply)
    }

    pub async fn subscribe(&mut self, channels: &[String]) -> io::Result<()> {
        if channels.is_empty() {
            // Redis would answer an error, and no confirmation.
            return Ok(());
        }
        let mut args: Vec<&[u8]> = vec![b"SUBSCRIBE"];
        args.extend(channels.iter().map(|c| c.as_bytes()));
        self.command(&args, channels.len(), Reply::Subscribed).await
    }

    pub async fn unsubscribe(&mut self, channel: &str) -> io::Result<()> {
        self.command(
            &[b"UNSUBSCRIBE", channel.as_bytes()],
            1,
            Reply::Unsubscribed,
        )
        .await
    }

    pub async fn ping(&mut self) -> io::Result<()> {
        self.command(&[b"PING"], 1, Reply::Pong).await
    }
}

/// The two sides of one connection.
fn over(read: Reader, write: Writer, own: NodeTag) -> (Sink, Incoming) {
    let (tx, rx) = mpsc::unbounded_channel();
    let sink = Sink {
        write,
        replies: rx,
        owed: 0,
        broken: false,
    };
    let incoming = Incoming {
        read,
        buf: BytesMut::with_capacity(READ_CHUNK),
        replies: tx,
        own,
    };
    (sink, incoming)
}

/// Opens the subscription connection described by `info` (TCP with
/// `TCP_NODELAY` and keepalive, or a Unix socket), authenticates as the
/// URL says, and splits it into the command side and the stream of other
/// instances' publications (`own` names this instance's). The stream ends
/// when the connection does.
pub(crate) async fn connect(
    info: &ConnectionInfo,
    own: NodeTag,
) -> io::Result<(Sink, BoxStream<'static, Publication>)> {
    let (read, write): (Reader, Writer) = match info.addr() {
        ConnectionAddr::Tcp(host, port) => {
            let stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
            stream.set_nodelay(true)?;
            socket2::SockRef::from(&stream).set_tcp_keepalive(
                &socket2::TcpKeepalive::new().with_time(super::conn::KEEPALIVE),
            )?;
            let (r, w) = stream.into_split();
            (Box::new(r), Box::new(w))
        }
        #[cfg(unix)]
        ConnectionAddr::Unix(path) => {
            let (r, w) = tokio::net::UnixStream::connect(path).await?.into_split();
            (Box::new(r), Box::new(w))
        }
        other => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("this build cannot subscribe over {other}"),
            ))
        }
    };
    let (mut sink, mut incoming) = over(read, write, own);
    let settings = info.redis_settings();
    if let Some(password) = settings.password() {
        let mut args: Vec<&[u8]> = vec![b"AUTH"];
        args.extend(settings.username().map(str::as_bytes));
        args.push(password.as_bytes());
        // Nothing is subscribed yet: the only frame to read is the answer.
        tokio::select! {
            r = sink.command(&args, 1, Reply::Ok) => r?,
            _ = incoming.next() => {
                // Redis may answer with an error and close at once (too many
                // clients): that error is the reason to report.
                return Err(match sink.replies.try_recv() {
                    Ok(Reply::Error(e)) => io::Error::other(e),
                    _ => io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "Redis closed the connection before answering AUTH",
                    ),
                });
            }
        }
    }
    let stream = futures_util::stream::unfold(incoming, |mut incoming| async move {
        let p = incoming.next().await?;
        Some((p, incoming))
    })
    .boxed();
    Ok((sink, stream))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn message(channel: &str, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(
            &mut out,
            [b"message".as_slice(), channel.as_bytes(), payload].into_iter(),
        );
        out
    }

    #[test]
    fn a_publication_is_read_in_place_with_its_length() {
        let raw = message("br:{abc}:c", b"pay\r\nload");
        let (frame, used) = parse(&raw).unwrap().unwrap();
        assert_eq!(used, raw.len());
        assert_eq!(
            frame,
            Frame::Message {
                channel: b"br:{abc}:c",
                payload: b"pay\r\nload"
            }
        );
    }

    #[test]
    fn a_frame_cut_anywhere_waits_for_the_rest() {
        let raw = message("br:{abc}:c", &[7u8; 300]);
        for cut in 0..raw.len() {
            assert!(parse(&raw[..cut]).unwrap().is_none(), "cut at {cut}");
        }
    }

    #[test]
    fn frames_back_to_back_are_read_one_by_one() {
        let mut raw = b"*3\r\n$9\r\nsubscribe\r\n$2\r\nc1\r\n:1\r\n".to_vec();
        raw.extend(message("c1", b"x"));
        raw.extend_from_slice(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n");
        raw.extend_from_slice(b"*3\r\n$11\r\nunsubscribe\r\n$2\r\nc1\r\n:0\r\n");
        raw.extend_from_slice(b"+PONG\r\n-NOAUTH Authentication required.\r\n+OK\r\n");
        let mut at = 0;
        let mut frames = Vec::new();
        while let Some((f, used)) = parse(&raw[at..]).unwrap() {
            frames.push(format!("{f:?}"));
            at += used;
        }
        assert_eq!(at, raw.len());
        assert_eq!(
            frames,
            [
                "Reply(Subscribed)",
                "Message { channel: [99, 49], payload: [120] }",
                "Reply(Pong)",
                "Reply(Unsubscribed)",
                "Reply(Pong)",
                "Reply(Error(\"NOAUTH Authentication required.\"))",
                "Reply(Ok)",
            ]
        );
    }

    #[test]
    fn an_unsubscribe_of_everything_confirms_with_a_null_channel() {
        let raw = b"*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n";
        let (frame, used) = parse(raw).unwrap().unwrap();
        assert_eq!(
            (frame, used),
            (Frame::Reply(Reply::Unsubscribed), raw.len())
        );
    }

    #[test]
    fn what_is_not_resp2_pub_sub_is_an_error_not_a_wait() {
        for raw in [
            b"hello\r\n".as_slice(),
            b"*3\r\n$x\r\n",
            b"*3\r\n$7\r\nmessageXX",
            b"*9\r\n",
            b"*3\r\n*1\r\n",
            b"*1\r\n$999999999999\r\n",
        ] {
            assert!(parse(raw).is_err(), "{}", String::from_utf8_lossy(raw));
        }
    }

    /// A sink and its reader over an in-memory pipe, the reader running;
    /// returns the Redis end and the publications read.
    fn in_memory(
        own: NodeTag,
    ) -> (
        Sink,
        tokio::io::DuplexStream,
        mpsc::UnboundedReceiver<Publication>,
    ) {
        let (ours, redis) = tokio::io::duplex(64 * 1024);
        let (read, write) = tokio::io::split(ours);
        let (sink, mut incoming) = over(Box::new(read), Box::new(write), own);
        let (tx, rx) = mpsc::unbounded_channel();
        actix_rt::spawn(async move {
            while let Some(p) = incoming.next().await {
                let _ = tx.send(p);
            }
        });
        (sink, redis, rx)
    }

    #[actix_rt::test]
    async fn a_late_answer_to_a_command_given_up_on_is_not_taken_for_the_next_one() {
        let (mut sink, mut redis, _) = in_memory(NodeTag([1; 16]));
        let gave_up = tokio::time::timeout(Duration::from_millis(20), sink.ping()).await;
        assert!(gave_up.is_err());
        redis.write_all(b"+PONG\r\n").await.unwrap();
        redis
            .write_all(b"*3\r\n$11\r\nunsubscribe\r\n$1\r\nc\r\n:0\r\n")
            .await
            .unwrap();
        sink.unsubscribe("c").await.unwrap();
    }

    #[actix_rt::test]
    async fn an_error_answers_a_whole_subscribe_and_the_next_command_gets_its_own_answer() {
        let (mut sink, mut redis, _) = in_memory(NodeTag([1; 16]));
        redis.write_all(b"-ERR busy\r\n").await.unwrap();
        let channels = ["a".to_owned(), "b".to_owned(), "c".to_owned()];
        let refused = tokio::time::timeout(Duration::from_secs(2), sink.subscribe(&channels))
            .await
            .expect("the error settles the whole SUBSCRIBE")
            .unwrap_err();
        assert!(refused.to_string().contains("ERR busy"), "{refused}");
        redis.write_all(b"+PONG\r\n").await.unwrap();
        sink.ping().await.unwrap();
        // Nothing to subscribe: nothing asked, nothing owed.
        sink.subscribe(&[]).await.unwrap();
        redis.write_all(b"+PONG\r\n").await.unwrap();
        sink.ping().await.unwrap();
    }

    #[actix_rt::test]
    async fn an_own_echo_is_skipped_and_another_instance_s_publication_is_kept_in_order() {
        let (own, other) = (NodeTag([1; 16]), NodeTag([2; 16]));
        let (_sink, mut redis, mut got) = in_memory(own);
        let payload = |from: NodeTag, text: &str| {
            let mut p = wire::broadcast_header(from);
            p.extend_from_slice(text.as_bytes());
            p.to_vec()
        };
        for (from, text) in [
            (own, "mine"),
            (other, "first"),
            (own, "mine again"),
            (other, "second"),
        ] {
            redis
                .write_all(&message("br:{t}:c", &payload(from, text)))
                .await
                .unwrap();
        }
        for want in ["first", "second"] {
            let p = got.recv().await.unwrap();
            assert_eq!(p.channel, "br:{t}:c");
            assert!(p.payload.ends_with(want.as_bytes()));
            assert_eq!(wire::origin(&p.payload), Some(other));
        }
        drop(redis);
        assert!(
            got.recv().await.is_none(),
            "the stream ends with the connection"
        );
    }

    #[actix_rt::test]
    async fn a_large_publication_is_read_whole_and_its_buffer_is_given_back() {
        let (own, other) = (NodeTag([1; 16]), NodeTag([2; 16]));
        let (ours, mut redis) = tokio::io::duplex(64 * 1024);
        let (read, write) = tokio::io::split(ours);
        let (_sink, mut incoming) = over(Box::new(read), Box::new(write), own);
        let mut big = wire::broadcast_header(other);
        big.extend_from_slice(&vec![b'x'; 3 * 1024 * 1024]);
        let mut small = wire::broadcast_header(other);
        small.extend_from_slice(b"small");
        let big_len = big.len();
        let writer = actix_rt::spawn(async move {
            redis.write_all(&message("c", &big)).await.unwrap();
            redis.write_all(&message("c", &small)).await.unwrap();
            redis
        });
        let first = incoming.next().await.unwrap();
        assert_eq!(first.payload.len(), big_len);
        let second = incoming.next().await.unwrap();
        assert!(second.payload.ends_with(b"small"));
        let mut redis = writer.await.unwrap();
        redis
            .write_all(&message("c", &second.payload))
            .await
            .unwrap();
        let third = incoming.next().await.unwrap();
        assert_eq!(third.payload, second.payload);
        let capacity = incoming.buf.capacity();
        assert!(capacity <= READ_CHUNK, "{capacity}");
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        encode(&mut out, [b"SUBSCRIBE".as_slice(), b"a", b""].into_iter());
        assert_eq!(out, b"*3\r\n$9\r\nSUBSCRIBE\r\n$1\r\na\r\n$0\r\n\r\n");
    }
}
