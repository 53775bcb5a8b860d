//! gRPC spoken by hand over HTTP/2, for what a well-behaved client never does:
//! bodies that stall, messages that are not protobuf, streams by the hundred.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use h2::RecvStream;
pub use h2::SendStream;
pub use h2::client::ResponseFuture;
use h2::client::{Connection, SendRequest};
use tokio::net::TcpStream;

/// One HTTP/2 connection to a gRPC server.
pub struct RawGrpc {
    send: SendRequest<Bytes>,
    /// Watches the connection's SETTINGS as the server sent them.
    connection: tokio::task::JoinHandle<()>,
    max_streams: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl RawGrpc {
    pub async fn connect(addr: SocketAddr) -> Self {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        let (send, connection): (SendRequest<Bytes>, Connection<TcpStream, Bytes>) =
            h2::client::handshake(tcp).await.expect("http/2 handshake");
        let max_streams = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = max_streams.clone();
        let connection = selfie_auth::task::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            loop {
                let tick = tokio::time::sleep(Duration::from_millis(10));
                tokio::select! {
                    _ = &mut connection => return,
                    () = tick => seen.store(
                        connection.max_concurrent_send_streams(),
                        std::sync::atomic::Ordering::Relaxed,
                    ),
                }
            }
        });
        let send = send.ready().await.expect("ready");
        Self {
            send,
            connection,
            max_streams,
        }
    }

    /// The server's `SETTINGS_MAX_CONCURRENT_STREAMS`, once its SETTINGS arrived.
    pub async fn max_concurrent_streams(&self) -> usize {
        for _ in 0..200 {
            let seen = self.max_streams.load(std::sync::atomic::Ordering::Relaxed);
            // h2 starts from "unlimited" until the server's SETTINGS say otherwise.
            if seen != 0 && seen != usize::MAX {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.max_streams.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Starts a call of `path` and sends `body`, ending the request only when `end`.
    pub async fn call(&mut self, path: &str, body: Bytes, end: bool) -> (ResponseFuture, SendStream<Bytes>) {
        self.call_with(path, &[], body, end).await
    }

    /// [`call`](Self::call) with extra request `headers` (an identity, say).
    pub async fn call_with(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
        end: bool,
    ) -> (ResponseFuture, SendStream<Bytes>) {
        let mut request = http::Request::post(format!("http://selfie-auth{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(()).expect("request");
        self.send = self.send.clone().ready().await.expect("ready");
        let (response, mut stream) = self.send.send_request(request, false).expect("send request");
        // The server may have answered (and closed the stream) already; its answer tells.
        let _ = stream.send_data(body, end);
        (response, stream)
    }
}

impl Drop for RawGrpc {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// `message` in a gRPC frame: no compression, big-endian length.
pub fn grpc_frame(message: &[u8]) -> Bytes {
    let mut frame = Vec::with_capacity(message.len() + 5);
    frame.push(0);
    frame.extend_from_slice(&u32::try_from(message.len()).expect("small").to_be_bytes());
    frame.extend_from_slice(message);
    frame.into()
}

/// A call's status: its `grpc-status` and decoded `grpc-status-details-bin`.
#[derive(Debug)]
pub struct RawStatus {
    pub code: i32,
    pub details: Option<tonic_types::pb::Status>,
    /// Bytes of every header and trailer of the response.
    pub metadata_bytes: usize,
}

impl RawStatus {
    pub fn reason(&self) -> String {
        use prost::Message as _;
        let Some(status) = &self.details else {
            return String::new();
        };
        status
            .details
            .iter()
            .find(|any| any.type_url.ends_with("google.rpc.ErrorInfo"))
            .and_then(|any| tonic_types::pb::ErrorInfo::decode(any.value.as_slice()).ok())
            .map(|info| info.reason)
            .unwrap_or_default()
    }
}

fn status_from(headers: &http::HeaderMap) -> Option<RawStatus> {
    use base64::Engine as _;
    use prost::Message as _;
    let code = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    let details = headers
        .get("grpc-status-details-bin")
        .and_then(|value| {
            base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(
                    value
                        .as_bytes()
                        .iter()
                        .copied()
                        .filter(|b| *b != b'=')
                        .collect::<Vec<_>>(),
                )
                .ok()
        })
        .and_then(|bytes| tonic_types::pb::Status::decode(bytes.as_slice()).ok());
    let metadata_bytes = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    Some(RawStatus {
        code,
        details,
        metadata_bytes,
    })
}

/// Waits (at most `timeout`) for a call's status, from its headers or trailers.
pub async fn raw_status(response: ResponseFuture, timeout: Duration) -> Option<RawStatus> {
    tokio::time::timeout(timeout, async move {
        let response = response.await.ok()?;
        if let Some(status) = status_from(response.headers()) {
            return Some(status);
        }
        let mut body: RecvStream = response.into_body();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.ok()?;
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        let trailers = body.trailers().await.ok()??;
        status_from(&trailers)
    })
    .await
    .ok()
    .flatten()
}

/// HTTP/2 written frame by frame, for what no HTTP/2 library sends: streams
/// reset as fast as they are opened, frames that make the server reset
/// streams itself, header blocks that never end.
pub struct RawFrames {
    write: tokio::net::tcp::OwnedWriteHalf,
    heard: tokio::task::JoinHandle<Heard>,
    next_stream: u32,
}

/// What the server sent on a [`RawFrames`] connection until it ended.
#[derive(Debug, Default)]
pub struct Heard {
    /// Streams the server reset (RST_STREAM).
    pub resets: usize,
    /// The error code of its GOAWAY; `None` if it sent none.
    pub goaway: Option<u32>,
}

/// Frame types, flags and settings (RFC 9113 §6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
/// SETTINGS_INITIAL_WINDOW_SIZE: 0 lets the server send no DATA on any stream.
pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
/// GOAWAY's code for a peer that is doing too much (RFC 9113 §7).
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len()).expect("a small frame").to_be_bytes();
    let mut frame = Vec::with_capacity(9 + payload.len());
    frame.extend_from_slice(&length[1..]);
    frame.extend_from_slice(&[kind, flags]);
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// A POST of `path` with `extra` headers, as an HPACK block of literals, no Huffman coding.
fn request_block(path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut block = vec![0x83, 0x86]; // :method POST, :scheme http (static table)
    // A string's length in one byte: 127 and more would take HPACK's longer form.
    let length = |text: &str| {
        u8::try_from(text.len())
            .ok()
            .filter(|length| *length < 127)
            .expect("a short string")
    };
    let mut literal = |name: Option<u8>, key: &str, value: &str| {
        // Literals without indexing: the name from the static table, or spelt out.
        if let Some(index) = name {
            block.push(index);
        } else {
            block.push(0);
            block.push(length(key));
            block.extend_from_slice(key.as_bytes());
        }
        block.push(length(value));
        block.extend_from_slice(value.as_bytes());
    };
    literal(Some(0x04), ":path", path);
    literal(Some(0x01), ":authority", "selfie-auth");
    literal(None, "content-type", "application/grpc");
    literal(None, "te", "trailers");
    for (name, value) in extra {
        literal(None, name, value);
    }
    block
}

impl RawFrames {
    /// Connects, sends the preface and empty SETTINGS, and listens for a GOAWAY.
    pub async fn connect(addr: SocketAddr) -> Self {
        Self::connect_with(addr, &[]).await
    }

    /// Connects with `settings` (identifier, value) in the first SETTINGS frame.
    pub async fn connect_with(addr: SocketAddr, settings: &[(u16, u32)]) -> Self {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let tcp = TcpStream::connect(addr).await.expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        let (mut read, mut write) = tcp.into_split();
        let heard = selfie_auth::task::spawn(async move {
            let mut heard = Heard::default();
            let mut header = [0u8; 9];
            loop {
                if read.read_exact(&mut header).await.is_err() {
                    return heard;
                }
                let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
                let mut payload = vec![0u8; length];
                if read.read_exact(&mut payload).await.is_err() {
                    return heard;
                }
                match header[3] {
                    RST_STREAM => heard.resets += 1,
                    GOAWAY if payload.len() >= 8 => {
                        heard.goaway = Some(u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]));
                        return heard;
                    }
                    _ => {}
                }
            }
        });
        write.write_all(&Self::opening_with(settings)).await.expect("preface");
        Self {
            write,
            heard,
            next_stream: 1,
        }
    }

    /// Sends `bytes`; false once the server has closed the connection.
    pub async fn send(&mut self, bytes: &[u8]) -> bool {
        use tokio::io::AsyncWriteExt as _;
        self.write.write_all(bytes).await.is_ok()
    }

    /// The frames opening a new stream that calls `path`, its id, and no body yet.
    pub fn open(&mut self, path: &str) -> (u32, Vec<u8>) {
        self.headers(path, &[], END_HEADERS)
    }

    /// [`RawFrames::open`] with `extra` headers (an identity, say).
    pub fn open_with(&mut self, path: &str, extra: &[(&str, &str)]) -> (u32, Vec<u8>) {
        self.headers(path, extra, END_HEADERS)
    }

    /// A HEADERS frame that leaves its header block open, for CONTINUATION to follow.
    pub fn open_without_end(&mut self, path: &str) -> (u32, Vec<u8>) {
        self.headers(path, &[], 0)
    }

    fn headers(&mut self, path: &str, extra: &[(&str, &str)], flags: u8) -> (u32, Vec<u8>) {
        let stream = self.next_stream;
        self.next_stream += 2;
        (stream, frame(HEADERS, flags, stream, &request_block(path, extra)))
    }

    /// `stream`'s whole request body: `body` in one DATA frame that ends the stream.
    pub fn last_data(stream: u32, body: &[u8]) -> Vec<u8> {
        frame(DATA, END_STREAM, stream, body)
    }

    /// The client cancelling `stream` (RST_STREAM, CANCEL).
    pub fn cancel(stream: u32) -> Vec<u8> {
        frame(RST_STREAM, 0, stream, &0x8u32.to_be_bytes())
    }

    /// What a client sends first: the preface, then its (empty) SETTINGS.
    pub fn opening() -> Vec<u8> {
        Self::opening_with(&[])
    }

    fn opening_with(settings: &[(u16, u32)]) -> Vec<u8> {
        let mut opening = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        let payload: Vec<u8> = settings
            .iter()
            .flat_map(|(id, value)| id.to_be_bytes().into_iter().chain(value.to_be_bytes()))
            .collect();
        opening.extend(frame(SETTINGS, 0, 0, &payload));
        opening
    }

    /// A PING, which the server must answer.
    pub fn ping() -> Vec<u8> {
        frame(PING, 0, 0, &[0u8; 8])
    }

    /// A WINDOW_UPDATE that takes `stream`'s send window past 2^31-1, a flow
    /// control error the server answers by resetting the stream itself.
    pub fn overflow_window(stream: u32) -> Vec<u8> {
        frame(WINDOW_UPDATE, 0, stream, &0x7FFF_FFFFu32.to_be_bytes())
    }

    /// A CONTINUATION of `stream`'s header block that does not end it:
    /// `size` zero bytes, empty literal headers to HPACK.
    pub fn continuation(stream: u32, size: usize) -> Vec<u8> {
        frame(CONTINUATION, 0, stream, &vec![0u8; size])
    }

    /// What the server sent until its GOAWAY or its closing the connection,
    /// waiting at most `timeout`; `None` if the connection was still open.
    pub async fn heard(self, timeout: Duration) -> Option<Heard> {
        // Kept open until then: a client that went away would be no test.
        let Self { write, heard, .. } = self;
        let heard = tokio::time::timeout(timeout, heard).await.ok()?.ok();
        drop(write);
        heard
    }
}
