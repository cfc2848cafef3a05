//! Every metric confer exports (SPEC 9), registered in one Prometheus registry.
//! Names are part of the contract; add new ones here, beside their siblings.

use crate::model::TrackKind;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{
    Counter, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use std::sync::{Mutex, PoisonError};

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
    pub participants_active: IntGauge,
    /// Live nodes of the cluster this node sees (itself included; 1 alone).
    pub cluster_nodes: IntGauge,
    /// One room message relayed between cluster nodes, from the client's node
    /// sending it to the room's node taking it (SPEC 13).
    pub cluster_relay_seconds: Histogram,
    pub media: MediaMetrics,
    pub quality: QualityMetrics,
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
            participants_active: IntGauge::new(
                "confer_participants_active",
                "Participants joined to a room over /rtc (calls in sfu mode included)",
            )
            .unwrap(),
            cluster_nodes: IntGauge::new(
                "confer_cluster_nodes",
                "Live nodes of the cluster, as of this node's last read of the heartbeats (1 without a cluster)",
            )
            .unwrap(),
            cluster_relay_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "confer_cluster_relay_seconds",
                    "Time from a node relaying a client's room message to the room's node taking it up (cluster only)",
                )
                .buckets(vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1]),
            )
            .unwrap(),
            media: MediaMetrics::new(&registry),
            quality: QualityMetrics::new(&registry),
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
        r.register(Box::new(m.participants_active.clone())).unwrap();
        r.register(Box::new(m.cluster_nodes.clone())).unwrap();
        m.cluster_nodes.set(1);
        r.register(Box::new(m.cluster_relay_seconds.clone())).unwrap();
        r.register(Box::new(crate::store::redis_store::REDIS_ERRORS.clone())).unwrap();
        r.register(Box::new(CpuCollector::new())).unwrap();
        let build = IntGaugeVec::new(
            Opts::new("confer_build_info", "Always 1; its version label says which build of confer is running"),
            &["version"],
        )
        .unwrap();
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        r.register(Box::new(build)).unwrap();
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

/// `confer_process_cpu_seconds_total`, a counter read at each scrape: the
/// process collector's `process_cpu_seconds_total` counts whole seconds
/// only, too coarse for per-packet costs (`confer loadtest` reads this one).
struct CpuCollector {
    total: Counter,
    /// Two scrapes at once must not both add the same CPU time.
    reading: Mutex<()>,
}

impl CpuCollector {
    fn new() -> Self {
        let total = Counter::new(
            "confer_process_cpu_seconds_total",
            "User + system CPU time of the process, in seconds, with microsecond resolution",
        )
        .unwrap();
        Self { total, reading: Mutex::new(()) }
    }
}

impl Collector for CpuCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.total.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _one = self.reading.lock().unwrap_or_else(PoisonError::into_inner);
        let more = process_cpu_seconds() - self.total.get();
        if more > 0.0 {
            self.total.inc_by(more);
        }
        self.total.collect()
    }
}

/// User + system CPU of this process (getrusage), in seconds.
pub fn process_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The SFU's metrics. Counters are resolved per label once, so the forwarding
/// path only does atomic adds.
#[derive(Clone)]
pub struct MediaMetrics {
    pub peer_connections: IntGauge,
    tracks_published: [IntGauge; 2],
    received: [IntCounter; 2],
    forwarded: [IntCounter; 2],
    forwarded_bytes: [IntCounter; 2],
    rtcp: IntCounterVec,
    pub nack: IntCounter,
    pub retransmitted: IntCounter,
    pub pli: IntCounter,
    pub datagrams_dropped: IntCounter,
    pub send_errors: IntCounter,
    pub forward_delay: Histogram,
    /// By reason: requested, bandwidth, publisher (SPEC 5.1).
    layer_switches: [IntCounter; 3],
    /// Subscribed video tracks forwarding nothing for lack of bandwidth.
    pub tracks_paused: IntGauge,
    /// NACKed packets that had to wait: the subscriber's estimate was used up.
    pub retransmit_over_budget: IntCounter,
    /// NACKed packets sent a second time to a receiver without transport-cc.
    pub retransmit_follow_up: IntCounter,
    /// NACKs from before a layer switch answered by a filler.
    pub retransmit_filled: IntCounter,
    /// Bandwidth probes by result: raised (the estimate), not_raised.
    probes: [IntCounter; 2],
    pub padding_bytes: IntCounter,
}

/// The `type` labels of `confer_rtcp_packets_total`, created at start so
/// the series exist (at 0) before the first packet: `rate()` and dashboards
/// see a counter that starts rather than one that appears.
pub const RTCP_TYPES: [&str; 8] = ["sr", "rr", "sdes", "bye", "nack", "pli", "fir", "other"];

/// The reasons SPEC 5.1's `subscription-update` gives.
pub const LAYER_SWITCH_REASONS: [&str; 3] = ["requested", "bandwidth", "publisher"];

fn by_kind<T: Clone>(f: impl Fn(&str) -> T) -> [T; 2] {
    [f("audio"), f("video")]
}

fn kind_index(kind: TrackKind) -> usize {
    match kind {
        TrackKind::Audio => 0,
        TrackKind::Video => 1,
    }
}

impl MediaMetrics {
    fn new(r: &Registry) -> Self {
        let gauge_vec = |name: &str, help: &str| {
            let v = IntGaugeVec::new(Opts::new(name, help), &["kind"]).unwrap();
            r.register(Box::new(v.clone())).unwrap();
            v
        };
        let counter_vec = |name: &str, help: &str, label: &str| {
            let v = IntCounterVec::new(Opts::new(name, help), &[label]).unwrap();
            r.register(Box::new(v.clone())).unwrap();
            v
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).unwrap();
            r.register(Box::new(c.clone())).unwrap();
            c
        };
        let pcs =
            IntGauge::new("confer_peer_connections_active", "SFU PeerConnections (publisher and subscriber legs)")
                .unwrap();
        r.register(Box::new(pcs.clone())).unwrap();
        let tracks = gauge_vec("confer_tracks_published", "Tracks being published to the SFU, by kind");
        let received = counter_vec("confer_rtp_packets_received_total", "RTP packets received from publishers", "kind");
        let forwarded =
            counter_vec("confer_rtp_packets_forwarded_total", "RTP packets forwarded to subscribers", "kind");
        let bytes = counter_vec("confer_rtp_bytes_forwarded_total", "RTP bytes forwarded to subscribers", "kind");
        let switches = counter_vec(
            "confer_layer_switches_total",
            "Changes of the simulcast layer forwarded to a subscriber, by reason",
            "reason",
        );
        let probes = counter_vec(
            "confer_bandwidth_probes_total",
            "Bandwidth probes the SFU sent to subscribers, by whether they raised the estimate (SPEC 5.1)",
            "result",
        );
        Self {
            retransmit_over_budget: counter(
                "confer_retransmissions_over_budget_total",
                "NACKed packets the SFU could not send again at once because the subscriber's bandwidth estimate was used up (they wait for room, at most 400 ms)",
            ),
            retransmit_follow_up: counter(
                "confer_retransmissions_follow_up_total",
                "NACKed packets the SFU sent once more, unasked, to a subscriber without transport-cc once its NACKs stopped (it cannot say which retransmissions arrived)",
            ),
            retransmit_filled: counter(
                "confer_retransmissions_filled_total",
                "NACKed packets from before a layer switch that the SFU answered with a padding packet under the same number, not the packet, to a subscriber without transport-cc (what came before the new layer's keyframe is of no use to it, but aiortc's jitter buffer waits for every number it missed)",
            ),
            probes: ["raised", "not_raised"].map(|r| probes.with_label_values(&[r])),
            padding_bytes: counter(
                "confer_probe_padding_bytes_total",
                "Bytes of padding the SFU sent to subscribers to probe their bandwidth",
            ),
            layer_switches: LAYER_SWITCH_REASONS.map(|r| switches.with_label_values(&[r])),
            tracks_paused: {
                let g = IntGauge::new(
                    "confer_tracks_paused",
                    "Subscribed video tracks the SFU forwards nothing of because the subscriber's bandwidth does not fit them",
                )
                .unwrap();
                r.register(Box::new(g.clone())).unwrap();
                g
            },
            peer_connections: pcs,
            tracks_published: by_kind(|k| tracks.with_label_values(&[k])),
            received: by_kind(|k| received.with_label_values(&[k])),
            forwarded: by_kind(|k| forwarded.with_label_values(&[k])),
            forwarded_bytes: by_kind(|k| bytes.with_label_values(&[k])),
            rtcp: {
                let v = counter_vec("confer_rtcp_packets_total", "RTCP packets received by the SFU, by type", "type");
                for ty in RTCP_TYPES {
                    v.with_label_values(&[ty]);
                }
                v
            },
            nack: counter("confer_nack_total", "NACKs received from subscribers"),
            retransmitted: counter(
                "confer_rtp_packets_retransmitted_total",
                "RTP packets the SFU sent again to subscribers that NACKed them, from its history",
            ),
            pli: counter("confer_pli_total", "Keyframe requests (PLI) the SFU sent to publishers"),
            datagrams_dropped: counter(
                "confer_media_datagrams_dropped_total",
                "Datagrams on the media port from an unknown address or that a PeerConnection rejected",
            ),
            send_errors: counter("confer_media_send_errors_total", "Datagrams the media socket could not send"),
            forward_delay: {
                let h = Histogram::with_opts(
                    HistogramOpts::new(
                        "confer_media_forward_delay_seconds",
                        "From reading a batch of datagrams to handing the last datagram it caused to the kernel: \
                         an upper bound on what the SFU adds to each packet in the batch",
                    )
                    .buckets(vec![0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05]),
                )
                .unwrap();
                r.register(Box::new(h.clone())).unwrap();
                h
            },
        }
    }

    pub fn tracks_published(&self, kind: TrackKind) -> &IntGauge {
        &self.tracks_published[kind_index(kind)]
    }

    pub fn received(&self, kind: TrackKind) -> &IntCounter {
        &self.received[kind_index(kind)]
    }

    pub fn forwarded(&self, kind: TrackKind) -> IntCounter {
        self.forwarded[kind_index(kind)].clone()
    }

    /// RTP packets forwarded so far, audio and video.
    pub fn forwarded_packets(&self) -> u64 {
        self.forwarded.iter().map(IntCounter::get).sum()
    }

    pub fn forwarded_bytes(&self, kind: TrackKind) -> IntCounter {
        self.forwarded_bytes[kind_index(kind)].clone()
    }

    /// `reason` is one of [`LAYER_SWITCH_REASONS`].
    pub fn layer_switches(&self, reason: &str) -> &IntCounter {
        let i = LAYER_SWITCH_REASONS.iter().position(|r| *r == reason).unwrap_or(0);
        &self.layer_switches[i]
    }

    /// A probe ended; `raised` if it raised the estimate.
    pub fn probe(&self, raised: bool) -> &IntCounter {
        &self.probes[usize::from(!raised)]
    }

    pub fn rtcp(&self, ty: &str) -> IntCounter {
        debug_assert!(RTCP_TYPES.contains(&ty), "{ty} is not in RTCP_TYPES");
        self.rtcp.with_label_values(&[ty])
    }
}

/// SPEC 8/9 quality histograms, observed once per stream (or call) per
/// 5-second analytics sample.
#[derive(Clone)]
pub struct QualityMetrics {
    pub bandwidth_estimate_bytes_per_second: Histogram,
    pub stream_packet_loss: Histogram,
    pub stream_jitter_seconds: Histogram,
    pub stream_rtt_seconds: Histogram,
    pub call_quality_mos: Histogram,
}

impl QualityMetrics {
    fn new(r: &Registry) -> Self {
        let h = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).unwrap();
            r.register(Box::new(h.clone())).unwrap();
            h
        };
        Self {
            // SPEC 5.1 names it `..._bits_per_second`, but Prometheus's base
            // unit is bytes and promtool (SPEC 9) rejects "bits": bytes it is.
            bandwidth_estimate_bytes_per_second: h(
                "confer_bandwidth_estimate_bytes_per_second",
                "The SFU's downstream estimate per subscriber per 5 s sample, in bytes per second",
                [100e3, 250e3, 500e3, 750e3, 1e6, 1.5e6, 2.5e6, 5e6, 10e6, 20e6].map(|bits| bits / 8.0).to_vec(),
            ),
            stream_packet_loss: h(
                "confer_stream_packet_loss",
                "Packet loss fraction per stream per 5 s sample",
                vec![0.0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5],
            ),
            stream_jitter_seconds: h(
                "confer_stream_jitter_seconds",
                "Interarrival jitter per stream per 5 s sample",
                vec![0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2],
            ),
            stream_rtt_seconds: h(
                "confer_stream_rtt_seconds",
                "Round-trip time per subscriber leg per 5 s sample (RFC 3550 LSR/DLSR)",
                vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 1.0],
            ),
            call_quality_mos: h(
                "confer_call_quality_mos",
                "Call or room quality score (MOS 1-5) per 5 s sample",
                vec![1.0, 2.0, 2.6, 3.1, 3.6, 4.0, 4.3, 4.5],
            ),
        }
    }
}
