//! Building webrtc-rs (`rtc`, the sans-IO core) PeerConnections the way the
//! SFU needs them: ICE-lite with credentials we choose (so the shared socket
//! can demultiplex by ufrag), one host candidate on the shared port, the
//! default codecs and interceptors (NACK generator and responder, RTCP
//! reports, TWCC feedback) plus RFC 6464 audio levels, and one DTLS
//! certificate shared by every connection.

use rand::distributions::{Alphanumeric, DistString};
use rtc::interceptor::Registry;
use rtc::peer_connection::certificate::RTCCertificate;
use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::transport::{CandidateConfig, CandidateHostConfig, RTCDtlsRole, RTCIceCandidate};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::rtp_sender::{RTCRtpHeaderExtensionCapability, RtpCodecKind};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";

pub type Error = rtc::shared::error::Error;

/// After every built-in interceptor (the highest is below 10 000).
const DELIVER_SLOT: usize = 20_000;

/// ICE credentials for a new leg; the ufrag is how the shared socket finds it.
pub fn credentials() -> (String, String) {
    let mut rng = rand::thread_rng();
    (Alphanumeric.sample_string(&mut rng, 16), Alphanumeric.sample_string(&mut rng, 32))
}

/// A new server-side PeerConnection whose only candidate is `advertised`.
pub fn build(
    ufrag: &str,
    pwd: &str,
    advertised: SocketAddr,
    certificate: Option<&RTCCertificate>,
    now: Instant,
) -> Result<RTCPeerConnection, Error> {
    let mut media = MediaEngine::default();
    media.register_default_codecs()?;
    media.register_header_extension(
        RTCRtpHeaderExtensionCapability { uri: AUDIO_LEVEL_URI.to_owned() },
        RtpCodecKind::Audio,
        None,
    )?;
    let registry = register_default_interceptors(Registry::new(), &mut media)?
        .with(rtc::interceptor::Slot::Custom(DELIVER_SLOT), super::deliver::DeliverRtcp::default());
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
    let host = CandidateHostConfig {
        base_config: CandidateConfig {
            network: "udp".to_owned(),
            address: advertised.ip().to_string(),
            port: advertised.port(),
            component: 1,
            ..Default::default()
        },
        ..Default::default()
    }
    .new_candidate_host()?;
    pc.add_local_candidate(RTCIceCandidate::from(&host).to_json()?)?;
    Ok(pc)
}
