//! Serving HTTP on a listener the way an open door must be served: at most
//! so many connections at once (past it, new ones are closed at once), a
//! deadline for the TLS handshake and for the first request's headers, a
//! connection closed when it sends nothing for a while, bounded header
//! sizes and HTTP/2 streams, and every refusal counted.

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
    /// From accept to the first request's complete headers (TLS included);
    /// for HTTP/1 also each later request's headers.
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
    pub tls_failed: AtomicU64,
    /// No complete request headers in time (slow or silent clients).
    pub header_timeouts: AtomicU64,
    /// Closed after sending nothing for the idle timeout.
    pub idle_closed: AtomicU64,
    pub open: AtomicU64,
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
}

impl<S: Service<hyper::Request<Incoming>>> Service<hyper::Request<Incoming>> for Noting<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        self.started.store(true, Ordering::Relaxed);
        self.inner.call(req)
    }
}

/// Accepts connections on `listener` and serves each with `service` until
/// `stop` turns true; then lets open requests finish (a short grace).
pub async fn serve<S, B>(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
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
            stats.open.fetch_add(1, Ordering::Relaxed);
            connection(stream, peer, acceptor, http, limits, service, &stats, stop).await;
            stats.open.fetch_sub(1, Ordering::Relaxed);
            drop(slot);
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
    let service = Noting {
        inner: service,
        started: started.clone(),
    };
    let serving: Pin<Box<dyn Future<Output = Result<(), hyper::Error>> + Send>> = match http {
        Http::Two => {
            let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            b.timer(TokioTimer::new())
                .max_concurrent_streams(limits.max_streams)
                .max_header_list_size(limits.max_header_bytes)
                .keep_alive_interval(Some(Duration::from_secs(30)))
                .keep_alive_timeout(Duration::from_secs(10));
            Box::pin(graceful(b.serve_connection(io, service), stop, |c| {
                c.graceful_shutdown()
            }))
        }
        Http::One => {
            let mut b = hyper::server::conn::http1::Builder::new();
            b.timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .max_buf_size((limits.max_header_bytes as usize).max(8192));
            Box::pin(graceful(b.serve_connection(io, service), stop, |c| {
                c.graceful_shutdown()
            }))
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
            stats.header_timeouts.fetch_add(1, Ordering::Relaxed);
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
    shutdown: impl FnOnce(Pin<&mut C>),
) -> Result<(), hyper::Error>
where
    C: Future<Output = Result<(), hyper::Error>>,
{
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => return r,
        () = stopped(&mut stop) => {}
    }
    shutdown(conn.as_mut());
    match tokio::time::timeout(GRACE, conn).await {
        Ok(r) => r,
        Err(_) => Ok(()),
    }
}
