//! Criterion benchmarks of the SFU's per-packet work, without I/O, so a
//! regression shows in review: the forwarding decision and rewrite for one
//! consumer (payload type, SSRC, header extensions, mid, sequence number),
//! the whole write of one forwarded copy (rewrite, marshal, SRTP protect),
//! and SRTP protect of one 1,200-byte packet with the two profiles webrtc
//! negotiates (AES-128-GCM and AES-CM-128/HMAC-SHA1-80, ring provider).
//! Run: `cargo bench --bench forwarding`.

use bytes::Bytes;
use confer::media::egress::{Stamps, Writer};
use confer::media::forwarder::{self, Decision, Forwarder};
use confer::media::ids::Ssrc;
use confer::media::rewrite::Rewrite;
use criterion::{criterion_group, criterion_main, Criterion};
use rtc::rtp::header::{Extension, Header, EXTENSION_PROFILE_ONE_BYTE};
use rtc::shared::marshal::Marshal;
use rtc::srtp::context::Context;
use rtc::srtp::protection_profile::ProtectionProfile;
use std::hint::black_box;

fn header() -> Header {
    Header {
        version: 2,
        payload_type: 96,
        sequence_number: 4242,
        timestamp: 90_000,
        ssrc: 1111,
        marker: true,
        extension: true,
        extension_profile: EXTENSION_PROFILE_ONE_BYTE,
        extensions: vec![
            Extension { id: 1, payload: Bytes::from_static(b"\x90") },
            Extension { id: 4, payload: Bytes::from_static(b"0") },
            Extension { id: 3, payload: Bytes::from_static(b"\x01\x02\x03") },
        ],
        ..Default::default()
    }
}

fn forwarding(c: &mut Criterion) {
    let rewrite = Rewrite {
        extensions: vec![(1, 2), (3, 5)],
        mid: Some((9, Bytes::from_static(b"3"))),
        transport_cc: Some(6),
        ..Default::default()
    };
    let mut fwd = Forwarder::new(Ssrc(77), vec![(96, 100), (111, 109)]);
    let template = header();
    let numbers = Bytes::from_static(&[0x12, 0x34]);
    let mut h = Header::default();
    let info = |h: &Header, payload: &'static [u8]| forwarder::Packet {
        ssrc: Ssrc(h.ssrc),
        seq: h.sequence_number,
        ts: h.timestamp,
        pt: h.payload_type,
        marker: h.marker,
        payload,
        layer: confer::media::allocate::Layer::Q,
        keyframe: false,
    };
    let now = std::time::Instant::now();
    c.bench_function("decide + rewrite one consumer (into a reused header)", |b| {
        b.iter(|| {
            let Decision::Send(send) = fwd.decide(&info(black_box(&template), b"x"), true, now) else { panic!("sent") };
            rewrite.apply_into(black_box(&template), &send, &mut h, Some(numbers.clone()), false);
            black_box(&h);
        })
    });
    // What the engine does per consumer, I/O aside: rewrite, marshal, protect.
    let provider = rtc::crypto::default_provider().expect("a crypto provider");
    let profile = ProtectionProfile::AeadAes128Gcm;
    let (key, salt) = (vec![7u8; profile.key_len()], vec![9u8; profile.salt_len()]);
    let mut ctx = Context::new(&key, &salt, profile, None, None, provider.crypto()).expect("context");
    let pkt = rtc::rtp::Packet { header: header(), payload: Bytes::from(vec![0xAB; 1100]) };
    let mut writer = Writer::default();
    let mut n = 0u16;
    c.bench_function("write one forwarded copy, 1100 B (rewrite + marshal + AES-128-GCM)", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            let send = forwarder::Send { ssrc: Ssrc(77), seq: n, ts: 3000, pt: 100, vp8: None, switched: false };
            let stamps = Stamps { transport_seq: Some(n), send_time: None };
            let out = writer.protect(&mut ctx, &rewrite, black_box(&pkt), &send, stamps, None).expect("protect");
            black_box(out.len())
        })
    });
}

fn srtp(c: &mut Criterion) {
    let provider = rtc::crypto::default_provider().expect("a crypto provider");
    let mut h = header();
    h.extension = false;
    h.extensions.clear();
    let mut packet = h.marshal().expect("header").to_vec();
    packet.extend(std::iter::repeat_n(0xAB, 1200 - packet.len()));
    for (name, profile) in [
        ("SRTP protect 1200 B, AES-128-GCM", ProtectionProfile::AeadAes128Gcm),
        ("SRTP protect 1200 B, AES-CM-128 + HMAC-SHA1-80", ProtectionProfile::Aes128CmHmacSha1_80),
    ] {
        let key = vec![7u8; profile.key_len()];
        let salt = vec![9u8; profile.salt_len()];
        let mut ctx = Context::new(&key, &salt, profile, None, None, provider.crypto()).expect("context");
        let mut seq = 0u16;
        c.bench_function(name, |b| {
            b.iter(|| {
                seq = seq.wrapping_add(1);
                packet[2..4].copy_from_slice(&seq.to_be_bytes());
                black_box(ctx.encrypt_rtp(black_box(&packet)).expect("protect"))
            })
        });
    }
}

criterion_group!(benches, forwarding, srtp);
criterion_main!(benches);
