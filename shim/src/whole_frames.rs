//! A ttrpc connection whose frames reach the peer whole.
//!
//! The ttrpc crate writes a message's 10-byte header field by field (4, 4,
//! 1 and 1 bytes, then a flush) and its payload after: five writes to the
//! socket for one message. Each wakes containerd's reader, which on two
//! cores often runs before the next write, so an answer or an event
//! crossed the socket in pieces (traced: up to 0.2 ms for one Delete's
//! answer). `WholeFrames` keeps the header until the payload comes and
//! writes both with one `writev`; reads go through a buffer, so a request's
//! header and payload are one `recv`.
//!
//! It knows only ttrpc's framing: a header of the payload's length (u32,
//! big-endian), the stream id (u32), the type and the flags (a byte each),
//! then the payload.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use containerd_shim::protos::ttrpc::r#async::transport::Listener;
use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadBuf};

const HEADER_LEN: usize = 10;

/// ttrpc's listener for `listener`, each accepted connection a WholeFrames.
pub fn listener(listener: tokio::net::UnixListener) -> Listener {
    Listener::new(futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(socket, _)| WholeFrames::new(socket));
        Some((accepted, listener))
    }))
}

pub struct WholeFrames<S> {
    inner: BufReader<S>,
    /// The current frame's header, gathered from the writer's pieces.
    header: [u8; HEADER_LEN],
    gathered: usize,
    /// How much of the gathered header has reached the socket.
    sent: usize,
    /// The current frame's payload bytes not yet written.
    payload_left: usize,
}

impl<S> WholeFrames<S> {
    pub fn new(inner: S) -> Self
    where
        S: AsyncRead,
    {
        Self { inner: BufReader::new(inner), header: [0; HEADER_LEN], gathered: 0, sent: 0, payload_left: 0 }
    }

    fn header_unsent(&self) -> bool {
        self.gathered == HEADER_LEN && self.sent < HEADER_LEN
    }

    /// Ready for the next frame's header.
    fn frame_done(&mut self) {
        self.gathered = 0;
        self.sent = 0;
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WholeFrames<S> {
    /// Writes the rest of the header and as much of `payload` as the socket
    /// takes with it; the payload bytes written, once the header is out.
    fn poll_write_frame(&mut self, cx: &mut Context<'_>, payload: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            let slices = [IoSlice::new(&self.header[self.sent..]), IoSlice::new(payload)];
            let written = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, &slices))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let header_part = written.min(HEADER_LEN - self.sent);
            self.sent += header_part;
            let payload_part = written - header_part;
            if self.sent == HEADER_LEN && (payload_part > 0 || payload.is_empty()) {
                self.payload_left -= payload_part;
                if self.payload_left == 0 {
                    self.frame_done();
                }
                return Poll::Ready(Ok(payload_part));
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WholeFrames<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WholeFrames<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.gathered < HEADER_LEN {
            let taken = buf.len().min(HEADER_LEN - this.gathered);
            this.header[this.gathered..this.gathered + taken].copy_from_slice(&buf[..taken]);
            this.gathered += taken;
            if this.gathered == HEADER_LEN {
                let length = [this.header[0], this.header[1], this.header[2], this.header[3]];
                this.payload_left = u32::from_be_bytes(length) as usize;
            }
            return Poll::Ready(Ok(taken));
        }
        // The header is whole: what comes now is the payload.
        let payload = &buf[..buf.len().min(this.payload_left)];
        if payload.is_empty() {
            // Beyond a frame without payload whose header is not sent yet.
            ready!(this.poll_send_header(cx))?;
            return Pin::new(this).poll_write(cx, buf);
        }
        if this.header_unsent() {
            return this.poll_write_frame(cx, payload);
        }
        let written = ready!(Pin::new(&mut this.inner).poll_write(cx, payload))?;
        this.payload_left -= written;
        if this.payload_left == 0 {
            this.frame_done();
        }
        Poll::Ready(Ok(written))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // A header whose payload is still to come stays: it is sent with it.
        if this.header_unsent() && this.payload_left == 0 {
            ready!(this.poll_send_header(cx))?;
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.header_unsent() && this.payload_left == 0 {
            ready!(this.poll_send_header(cx))?;
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WholeFrames<S> {
    /// Sends the header of a frame without payload.
    fn poll_send_header(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.header_unsent() {
            ready!(self.poll_write_frame(cx, &[]))?;
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn frame_header(length: u32, stream: u32) -> [u8; HEADER_LEN] {
        let mut h = [0; HEADER_LEN];
        h[..4].copy_from_slice(&length.to_be_bytes());
        h[4..8].copy_from_slice(&stream.to_be_bytes());
        h[8] = 2;
        h
    }

    /// Writes a frame as the ttrpc crate does: the header field by field,
    /// a flush, then the payload.
    async fn write_like_ttrpc(w: &mut (impl AsyncWrite + Unpin), length: u32, stream: u32, payload: &[u8]) {
        w.write_u32(length).await.unwrap();
        w.write_u32(stream).await.unwrap();
        w.write_u8(2).await.unwrap();
        w.write_u8(0).await.unwrap();
        w.flush().await.unwrap();
        w.write_all(payload).await.unwrap();
    }

    #[tokio::test]
    async fn a_frame_written_in_pieces_arrives_in_one_read() {
        let (ours, mut peer) = tokio::net::UnixStream::pair().unwrap();
        let mut framed = WholeFrames::new(ours);
        write_like_ttrpc(&mut framed, 5, 3, b"hello").await;
        // One read takes what one write sent.
        let mut buf = [0u8; 64];
        let n = peer.read(&mut buf).await.unwrap();
        let mut expected = frame_header(5, 3).to_vec();
        expected.extend_from_slice(b"hello");
        assert_eq!(&buf[..n], &expected[..]);
    }

    #[tokio::test]
    async fn frames_without_payload_are_sent_at_the_flush() {
        let (ours, mut peer) = tokio::net::UnixStream::pair().unwrap();
        let mut framed = WholeFrames::new(ours);
        write_like_ttrpc(&mut framed, 0, 7, b"").await;
        write_like_ttrpc(&mut framed, 2, 9, b"ok").await;
        let mut got = vec![0u8; 2 * HEADER_LEN + 2];
        peer.read_exact(&mut got).await.unwrap();
        let mut expected = frame_header(0, 7).to_vec();
        expected.extend_from_slice(&frame_header(2, 9));
        expected.extend_from_slice(b"ok");
        assert_eq!(got, expected);
    }

    #[tokio::test]
    async fn a_payload_larger_than_the_socket_buffer_arrives_whole_and_in_order() {
        let (ours, peer) = tokio::net::UnixStream::pair().unwrap();
        let mut framed = WholeFrames::new(ours);
        let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let length = payload.len() as u32;
        let reader = tokio::spawn(async move {
            let mut peer = peer;
            let mut got = vec![0u8; HEADER_LEN + 3_000_000 + HEADER_LEN + 1];
            peer.read_exact(&mut got).await.unwrap();
            got
        });
        write_like_ttrpc(&mut framed, length, 1, &payload).await;
        write_like_ttrpc(&mut framed, 1, 3, b"x").await;
        let got = reader.await.unwrap();
        assert_eq!(&got[..HEADER_LEN], &frame_header(length, 1));
        assert!(got[HEADER_LEN..HEADER_LEN + payload.len()] == payload[..]);
        assert_eq!(&got[HEADER_LEN + payload.len()..HEADER_LEN * 2 + payload.len()], &frame_header(1, 3));
        assert_eq!(got[got.len() - 1], b'x');
    }

    #[tokio::test]
    async fn whole_frames_written_at_once_pass_unchanged() {
        let (ours, mut peer) = tokio::net::UnixStream::pair().unwrap();
        let mut framed = WholeFrames::new(ours);
        let mut two = frame_header(3, 1).to_vec();
        two.extend_from_slice(b"abc");
        two.extend_from_slice(&frame_header(0, 3));
        two.extend_from_slice(&frame_header(1, 5));
        two.push(b'z');
        framed.write_all(&two).await.unwrap();
        framed.flush().await.unwrap();
        let mut got = vec![0u8; two.len()];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(got, two);
    }

    #[tokio::test]
    async fn reads_pass_through() {
        let (ours, mut peer) = tokio::net::UnixStream::pair().unwrap();
        let mut framed = WholeFrames::new(ours);
        peer.write_all(b"0123456789abc").await.unwrap();
        let mut header = [0u8; HEADER_LEN];
        framed.read_exact(&mut header).await.unwrap();
        let mut rest = [0u8; 3];
        framed.read_exact(&mut rest).await.unwrap();
        assert_eq!(&header, b"0123456789");
        assert_eq!(&rest, b"abc");
    }
}
