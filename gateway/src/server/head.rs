//! A connection's bytes as hyper reads and writes them, watched for one answer. hyper refuses a
//! request head that outgrows its buffer with an empty `431 Request Header Fields Too Large`,
//! whichever part was too long. When the head's first line had not even ended, it was the
//! request target (a 10 KB topic or id in the path) that was too long: that is `414 URI Too
//! Long`. The watch replaces hyper's answer with the right status and the contract's JSON body.
//!
//! hyper answers a request only after reading it, and a client sends its next request after
//! reading the answer, so the bytes read since the last write are the head hyper is parsing;
//! whether an LF was among them says whether its first line ended. (A pipelining client's next
//! head may arrive before the previous answer: it then counts as ended, and gets 431.)

use std::{
    io::{self, IoSlice},
    pin::Pin,
    sync::LazyLock,
    task::{Context, Poll, ready},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::Code;

use crate::api::ErrorBody;

/// How hyper's refusal of a head too large begins (it answers errors before the version is
/// known in HTTP/1.1).
const HYPERS_431: &[&[u8]] = &[b"HTTP/1.1 431 ", b"HTTP/1.0 431 "];

/// A whole answer in the contract's error shape, closing the connection (as hyper does after
/// refusing a head).
fn answer(status: &str, message: &str) -> Vec<u8> {
    let body = ErrorBody::of(message.to_owned(), Code::ResourceExhausted);
    let body = serde_json::to_string(&body).unwrap_or_default();
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

static URI_TOO_LONG: LazyLock<Vec<u8>> = LazyLock::new(|| {
    answer(
        "414 URI Too Long",
        "the request line is too long (the request head may be 8 KiB)",
    )
});

static HEADERS_TOO_LARGE: LazyLock<Vec<u8>> = LazyLock::new(|| {
    answer(
        "431 Request Header Fields Too Large",
        "the request headers are too large (the request head may be 8 KiB)",
    )
});

/// `IO` with hyper's 431 answered rightly.
#[derive(Debug)]
pub(crate) struct HeadWatch<IO> {
    inner: IO,
    /// Whether bytes have been read since the last write: the next write begins an answer.
    fresh: bool,
    /// Whether an LF has been read since the last write: the current head's first line ended.
    line_ended: bool,
    /// Our answer in place of hyper's, and how much of it is written. Once set, everything
    /// hyper writes is dropped (it closes the connection after it).
    replacing: Option<(&'static [u8], usize)>,
}

impl<IO> HeadWatch<IO> {
    pub(crate) fn new(inner: IO) -> Self {
        Self {
            inner,
            fresh: false,
            line_ended: false,
            replacing: None,
        }
    }
}

impl<IO: AsyncWrite + Unpin> HeadWatch<IO> {
    /// Writes what is left of our answer; ready when all of it is out.
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((answer, written)) = &mut self.replacing {
            if *written == answer.len() {
                break;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &answer[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }

    /// Before each write: whether it begins hyper's refusal, to be replaced.
    fn watch(&mut self, first: &[u8]) {
        if !std::mem::take(&mut self.fresh) {
            return;
        }
        if self.replacing.is_none() && HYPERS_431.iter().any(|p| first.starts_with(p)) {
            let answer = if self.line_ended {
                &HEADERS_TOO_LARGE
            } else {
                &URI_TOO_LONG
            };
            self.replacing = Some((answer.as_slice(), 0));
        }
        self.line_ended = false;
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for HeadWatch<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let read = &buf.filled()[before..];
        this.fresh |= !read.is_empty();
        if !this.line_ended {
            this.line_ended = read.contains(&b'\n');
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for HeadWatch<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.watch(buf);
        if this.replacing.is_some() {
            ready!(this.poll_answer(cx))?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| b);
        this.watch(first);
        if this.replacing.is_some() {
            ready!(this.poll_answer(cx))?;
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_answer(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_answer(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use super::*;

    /// Feeds `request` to a watched stream, writes `reply` as hyper would, and returns what the
    /// client receives.
    async fn exchange(request: &[&[u8]], reply: &[u8]) -> String {
        let (mut client, server) = duplex(64 * 1024);
        let mut watched = HeadWatch::new(server);
        for part in request {
            client.write_all(part).await.unwrap();
            let mut buf = vec![0u8; part.len()];
            watched.read_exact(&mut buf).await.unwrap();
        }
        watched.write_all(reply).await.unwrap();
        watched.shutdown().await.unwrap();
        drop(watched);
        let mut seen = String::new();
        client.read_to_string(&mut seen).await.unwrap();
        seen
    }

    const REFUSAL: &[u8] =
        b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n";

    #[tokio::test]
    async fn a_refused_head_whose_first_line_never_ended_is_414() {
        let long = [b'a'; 9000];
        let seen = exchange(&[b"GET /events/", &long], REFUSAL).await;
        assert!(seen.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{seen}");
        let body: serde_json::Value =
            serde_json::from_str(seen.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(body["error"], body["message"]);
        assert_eq!(body["code"], "RESOURCE_EXHAUSTED");
    }

    #[tokio::test]
    async fn a_refused_head_with_a_whole_first_line_stays_431_with_the_json_body() {
        let long = [b'a'; 9000];
        let seen = exchange(&[b"GET / HTTP/1.1\r\nx-big: ", &long], REFUSAL).await;
        assert!(
            seen.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{seen}"
        );
        assert!(seen.contains("\"code\":\"RESOURCE_EXHAUSTED\""), "{seen}");
    }

    #[tokio::test]
    async fn other_answers_pass_as_they_are() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        let seen = exchange(&[b"GET / HTTP/1.1\r\n\r\n"], ok).await;
        assert_eq!(seen.as_bytes(), ok);
        let seen = exchange(
            &[b"GET / HTTP/1.1\r\n\r\n"],
            b"HTTP/1.1 404 Not Found\r\n\r\n",
        )
        .await;
        assert_eq!(seen, "HTTP/1.1 404 Not Found\r\n\r\n");
    }
}
