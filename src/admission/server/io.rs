//! The two I/O wrappers of an admission connection:
//!
//! - [`HandoffStream`]: a TCP stream that can leave the runtime whose reactor it was registered
//!   with and join another one, so that the TLS handshake runs on the handshake thread and the
//!   established connection is then served, and its readiness events delivered, by the admission
//!   thread alone. tokio-rustls cannot rebuild a TLS stream from its parts, so the TLS stream is
//!   built over this type and only the socket underneath moves.
//! - [`WriteDeadline`]: fails writes that stall longer than the write timeout. hyper has no write
//!   timeout of its own: without this a client that never reads keeps its connection, and the
//!   response buffered for it, for as long as it likes.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// Where the socket of a [`HandoffStream`] is.
#[derive(Debug)]
enum Socket {
    /// Registered with the reactor of the runtime it is used on.
    Attached(TcpStream),
    /// Registered with no reactor: on its way from one runtime to another.
    Detached(std::net::TcpStream),
    /// A move between the two failed; the connection is unusable.
    Gone,
}

/// A TCP stream that can be moved from one tokio runtime to another between uses; see the
/// module documentation.
#[derive(Debug)]
pub(super) struct HandoffStream {
    socket: Socket,
}

impl HandoffStream {
    /// Wraps a stream registered with the current runtime.
    pub(super) fn new(stream: TcpStream) -> Self {
        Self {
            socket: Socket::Attached(stream),
        }
    }

    /// Deregisters the socket from the current runtime's reactor. Until [`Self::attach`], reads
    /// and writes fail with `NotConnected`.
    pub(super) fn detach(&mut self) -> io::Result<()> {
        match std::mem::replace(&mut self.socket, Socket::Gone) {
            Socket::Attached(stream) => {
                self.socket = Socket::Detached(stream.into_std()?);
                Ok(())
            }
            other => {
                self.socket = other;
                Ok(())
            }
        }
    }

    /// Registers the socket with the reactor of the runtime this is called on (it must be called
    /// from within a runtime). The socket stays non-blocking throughout.
    pub(super) fn attach(&mut self) -> io::Result<()> {
        match std::mem::replace(&mut self.socket, Socket::Gone) {
            Socket::Detached(stream) => {
                self.socket = Socket::Attached(TcpStream::from_std(stream)?);
                Ok(())
            }
            Socket::Gone => Err(not_connected()),
            attached @ Socket::Attached(_) => {
                self.socket = attached;
                Ok(())
            }
        }
    }

    fn attached(&mut self) -> io::Result<Pin<&mut TcpStream>> {
        match &mut self.socket {
            Socket::Attached(stream) => Ok(Pin::new(stream)),
            Socket::Detached(_) | Socket::Gone => Err(not_connected()),
        }
    }
}

fn not_connected() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "the connection is between the handshake and admission threads",
    )
}

impl AsyncRead for HandoffStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().attached() {
            Ok(stream) => stream.poll_read(cx, buf),
            Err(error) => Poll::Ready(Err(error)),
        }
    }
}

impl AsyncWrite for HandoffStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().attached() {
            Ok(stream) => stream.poll_write(cx, buf),
            Err(error) => Poll::Ready(Err(error)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().attached() {
            Ok(stream) => stream.poll_write_vectored(cx, bufs),
            Err(error) => Poll::Ready(Err(error)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().attached() {
            Ok(stream) => stream.poll_flush(cx),
            Err(error) => Poll::Ready(Err(error)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().attached() {
            Ok(stream) => stream.poll_shutdown(cx),
            Err(error) => Poll::Ready(Err(error)),
        }
    }
}

/// The error a stalled write fails with; [`is_write_timeout`] finds it in an error chain.
#[derive(Debug)]
struct WriteTimedOut(Duration);

impl std::fmt::Display for WriteTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the client took no response data for {:?} (write timeout)",
            self.0
        )
    }
}

impl std::error::Error for WriteTimedOut {}

/// Whether `error`, or an error it was caused by, is a [`WriteDeadline`] timeout.
pub(super) fn is_write_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    caused_by::<WriteTimedOut>(error)
}

#[derive(Debug)]
struct HeadersTimedOut(Duration);

impl std::fmt::Display for HeadersTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request headers did not arrive within {:?} (header timeout)",
            self.0
        )
    }
}

impl std::error::Error for HeadersTimedOut {}

/// Whether `error`, or an error it was caused by, is a [`HeaderDeadline`] timeout.
pub(super) fn is_header_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    caused_by::<HeadersTimedOut>(error)
}

fn caused_by<E: std::error::Error + 'static>(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if error.is::<E>() {
            return true;
        }
        if let Some(io) = error.downcast_ref::<io::Error>()
            && io.get_ref().is_some_and(|inner| inner.is::<E>())
        {
            return true;
        }
        next = error.source();
    }
    false
}

/// Where a connection is in its request cycle, as far as reads and writes tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading a request's headers (the first request from the start of the connection, a later
    /// one from its first byte): the header deadline runs.
    Headers,
    /// Headers complete: the body, the handler and the response.
    Request,
    /// The response has been written and no byte of the next request has come: a kept-alive
    /// idle connection, which the header deadline leaves alone.
    Idle,
}

/// Fails reads once a request's headers have not arrived within `timeout`: counted from the
/// start of the connection for the first request and from the first byte for later ones, like
/// Go's `ReadHeaderTimeout`. An idle kept-alive connection is not timed here: closing it from
/// this side races with the client reusing it (the apiserver's client keeps idle connections
/// for 90 s and does not retry a POST whose write fails, so its webhook call fails); hyper's own
/// header timer, set to the longer idle timeout, closes those.
#[derive(Debug)]
pub(super) struct HeaderDeadline<S> {
    inner: S,
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
    phase: Phase,
    /// The last bytes read in [`Phase::Headers`], to find `\r\n\r\n` across reads.
    tail: Vec<u8>,
}

impl<S> HeaderDeadline<S> {
    /// Wraps `inner`; the first request's headers are due within `timeout` from now.
    pub(super) fn new(inner: S, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            sleep: Box::pin(tokio::time::sleep(timeout)),
            phase: Phase::Headers,
            tail: Vec::new(),
        }
    }

    fn on_read(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if self.phase == Phase::Idle {
            self.phase = Phase::Headers;
            self.tail.clear();
            self.sleep.as_mut().reset(Instant::now() + self.timeout);
        }
        if self.phase == Phase::Headers {
            self.tail.extend_from_slice(bytes);
            if self.tail.windows(4).any(|w| w == b"\r\n\r\n") {
                self.phase = Phase::Request;
                self.tail.clear();
            } else {
                let keep = self.tail.len().saturating_sub(3);
                self.tail.drain(..keep);
            }
        }
    }

    fn wrote(&mut self, written: usize) {
        if written > 0 {
            self.phase = Phase::Idle;
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for HeaderDeadline<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.on_read(&buf.filled()[before..]);
                Poll::Ready(Ok(()))
            }
            Poll::Pending
                if this.phase == Phase::Headers && this.sleep.as_mut().poll(cx).is_ready() =>
            {
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    HeadersTimedOut(this.timeout),
                )))
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HeaderDeadline<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = result {
            this.wrote(n);
        }
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = result {
            this.wrote(n);
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Fails writes, flushes and shutdowns that cannot complete within `timeout`.
///
/// The clock starts when the stream first refuses data (the peer is not reading and the socket
/// buffers are full) and stops only when a flush completes, i.e. everything hyper wrote has been
/// handed to the kernel. Partial progress does not restart it, so a client that reads a few
/// bytes now and then cannot stretch one response past the limit either. Reads pass through.
#[derive(Debug)]
pub(super) struct WriteDeadline<S> {
    inner: S,
    timeout: Duration,
    /// Created on the first stall and reused for later ones.
    sleep: Option<Pin<Box<Sleep>>>,
    /// Whether `sleep` is running for the current stall.
    armed: bool,
}

impl<S> WriteDeadline<S> {
    /// Wraps `inner`.
    pub(super) fn new(inner: S, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            sleep: None,
            armed: false,
        }
    }

    /// Maps a `Pending` of the inner stream to a timeout error once the deadline has passed,
    /// arming the deadline on the first `Pending` of a stall. The sleep is polled with the same
    /// context, so the task wakes at the deadline even if the peer never makes room.
    fn check<T>(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if result.is_ready() {
            return result;
        }
        if !self.armed {
            let deadline = Instant::now() + self.timeout;
            match &mut self.sleep {
                Some(sleep) => sleep.as_mut().reset(deadline),
                None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            self.armed = true;
        }
        let expired = self
            .sleep
            .as_mut()
            .is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready());
        if expired {
            Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                WriteTimedOut(self.timeout),
            )))
        } else {
            Poll::Pending
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.check(cx, result)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.check(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_flush(cx);
        if matches!(result, Poll::Ready(Ok(()))) {
            this.armed = false;
        }
        this.check(cx, result)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.check(cx, result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// The header deadline times a request's headers, never an idle kept-alive connection:
    /// idle past the deadline, the next read still waits; a later request that stalls after
    /// its first byte fails at the deadline. Time is paused (no real waiting).
    #[tokio::test(start_paused = true)]
    async fn header_deadline_times_headers_not_idleness() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut server = HeaderDeadline::new(server, Duration::from_secs(1));
        let mut buf = [0_u8; 64];
        client
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("request");
        let request = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n".len();
        let mut head = vec![0_u8; request];
        server.read_exact(&mut head).await.expect("headers");
        server
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .expect("response");
        let idle = tokio::time::timeout(Duration::from_secs(30), server.read(&mut buf)).await;
        assert!(
            idle.is_err(),
            "an idle connection is not timed out: {idle:?}"
        );
        client.write_all(b"G").await.expect("first byte");
        assert_eq!(server.read(&mut buf).await.expect("first byte"), 1);
        let stalled = tokio::time::timeout(Duration::from_secs(30), server.read(&mut buf))
            .await
            .expect("the header deadline fires first");
        let error = stalled.expect_err("headers not complete within the deadline");
        assert!(is_header_timeout(&error), "{error}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_the_peer_never_takes_fails_after_the_timeout() {
        let (near, _far) = tokio::io::duplex(64);
        let mut stream = WriteDeadline::new(near, Duration::from_secs(3));
        let started = Instant::now();
        let result = stream.write_all(&[0_u8; 1024]).await;
        let error = result.expect_err("the peer never reads");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(is_write_timeout(&error), "{error}");
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn partial_progress_does_not_restart_the_clock_but_a_completed_flush_does() {
        let (near, mut far) = tokio::io::duplex(64);
        let mut stream = WriteDeadline::new(near, Duration::from_secs(3));
        // A reader that takes 64 bytes a second: 1 KiB would need 16 s, the limit is 3 s.
        let trickle = tokio::spawn(async move {
            let mut buffer = [0_u8; 64];
            let mut total = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                match far.read(&mut buffer).await {
                    Ok(0) | Err(_) => return (far, total),
                    Ok(n) => total += n,
                }
            }
        });
        let error = stream
            .write_all(&[0_u8; 1024])
            .await
            .expect_err("a trickle cannot stretch one write past the limit");
        assert!(is_write_timeout(&error), "{error}");
        drop(stream);
        let (_, taken) = trickle.await.expect("reader");
        assert!(taken < 1024, "took {taken}");

        // Stalls shorter than the limit, each ended by a completed flush, add up to more than
        // the limit without a timeout: the clock is per stall, not per connection.
        let (near, mut far) = tokio::io::duplex(64);
        let mut stream = WriteDeadline::new(near, Duration::from_secs(3));
        let reader = tokio::spawn(async move {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let mut buffer = [0_u8; 128];
                far.read_exact(&mut buffer).await.expect("read");
            }
        });
        let started = Instant::now();
        for _ in 0..3 {
            stream
                .write_all(&[1_u8; 128])
                .await
                .expect("each stall is 2 s");
            stream.flush().await.expect("flush");
        }
        assert!(started.elapsed() >= Duration::from_secs(6));
        reader.await.expect("reader");
    }
}
