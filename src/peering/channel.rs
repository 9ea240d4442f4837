//! The TLS stream of one control channel, shared by the reader task and the session driver,
//! and the framed reads and writes over it.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsStream;
use zeroize::Zeroizing;

use super::frame::{self, Message};
use super::lock;

/// A frame must be written within this time.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) type Stream = TlsStream<TcpStream>;

/// The TLS stream of one channel, shared by the reader and the driver. Like
/// `tokio::io::split`, a read that must write (a TLS alert, a key update) registers the
/// reader's waker for writing; the channel sends no session tickets and its traffic is far
/// below rustls's key-update threshold, so only an alert, which ends the channel, does.
#[derive(Clone)]
pub(super) struct Channel(Arc<Mutex<Stream>>);

impl Channel {
    pub(super) fn new(stream: Stream) -> Channel {
        Channel(Arc::new(Mutex::new(stream)))
    }

    fn with<R>(&self, f: impl FnOnce(&mut Stream) -> R) -> R {
        f(&mut lock(&self.0))
    }

    /// 32 bytes of the TLS exporter (RFC 8446 §7.5).
    pub(super) fn exporter(
        &self,
        label: &[u8],
        context: Option<&[u8]>,
    ) -> Result<Zeroizing<[u8; 32]>, String> {
        let mut out = Zeroizing::new([0u8; 32]);
        self.with(|s| {
            let r = match s {
                TlsStream::Client(c) => {
                    c.get_ref()
                        .1
                        .export_keying_material(&mut out[..], label, context)
                }
                TlsStream::Server(c) => {
                    c.get_ref()
                        .1
                        .export_keying_material(&mut out[..], label, context)
                }
            };
            r.map(|_| ())
        })
        .map_err(|e| format!("TLS exporter: {e}"))?;
        Ok(out)
    }

    pub(super) fn kx_group(&self) -> Option<String> {
        self.with(|s| {
            s.get_ref()
                .1
                .negotiated_key_exchange_group()
                .map(|g| format!("{:?}", g.name()))
        })
    }

    pub(super) fn peer_leaf(&self) -> Option<Vec<u8>> {
        self.with(|s| {
            s.get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.to_vec())
        })
    }
}

impl AsyncRead for Channel {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.with(|s| Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Channel {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.with(|s| Pin::new(s).poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.with(|s| Pin::new(s).poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.with(|s| Pin::new(s).poll_shutdown(cx))
    }
}

/// One frame: the length is checked before the body is read.
pub(super) async fn read_frame(r: &mut Channel) -> Result<Message, String> {
    let mut header = [0u8; frame::HEADER_LEN];
    r.read_exact(&mut header)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => "the peer closed the channel".to_owned(),
            _ => format!("reading from the peer: {e}"),
        })?;
    let len = frame::body_len(header).map_err(|e| e.to_string())?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)
        .await
        .map_err(|e| format!("reading a {len}-byte frame from the peer: {e}"))?;
    frame::decode_body(&body).map_err(|e| e.to_string())
}

pub(super) async fn write_frame(w: &mut Channel, message: &Message) -> Result<(), String> {
    let bytes =
        frame::encode(message).map_err(|e| format!("cannot send {}: {e}", message.name()))?;
    tokio::time::timeout(WRITE_TIMEOUT, async {
        w.write_all(&bytes).await?;
        w.flush().await
    })
    .await
    .map_err(|_| {
        format!(
            "the peer did not take a frame within {} s",
            WRITE_TIMEOUT.as_secs()
        )
    })?
    .map_err(|e| format!("writing to the peer: {e}"))
}

/// Read frames until an error; each must complete within `limit` (the peer pings more often).
pub(super) async fn read_loop(
    mut channel: Channel,
    tx: mpsc::Sender<Result<Message, String>>,
    limit: Duration,
) {
    loop {
        let r = match tokio::time::timeout(limit, read_frame(&mut channel)).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "no complete frame from the peer within {} ms",
                limit.as_millis()
            )),
        };
        let failed = r.is_err();
        if tx.send(r).await.is_err() || failed {
            break;
        }
    }
}
