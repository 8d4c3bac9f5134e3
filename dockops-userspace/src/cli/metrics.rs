//! `--metrics-addr`: serves the latest snapshot at `/metrics` for Prometheus.

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, RwLock},
};

use anyhow::Context as _;
use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
use dockops::{collection::Snapshot, output::prometheus};

/// The last snapshot, encoded when a scrape asks for it: nothing is encoded while nobody
/// scrapes.
#[derive(Clone, Default)]
pub struct Metrics(Arc<RwLock<Option<Arc<Snapshot>>>>);

impl Metrics {
    /// Binds `addr` and serves `/metrics` in the background.
    pub async fn serve(addr: SocketAddr) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} for --metrics-addr"))?;
        let metrics = Self::default();
        let app = Router::new()
            .route("/metrics", get(scrape))
            .with_state(metrics.clone());
        tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!(%error, "metrics server stopped");
            }
        });
        tracing::info!(%addr, "serving /metrics");
        Ok(metrics)
    }

    pub fn publish(&self, snapshot: Arc<Snapshot>) {
        if let Ok(mut slot) = self.0.write() {
            *slot = Some(snapshot);
        }
    }
}

async fn scrape(State(metrics): State<Metrics>) -> impl IntoResponse {
    let last = metrics.0.read().ok().and_then(|s| s.clone());
    let body = last.map(|s| prometheus::encode(&s)).unwrap_or_default();
    ([(header::CONTENT_TYPE, prometheus::CONTENT_TYPE)], body)
}

/// `9101` or `:9101` → loopback; `HOST:PORT` as given (say `0.0.0.0:9101` to expose it).
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    let port = s.strip_prefix(':').unwrap_or(s);
    if let Ok(port) = port.parse::<u16>() {
        return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    }
    s.parse()
        .map_err(|_| format!("{s:?} is not PORT, :PORT or HOST:PORT (e.g. 127.0.0.1:9101)"))
}

#[cfg(test)]
mod tests {
    use super::parse_addr;

    #[test]
    fn addresses_default_to_loopback() {
        assert_eq!(parse_addr("9101").unwrap().to_string(), "127.0.0.1:9101");
        assert_eq!(parse_addr(":9101").unwrap().to_string(), "127.0.0.1:9101");
        assert_eq!(parse_addr("0.0.0.0:80").unwrap().to_string(), "0.0.0.0:80");
        assert_eq!(parse_addr("[::1]:9101").unwrap().to_string(), "[::1]:9101");
        assert!(parse_addr("localhost:x").is_err());
        assert!(parse_addr("70000").is_err());
    }
}
