//! The HTTP/1 front of every connection.
//!
//! Body-less `GET`/`HEAD` requests for the two delivery paths (`/api/v1/downloads/…` and
//! `/files/…`) are read, answered and written here; everything else — any other path, a
//! request with a body, an upgrade, HTTP/2, HTTP/1.0, a head this parser will not take — is
//! handed to hyper together with the bytes already read, and hyper serves the connection
//! from then on. Either way the request goes through the same envelope (request id, metrics,
//! header limit, browser pages, rate limits) to the same handlers, so the answers are the
//! same — a plain download link here reaches its handler without the router's matching and
//! extractors (`direct_download`), everything else through the router; only the wire work
//! differs:
//!
//! * a local, unwatermarked file body ([`FileRegion`] on the response) is sent by the kernel
//!   with `sendfile(2)`: no byte passes through user space, and a stalled download holds no
//!   buffer at all (hyper can only write the body stream, copying every byte twice);
//! * a redirect or an error is one `write` of head and body.
//!
//! A browser that follows a download's 302 on the same keep-alive connection stays here,
//! so its file is sent with `sendfile` too.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use axum::Router;
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Body as _;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::Watcher;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::storage::FileRegion;

/// Request lines the front answers itself; any other start goes to hyper.
const NATIVE: [&[u8]; 4] = [
    b"GET /api/v1/downloads/",
    b"GET /files/",
    b"HEAD /api/v1/downloads/",
    b"HEAD /files/",
];

/// Most header lines the front parses; a request with more goes to hyper (which takes 100).
const MAX_HEADERS: usize = 64;

/// A request head must arrive within this (hyper's own header-read timeout); an idle
/// keep-alive connection is closed after it.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Room made for each read of a request head.
const READ_CHUNK: usize = 4096;

/// Bodies up to this size go out in the same `write` as the head.
const COALESCE: u64 = 16 * 1024;

/// What the server loop shares with every connection.
pub struct Front {
    pub app: crate::app::App,
    pub router: Router,
    pub hyper: auto::Builder<TokioExecutor>,
    pub stop: CancellationToken,
    /// Largest request head (the same bound hyper applies).
    pub max_head: usize,
}

/// Serves one accepted connection until the client closes it, an error ends it, or the
/// server stops (between requests).
pub async fn connection(front: std::sync::Arc<Front>, mut io: TcpStream, peer: SocketAddr, watcher: Watcher) {
    let mut buf = BytesMut::new();
    loop {
        let (head_len, req) = match read_head(&front, &mut io, &mut buf, peer).await {
            Head::Native(len, req) => (len, req),
            Head::Hyper => return to_hyper(&front, Rewind { pre: buf.freeze(), io }, peer, watcher).await,
            Head::Closed => return,
        };
        buf.advance(head_len);
        if buf.is_empty() {
            // Nothing pipelined behind this request: a download that stalls for minutes holds
            // no read buffer meanwhile.
            buf = BytesMut::new();
        }
        let head_only = req.method() == Method::HEAD;
        let client_close = wants_close(req.headers());
        let resp = match direct_download_token(&req) {
            Some(token) => direct_download(&front.app, *req, token, peer).await,
            None => match tower::ServiceExt::oneshot(front.router.clone(), *req).await {
                Ok(r) => r,
                Err(never) => match never {},
            },
        };
        let close = client_close || wants_close(resp.headers()) || front.stop.is_cancelled();
        if write_response(&front.app, &mut io, resp, head_only, close)
            .await
            .is_err()
            || close
        {
            return;
        }
    }
}

/// The token of a download link the front answers without the router: `/api/v1/downloads/`
/// and one path segment with nothing for the router to decode (no `%`) and no query (so no
/// `?file=` to parse). Every other request — and any such link written otherwise — goes
/// through the router to the same handler.
fn direct_download_token(req: &Request<Body>) -> Option<String> {
    let token = req.uri().path().strip_prefix("/api/v1/downloads/")?;
    let plain = !token.is_empty() && req.uri().query().is_none() && !token.contains(['/', '%']);
    plain.then(|| token.to_string())
}

/// A download link's answer without the router: the same envelope (request id, metrics,
/// header limit, browser pages, rate limits; `http::enveloped`), the same handler
/// (`commerce::download_answer`), and a panic answered 500 as the router's layer answers it.
/// What it skips is the router's own work per request — route matching, the boxed services
/// and middleware futures, the extractors: a quarter of the HTTP thread's CPU per download
/// start in a profile (docs/operations.md, "A slower VM").
async fn direct_download(
    app: &crate::app::App,
    mut req: Request<Body>,
    token: String,
    peer: SocketAddr,
) -> Response<Body> {
    use crate::http::commerce::{download_answer, DOWNLOAD_ROUTE};
    use futures::FutureExt;
    req.extensions_mut().insert(crate::http::FrontRoute(DOWNLOAD_ROUTE));
    let answer = crate::http::enveloped(app, req, |req| async move {
        let head = req.method() == Method::HEAD;
        match download_answer(app, &token, None, peer, head, req.headers()).await {
            Ok(r) => r,
            Err(e) => axum::response::IntoResponse::into_response(e),
        }
    });
    match std::panic::AssertUnwindSafe(answer).catch_unwind().await {
        Ok(r) => r,
        Err(panic) => crate::http::panic_response(panic),
    }
}

enum Head {
    /// A request the front answers; the head's length in the buffer.
    Native(usize, Box<Request<Body>>),
    /// Anything else: hyper takes the connection with the buffered bytes.
    Hyper,
    /// The client went away, the head timed out, or the server is stopping.
    Closed,
}

async fn read_head(front: &Front, io: &mut TcpStream, buf: &mut BytesMut, peer: SocketAddr) -> Head {
    let deadline = tokio::time::Instant::now() + HEAD_TIMEOUT;
    loop {
        if !buf.is_empty() {
            match classify(buf, peer, front.max_head) {
                Parsed::Native(len, req) => return Head::Native(len, req),
                Parsed::Hyper => return Head::Hyper,
                Parsed::More => {}
            }
        }
        let idle = buf.is_empty();
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        tokio::select! {
            r = io.read_buf(buf) => match r {
                Ok(0) | Err(_) => return Head::Closed,
                Ok(_) => {}
            },
            () = front.stop.cancelled(), if idle => return Head::Closed,
            () = tokio::time::sleep_until(deadline) => return Head::Closed,
        }
    }
}

enum Parsed {
    Native(usize, Box<Request<Body>>),
    Hyper,
    More,
}

fn classify(buf: &[u8], peer: SocketAddr, max_head: usize) -> Parsed {
    let start = &buf[..buf.len().min(32)];
    let candidate = NATIVE.iter().any(|p| start.starts_with(p));
    if !candidate {
        // Still a prefix of one of ours: wait for more bytes before deciding.
        let prefix = NATIVE.iter().any(|p| p.starts_with(start));
        return if prefix { Parsed::More } else { Parsed::Hyper };
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => match to_request(&parsed, peer) {
            Some(req) => Parsed::Native(len, Box::new(req)),
            None => Parsed::Hyper,
        },
        Ok(httparse::Status::Partial) if buf.len() < max_head => Parsed::More,
        // Too long, too many headers, or malformed: hyper answers these as it always has.
        _ => Parsed::Hyper,
    }
}

/// The parsed head as a request for the router, or `None` when hyper should take it: not
/// HTTP/1.1, a body, an upgrade, `Expect`, or a name, value or target `http` refuses.
fn to_request(parsed: &httparse::Request<'_, '_>, peer: SocketAddr) -> Option<Request<Body>> {
    if parsed.version != Some(1) {
        return None;
    }
    let method = match parsed.method? {
        "GET" => Method::GET,
        "HEAD" => Method::HEAD,
        _ => return None,
    };
    let uri = axum::http::Uri::try_from(parsed.path?).ok()?;
    let mut headers = HeaderMap::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(h.value).ok()?;
        let has_body = (name == header::CONTENT_LENGTH && value.as_bytes() != b"0")
            || name == header::TRANSFER_ENCODING
            || name == header::UPGRADE
            || name == header::EXPECT;
        if has_body {
            return None;
        }
        headers.append(name, value);
    }
    let mut req = Request::new(Body::empty());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
    Some(req)
}

fn wants_close(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("close"))
}

/// Writes `resp` as HTTP/1.1: `Content-Length` when the length is known (from the handler
/// or an exact body size), else chunked; no body for `HEAD`, 1xx, 204 and 304.
async fn write_response(
    app: &crate::app::App,
    io: &mut TcpStream,
    resp: Response<Body>,
    head_only: bool,
    close: bool,
) -> io::Result<()> {
    let (mut parts, mut body) = resp.into_parts();
    let status = parts.status;
    let no_body_status =
        status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let length = if no_body_status {
        None
    } else if head_only {
        declared
    } else {
        declared.or_else(|| body.size_hint().exact())
    };
    let chunked = !no_body_status && !head_only && length.is_none();

    let mut head = Vec::with_capacity(512);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if name == header::CONNECTION || name == header::TRANSFER_ENCODING || name == header::CONTENT_LENGTH {
            continue;
        }
        push_header(&mut head, name.as_str().as_bytes(), value.as_bytes());
    }
    if !parts.headers.contains_key(header::DATE) {
        push_header(&mut head, b"date", http_date().as_bytes());
    }
    if let Some(n) = length {
        push_header(&mut head, b"content-length", n.to_string().as_bytes());
    }
    if chunked {
        push_header(&mut head, b"transfer-encoding", b"chunked");
    }
    if close {
        push_header(&mut head, b"connection", b"close");
    }
    head.extend_from_slice(b"\r\n");

    if head_only || no_body_status {
        return io.write_all(&head).await;
    }
    let region = parts
        .extensions
        .remove::<FileRegion>()
        .filter(|r| Some(r.len) == length);
    #[cfg(target_os = "linux")]
    if let Some(region) = region {
        drop(body);
        // Corked (nginx's `tcp_nopush`): the head rides in the first full segment of the
        // file, and the kernel sends full segments only until the last byte uncorks it.
        let corked = rustix::net::sockopt::set_tcp_cork(&*io, true).is_ok();
        io.write_all(&head).await?;
        // A stalled download can hold this future for minutes: the head and the response's
        // headers are not needed for it.
        drop(head);
        drop(parts);
        let sent = send_region(app, io, &region).await;
        if corked {
            let _ = rustix::net::sockopt::set_tcp_cork(&*io, false);
        }
        return sent;
    }
    // Elsewhere than Linux the body stream below carries the file instead.
    #[cfg(not(target_os = "linux"))]
    let _ = (app, region);
    match length {
        Some(n) if n <= COALESCE => {
            let head_len = head.len();
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.map_err(io::Error::other)?.into_data() {
                    head.extend_from_slice(&data);
                }
            }
            if (head.len() - head_len) as u64 != n {
                return Err(io::Error::other("body length differs from its Content-Length"));
            }
            io.write_all(&head).await
        }
        Some(n) => {
            io.write_all(&head).await?;
            let mut sent = 0u64;
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.map_err(io::Error::other)?.into_data() {
                    sent += data.len() as u64;
                    if sent > n {
                        return Err(io::Error::other("body longer than its Content-Length"));
                    }
                    io.write_all(&data).await?;
                }
            }
            if sent == n {
                Ok(())
            } else {
                Err(io::Error::other("body shorter than its Content-Length"))
            }
        }
        None => {
            io.write_all(&head).await?;
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.map_err(io::Error::other)?.into_data() {
                    if data.is_empty() {
                        continue;
                    }
                    let mut chunk = Vec::with_capacity(data.len() + 16);
                    chunk.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                    chunk.extend_from_slice(&data);
                    chunk.extend_from_slice(b"\r\n");
                    io.write_all(&chunk).await?;
                }
            }
            io.write_all(b"0\r\n\r\n").await
        }
    }
}

fn push_header(head: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    head.extend_from_slice(name);
    head.extend_from_slice(b": ");
    head.extend_from_slice(value);
    head.extend_from_slice(b"\r\n");
}

/// The `Date` header value, formatted once per second per thread.
fn http_date() -> String {
    use std::cell::RefCell;
    thread_local! {
        static CACHE: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs || c.1.is_empty() {
            *c = (secs, httpdate::fmt_http_date(now));
        }
        c.1.clone()
    })
}

/// Sends `region` of its file to the socket with `sendfile(2)`: the kernel moves the bytes
/// from the page cache to the socket, and nothing is buffered here while the client is slow.
///
/// A `sendfile` of pages not in the page cache reads them from disk before it returns, which
/// would hold this HTTP thread (and every request queued on it) for the read. So each call
/// first asks the kernel, without waiting (`preadv2` with `RWF_NOWAIT`), whether the pages
/// it is about to send are cached, one every MiB and the last; when they are not, that chunk
/// (at most [`CHUNK`]) is sent from the blocking pool instead, through a duplicate of the
/// socket's descriptor, and the disk read waits there (what nginx's `aio threads` does).
#[cfg(target_os = "linux")]
async fn send_region(app: &crate::app::App, io: &mut TcpStream, region: &FileRegion) -> io::Result<()> {
    let mut offset = region.offset;
    let end = region.offset + region.len;
    let mut socket: Option<std::sync::Arc<rustix::fd::OwnedFd>> = None;
    while offset < end {
        // One call sends what the socket buffer takes, at most CHUNK (the bytes probed).
        let want = usize::try_from(end - offset).unwrap_or(usize::MAX).min(CHUNK);
        io.writable().await?;
        if !cached(&region.file, offset, want) {
            let out = match &socket {
                Some(s) => s.clone(),
                None => socket
                    .insert(std::sync::Arc::new(rustix::io::fcntl_dupfd_cloexec(&*io, 0)?))
                    .clone(),
            };
            let file = region.file.clone();
            let at = offset;
            let sent = tokio::task::spawn_blocking(move || {
                let mut at = at;
                rustix::fs::sendfile(&*out, &*file, Some(&mut at), want).map(|n| (n, at))
            })
            .await
            .map_err(io::Error::other)?;
            match sent {
                Ok((0, _)) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file ended early")),
                Ok((n, at)) => {
                    offset = at;
                    app.metrics.sent_by_kernel(n as u64, true);
                }
                // The socket filled up since it was writable: clear its readiness and wait.
                Err(rustix::io::Errno::AGAIN) => {
                    let _ = io.try_io(tokio::io::Interest::WRITABLE, || {
                        Err::<(), _>(io::Error::from(io::ErrorKind::WouldBlock))
                    });
                }
                Err(e) => return Err(e.into()),
            }
            continue;
        }
        let stream = &*io;
        match stream.try_io(tokio::io::Interest::WRITABLE, || {
            rustix::fs::sendfile(stream, &*region.file, Some(&mut offset), want).map_err(io::Error::from)
        }) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file ended early")),
            Ok(n) => app.metrics.sent_by_kernel(n as u64, false),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Most bytes one `sendfile` sends: more than a socket buffer takes at once, and the range
/// whose pages are probed before it ([`cached`]).
#[cfg(target_os = "linux")]
const CHUNK: usize = 8 << 20;

/// Distance between two pages [`cached`] probes: a hole in the cache shorter than this
/// between two probes goes unseen (and is read inline, as before the probes).
#[cfg(target_os = "linux")]
const PROBE_EVERY: u64 = 1 << 20;

/// Whether the pages of `len` bytes at `offset` are in the page cache, asked without waiting
/// (`RWF_NOWAIT`, a one-byte read each): the first byte, one byte every [`PROBE_EVERY`]
/// after it and the last byte, so at most 9 probes of a [`CHUNK`] (a few µs against the
/// milliseconds it takes to send). Anything but "would block" — cached, past the end, a file
/// system that cannot say — counts as cached, so the send goes on as before.
#[cfg(target_os = "linux")]
fn cached(file: &std::fs::File, offset: u64, len: usize) -> bool {
    let probe = |at: u64| {
        let mut byte = [0u8; 1];
        let mut bufs = [std::io::IoSliceMut::new(&mut byte)];
        !matches!(
            rustix::io::preadv2(file, &mut bufs, at, rustix::io::ReadWriteFlags::NOWAIT),
            Err(rustix::io::Errno::AGAIN)
        )
    };
    let last = offset + (len as u64).max(1) - 1;
    (offset..last).step_by(PROBE_EVERY as usize).all(probe) && probe(last)
}

/// Hands the connection to hyper, replaying the bytes already read.
async fn to_hyper(front: &Front, io: Rewind, peer: SocketAddr, watcher: Watcher) {
    let router = front.router.clone();
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
        tower::ServiceExt::oneshot(router.clone(), req)
    });
    let conn = front
        .hyper
        .serve_connection_with_upgrades(TokioIo::new(io), svc)
        .into_owned();
    let _ = watcher.watch(conn).await;
}

/// A stream that first yields bytes already read from it.
struct Rewind {
    pre: Bytes,
    io: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.pre.is_empty() {
            let n = this.pre.len().min(buf.remaining());
            buf.put_slice(&this.pre[..n]);
            this.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "127.0.0.1:9".parse().unwrap()
    }

    #[test]
    fn only_a_plain_download_link_skips_the_router() {
        let token = |target: &str| {
            let req = Request::builder().uri(target).body(Body::empty()).unwrap();
            direct_download_token(&req)
        };
        assert_eq!(
            token("/api/v1/downloads/d1.grt_1.99.k.mac").as_deref(),
            Some("d1.grt_1.99.k.mac")
        );
        // Something for the router to decode or route elsewhere: it takes them, as before.
        assert_eq!(token("/api/v1/downloads/d1.grt_1.99.k.mac?file=a.pdf"), None, "a query");
        assert_eq!(token("/api/v1/downloads/d1%2Egrt"), None, "percent-encoded");
        assert_eq!(token("/api/v1/downloads/a/b"), None, "two segments");
        assert_eq!(token("/api/v1/downloads/"), None, "no token");
        assert_eq!(token("/files/f1.x/a.pdf"), None);
        // The route it labels them with is the handler's documented route.
        let (_, spec) = crate::http::routes();
        assert!(spec.paths.paths.contains_key(crate::http::commerce::DOWNLOAD_ROUTE));
    }

    #[test]
    fn only_body_less_delivery_requests_are_taken() {
        let native = b"GET /files/f1.x/a.pdf HTTP/1.1\r\nHost: a\r\nRange: bytes=0-9\r\n\r\nGET /";
        match classify(native, peer(), 65536) {
            Parsed::Native(len, req) => {
                assert_eq!(len, native.len() - 5, "the next request's bytes stay in the buffer");
                assert_eq!(req.uri().path(), "/files/f1.x/a.pdf");
                assert_eq!(req.headers()["range"], "bytes=0-9");
            }
            _ => panic!("a delivery GET is answered by the front"),
        }
        let cases: [&[u8]; 8] = [
            b"GET /healthz HTTP/1.1\r\n\r\n",
            b"POST /files/x HTTP/1.1\r\nContent-Length: 2\r\n\r\nab",
            b"GET /files/x HTTP/1.0\r\n\r\n",
            b"GET /files/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /files/x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
            b"GET /files/x HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"GET /files/x HTTP/1.1\r\nBad Header: x\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ];
        for c in cases {
            assert!(
                matches!(classify(c, peer(), 65536), Parsed::Hyper),
                "{:?} goes to hyper",
                String::from_utf8_lossy(c)
            );
        }
        // Undecided until the request line or the head is complete.
        for c in [&b"GE"[..], b"GET /fi", b"GET /files/x HTTP/1.1\r\nHost: a\r\n"] {
            assert!(matches!(classify(c, peer(), 65536), Parsed::More));
        }
        // A head larger than the limit is hyper's to refuse.
        let mut long = b"GET /files/x HTTP/1.1\r\nX-A: ".to_vec();
        long.extend(std::iter::repeat_n(b'a', 70_000));
        assert!(matches!(classify(&long, peer(), 65536), Parsed::Hyper));
    }

    #[test]
    fn close_is_a_token_of_connection() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, Close"));
        assert!(wants_close(&h));
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        assert!(!wants_close(&h));
    }

    /// A hole in the page cache in the middle of a chunk is seen (its first and last pages
    /// are cached), so that chunk is sent from the blocking pool rather than read inline.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_hole_in_the_middle_of_a_chunk_is_seen() {
        use std::io::{Read, Write};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("holes.bin");
        let mut f = std::fs::File::create(&path).unwrap();
        let block: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
        for _ in 0..8 {
            f.write_all(&block).unwrap();
        }
        f.sync_all().unwrap();
        let mut f = std::fs::File::open(&path).unwrap();
        std::io::copy(&mut (&mut f).take(u64::MAX), &mut std::io::sink()).unwrap();
        assert!(cached(&f, 0, CHUNK), "a file just read is cached");
        // Drop 3-4 MiB only (clean pages, so the kernel can let them go at once).
        rustix::fs::fadvise(
            &f,
            3 << 20,
            std::num::NonZeroU64::new(1 << 20),
            rustix::fs::Advice::DontNeed,
        )
        .unwrap();
        if cached(&f, 3 << 20, 1) {
            eprintln!("this file system keeps the pages or cannot tell (RWF_NOWAIT); skipping");
            return;
        }
        assert!(
            cached(&f, 0, 1) && cached(&f, CHUNK as u64 - 1, 1),
            "first and last pages stay"
        );
        assert!(!cached(&f, 0, CHUNK), "the hole between them is found");
        assert!(cached(&f, 4 << 20, 4 << 20), "a range past the hole is cached");
    }
}
