//! The forwarding path allocates nothing per forwarded copy (issue 7): after
//! a warm-up, writing copies of a publisher's packet for many consumers —
//! the forwarding decision, header rewrite, marshal, SRTP protect in place, queueing
//! and sending with `sendmmsg` over a real loopback socket — makes no heap
//! allocation at all. A counting global allocator (this test binary only)
//! sees every one.

use bytes::Bytes;
use confer::media::egress::{Stamps, Writer};
use confer::media::forwarder::{self, Decision, Forwarder};
use confer::media::ids::Ssrc;
use confer::media::rewrite::Rewrite;
use confer::media::udp::SendBatch;
use rtc::rtp::header::{Extension, Header, EXTENSION_PROFILE_ONE_BYTE};
use rtc::srtp::context::Context;
use rtc::srtp::protection_profile::ProtectionProfile;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: defers to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Relaxed) {
            ALLOCATIONS.fetch_add(1, Relaxed);
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Relaxed) {
            ALLOCATIONS.fetch_add(1, Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn publisher_packet(seq: u16) -> rtc::rtp::Packet {
    rtc::rtp::Packet {
        header: Header {
            version: 2,
            payload_type: 96,
            sequence_number: seq,
            timestamp: 90_000,
            ssrc: 1111,
            marker: true,
            extension: true,
            extension_profile: EXTENSION_PROFILE_ONE_BYTE,
            extensions: vec![
                Extension { id: 1, payload: Bytes::from_static(b"\x90") },
                Extension { id: 3, payload: Bytes::from_static(b"\x01\x02\x03") },
            ],
            ..Default::default()
        },
        payload: Bytes::from(vec![0xAB; 1100]),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn forwarding_a_packet_to_many_consumers_allocates_nothing_per_copy() {
    const CONSUMERS: usize = 100;
    let provider = rtc::crypto::default_provider().expect("a crypto provider");
    let mut legs: Vec<(Context, Rewrite, Forwarder)> = (0..CONSUMERS)
        .map(|i| {
            let profile =
                if i % 2 == 0 { ProtectionProfile::AeadAes128Gcm } else { ProtectionProfile::Aes128CmHmacSha1_80 };
            let (key, salt) = (vec![i as u8; profile.key_len()], vec![9u8; profile.salt_len()]);
            let ctx = Context::new(&key, &salt, profile, None, None, provider.crypto()).expect("context");
            // Every other leg without transport-cc, stamped with abs-send-time.
            let twcc = i % 4 < 2;
            let rewrite = Rewrite {
                extensions: vec![(1, 2), (3, 5)],
                mid: Some((9, Bytes::from_static(b"3"))),
                transport_cc: twcc.then_some(6),
                abs_send_time: (!twcc).then_some(7),
                rtx: None,
            };
            (ctx, rewrite, Forwarder::new(Ssrc(5000 + i as u32), vec![(96, 100)]))
        })
        .collect();
    let tx = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let rx = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let to = rx.local_addr().expect("addr");
    tx.writable().await.expect("writable");
    let packets: Vec<rtc::rtp::Packet> = (0..40).map(|i| publisher_packet(7000 + i)).collect();
    let (mut writer, mut batch) = (Writer::default(), SendBatch::default());
    let mut transport_seq = 0u16;
    let mut sent = 0usize;
    let mut forward = |pkt: &rtc::rtp::Packet, batch: &mut SendBatch| {
        let info = forwarder::Packet::of(pkt);
        let now = std::time::Instant::now();
        for (ctx, rewrite, fwd) in legs.iter_mut() {
            let Decision::Send(send) = fwd.decide(&info, true, now) else { panic!("payload type negotiated") };
            transport_seq = transport_seq.wrapping_add(1);
            let stamps = match rewrite.transport_cc {
                Some(_) => Stamps { transport_seq: Some(transport_seq), send_time: None },
                None => Stamps { transport_seq: None, send_time: Some(u32::from(transport_seq) << 8) },
            };
            let out = writer.protect(ctx, rewrite, pkt, &send, stamps, None).expect("protect");
            assert_eq!(batch.push(&tx, out, to), 0, "queued and sent");
            sent += 1;
        }
        assert_eq!(batch.flush(&tx), 0);
    };
    // Warm-up: the batch's buffers and every SRTP stream's state are made
    // on first use.
    for pkt in &packets[..4] {
        forward(pkt, &mut batch);
    }
    COUNTING.store(true, Relaxed);
    for pkt in &packets[4..] {
        forward(pkt, &mut batch);
    }
    COUNTING.store(false, Relaxed);
    let copies = (packets.len() - 4) * CONSUMERS;
    assert_eq!(ALLOCATIONS.load(Relaxed), 0, "allocations while writing {copies} forwarded copies");
    assert_eq!(sent, packets.len() * CONSUMERS);
    // And what went out is real SRTP the receiver's socket got (its buffer
    // holds at least the first datagrams).
    let mut buf = [0u8; 2048];
    let (n, from) = rx.recv_from(&mut buf).await.expect("a datagram");
    assert_eq!(from, tx.local_addr().expect("addr"));
    assert!(n > 1100 + 12, "header, payload and auth tag: {n} bytes");
}
