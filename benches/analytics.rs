//! What analytics adds per packet on the SFU's hot path: one RFC 3550
//! `StreamStats::on_packet` per received RTP packet (plus the SSRC lookup the
//! engine does before it). Run: `cargo bench --bench analytics`.
//! Prints ns per received packet and, for a fan-out of N, per forwarded packet.

use confer::analytics::stream::StreamStats;
use std::collections::HashMap;
use std::hint::black_box;
use std::time::Instant;

fn main() {
    let n: u32 = 20_000_000;
    let mut stats = StreamStats::new(90_000);
    let mut by_ssrc: HashMap<(u32, u32), u32> = HashMap::new();
    for i in 0..64 {
        by_ssrc.insert((i, 1111 + i), i);
    }
    let started = Instant::now();
    for i in 0..n {
        let key = black_box((7u32, 1118u32));
        if let Some(track) = by_ssrc.get(&key) {
            black_box(track);
            // Every 50th packet reordered, every 97th lost, a frame per 3 packets.
            let seq = if i % 50 == 0 { i.wrapping_sub(1) } else { i } as u16;
            if i % 97 != 0 {
                stats.on_packet(black_box(seq), i.wrapping_mul(3000), f64::from(i) * 0.0003, 1200, i % 3 == 0);
            }
        }
    }
    let ns = started.elapsed().as_nanos() as f64 / f64::from(n);
    black_box(stats.loss());
    println!(
        "{{\"bench\":\"analytics-per-packet\",\"nsPerReceivedPacket\":{ns:.1},\"nsPerForwardedPacketAt20Subscribers\":{:.2}}}",
        ns / 20.0
    );
}
