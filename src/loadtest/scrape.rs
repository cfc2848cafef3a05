//! What the load tool reads from the server around a run: CPU, memory and
//! forwarded packets (from `/metrics` or `/proc`), the forwarding-delay
//! histogram, and the rooms' own analytics.

use super::*;

/// The server's (CPU seconds, RSS bytes, forwarded packets): from `/proc`
/// with `--server-pid`, else from its `/metrics`. Janus has no forwarding
/// counter (0 here; the report counts what the subscribers received).
pub(super) async fn measure(http: &reqwest::Client, opts: &LoadOpts) -> anyhow::Result<(f64, f64, f64)> {
    let mut m = match opts.server_pid {
        Some(pid) => proc_usage(pid)?,
        None if opts.janus.is_some() => anyhow::bail!("--janus needs --server-pid (Janus has no /metrics)"),
        None => nodes_metrics(http, opts).await?,
    };
    if opts.janus.is_none() && opts.server_pid.is_some() {
        m.2 = nodes_metrics(http, opts).await?.2;
    }
    Ok(m)
}

/// [`server_metrics`] summed over every node.
pub(super) async fn nodes_metrics(http: &reqwest::Client, opts: &LoadOpts) -> anyhow::Result<(f64, f64, f64)> {
    let mut sum = (0.0, 0.0, 0.0);
    for url in opts.nodes() {
        let m = server_metrics(http, url).await?;
        sum = (sum.0 + m.0, sum.1 + m.1, sum.2 + m.2);
    }
    Ok(sum)
}

/// (CPU seconds, RSS bytes, 0) of a process, from `/proc/<pid>/stat` and `status`.
pub(super) fn proc_usage(pid: u32) -> anyhow::Result<(f64, f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i - 3).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    Ok(((ticks(14) + ticks(15)) / hz, rss_kib * 1024.0, 0.0))
}

/// Server process metrics: (CPU seconds, RSS bytes, forwarded packets).
pub(super) async fn server_metrics(http: &reqwest::Client, url: &str) -> anyhow::Result<(f64, f64, f64)> {
    let text = http.get(format!("{url}/metrics")).send().await?.text().await?;
    let mut out = (0.0, 0.0, 0.0);
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, v)) = l.rsplit_once(' ') else { continue };
        let v: f64 = v.parse().unwrap_or(0.0);
        // (A server older than the counter has the same value as a gauge.)
        if name == "confer_process_cpu_seconds_total" || name == "confer_process_cpu_seconds" {
            out.0 = v;
        } else if name == "process_resident_memory_bytes" {
            out.1 = v;
        } else if name.starts_with("confer_rtp_packets_forwarded_total") {
            out.2 += v;
        }
    }
    Ok(out)
}

/// The cumulative buckets of `confer_media_forward_delay_seconds`: (upper
/// bound in seconds, count). Empty if the server has none.
pub(super) async fn forward_delay_buckets(http: &reqwest::Client, url: &str) -> Vec<(f64, f64)> {
    let Ok(resp) = http.get(format!("{url}/metrics")).send().await else { return Vec::new() };
    let text = resp.text().await.unwrap_or_default();
    text.lines()
        .filter_map(|l| l.strip_prefix("confer_media_forward_delay_seconds_bucket{le=\""))
        .filter_map(|l| {
            let (le, rest) = l.split_once("\"}")?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, rest.trim().parse().ok()?))
        })
        .collect()
}

/// [`forward_delay_buckets`] summed over every node (each has the same bounds).
pub(super) async fn nodes_delay_buckets(http: &reqwest::Client, opts: &LoadOpts) -> Vec<(f64, f64)> {
    let mut sum: Vec<(f64, f64)> = Vec::new();
    for url in opts.nodes() {
        for (le, n) in forward_delay_buckets(http, url).await {
            match sum.iter_mut().find(|(b, _)| *b == le) {
                Some(slot) => slot.1 += n,
                None => sum.push((le, n)),
            }
        }
    }
    sum
}

/// The `q` quantile (ms) of what a histogram counted between two scrapes:
/// the upper bound of the first bucket that reaches it (Prometheus buckets
/// only bound a value), `None` without samples or beyond the last bound.
pub(super) fn bucket_quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<f64> {
    let delta: Vec<(f64, f64)> =
        after.iter().map(|&(le, n)| (le, n - before.iter().find(|(b, _)| *b == le).map_or(0.0, |(_, m)| *m))).collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    delta.iter().find(|(_, n)| *n >= q * total).map(|(le, _)| le * 1000.0).filter(|ms| ms.is_finite())
}

/// What the server's own call-quality analytics (SPEC 8) say about the
/// rooms while they run: the mean room score, the mean over subscriber
/// streams of the loss, the RTCP round trip and the TWCC round trip, and the
/// frame sizes the SFU read from the publishers' keyframes. A run
/// shorter than one report interval (5 s) has `null`s here.
pub(super) async fn server_analytics(http: &reqwest::Client, url: &str, rooms: &[(String, String)]) -> Value {
    let mut scores = Vec::new();
    let (mut loss, mut rtt, mut twcc) = (Vec::new(), Vec::new(), Vec::new());
    let mut sizes = std::collections::BTreeSet::new();
    for (room, owner) in rooms {
        let Ok(resp) = http.get(format!("{url}/rooms/{room}/analytics")).bearer_auth(owner).send().await else {
            continue;
        };
        let Ok(v) = resp.json::<Value>().await else { continue };
        let a = &v["analytics"];
        scores.extend(a["quality"]["score"].as_f64());
        for p in a["participants"].as_array().into_iter().flatten() {
            let v = &p["publish"]["video"];
            if let (Some(w), Some(h)) = (v["frameWidth"].as_u64(), v["frameHeight"].as_u64()) {
                sizes.insert(format!("{w}x{h}"));
            }
            for kind in ["audio", "video"] {
                let s = &p["subscribe"][kind];
                loss.extend(s["packetLoss"].as_f64());
                rtt.extend(s["rttMs"].as_f64());
                twcc.extend(s["twccRttMs"].as_f64());
            }
        }
    }
    let mean = |v: &[f64]| (!v.is_empty()).then(|| (v.iter().sum::<f64>() / v.len() as f64 * 1000.0).round() / 1000.0);
    json!({
        "roomScore": mean(&scores),
        "subscribeLoss": mean(&loss),
        "subscribeRttMs": mean(&rtt),
        "subscribeTwccRttMs": mean(&twcc),
        "publishFrameSizes": sizes,
    })
}
