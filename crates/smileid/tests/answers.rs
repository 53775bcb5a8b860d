//! Answers no Smile ID sends: the client reads at most `MAX_ANSWER_BYTES` of
//! one, whatever the other end declares or keeps sending.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use smileid::client::MAX_ANSWER_BYTES;
use smileid::{ApiKey, ClientConfig, Credentials, Environment, SmileIdClient, SmileIdError, StatusOptions};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

/// What the fake Smile ID answers every request with.
#[derive(Clone, Copy)]
enum Answer {
    /// A `Content-Length` of 2 GiB, then nothing.
    DeclaredHuge,
    /// A chunked JSON body that never ends (whitespace after `{"a":`).
    Endless,
}

/// A server on loopback answering every request as `answer` says; counts the bytes it sent.
#[expect(
    clippy::disallowed_methods,
    reason = "this crate has no span-carrying spawn, and no spans here"
)]
async fn fake_smile_id(answer: Answer) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}/v1", listener.local_addr().expect("addr"));
    let sent = Arc::new(AtomicUsize::new(0));
    let counted = sent.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let sent = counted.clone();
            tokio::spawn(async move {
                // The request's head and its small JSON body, then the answer.
                let mut request = [0u8; 8192];
                let _ = socket.read(&mut request).await;
                let head = match answer {
                    Answer::DeclaredHuge => {
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2147483648\r\n\r\n"
                    }
                    Answer::Endless => {
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n"
                    }
                };
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                if let Answer::Endless = answer {
                    let mut chunk = format!("{:x}\r\n", 64 * 1024).into_bytes();
                    chunk.extend(std::iter::repeat_n(b' ', 64 * 1024));
                    chunk.extend_from_slice(b"\r\n");
                    // At most 256 MiB: the client stops reading long before.
                    for _ in 0..4096 {
                        if socket.write_all(&chunk).await.is_err() {
                            return;
                        }
                        sent.fetch_add(chunk.len(), Ordering::Relaxed);
                    }
                } else {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                }
            });
        }
    });
    (base, sent)
}

fn client_of(base: String) -> SmileIdClient {
    let credentials = Credentials::new("007", ApiKey::new("not-a-real-key"));
    let mut config = ClientConfig::new(Environment::Custom(base), credentials);
    config.request_timeout = Duration::from_secs(10);
    SmileIdClient::new(config).expect("client")
}

async fn job_status(client: &SmileIdClient) -> Result<(), SmileIdError> {
    tokio::time::timeout(
        Duration::from_secs(20),
        client.job_status("user-1", "job-1", StatusOptions::default()),
    )
    .await
    .expect("the client gives up on the answer, not the test")
    .map(drop)
}

/// The client's refusal of an answer over `MAX_ANSWER_BYTES`.
fn assert_too_large(error: &SmileIdError) {
    assert!(
        matches!(error, SmileIdError::Malformed(why) if why.contains(&MAX_ANSWER_BYTES.to_string())),
        "{error:?}"
    );
}

#[tokio::test]
async fn an_answer_declared_larger_than_the_limit_is_refused_unread() {
    let (base, _) = fake_smile_id(Answer::DeclaredHuge).await;
    let error = job_status(&client_of(base)).await.expect_err("2 GiB declared");
    assert_too_large(&error);
}

#[tokio::test]
async fn an_answer_that_never_ends_is_read_only_up_to_the_limit() {
    let (base, sent) = fake_smile_id(Answer::Endless).await;
    let error = job_status(&client_of(base)).await.expect_err("an endless answer");
    assert_too_large(&error);
    // What the kernel's buffers took besides: far less than the 256 MiB offered.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent = sent.load(Ordering::Relaxed);
    assert!(sent < 64 * 1024 * 1024, "the client kept reading: {sent} bytes");
}
