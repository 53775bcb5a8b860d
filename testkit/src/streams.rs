//! Reading streams and error details.

use std::time::Duration;

use selfie_auth::grpc::pb;

/// The `ErrorInfo.reason` of a status.
pub fn reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt as _;
    status
        .get_error_details()
        .error_info()
        .map(|info| info.reason.clone())
        .unwrap_or_default()
}

/// The `ErrorInfo.reason` inside a stored `google.rpc.Status` (`Job.error`).
pub fn rpc_status_reason(status: &tonic_types::pb::Status) -> String {
    use prost::Message as _;
    let status = tonic::Status::with_details(
        tonic::Code::from_i32(status.code),
        status.message.clone(),
        status.encode_to_vec().into(),
    );
    reason(&status)
}

/// Reads a stream's next message within `timeout`.
pub async fn next_event(
    stream: &mut tonic::Streaming<pb::JobEvent>,
    timeout: Duration,
) -> Option<Result<pb::JobEvent, tonic::Status>> {
    tokio::time::timeout(timeout, stream.message())
        .await
        .ok()
        .and_then(std::result::Result::transpose)
}

/// Reads non-heartbeat events until the stream ends or `count` were read.
/// The kinds of `events`, in order.
pub fn kinds(events: &[pb::JobEvent]) -> Vec<pb::JobEventKind> {
    events.iter().map(pb::JobEvent::kind).collect()
}

pub async fn collect_events(stream: &mut tonic::Streaming<pb::JobEvent>, count: usize) -> Vec<pb::JobEvent> {
    let mut events = Vec::new();
    while events.len() < count {
        match next_event(stream, Duration::from_secs(10)).await {
            Some(Ok(event)) if event.kind() == pb::JobEventKind::Heartbeat => {}
            Some(Ok(event)) => events.push(event),
            _ => break,
        }
    }
    events
}

/// Whether the peer closed `stream` within `within` (a read ends or fails).
pub async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt as _;
    let mut buffer = [0u8; 256];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

/// `message` as a mesh proxy forwards it for the SPIFFE ID `identity`.
pub fn forwarded<T>(identity: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let header = format!("URI={identity}");
    request
        .metadata_mut()
        .insert("x-forwarded-client-cert", header.parse().expect("an ASCII header"));
    request
}
