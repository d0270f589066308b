//! Serving HTTP on a listener the way an open door must be served: at most
//! so many connections at once, and so many from one address (past either,
//! new ones are closed at once), a deadline for the TLS handshake and for
//! the first request's headers, a connection closed when it sends nothing
//! for a while, bounded header sizes and HTTP/2 streams, and every refusal
//! counted.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use hyper::{body::Incoming, service::Service};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, watch},
};

/// How long a stop waits for open connections to finish their requests.
const GRACE: Duration = Duration::from_secs(3);

/// The limits of one listener.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    pub max_connections: usize,
    /// Connections from one IP address at once (0: no limit of its own).
    pub max_connections_per_address: usize,
    /// From accept to the first request's complete headers (TLS included).
    pub header_timeout: Duration,
    /// A connection that sends nothing for this long is closed.
    pub idle_timeout: Duration,
    /// HTTP/2 streams open at once on one connection.
    pub max_streams: u32,
    /// Request header bytes, at most.
    pub max_header_bytes: u32,
}

/// Which HTTP a listener speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Http {
    /// gRPC.
    Two,
    /// OTLP/HTTP, pages.
    One,
}

/// What happened to one listener's connections, counted.
#[derive(Debug, Default)]
pub struct ConnStats {
    pub accepted: AtomicU64,
    /// Closed at once: the listener had `max_connections` open.
    pub over_limit: AtomicU64,
    /// Closed at once: the address had `max_connections_per_address` open.
    pub over_address_limit: AtomicU64,
    pub tls_failed: AtomicU64,
    /// No complete request headers in time (slow or silent clients).
    pub header_timeouts: AtomicU64,
    /// Closed after sending nothing for the idle timeout (for HTTP/1,
    /// between requests or within a later request's headers).
    pub idle_closed: AtomicU64,
    /// Ended by an HTTP error (malformed requests, headers too large).
    pub http_errors: AtomicU64,
    pub open: AtomicU64,
    /// Connections closed at a limit, logged now and then.
    limit_warned: tangle_throttle::Throttled,
}

impl ConnStats {
    /// (outcome, count) of the connections: accepted, refused at a limit,
    /// and those accepted that ended early; the metrics' labels.
    pub fn outcomes(&self) -> [(&'static str, u64); 7] {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            ("accepted", get(&self.accepted)),
            ("over_limit", get(&self.over_limit)),
            ("over_address_limit", get(&self.over_address_limit)),
            ("tls_failed", get(&self.tls_failed)),
            ("header_timeout", get(&self.header_timeouts)),
            ("idle_closed", get(&self.idle_closed)),
            ("http_error", get(&self.http_errors)),
        ]
    }
}

/// Connections open per address, for `max_connections_per_address`. An
/// IPv6 address counts with the rest of its /64, which one host usually
/// has whole.
#[derive(Default)]
struct PerAddress(std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>);

impl PerAddress {
    fn key(ip: std::net::IpAddr) -> std::net::IpAddr {
        match ip {
            std::net::IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
                std::net::IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into())
            }
            other => other.to_canonical(),
        }
    }

    /// Takes a place for `ip`, unless it has `max` (0: no limit); the
    /// place is given back when the guard is dropped.
    fn take(self: &Arc<Self>, ip: std::net::IpAddr, max: usize) -> Option<AddressPlace> {
        let key = Self::key(ip);
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(key).or_default();
        if max > 0 && *n >= max {
            return None;
        }
        *n += 1;
        Some(AddressPlace {
            table: self.clone(),
            key,
        })
    }
}

/// A connection's place among its address's (given back when dropped,
/// even if the connection's task panicked).
struct AddressPlace {
    table: Arc<PerAddress>,
    key: std::net::IpAddr,
}

impl Drop for AddressPlace {
    fn drop(&mut self) {
        let mut m = self.table.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

/// Counts a connection open while it lives.
struct OpenGuard(Arc<ConnStats>);

impl OpenGuard {
    fn new(stats: Arc<ConnStats>) -> Self {
        stats.open.fetch_add(1, Ordering::Relaxed);
        Self(stats)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// In a request's extensions: a way for the service to have its
/// connection closed once the response is sent (after a refusal: an
/// unauthenticated client has no business keeping it open).
#[derive(Clone, Debug)]
pub struct CloseConnection(Arc<tokio::sync::Notify>);

impl CloseConnection {
    pub fn close(&self) {
        self.0.notify_one();
    }
}

/// A connection's bytes, with a clock: reading fails with `TimedOut` once
/// the peer has sent nothing for `idle`.
struct Idle<T> {
    inner: T,
    idle: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
    timed_out: Arc<AtomicBool>,
}

impl<T> Idle<T> {
    fn new(inner: T, idle: Duration, timed_out: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            idle,
            sleep: Box::pin(tokio::time::sleep(idle)),
            timed_out,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Idle<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    let deadline = tokio::time::Instant::now() + self.idle;
                    self.sleep.as_mut().reset(deadline);
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                ready!(self.sleep.as_mut().poll(cx));
                self.timed_out.store(true, Ordering::Relaxed);
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "nothing received for the idle timeout",
                )))
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Idle<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A service that notes when its first request arrives (its headers are
/// complete): the header deadline is met.
#[derive(Clone)]
struct Noting<S> {
    inner: S,
    started: Arc<AtomicBool>,
    peer: SocketAddr,
    close: CloseConnection,
}

/// The address a request came from, in its extensions: for the logs.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

impl<S: Service<hyper::Request<Incoming>>> Service<hyper::Request<Incoming>> for Noting<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, mut req: hyper::Request<Incoming>) -> Self::Future {
        self.started.store(true, Ordering::Relaxed);
        req.extensions_mut().insert(Peer(self.peer));
        req.extensions_mut().insert(self.close.clone());
        self.inner.call(req)
    }
}

/// Accepts connections on `listener` and serves each with `service` until
/// `stop` turns true; then lets open requests finish (a short grace).
pub async fn serve<S, B>(
    listener: TcpListener,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    http: Http,
    limits: ConnLimits,
    service: S,
    stats: Arc<ConnStats>,
    mut stop: watch::Receiver<bool>,
) where
    S: Service<hyper::Request<Incoming>, Response = hyper::Response<B>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let per_address = Arc::new(PerAddress::default());
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stopped(&mut stop) => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors, say: wait rather than spin.
                log::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            stats.over_limit.fetch_add(1, Ordering::Relaxed);
            tangle_throttle::warn!(
                stats.limit_warned,
                "{}: closed a connection from {peer}: {} open, its max_connections",
                listener
                    .local_addr()
                    .map_or_else(|_| "?".into(), |a| a.to_string()),
                limits.max_connections
            );
            drop(stream);
            continue;
        };
        let Some(place) = per_address.take(peer.ip(), limits.max_connections_per_address) else {
            stats.over_address_limit.fetch_add(1, Ordering::Relaxed);
            tangle_throttle::warn!(
                stats.limit_warned,
                "{}: closed a connection from {peer}: {} open from {}, its \
                 max_connections_per_address (a load balancer or SNAT in front? raise it, \
                 or 0 for no limit of its own)",
                listener
                    .local_addr()
                    .map_or_else(|_| "?".into(), |a| a.to_string()),
                limits.max_connections_per_address,
                peer.ip()
            );
            drop(stream);
            continue;
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let (service, stats, acceptor, stop) = (
            service.clone(),
            stats.clone(),
            acceptor.clone(),
            stop.clone(),
        );
        // Reap finished connections' tasks as new ones come.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(async move {
            let _open = OpenGuard::new(stats.clone());
            connection(stream, peer, acceptor, http, limits, service, &stats, stop).await;
            drop((slot, place));
        });
    }
    // Stopped: the connections finish within their grace.
    while tasks.join_next().await.is_some() {}
}

#[allow(clippy::too_many_arguments)]
async fn connection<S, B>(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    http: Http,
    limits: ConnLimits,
    service: S,
    stats: &ConnStats,
    stop: watch::Receiver<bool>,
) where
    S: Service<hyper::Request<Incoming>, Response = hyper::Response<B>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let started = Arc::new(AtomicBool::new(false));
    let timed_out = Arc::new(AtomicBool::new(false));
    let deadline = tokio::time::Instant::now() + limits.header_timeout;
    let _ = stream.set_nodelay(true);
    let io: Box<dyn Io> = match acceptor {
        Some(acceptor) => match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => Box::new(tls),
            Ok(Err(e)) => {
                stats.tls_failed.fetch_add(1, Ordering::Relaxed);
                log::debug!("TLS handshake from {peer}: {e}");
                return;
            }
            Err(_) => {
                stats.header_timeouts.fetch_add(1, Ordering::Relaxed);
                log::debug!("TLS handshake from {peer}: timed out");
                return;
            }
        },
        None => Box::new(stream),
    };
    let io = TokioIo::new(Idle::new(io, limits.idle_timeout, timed_out.clone()));
    let close = CloseConnection(Arc::new(tokio::sync::Notify::new()));
    let service = Noting {
        inner: service,
        started: started.clone(),
        peer,
        close: close.clone(),
    };
    let serving: Pin<Box<dyn Future<Output = Result<(), hyper::Error>> + Send>> = match http {
        Http::Two => {
            let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            // No keep-alive pings of ours: a client that answers them would
            // never count as idle; a silent one is closed at the idle timeout.
            b.timer(TokioTimer::new())
                .max_concurrent_streams(limits.max_streams)
                .max_header_list_size(limits.max_header_bytes);
            Box::pin(graceful(
                b.serve_connection(io, service),
                stop,
                close.0.clone(),
                |c| c.graceful_shutdown(),
            ))
        }
        Http::One => {
            // hyper's header timer also runs while a kept-alive connection
            // waits for its next request: the idle timeout there. The first
            // request's headers have the header deadline, below.
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(TokioTimer::new())
                .header_read_timeout(limits.idle_timeout)
                .max_buf_size((limits.max_header_bytes as usize).max(8192));
            Box::pin(graceful(
                b.serve_connection(io, service),
                stop,
                close.0.clone(),
                |c| c.graceful_shutdown(),
            ))
        }
    };
    tokio::pin!(serving);
    // The first request's headers must be in by the deadline, whatever the
    // protocol (an HTTP/2 client trickling its preface, say).
    let result = tokio::select! {
        r = &mut serving => r,
        () = tokio::time::sleep_until(deadline), if !started.load(Ordering::Relaxed) => {
            if started.load(Ordering::Relaxed) {
                serving.await
            } else {
                stats.header_timeouts.fetch_add(1, Ordering::Relaxed);
                log::debug!("{peer}: no request headers within {:?}", limits.header_timeout);
                return;
            }
        }
    };
    if timed_out.load(Ordering::Relaxed) {
        stats.idle_closed.fetch_add(1, Ordering::Relaxed);
    } else if let Err(e) = result {
        if e.is_timeout() {
            stats.idle_closed.fetch_add(1, Ordering::Relaxed);
        } else if !e.is_incomplete_message() && !e.is_canceled() {
            stats.http_errors.fetch_add(1, Ordering::Relaxed);
        }
        log::debug!("connection from {peer}: {e}");
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The transport under HTTP: TCP, or TLS over it.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// Serves `conn` until it ends or `stop` turns true; then asks it to finish
/// its requests and waits [`GRACE`] at most.
async fn graceful<C>(
    conn: C,
    mut stop: watch::Receiver<bool>,
    close: Arc<tokio::sync::Notify>,
    shutdown: impl FnOnce(Pin<&mut C>),
) -> Result<(), hyper::Error>
where
    C: Future<Output = Result<(), hyper::Error>>,
{
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => return r,
        () = stopped(&mut stop) => {}
        () = close.notified() => {}
    }
    shutdown(conn.as_mut());
    match tokio::time::timeout(GRACE, conn).await {
        Ok(r) => r,
        Err(_) => Ok(()),
    }
}
