//! Helpers shared by the black-box tests: fixture images, a simulator on
//! 127.0.0.1:0, and a callback sink.
#![allow(dead_code)]

use std::io::Cursor;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use selfie_auth::simulator::{self, RunningSimulator, SimulatorConfig};
use selfie_auth::smileid::{ApiKey, ClientConfig, Credentials, Environment, SmileIdClient};
use serde_json::Value;

pub const PARTNER_ID: &str = "1234";
pub const API_KEY: &str = "test-api-key-0123456789abcdef";
pub const ENROLLED_USER: &str = "user-enrolled";

pub fn credentials() -> Credentials {
    Credentials::new(PARTNER_ID, ApiKey::new(API_KEY))
}

/// A small real JPEG; `seed` varies the pixels so images differ.
pub fn jpeg(width: u32, height: u32, seed: u8) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x as u8).wrapping_add(seed), (y as u8).wrapping_mul(3), seed])
    });
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(image)
        .write_to(&mut out, image::ImageFormat::Jpeg)
        .expect("encode jpeg");
    out.into_inner()
}

pub fn png(width: u32, height: u32, seed: u8) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, y| image::Rgb([x as u8, y as u8, seed]));
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(image)
        .write_to(&mut out, image::ImageFormat::Png)
        .expect("encode png");
    out.into_inner()
}

pub fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

pub async fn start_simulator(configure: impl FnOnce(&mut SimulatorConfig)) -> RunningSimulator {
    let mut config = SimulatorConfig::new(PARTNER_ID, ApiKey::new(API_KEY));
    config.enrolled_users = vec![ENROLLED_USER.to_owned()];
    config.callback_delay = Duration::from_millis(20);
    config.review_delay = Duration::from_millis(300);
    configure(&mut config);
    simulator::start(config, loopback()).await.expect("simulator")
}

pub fn client_for(sim: &RunningSimulator) -> SmileIdClient {
    client_with(sim, |_| {})
}

pub fn client_with(sim: &RunningSimulator, configure: impl FnOnce(&mut ClientConfig)) -> SmileIdClient {
    let mut config = ClientConfig::new(Environment::Custom(sim.v1_url()), credentials());
    config.retry.initial_backoff = Duration::from_millis(20);
    config.retry.max_backoff = Duration::from_millis(100);
    configure(&mut config);
    SmileIdClient::new(config).expect("client")
}

/// An HTTP endpoint on 127.0.0.1:0 that records every JSON body posted to it.
#[derive(Clone)]
pub struct CallbackSink {
    pub url: String,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl CallbackSink {
    pub async fn start() -> Self {
        let bodies: Arc<Mutex<Vec<Value>>> = Arc::default();
        let recorded = bodies.clone();
        let router = axum::Router::new().route(
            "/callback",
            axum::routing::post(move |body: Bytes| {
                let recorded = recorded.clone();
                async move {
                    if let Ok(value) = serde_json::from_slice(&body) {
                        recorded.lock().expect("lock").push(value);
                    }
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind(loopback()).await.expect("bind");
        let url = format!("http://{}/callback", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self { url, bodies }
    }

    pub fn bodies(&self) -> Vec<Value> {
        self.bodies.lock().expect("lock").clone()
    }

    /// Waits (bounded) until at least `count` bodies arrived.
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let bodies = self.bodies();
            if bodies.len() >= count || tokio::time::Instant::now() >= deadline {
                return bodies;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Polls until `check` returns `Some`, at most `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
