//! Writes on a multiplexed connection (HTTP/2 between the gateway and a backend) gathered into
//! one system call per scheduler round. Every call's frames wake the connection's task; written
//! at once, each costs a `writev` (on loopback, most of a request's kernel time). Instead the
//! first flush after new frames yields once, so that calls started by other tasks in the
//! meantime add theirs, and the next flush writes them together.

use std::{
    io::{self, IoSlice},
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// An I/O stream whose writes wait for the next flush, which waits one scheduler round.
/// Past this many buffered bytes a write goes to the socket without waiting for the flush.
const HIGH_WATER: usize = 64 * 1024;

pub struct Coalesce<T> {
    io: T,
    pending: BytesMut,
    yielded: bool,
}

impl<T> Coalesce<T> {
    pub fn new(io: T) -> Self {
        Self {
            io,
            pending: BytesMut::with_capacity(16 * 1024),
            yielded: false,
        }
    }
}

impl<T: AsyncWrite + Unpin> Coalesce<T> {
    /// Writes out everything buffered.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending.advance(n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesce<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesce<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.pending.len() >= HIGH_WATER {
            ready!(self.poll_drain(cx))?;
        }
        // Bulk data (a large reply) goes straight out rather than through the buffer.
        if self.pending.is_empty() && buf.len() >= HIGH_WATER {
            return Pin::new(&mut self.io).poll_write(cx, buf);
        }
        self.pending.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.pending.len() >= HIGH_WATER {
            ready!(self.poll_drain(cx))?;
        }
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if self.pending.is_empty() && total >= HIGH_WATER {
            return Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        }
        let mut n = 0;
        for buf in bufs {
            self.pending.extend_from_slice(buf);
            n += buf.len();
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.pending.is_empty() && !self.yielded {
            // Back of the run queue: tasks already scheduled run first and may add frames.
            self.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ready!(self.poll_drain(cx))?;
        self.yielded = false;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// For tonic's server: the connection's peer as the wrapped stream knows it.
impl<T: Connected> Connected for Coalesce<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> T::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use super::*;

    #[tokio::test]
    async fn small_writes_leave_together_after_one_yield() {
        let (near, mut far) = duplex(1 << 20);
        let mut io = Coalesce::new(near);
        io.write_all(b"first ").await.unwrap();
        io.write_all(b"second").await.unwrap();
        let mut flush = 0;
        poll_fn(|cx| {
            flush += 1;
            Pin::new(&mut io).poll_flush(cx)
        })
        .await
        .unwrap();
        assert_eq!(flush, 2, "the first flush yields once");
        let mut got = [0; 12];
        assert_eq!(far.read(&mut got).await.unwrap(), 12, "one read takes both");
        assert_eq!(&got, b"first second");
    }

    #[tokio::test]
    async fn bulk_writes_bypass_the_buffer_and_the_buffer_is_bounded() {
        let (near, mut far) = duplex(8 << 20);
        let mut io = Coalesce::new(near);
        let bulk = vec![7u8; HIGH_WATER];
        let n = io.write(&bulk).await.unwrap();
        assert!(io.pending.is_empty(), "{n} bytes went straight out");
        for _ in 0..3 {
            io.write_all(&bulk[..HIGH_WATER / 2 + 1]).await.unwrap();
        }
        assert!(io.pending.len() <= HIGH_WATER + HIGH_WATER / 2 + 1);
        io.flush().await.unwrap();
        assert!(io.pending.is_empty());
        let mut all = Vec::new();
        drop(io);
        far.read_to_end(&mut all).await.unwrap();
        assert_eq!(all.len(), n + 3 * (HIGH_WATER / 2 + 1));
    }
}
