//! msagent's Prometheus metrics and its HTTP listener (`--http-listen`, off
//! by default): `/metrics` and `/healthz`, both without a token (the listener
//! is meant for loopback or the host's monitoring network; it shows no job
//! content). Every name and description is here.
//!
//! The session sets the attempt and outbox gauges as they change
//! ([`publish_session`]) and counts reconnects ([`reconnected`]); GPU memory
//! and utilisation are read from NVML at scrape time, on hosts where NVML
//! loads.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics::{counter, describe_counter, describe_gauge, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::future::Future;
use std::sync::OnceLock;
use tokio::net::TcpListener;

pub const ATTEMPTS_RUNNING: &str = "msfleet_agent_attempts_running";
pub const OUTBOX_UPDATES: &str = "msfleet_agent_outbox_updates";
pub const RECONNECTS: &str = "msfleet_agent_reconnects_total";
pub const GPU_MEMORY_USED: &str = "msfleet_agent_gpu_memory_used_bytes";
pub const GPU_UTILIZATION: &str = "msfleet_agent_gpu_utilization_ratio";

/// Installs the recorder (once per process) and describes every metric.
pub fn install() -> Result<PrometheusHandle, String> {
    static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .install_recorder()
                .map_err(|e| e.to_string())?;
            describe_gauge!(ATTEMPTS_RUNNING, "Attempts this agent runs now");
            describe_gauge!(
                OUTBOX_UPDATES,
                "Updates sent or waiting to be sent that the scheduler has not acknowledged yet"
            );
            describe_counter!(
                RECONNECTS,
                "Times the scheduler session was lost and retried"
            );
            describe_gauge!(
                GPU_MEMORY_USED,
                metrics::Unit::Bytes,
                "GPU memory in use, per GPU index (NVML)"
            );
            describe_gauge!(
                GPU_UTILIZATION,
                "Share of the last sample period the GPU was busy, 0..1, per GPU index (NVML)"
            );
            Ok(handle)
        })
        .clone()
}

/// The session's gauges now.
pub fn publish_session(running: usize, outbox: usize) {
    gauge!(ATTEMPTS_RUNNING).set(running as f64);
    gauge!(OUTBOX_UPDATES).set(outbox as f64);
}

/// The session was lost and will be retried.
pub fn reconnected() {
    counter!(RECONNECTS).increment(1);
}

/// NVML, loaded once; `None` on hosts without the NVIDIA driver.
fn nvml() -> Option<&'static nvml_wrapper::Nvml> {
    static NVML: OnceLock<Option<nvml_wrapper::Nvml>> = OnceLock::new();
    NVML.get_or_init(|| nvml_wrapper::Nvml::init().ok())
        .as_ref()
}

/// Sets the GPU gauges from NVML (blocking: driver calls).
fn sample_gpus() {
    let Some(nvml) = nvml() else { return };
    let Ok(count) = nvml.device_count() else {
        return;
    };
    for index in 0..count {
        let Ok(device) = nvml.device_by_index(index) else {
            continue;
        };
        let gpu = index.to_string();
        if let Ok(mem) = device.memory_info() {
            gauge!(GPU_MEMORY_USED, "gpu" => gpu.clone()).set(mem.used as f64);
        }
        if let Ok(util) = device.utilization_rates() {
            gauge!(GPU_UTILIZATION, "gpu" => gpu).set(f64::from(util.gpu) / 100.0);
        }
    }
}

/// Serves `/metrics` and `/healthz` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    prometheus: PrometheusHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let prometheus = prometheus.clone();
                async move {
                    let text = tokio::task::spawn_blocking(move || {
                        sample_gpus();
                        prometheus.run_upkeep();
                        prometheus.render()
                    })
                    .await
                    .unwrap_or_default();
                    (
                        [(
                            header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        text,
                    )
                        .into_response()
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
