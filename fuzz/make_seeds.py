#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target to fuzz/corpus/<target>/.

Real-looking inputs, so that libFuzzer starts past the first length and magic
checks of each parser: /rtc messages (SPEC 4), REST bodies (SPEC 3), STUN/TURN
requests with their attributes and valid MESSAGE-INTEGRITY/FINGERPRINT, RTP
(VP8, H.264, header extensions) and RTCP (SR, RR, SDES, TWCC, NACK, PLI, FIR,
REMB), a Chromium-like SDP offer with simulcast rids, and what reaches the
media port (ICE Binding checks, a DTLS ClientHello, RTP/RTCP).

Deterministic (no randomness, no clock): running it again rewrites the same
files, so `git status` stays clean. Standard library only.

    python3 fuzz/make_seeds.py        # from anywhere
"""

import binascii
import hashlib
import hmac
import json
import pathlib
import shutil
import struct

ROOT = pathlib.Path(__file__).resolve().parent / "corpus"

# ---------------------------------------------------------------- /rtc (SPEC 4)

SDP_SHORT = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
CANDIDATE = {
    "candidate": "candidate:842163049 1 udp 1677729535 198.51.100.7 61665 typ srflx "
    "raddr 0.0.0.0 rport 0 generation 0 ufrag kT3a network-cost 999",
    "sdpMid": "0",
    "sdpMLineIndex": 0,
    "usernameFragment": "kT3a",
}
WS = {
    "ping": {"type": "ping", "reqId": 1},
    "refresh": {"type": "refresh", "token": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1MSJ9.c2ln"},
    "call_initiate": {
        "type": "call-initiate",
        "reqId": "a7",
        "calleeId": "bob",
        "callType": "video",
        "roomName": "standup",
        "mode": "p2p",
        "sdp": SDP_SHORT,
    },
    "call_accept": {"type": "call-accept", "callId": "c_01HX5Z"},
    "call_answer": {"type": "call-answer", "callId": "c_01HX5Z", "sdp": SDP_SHORT},
    "ice_candidate": {"type": "ice-candidate", "callId": "c_01HX5Z", "candidate": CANDIDATE},
    "call_sdp_update": {"type": "call-sdp-update", "callId": "c_01HX5Z", "sdp": SDP_SHORT, "sdpType": "offer"},
    "call_reject": {"type": "call-reject", "callId": "c_01HX5Z", "reason": "busy"},
    "call_hangup": {"type": "call-hangup", "callId": "c_01HX5Z"},
    "call_stats": {
        "type": "call-stats",
        "callId": "c_01HX5Z",
        "stats": [{"type": "inbound-rtp", "kind": "video", "packetsLost": 3, "jitter": 0.004, "roundTripTime": 0.031}],
    },
    "room_join": {"type": "room-join", "reqId": 2, "roomId": "r_standup", "peerId": "p_9"},
    "publish_offer": {
        "type": "publish-offer",
        "roomId": "r_standup",
        "sdp": SDP_SHORT,
        "tracks": [{"mid": "0", "source": "microphone"}, {"mid": "1", "source": "camera", "simulcast": True}],
    },
    "subscribe_answer": {"type": "subscribe-answer", "roomId": "r_standup", "sdp": SDP_SHORT},
    "room_ice_candidate": {"type": "room-ice-candidate", "roomId": "r_standup", "pc": "subscriber", "candidate": CANDIDATE},
    "track_mute": {"type": "track-mute", "roomId": "r_standup", "trackId": "t_1", "muted": True},
    "track_subscribe": {"type": "track-subscribe", "roomId": "r_standup", "trackId": "t_1", "subscribe": True, "quality": "medium"},
    "room_leave": {"type": "room-leave", "roomId": "r_standup"},
    "room_message": {"type": "room-message", "roomId": "r_standup", "text": "hi \u00e9\u2603", "to": "p_2"},
    "participant_state": {"type": "participant-state", "roomId": "r_standup", "handRaised": True},
}
# Near misses the parser must turn into bad-request, not accept or panic on.
WS_RAW = {
    "bad_field_type": '{"type":"call-initiate","calleeId":5,"callType":"video"}',
    "unknown_type": '{"type":"no-such","reqId":[1,{"a":null}]}',
    "trailing": '{"type":"ping"} junk',
    "nested_tracks": '{"type":"publish-offer","roomId":"r","sdp":"","tracks":[{"mid":"0","source":"screen","x":1}]}',
}

# ---------------------------------------------------------------- REST (SPEC 3)

REST = {
    "create_call": {"callerId": "alice", "calleeId": "bob", "callType": "audio", "roomName": "r1", "mode": "sfu"},
    "reject": {"reason": "busy"},
    "mute": {"mute": True},
    "switch_camera": {"deviceId": "cam-2", "facingMode": "environment"},
    "create_room": {"name": "standup", "maxParticipants": 8, "isPrivate": False},
    "guest": {"name": "Zo\u00eb"},
}
REST_RAW = {
    "trailing": '{"name":"x"} junk',
    "wrong_type": '{"callerId":"a","calleeId":"b","callType":5}',
    "escapes": '{"name":"\\ud83d\\ude00\\u0000\\n","maxParticipants":1e3}',
    "empty": "",
}

# ---------------------------------------------------------------- STUN / TURN (RFC 8489, 8656)

MAGIC = 0x2112A442
TID = bytes(range(1, 13))


def attr(t, v):
    pad = b"\0" * (-len(v) % 4)
    return struct.pack("!HH", t, len(v)) + v + pad


def xor_addr(ip, port, tid=TID):
    xport = port ^ (MAGIC >> 16)
    parts = [int(p) for p in ip.split(".")]
    xip = struct.unpack("!I", bytes(parts))[0] ^ MAGIC
    return struct.pack("!BBHI", 0, 1, xport, xip)


def xor_addr6(port, tid=TID):
    ip = bytes.fromhex("20010db8000000000000000000000001")
    key = struct.pack("!I", MAGIC) + tid
    return struct.pack("!BBH", 0, 2, port ^ (MAGIC >> 16)) + bytes(a ^ b for a, b in zip(ip, key))


def stun(msg_type, attrs, key=None, fingerprint=True, tid=TID):
    """A STUN message; MESSAGE-INTEGRITY with `key` and FINGERPRINT computed as RFC 8489 14.5/14.7 say."""
    body = b"".join(attrs)
    if key is not None:
        head = struct.pack("!HHI", msg_type, len(body) + 24, MAGIC) + tid
        body += attr(0x0008, hmac.new(key, head + body, hashlib.sha1).digest())
    if fingerprint:
        head = struct.pack("!HHI", msg_type, len(body) + 8, MAGIC) + tid
        crc = binascii.crc32(head + body) ^ 0x5354554E
        body += attr(0x8028, struct.pack("!I", crc))
    return struct.pack("!HHI", msg_type, len(body), MAGIC) + tid + body


def turn_key(user, realm, password):
    return hashlib.md5(f"{user}:{realm}:{password}".encode()).digest()


USER = b"1767225600:alice"
REALM = b"confer"
NONCE = b"4b1d2c3e5f607182"
# The fuzz target checks integrity against b"key"; one seed uses it so the
# match branch is reachable, the others use a long-term key as clients do.
LT_KEY = turn_key(USER.decode(), REALM.decode(), "c2VjcmV0")
AUTH = [attr(0x0006, USER), attr(0x0014, REALM), attr(0x0015, NONCE)]
STUN = {
    "binding": stun(0x0001, [], fingerprint=False),
    "binding_fp": stun(0x0001, [attr(0x8022, b"confer-seed")]),
    "allocate_noauth": stun(0x0003, [attr(0x0019, b"\x11\0\0\0")]),
    "allocate": stun(
        0x0003,
        [attr(0x0019, b"\x11\0\0\0"), attr(0x000D, struct.pack("!I", 600)), attr(0x0017, b"\x01\0\0\0")] + AUTH,
        key=LT_KEY,
    ),
    "allocate_ipv6_family": stun(0x0003, [attr(0x0019, b"\x11\0\0\0"), attr(0x0017, b"\x02\0\0\0")] + AUTH, key=b"key"),
    "allocate_unknown_required": stun(0x0003, [attr(0x0019, b"\x11\0\0\0"), attr(0x0031, b"\0\0\0\0")] + AUTH, key=LT_KEY),
    "refresh_zero": stun(0x0004, [attr(0x000D, b"\0\0\0\0")] + AUTH, key=LT_KEY),
    "create_permission": stun(
        0x0008, [attr(0x0012, xor_addr("192.0.2.10", 5000)), attr(0x0012, xor_addr6(5001))] + AUTH, key=LT_KEY
    ),
    "channel_bind": stun(
        0x0009, [attr(0x000C, b"\x40\x01\0\0"), attr(0x0012, xor_addr("192.0.2.10", 5000))] + AUTH, key=LT_KEY
    ),
    "send_indication": stun(
        0x0016, [attr(0x0012, xor_addr("192.0.2.10", 5000)), attr(0x0013, b"hello relay")], fingerprint=False
    ),
    "error_401": stun(
        0x0113, [attr(0x0009, b"\0\0\x04\x01Unauthorized"), attr(0x0014, REALM), attr(0x0015, NONCE)], fingerprint=False
    ),
    "success_mapped": stun(0x0101, [attr(0x0020, xor_addr("203.0.113.5", 40000)), attr(0x000A, b"\x00\x31\x00\x32")]),
    # Not STUN but arrives on the same port: ChannelData (RFC 8656 12.4).
    "channel_data": struct.pack("!HH", 0x4001, 5) + b"howdy\0\0\0",
}

# ---------------------------------------------------------------- RTP / RTCP

def rtp(pt, seq, ts, ssrc, payload, marker=False, ext=None):
    """RTP (RFC 3550); `ext` is a list of (id, bytes) one-byte header extensions (RFC 8285)."""
    b0 = 0x80 | (0x10 if ext else 0)
    head = struct.pack("!BBHII", b0, (0x80 if marker else 0) | pt, seq, ts, ssrc)
    if ext:
        elems = b"".join(bytes([(i << 4) | (len(v) - 1)]) + v for i, v in ext)
        elems += b"\0" * (-len(elems) % 4)
        head += struct.pack("!HH", 0xBEDE, len(elems) // 4) + elems
    return head + payload


# RFC 7741: X=1, S=1, PID=0; I=1 L=1 T=1 K=1; 15-bit picture id; TL0PICIDX; TID/Y/KEYIDX.
VP8_DESC = bytes([0x90, 0xF0, 0x80 | 0x12, 0x34, 0x05, 0x41])
# RFC 6386 9.1: keyframe tag (P=0), start code, 640x360.
VP8_KEY = VP8_DESC + bytes([0x50, 0x42, 0x00, 0x9D, 0x01, 0x2A]) + struct.pack("<HH", 640, 360) + bytes(24)
VP8_DELTA = bytes([0x90, 0x80, 0x92, 0x35]) + bytes([0x31, 0x05, 0x00]) + bytes(16)
VP8_CONT = bytes([0x00]) + bytes(20)  # not the frame's first packet
SPS = bytes.fromhex("6742c01f8c8d40501e900f08846a")
PPS = bytes.fromhex("68ce3c80")
H264_STAP_A = bytes([0x78]) + struct.pack("!H", len(SPS)) + SPS + struct.pack("!H", len(PPS)) + PPS
H264_FU_A_IDR_START = bytes([0x7C, 0x85]) + bytes(range(32))
H264_FU_A_END = bytes([0x7C, 0x45]) + bytes(8)
H264_SINGLE_IDR = bytes([0x65, 0x88, 0x84]) + bytes(16)
# abs-send-time (id 2), transport-wide-cc (id 3), sdes:mid (4), rid (10), audio level (1).
EXTS = [(2, b"\x12\x34\x56"), (3, b"\x00\x2a"), (4, b"1"), (10, b"f")]

SSRC_A, SSRC_V = 0x11223344, 0x55667788


def rtcp(pt, count, body):
    """One RTCP packet (RFC 3550 6.1) with its length in 32-bit words minus one."""
    body += b"\0" * (-len(body) % 4)
    return struct.pack("!BBH", 0x80 | count, pt, len(body) // 4) + body


def report_block(ssrc):
    return struct.pack("!IIIIII", ssrc, (2 << 24) | 7, 0x00010203, 12, 0x5A5A0000, 0x00004000)


SR = rtcp(200, 1, struct.pack("!IIIIII", SSRC_V, 0xE8000000, 0x40000000, 90000, 120, 150000) + report_block(SSRC_A))
RR = rtcp(201, 1, struct.pack("!I", 1) + report_block(SSRC_V))
SDES = rtcp(202, 1, struct.pack("!I", SSRC_V) + bytes([1, 8]) + b"confer-1" + b"\0")
BYE = rtcp(203, 1, struct.pack("!I", SSRC_V))
PLI = rtcp(206, 1, struct.pack("!II", 1, SSRC_V))
FIR = rtcp(206, 4, struct.pack("!II", 1, 0) + struct.pack("!IB3x", SSRC_V, 3))
NACK = rtcp(205, 1, struct.pack("!II", 1, SSRC_V) + struct.pack("!HH", 1000, 0b0000000000100101))
REMB = rtcp(206, 15, struct.pack("!II", 1, 0) + b"REMB" + bytes([1]) + bytes([(3 << 2) | 0x01, 0x86, 0xA0]) + struct.pack("!I", SSRC_V))


def twcc():
    """transport-cc feedback (draft-holmer-rmcat-transport-wide-cc-extensions-01 3.1): base seq 42,
    one run-length chunk (4 x small delta), one status vector chunk (received/lost/large), deltas."""
    chunks = struct.pack("!H", (0 << 15) | (1 << 13) | 4)  # run length: 4 packets, small delta
    chunks += struct.pack("!H", 0x8000 | 0x4000 | 0b01_00_10_01_00_00_00)  # 2-bit vector: 7 symbols
    deltas = bytes([4, 8, 0, 250]) + bytes([10]) + struct.pack("!h", -40) + bytes([12])
    body = struct.pack("!II", 1, SSRC_V) + struct.pack("!HH", 42, 11) + struct.pack("!I", (0x001234 << 8) | 7)
    return rtcp(205, 15, body + chunks + deltas)


RTP_RTCP = {
    "rtp_vp8_key": rtp(96, 1000, 3000, SSRC_V, VP8_KEY, ext=EXTS),
    "rtp_vp8_delta": rtp(96, 1001, 6000, SSRC_V, VP8_DELTA, marker=True),
    "rtp_vp8_cont": rtp(96, 1002, 6000, SSRC_V, VP8_CONT),
    "rtp_h264_stap_a": rtp(102, 7, 90000, SSRC_V, H264_STAP_A, ext=EXTS),
    "rtp_h264_fu_a": rtp(102, 8, 90000, SSRC_V, H264_FU_A_IDR_START),
    "rtp_h264_fu_a_end": rtp(102, 9, 90000, SSRC_V, H264_FU_A_END, marker=True),
    "rtp_opus_level": rtp(111, 5, 960, SSRC_A, bytes([0xFC, 0xFF, 0xFE]), ext=[(1, b"\x9e")]),
    "rtp_padding_csrc": bytes([0xA1, 96]) + struct.pack("!HII", 3, 9, SSRC_V) + struct.pack("!I", 7) + b"xx\0\x03",
    "vp8_payload_key": VP8_KEY,
    "vp8_payload_delta": VP8_DELTA,
    "h264_payload_idr": H264_SINGLE_IDR,
    "rtcp_sr_sdes": SR + SDES,
    "rtcp_rr": RR,
    "rtcp_twcc": twcc(),
    "rtcp_nack": NACK,
    "rtcp_pli": PLI,
    "rtcp_fir": FIR,
    "rtcp_remb": REMB,
    "rtcp_rr_twcc_bye": RR + twcc() + BYE,
}

# ---------------------------------------------------------------- SDP

FP = ":".join(f"{b:02X}" for b in hashlib.sha256(b"seed").digest())


def chromium_offer(video_codecs, simulcast=True, audio=True, sim_group=False):
    """An offer shaped like Chromium's for a publisher (`addTransceiver(track, {sendEncodings: [...]})`)."""
    mids = (["0"] if audio else []) + ["1"]
    s = [
        "v=0",
        "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE " + " ".join(mids),
        "a=extmap-allow-mixed",
        "a=msid-semantic: WMS 6f1d0f2a-1b7e-4d6b-9d0a-9a7e2a1c3b4d",
    ]
    common = [
        "c=IN IP4 0.0.0.0",
        "a=rtcp:9 IN IP4 0.0.0.0",
        "a=ice-ufrag:kT3a",
        "a=ice-pwd:x9cml/YzichV2+XlhiMu8g+C",
        "a=ice-options:trickle",
        "a=fingerprint:sha-256 " + FP,
        "a=setup:actpass",
    ]
    if audio:
        s += ["m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126"] + common + [
            "a=mid:0",
            "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
            "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
            "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
            "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
            "a=sendonly",
            "a=msid:6f1d0f2a-1b7e-4d6b-9d0a-9a7e2a1c3b4d 0c5e6b1a-aaaa-4bbb-8ccc-111122223333",
            "a=rtcp-mux",
            "a=rtcp-rsize",
            "a=rtpmap:111 opus/48000/2",
            "a=rtcp-fb:111 transport-cc",
            "a=fmtp:111 minptime=10;useinbandfec=1",
            "a=rtpmap:63 red/48000/2",
            "a=fmtp:63 111/111",
            "a=rtpmap:9 G722/8000",
            "a=rtpmap:0 PCMU/8000",
            "a=rtpmap:8 PCMA/8000",
            "a=rtpmap:13 CN/8000",
            "a=rtpmap:110 telephone-event/48000",
            "a=rtpmap:126 telephone-event/8000",
            "a=ssrc:287266346 cname:Ue1WJmQ3CnuXn7Sb",
            "a=ssrc:287266346 msid:6f1d0f2a-1b7e-4d6b-9d0a-9a7e2a1c3b4d 0c5e6b1a-aaaa-4bbb-8ccc-111122223333",
        ]
    pts = " ".join(str(pt) for pt, _, _ in video_codecs)
    s += [f"m=video 9 UDP/TLS/RTP/SAVPF {pts}"] + common + [
        "a=mid:1",
        "a=extmap:14 urn:ietf:params:rtp-hdrext:toffset",
        "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
        "a=extmap:13 urn:3gpp:video-orientation",
        "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
        "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
        "a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
        "a=sendonly",
        "a=msid:6f1d0f2a-1b7e-4d6b-9d0a-9a7e2a1c3b4d 9d4c2e1f-bbbb-4ccc-8ddd-444455556666",
        "a=rtcp-mux",
        "a=rtcp-rsize",
    ]
    for pt, name, fmtp in video_codecs:
        s.append(f"a=rtpmap:{pt} {name}/90000")
        if name in ("VP8", "H264", "VP9", "AV1"):
            s += [f"a=rtcp-fb:{pt} goog-remb", f"a=rtcp-fb:{pt} transport-cc", f"a=rtcp-fb:{pt} ccm fir",
                  f"a=rtcp-fb:{pt} nack", f"a=rtcp-fb:{pt} nack pli"]
        if fmtp:
            s.append(f"a=fmtp:{pt} {fmtp}")
    if sim_group:
        # Legacy simulcast: three SSRCs, lowest first, each with its RTX.
        layers = [(11, 21), (12, 22), (13, 23)]
        for media, rtx in layers:
            s += [f"a=ssrc-group:FID {media} {rtx}"]
        s += ["a=ssrc-group:SIM " + " ".join(str(m) for m, _ in layers)]
        s += [f"a=ssrc:{x} cname:Ue1WJmQ3CnuXn7Sb" for pair in layers for x in pair]
    elif simulcast:
        s += ["a=rid:q send", "a=rid:h send", "a=rid:f send", "a=simulcast:send q;h;f"]
    else:
        s += ["a=ssrc-group:FID 1538316113 3094431201", "a=ssrc:1538316113 cname:Ue1WJmQ3CnuXn7Sb",
              "a=ssrc:3094431201 cname:Ue1WJmQ3CnuXn7Sb"]
    return "\r\n".join(s) + "\r\n"


VP8_CODECS = [(96, "VP8", None), (97, "rtx", "apt=96")]
H264_CODECS = [
    (102, "H264", "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f"),
    (103, "rtx", "apt=102"),
    (127, "H264", "level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42001f"),
]
SDP = {
    "chromium_simulcast_vp8": chromium_offer(VP8_CODECS + H264_CODECS + [(45, "AV1", "level-idx=5;profile=0;tier=0")]),
    "chromium_h264_no_simulcast": chromium_offer(H264_CODECS, simulcast=False),
    "video_only_vp8": chromium_offer(VP8_CODECS, simulcast=False, audio=False),
    "legacy_sim_group_vp8": chromium_offer(VP8_CODECS, sim_group=True),
    "minimal": "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendonly\r\na=ice-ufrag:abcd\r\n"
    "a=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=fingerprint:sha-256 " + FP + "\r\na=setup:actpass\r\n"
    "a=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\n",
}

# ---------------------------------------------------------------- media port datagrams

# pc::fuzz_datagram's server PeerConnection has ufrag "fuzzufrag" and password
# "fuzzpasswordfuzzpassword" and has answered an offer from ufrag "kT3a": a
# check with the right USERNAME and short-term MESSAGE-INTEGRITY (RFC 8445
# 7.2.2) gets past the ICE agent's authentication. One input may hold several
# datagrams, split at pc::FUZZ_DATAGRAM_SEPARATOR.
SEP = b"\xffDGRAM\xff"
ICE_PWD = b"fuzzpasswordfuzzpassword"
ICE_ATTRS = [
    attr(0x0006, b"fuzzufrag:kT3a"),
    attr(0xC057, struct.pack("!HH", 1, 999)),  # GOOG-NETWORK-INFO
    attr(0x802A, bytes.fromhex("1a2b3c4d5e6f7081")),  # ICE-CONTROLLING
    attr(0x0024, struct.pack("!I", 1853817087)),  # PRIORITY
]


def dtls_client_hello():
    """A DTLS 1.2 ClientHello record (RFC 6347 4.2.2) with the extensions a browser sends for DTLS-SRTP."""
    exts = b"".join(
        [
            struct.pack("!HH", 0x000A, 8) + struct.pack("!HHHH", 6, 0x001D, 0x0017, 0x0018),  # supported_groups
            struct.pack("!HH", 0x000B, 2) + b"\x01\x00",  # ec_point_formats
            struct.pack("!HH", 0x000D, 10) + struct.pack("!HHHHH", 8, 0x0403, 0x0804, 0x0401, 0x0201),
            struct.pack("!HH", 0x000E, 7) + struct.pack("!HHH", 4, 0x0007, 0x0001) + b"\x00",  # use_srtp
            struct.pack("!HH", 0x0017, 0),  # extended_master_secret
            struct.pack("!HH", 0xFF01, 1) + b"\x00",  # renegotiation_info
        ]
    )
    suites = struct.pack("!HHHHH", 8, 0xC02B, 0xC02F, 0xC00A, 0xC014)
    body = b"\xfe\xfd" + bytes(range(32)) + b"\x00" + b"\x00" + suites + b"\x01\x00"
    body += struct.pack("!H", len(exts)) + exts
    hs = struct.pack("!B", 1) + len(body).to_bytes(3, "big") + struct.pack("!H", 0)
    hs += (0).to_bytes(3, "big") + len(body).to_bytes(3, "big") + body
    return struct.pack("!BHHH", 22, 0xFEFD, 0, 0) + (0).to_bytes(4, "big") + struct.pack("!H", len(hs)) + hs


MEDIA = {
    "ice_binding": stun(0x0001, ICE_ATTRS + [attr(0x0025, b"")], key=ICE_PWD),  # with USE-CANDIDATE
    "ice_binding_no_nominate": stun(0x0001, ICE_ATTRS, key=ICE_PWD, tid=bytes(range(20, 32))),
    "ice_binding_wrong_ufrag": stun(0x0001, [attr(0x0006, b"other:kT3a")] + ICE_ATTRS[1:], key=ICE_PWD),
    "dtls_client_hello": dtls_client_hello(),
    "dtls_alert": struct.pack("!BHHH", 21, 0xFEFD, 0, 0) + (1).to_bytes(4, "big") + b"\x00\x02\x02\x28",
    "rtp_vp8": RTP_RTCP["rtp_vp8_key"],
    "rtcp_rr": RR,
}
MEDIA["ice_then_dtls"] = SEP.join([MEDIA["ice_binding"], MEDIA["dtls_client_hello"]])
MEDIA["ice_then_dtls_rtp_rtcp"] = SEP.join(
    [MEDIA["ice_binding"], MEDIA["dtls_client_hello"], MEDIA["dtls_alert"], RTP_RTCP["rtp_vp8_key"], SR + SDES]
)

CORPORA = {
    "ws_message": {**{k: json.dumps(v, ensure_ascii=False).encode() for k, v in WS.items()},
                   **{k: v.encode() for k, v in WS_RAW.items()}},
    "rest_body": {**{k: json.dumps(v, ensure_ascii=False).encode() for k, v in REST.items()},
                  **{k: v.encode() for k, v in REST_RAW.items()}},
    "stun_message": STUN,
    "media_datagram": MEDIA,
    "sdp_offer": {k: v.encode() for k, v in SDP.items()},
    "rtp_rtcp": RTP_RTCP,
}


def main():
    total = 0
    for target, seeds in CORPORA.items():
        d = ROOT / target
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        for name, data in seeds.items():
            (d / name).write_bytes(data)
        total += len(seeds)
        print(f"{target}: {len(seeds)} seeds, {sum(len(v) for v in seeds.values())} bytes")
    print(f"{total} seeds in {ROOT}")


if __name__ == "__main__":
    main()
