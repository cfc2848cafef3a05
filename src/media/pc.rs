//! Building webrtc-rs (`rtc`, the sans-IO core) PeerConnections the way the
//! SFU needs them: ICE-lite with credentials we choose (so the shared socket
//! can demultiplex by ufrag), one host candidate on the shared port, the
//! default codecs and what the default interceptors negotiate (NACK, PLI,
//! RTCP reports, TWCC feedback) plus transport-wide sequence numbers on what
//! the SFU sends (so subscribers' TWCC feedback gives a round trip,
//! [`super::observe`]) and RFC 6464 audio levels, and one DTLS certificate
//! shared by every connection.

use super::observe::{Observe, Observed};
use rand::distributions::{Alphanumeric, DistString};
use rtc::interceptor::{NackGeneratorBuilder, ReceiverReportBuilder, Registry, Slot, TwccReceiverBuilder};
use rtc::peer_connection::certificate::RTCCertificate;
use rtc::peer_connection::configuration::interceptor_registry::{
    configure_twcc_sender_only, register_default_interceptors,
};
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::transport::{CandidateConfig, CandidateHostConfig, RTCDtlsRole, RTCIceCandidate};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::rtp_sender::{RTCRtpHeaderExtensionCapability, RtpCodecKind};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";

pub type Error = rtc::shared::error::Error;

/// Wire-most, below webrtc-rs's own interceptors.
const OBSERVE_SLOT: usize = 1_500;

/// ICE credentials for a new leg; the ufrag is how the shared socket finds it.
pub fn credentials() -> (String, String) {
    let mut rng = rand::thread_rng();
    (Alphanumeric.sample_string(&mut rng, 16), Alphanumeric.sample_string(&mut rng, 32))
}

/// A new server-side PeerConnection whose candidates are `advertised` (host
/// candidates, one per address, in that order), and what its wire observer sees.
///
/// Both roles negotiate the same things (NACK, PLI, transport-cc, RTCP
/// reports), but each gets only the interceptors its direction uses. A
/// publisher leg only receives media: NACK generator, receiver reports, TWCC
/// feedback. A subscriber leg only sends it, and the engine writes that media
/// itself ([`super::egress`]: retransmissions, sender reports and
/// transport-wide numbers included), so it gets no interceptor of its own.
/// Both get [`Observe`], which hands inbound RTCP to the engine.
pub fn build(
    role: super::Role,
    ufrag: &str,
    pwd: &str,
    advertised: &[SocketAddr],
    certificate: Option<&RTCCertificate>,
    now: Instant,
) -> Result<(RTCPeerConnection, Arc<Observed>), Error> {
    let mut media = MediaEngine::default();
    media.register_default_codecs()?;
    media.register_header_extension(
        RTCRtpHeaderExtensionCapability { uri: AUDIO_LEVEL_URI.to_owned() },
        RtpCodecKind::Audio,
        None,
    )?;
    // A subscriber without transport-cc (aiortc) estimates its own
    // bandwidth from abs-send-time and reports it in REMB (negotiated by
    // the default codecs' goog-remb feedback); the egress writes the times.
    if role == super::Role::Subscriber {
        media.register_header_extension(
            RTCRtpHeaderExtensionCapability { uri: super::observe::ABS_SEND_TIME_URI.to_owned() },
            RtpCodecKind::Video,
            None,
        )?;
    }
    // What the defaults negotiate (their registries are not used).
    register_default_interceptors(Registry::new(), &mut media)?;
    configure_twcc_sender_only(Registry::new(), &mut media)?;
    let observed = Arc::new(Observed::default());
    let registry = match role {
        super::Role::Publisher => Registry::new()
            .with(Slot::NackGenerator, NackGeneratorBuilder::new().build())
            .with(Slot::ReceiverReport, ReceiverReportBuilder::new().build())
            .with(Slot::TwccReceiver, TwccReceiverBuilder::new().build()),
        super::Role::Subscriber => Registry::new(),
    }
    .with(Slot::Custom(OBSERVE_SLOT), Observe::new(observed.clone()));
    let settings = SettingEngineBuilder::new()
        .with_lite(true)
        .with_ice_credentials(ufrag.to_owned(), pwd.to_owned())
        .with_answering_dtls_role(RTCDtlsRole::Server)
        // An ICE-lite agent only hears the client's checks; clients send them
        // every few seconds (aioice every 5 s), so wait longer than that.
        .with_ice_timeouts(Some(Duration::from_secs(15)), Some(Duration::from_secs(30)), Some(Duration::from_secs(2)))
        .build();
    let mut config = RTCConfigurationBuilder::new();
    if let Some(c) = certificate {
        config = config.with_certificates(vec![c.clone()]);
    }
    let mut pc = RTCPeerConnectionBuilder::new()
        .with_configuration(config.build())
        .with_setting_engine(settings)
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .build(now)?;
    for (i, at) in advertised.iter().enumerate() {
        let host = CandidateHostConfig {
            base_config: CandidateConfig {
                network: "udp".to_owned(),
                address: at.ip().to_string(),
                port: at.port(),
                component: 1,
                // Earlier addresses first: the public one before interface ones.
                priority: candidate_priority(i),
                ..Default::default()
            },
            ..Default::default()
        }
        .new_candidate_host()?;
        pc.add_local_candidate(RTCIceCandidate::from(&host).to_json()?)?;
    }
    Ok((pc, observed))
}

/// RFC 8445 5.1.2.1 for a host candidate (type preference 126, component
/// 1), the local preference falling with the address's rank.
fn candidate_priority(rank: usize) -> u32 {
    let local_pref = 65_535u32.saturating_sub(rank as u32);
    (126 << 24) | (local_pref << 8) | (256 - 1)
}

/// Separates the datagrams of one `media_datagram` fuzz input.
pub const FUZZ_DATAGRAM_SEPARATOR: &[u8] = b"\xffDGRAM\xff";

/// What [`fuzz_datagram`] negotiates first: a publisher's audio and video
/// offer with the client credentials the fuzz seeds use (ufrag `kT3a`).
const FUZZ_NEGOTIATED_OFFER: &str = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendonly\r\na=ice-ufrag:kT3a\r\n\
a=ice-pwd:x9cml/YzichV2+XlhiMu8g+C\r\na=fingerprint:sha-256 \
6B:8B:6E:2B:1A:0C:9A:2E:15:C3:42:58:E6:2A:5E:3A:1D:CF:53:88:0B:4B:2E:9D:8A:DE:4C:0E:D6:AB:13:F5\r\n\
a=setup:actpass\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\na=ssrc:287266346 cname:c\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=sendonly\r\na=ice-ufrag:kT3a\r\n\
a=ice-pwd:x9cml/YzichV2+XlhiMu8g+C\r\na=setup:actpass\r\na=rtcp-mux\r\na=rtpmap:96 VP8/90000\r\n\
a=rtcp-fb:96 nack\r\na=rtcp-fb:96 nack pli\r\na=rtcp-fb:96 transport-cc\r\na=ssrc:1538316113 cname:c\r\n";

/// Feed datagrams to a fresh server PeerConnection that has answered a
/// publisher's offer (so its ICE agent and DTLS transport are running), and
/// drain it after each: the fuzz target `media_datagram` and the smoke test
/// below use this. `data` holds up to 8 datagrams separated by
/// [`FUZZ_DATAGRAM_SEPARATOR`], so one input can be an ICE check followed by
/// a DTLS ClientHello from the same address. Returns how many datagrams the
/// PeerConnection sent in reply, so a test can tell that input got through.
pub fn fuzz_datagram(data: &[u8]) -> usize {
    use rtc::sansio::Protocol;
    let mut now = Instant::now();
    let local: SocketAddr = "127.0.0.1:7882".parse().expect("literal");
    // A harness whose own setup failed would pass having fed nothing: panic.
    let (mut conn, _) = build(super::Role::Publisher, "fuzzufrag", "fuzzpasswordfuzzpassword", &[local], None, now)
        .expect("the fuzz PeerConnection builds");
    let negotiated = rtc::peer_connection::sdp::RTCSessionDescription::offer(FUZZ_NEGOTIATED_OFFER.to_owned())
        .and_then(|o| conn.set_remote_description(now, o))
        .and_then(|()| conn.create_answer(None))
        .and_then(|a| conn.set_local_description(now, a));
    negotiated.expect("the fixed offer is answered");
    let mut rest = data;
    let mut sent = 0;
    for _ in 0..8 {
        let (datagram, next) =
            match rest.windows(FUZZ_DATAGRAM_SEPARATOR.len()).position(|w| w == FUZZ_DATAGRAM_SEPARATOR) {
                Some(i) => (&rest[..i], Some(&rest[i + FUZZ_DATAGRAM_SEPARATOR.len()..])),
                None => (rest, None),
            };
        let msg = rtc::shared::TaggedBytesMut {
            now,
            transport: rtc::shared::TransportContext {
                local_addr: local,
                peer_addr: "127.0.0.1:40000".parse().expect("literal"),
                ecn: None,
                transport_protocol: rtc::shared::TransportProtocol::UDP,
            },
            message: bytes::BytesMut::from(datagram),
        };
        let _ = conn.handle_read(msg);
        now += Duration::from_millis(20);
        let _ = conn.handle_timeout(now);
        while conn.poll_write().is_some() {
            sent += 1;
        }
        while conn.poll_read().is_some() {}
        while conn.poll_event().is_some() {}
        match next {
            Some(n) => rest = n,
            None => break,
        }
    }
    sent
}

/// Set `sdp` as a remote offer and answer it, as `publish-offer` does.
pub fn fuzz_offer(sdp: &str) {
    // What the router reads of the offer itself (`a=ssrc-group:SIM`).
    let _ = super::sdp::simulcast_groups(sdp);
    let now = Instant::now();
    let local: SocketAddr = "127.0.0.1:7882".parse().expect("literal");
    // A harness whose own setup failed would pass having fed nothing: panic.
    let (mut conn, _) = build(super::Role::Publisher, "fuzzufrag", "fuzzpasswordfuzzpassword", &[local], None, now)
        .expect("the fuzz PeerConnection builds");
    let _ = rtc::peer_connection::sdp::RTCSessionDescription::offer(sdp.to_owned())
        .and_then(|o| conn.set_remote_description(now, o))
        .and_then(|()| conn.create_answer(None))
        .and_then(|a| conn.set_local_description(now, a));
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// An ICE check with the harness's credentials (fuzz/corpus/media_datagram/ice_binding)
    /// is answered, so `media_datagram` inputs reach the ICE agent; one with another ufrag is not.
    #[test]
    fn fuzz_harness_answers_an_authenticated_ice_check() {
        let check = hex("000100542112a4420102030405060708090a0b0c0006000e66757a7a75667261673a6b5433610000\
c0570004000103e7802a00081a2b3c4d5e6f7081002400046e7f00ff0025000000080014a3aad307ff25b7d238f04c6034a159\
6385332066802800043bf20068");
        assert!(fuzz_datagram(&check) >= 1, "no reply to a valid check");
        let mut wrong = check.clone();
        wrong[24] = b'F'; // USERNAME "Fuzzufrag:kT3a"
        assert_eq!(fuzz_datagram(&wrong), 0);
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
    }

    /// A cheap stand-in for the fuzz targets: mutated datagrams (STUN-,
    /// DTLS- and RTP-looking) and mutated SDP never panic.
    #[test]
    fn mutated_datagrams_and_offers_never_panic() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let seeds: [&[u8]; 3] = [
            &[0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
            &[22, 254, 253, 0, 0, 0, 0, 0, 0, 0, 0, 0, 20, 1, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0],
            &[0x80, 96, 0, 1, 0, 0, 0, 10, 0, 0, 0, 42, 0xde, 0xad, 0xbe, 0xef],
        ];
        for _ in 0..300 {
            let mut b = seeds[rng.gen_range(0..seeds.len())].to_vec();
            for _ in 0..rng.gen_range(1..6) {
                let i = rng.gen_range(0..b.len());
                b[i] = rng.gen();
            }
            fuzz_datagram(&b);
        }
        let offer = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendonly\r\na=ice-ufrag:abcd\r\n\
a=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=fingerprint:sha-256 00:11\r\na=setup:actpass\r\na=rtpmap:96 VP8/90000\r\n";
        fuzz_offer(offer);
        for _ in 0..100 {
            let mut b = offer.as_bytes().to_vec();
            for _ in 0..rng.gen_range(1..8) {
                let i = rng.gen_range(0..b.len());
                let pool = b" :=\r\n0abm/";
                b[i] = pool[rng.gen_range(0..pool.len())];
            }
            fuzz_offer(&String::from_utf8_lossy(&b));
        }
    }
}
