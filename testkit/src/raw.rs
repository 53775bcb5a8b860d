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
