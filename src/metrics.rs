//! Every metric confer exports (SPEC 9), registered in one Prometheus registry.
//! Names are part of the contract; add new ones here, beside their siblings.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub ws_connections: IntGauge,
    pub calls_active: IntGauge,
    pub calls_total: IntCounterVec,
    pub rooms_active: IntGauge,
    pub http_requests_total: IntCounterVec,
    pub http_request_duration_seconds: HistogramVec,
    pub signal_relay_seconds: Histogram,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let m = Self {
            ws_connections: IntGauge::new("confer_ws_connections", "Open WebSocket connections on /rtc").unwrap(),
            calls_active: IntGauge::new("confer_calls_active", "Calls ringing or active").unwrap(),
            calls_total: IntCounterVec::new(
                Opts::new("confer_calls_total", "Calls by the status they ended in (or were created in)"),
                &["status"],
            )
            .unwrap(),
            rooms_active: IntGauge::new("confer_rooms_active", "Rooms that exist").unwrap(),
            http_requests_total: IntCounterVec::new(
                Opts::new("confer_http_requests_total", "HTTP requests by route and status"),
                &["route", "status"],
            )
            .unwrap(),
            http_request_duration_seconds: HistogramVec::new(
                HistogramOpts::new("confer_http_request_duration_seconds", "HTTP request latency by route")
                    .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
                &["route"],
            )
            .unwrap(),
            signal_relay_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "confer_signal_relay_seconds",
                    "Time from receiving a call event on /rtc to queueing it for the other party",
                )
                .buckets(vec![0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05]),
            )
            .unwrap(),
            registry,
        };
        let r = &m.registry;
        r.register(Box::new(m.ws_connections.clone())).unwrap();
        r.register(Box::new(m.calls_active.clone())).unwrap();
        r.register(Box::new(m.calls_total.clone())).unwrap();
        r.register(Box::new(m.rooms_active.clone())).unwrap();
        r.register(Box::new(m.http_requests_total.clone())).unwrap();
        r.register(Box::new(m.http_request_duration_seconds.clone())).unwrap();
        r.register(Box::new(m.signal_relay_seconds.clone())).unwrap();
        #[cfg(target_os = "linux")]
        r.register(Box::new(prometheus::process_collector::ProcessCollector::for_self())).unwrap();
        m
    }

    /// The registry, for subsystems that register their own metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("encoding to a Vec cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
