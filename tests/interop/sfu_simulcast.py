"""Simulcast and bandwidth adaptation with aiortc subscribers (SPEC 5.1).

usage: sfu_simulcast.py HTTP_ADDR ROOM ceilings|cap CAP_KBPS

A Chromium publisher (tests/browser/publish.js, started by the caller) is in
room ROOM with its camera as VP8 simulcast q/h/f. aiortc guests join and
decode it; aiortc negotiates no transport-cc, so the SFU stamps abs-send-time
on what it sends them and they report their own estimate in REMB (and loss
in receiver reports).

ceilings: A and B decode with no track-subscribe (the widest layer), then A
asks "low", then "high", then B asks "medium".
cap: U connects directly; C's subscriber PeerConnection reaches the SFU only
through a UDP proxy written here, whose server-to-client direction is, while
capped, a CAP_KBPS token bucket (15 kB burst) with a drop-tail queue of 60 ms.
After both decode the widest layer, C's link is capped for 30 s, then lifted
for 30 s.

Decoded frame widths, every subscription-update, audio frames and the
camera's inbound-rtp counts are sampled every 250 ms. The script only
observes: it prints one JSON summary line; tests/simulcast_aiortc.rs judges.
"""
import asyncio
import json
import logging
import os
import re
import sys
import time

import httpx
import aiortc.jitterbuffer
import aiortc.rtcrtpreceiver
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.utils import uint16_add, uint16_gt

from sfu_room import Client, Upstream, run_main, until

SAMPLE = 0.25
FULL_WIDTH = 1280
DEFAULT_WAIT = 25  # the widest layer from the start (the estimate starts high)
SWITCH_WAIT = 8  # a ceiling change shows in decoded frames (the test asserts <= 5 s)
HOLD = 3  # after a switch, the others must not have moved
CAPPED = 30
LIFTED = 30
QUEUE_S = 0.06
BURST = 15000


class Watch:
    """What aiortc does with a missing packet, for a human reading the
    summary: aiortc NACKs a number while it is within 128 of the newest, and
    its video jitter buffer waits for it until 512 newer packets arrived.
    `given_up` holds (t, seq) of numbers it stopped asking for unreceived,
    `overflows` (t, packets skipped) of every wait that ended that way;
    the receiver's `plis` holds t of each PLI it sent."""

    def __init__(self):
        self.given_up = []
        self.overflows = []

    @staticmethod
    def install():
        nack_truncate = aiortc.rtcrtpreceiver.NackGenerator.truncate
        smart_remove = aiortc.jitterbuffer.JitterBuffer.smart_remove

        def truncate(self):
            if self.max_seq is not None:
                min_seq = uint16_add(self.max_seq, -aiortc.rtcrtpreceiver.RTP_HISTORY_SIZE)
                gone = [s for s in self.missing if uint16_gt(min_seq, s)]
                if gone:
                    self.__dict__.setdefault("watch", Watch()).given_up += [(time.monotonic(), s) for s in sorted(gone)]
            nack_truncate(self)

        def smart(self, count):
            self.__dict__.setdefault("watch", Watch()).overflows.append((time.monotonic(), count))
            return smart_remove(self, count)

        send_pli = aiortc.rtcrtpreceiver.RTCRtpReceiver._send_rtcp_pli

        async def pli(self, media_ssrc):
            # A decoder error or an overflow: each asks the SFU for a keyframe.
            self.__dict__.setdefault("plis", []).append(time.monotonic())
            await send_pli(self, media_ssrc)

        aiortc.rtcrtpreceiver.NackGenerator.truncate = truncate
        aiortc.jitterbuffer.JitterBuffer.smart_remove = smart
        aiortc.rtcrtpreceiver.RTCRtpReceiver._send_rtcp_pli = pli


class DecoderWatch(logging.Handler):
    """aiortc's receivers' warnings: the first few for a human, and when a
    VP8 decoder first failed with "End of file". FFmpeg takes an empty packet
    for the end of the stream, and aiortc passes a frame of no data (padding
    packets alone) to the decoder as one: from then on every frame fails to
    decode, keyframes included, and the subscriber's video has stopped."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.first = []
        self.stopped = None

    def emit(self, record):
        msg = record.getMessage()
        if len(self.first) < 10:
            self.first.append((time.monotonic(), msg))
        if self.stopped is None and "failed to decode" in msg and "End of file" in msg:
            self.stopped = time.monotonic()

    @staticmethod
    def install():
        w = DecoderWatch()
        logging.getLogger("aiortc.rtcrtpreceiver").addHandler(w)
        return w


def count_fillers():
    """Count, per stream, the padding-only packets aiortc takes on a media
    SSRC: the SFU's fillers (a missed number from before a layer switch
    answered by padding, `Forwarder::filler`). aiortc counts each as a
    received packet, so a filler would hide the loss it stands for."""
    add = aiortc.rtcrtpreceiver.StreamStatistics.add

    def counting(self, packet):
        if not packet.payload:
            self.__dict__["fillers"] = self.__dict__.get("fillers", 0) + 1
        add(self, packet)

    aiortc.rtcrtpreceiver.StreamStatistics.add = counting


class Sub(Client):
    """A subscriber that records each decoded frame's width and its audio."""

    def __init__(self, name, addr, token, proxy=None):
        super().__init__(name, addr, token)
        self.widths = []  # (t, width) of every decoded video frame
        self.audio = []  # t of every decoded audio frame
        self.proxy = proxy

    async def consume(self, track):
        while True:
            try:
                frame = await track.recv()
            except Exception:
                return
            t = time.monotonic()
            if track.kind == "video":
                self.widths.append((t, frame.width))
            else:
                self.audio.append(t)

    async def answer(self, msg):
        if self.proxy is not None:
            msg = dict(msg, sdp=self.proxy.redirect(msg["sdp"]))
        await super().answer(msg)

    def width(self):
        return self.widths[-1][1] if self.widths else None

    def watched(self, ms):
        """The video receiver's Watch record, in ms since the run's start."""
        for r in self.sub.getReceivers():
            if r.track and r.track.kind == "video":
                n = r.__dict__.get("_RTCRtpReceiver__nack_generator")
                j = r.__dict__.get("_RTCRtpReceiver__jitter_buffer")
                w = {"givenUp": [], "overflows": []}
                if n is not None and "watch" in n.__dict__:
                    w["givenUp"] = [[ms(t), seq] for t, seq in n.watch.given_up]
                if j is not None and "watch" in j.__dict__:
                    w["overflows"] = [[ms(t), c] for t, c in j.watch.overflows]
                w["plis"] = [ms(t) for t in r.__dict__.get("plis", [])]
                return w
        return None

    async def video_counts(self):
        """The camera stream's (received, lost). Not from getStats(): aiortc
        gives every SSRC of a receiver the same inbound-rtp id, so its report
        holds only the SSRC seen last, which is the RTX one (retransmissions,
        padding) once any arrives. Read the receiver's per-SSRC statistics
        of the one that carries the camera: of the SSRCs it does not know as
        RTX, the one with the most packets (an RTX SSRC it has not yet learnt
        as such holds a few, and summing it in made the counts go down once it
        was learnt). Fillers ([`count_fillers`]) are not received packets:
        each counts as the loss it stands for."""
        streams = []
        for r in self.sub.getReceivers():
            if r.track and r.track.kind == "video":
                rtx = r._RTCRtpReceiver__rtx_ssrc
                streams += [s for ssrc, s in r._RTCRtpReceiver__remote_streams.items() if ssrc not in rtx]
        if not streams:
            return 0, 0
        camera = max(streams, key=lambda s: s.packets_received)
        fillers = camera.__dict__.get("fillers", 0)
        return camera.packets_received - fillers, max(camera.packets_lost + fillers, 0)


class CappedProxy(asyncio.DatagramProtocol):
    """client <-> proxy <-> server; server -> client through a token bucket while capped."""

    def __init__(self, rate_bps):
        self.rate = rate_bps / 8  # bytes per second
        self.capped = False
        self.client = None
        self.server = None
        self.upstream = None
        self.queue = []  # datagrams waiting for tokens
        self.queued = 0
        self.tokens = BURST
        self.last = time.monotonic()
        self.counts = {"c2s": 0, "s2c": 0, "dropped": 0, "cappedDropped": 0, "cappedOffered": 0}

    def connection_made(self, transport):
        self.transport = transport

    def redirect(self, sdp):
        m = re.search(r"(\d+\.\d+\.\d+\.\d+) (\d+) typ host", sdp)
        assert m, "the subscribe-offer names no host candidate"
        if self.server is None:
            self.server = (m.group(1), int(m.group(2)))
            asyncio.ensure_future(self.open_upstream())
        port = self.transport.get_extra_info("sockname")[1]
        return sdp.replace(f"{m.group(1)} {m.group(2)} typ host", f"127.0.0.1 {port} typ host")

    async def open_upstream(self):
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: Upstream(self), remote_addr=self.server)

    def datagram_received(self, data, addr):
        self.client = addr
        self.counts["c2s"] += 1
        if self.upstream is not None:
            self.upstream.sendto(data)

    def refill(self):
        now = time.monotonic()
        self.tokens = min(BURST, self.tokens + self.rate * (now - self.last))
        self.last = now

    def from_server(self, data):
        if self.client is None:
            return
        self.counts["s2c"] += 1
        if not self.capped:
            self.transport.sendto(data, self.client)
            return
        self.counts["cappedOffered"] += 1
        self.refill()
        if not self.queue and self.tokens >= len(data):
            self.tokens -= len(data)
            self.transport.sendto(data, self.client)
        elif self.queued + len(data) <= self.rate * QUEUE_S:
            self.queue.append(data)
            self.queued += len(data)
        else:
            self.counts["dropped"] += 1
            self.counts["cappedDropped"] += 1

    async def drain(self):
        while True:
            await asyncio.sleep(0.002)
            self.refill()
            while self.queue and (self.tokens >= len(self.queue[0]) or not self.capped):
                data = self.queue.pop(0)
                self.queued -= len(data)
                self.tokens -= len(data)
                self.transport.sendto(data, self.client)


async def main(addr, room, mode, cap_kbps):
    count_fillers()
    decoders = DecoderWatch.install()
    if os.environ.get("SIMULCAST_SUMMARY"):
        Watch.install()
    t0 = time.monotonic()
    ms = lambda t: round((t - t0) * 1000)  # noqa: E731
    loop = asyncio.get_running_loop()
    proxy = CappedProxy(int(cap_kbps) * 1000)
    await loop.create_datagram_endpoint(lambda: proxy, local_addr=("127.0.0.1", 0))
    asyncio.ensure_future(proxy.drain())
    out = {"ok": False, "phases": {}, "samples": {}, "updates": {}, "proxy": proxy.counts}

    async with httpx.AsyncClient(base_url=f"http://{addr}") as http:
        tokens = {}
        names = ("A", "B") if mode == "ceilings" else ("U", "C")
        for name in names:
            r = await http.post("/auth/guest", json={"name": f"aiortc-{name}"})
            r.raise_for_status()
            tokens[name] = r.json()["token"]
        auth = {"Authorization": f"Bearer {tokens[names[0]]}"}
        room_id = None
        deadline = time.monotonic() + 30
        while room_id is None:
            r = await http.get("/rooms?limit=100", headers=auth)
            r.raise_for_status()
            room_id = next((x["id"] for x in r.json()["rooms"] if x["name"] == room), None)
            if room_id is None:
                assert time.monotonic() < deadline, f"room {room} never appeared (the publisher did not join)"
                await asyncio.sleep(0.2)

    subs = {n: Sub(n, addr, tokens[n], proxy if n == "C" else None) for n in names}
    track_id = None
    for s in subs.values():
        await s.connect()
        joined = await s.join(room_id)
        for p in joined["room"].get("participants", []):
            for t in p.get("tracks", []):
                if t.get("kind") == "video":
                    track_id = t["id"]
    if track_id is None:
        msg = await subs[names[0]].expect("track-published", lambda m: m["track"].get("kind") == "video")
        track_id = msg["track"]["id"]
    out["trackId"] = track_id

    samples = {n: [] for n in subs}

    async def sampler():
        while True:
            for n, s in subs.items():
                received, lost = await s.video_counts()
                samples[n].append([ms(time.monotonic()), s.width(), len(s.audio), received, lost])
            await asyncio.sleep(SAMPLE)

    sampling = asyncio.ensure_future(sampler())

    def widest():
        return max((w for s in subs.values() for _, w in s.widths), default=0)

    async def ceiling(name, quality):
        await subs[name].send({"type": "track-subscribe", "roomId": room_id, "trackId": track_id, "subscribe": True, "quality": quality})

    async def reach(names, pred, wait, phase):
        """Wait until every named subscriber's latest width satisfies pred; record when."""
        start = time.monotonic()
        rec = {"startMs": ms(start), "reachedMs": None}
        out["phases"][phase] = rec
        try:
            await until(lambda: all(subs[n].width() is not None and pred(subs[n].width()) for n in names), phase, wait)
            rec["reachedMs"] = ms(time.monotonic())
            rec["afterMs"] = rec["reachedMs"] - rec["startMs"]
        except AssertionError:
            rec["widths"] = {n: subs[n].width() for n in names}
        return rec

    try:
        await until(lambda: all(s.widths for s in subs.values()), "every subscriber decoding", 30)
        # The fake camera is 1280 wide; Chromium starts its f layer a few seconds in.
        full = await reach(list(subs), lambda w: w >= FULL_WIDTH, DEFAULT_WAIT, "default")
        await asyncio.sleep(HOLD)
        out["widest"] = widest()
        f = out["widest"]
        if mode == "ceilings":
            await ceiling("A", "low")
            await reach(["A"], lambda w: w <= f // 4, SWITCH_WAIT, "A-low")
            await asyncio.sleep(HOLD)
            await ceiling("A", "high")
            await reach(["A"], lambda w: w >= f, SWITCH_WAIT, "A-high")
            await asyncio.sleep(HOLD)
            await ceiling("B", "medium")
            await reach(["B"], lambda w: f // 4 < w <= f // 2, SWITCH_WAIT, "B-medium")
            await asyncio.sleep(HOLD)
        else:
            out["phases"]["cap"] = {"startMs": ms(time.monotonic())}
            proxy.capped = True
            await asyncio.sleep(CAPPED)
            proxy.capped = False
            out["phases"]["cap"]["endMs"] = ms(time.monotonic())
            await asyncio.sleep(LIFTED)
        out["phases"]["end"] = {"startMs": ms(time.monotonic())}
        out["ok"] = full["reachedMs"] is not None
    finally:
        sampling.cancel()
        out["samples"] = samples
        for n, s in subs.items():
            out["updates"][n] = [
                [ms(t), m.get("layer"), m.get("reason")]
                for t, m in zip(s.event_times, s.events)
                if m["type"] == "subscription-update" and m.get("trackId") == track_id
            ]
        for s in subs.values():
            try:
                await s.send({"type": "room-leave", "roomId": room_id})
                await s.sub.close()
                await s.ws.close()
            except Exception:  # noqa: BLE001 - leaving is best effort
                pass
    # The longest wait between two decoded frames of each subscriber, from the
    # first frame at the widest layer to the end (of the ceiling phases).
    start = t0 + (out["phases"].get("default", {}).get("reachedMs") or 0) / 1000
    end = t0 + out["phases"].get("end", {}).get("startMs", ms(time.monotonic())) / 1000
    # ms when a subscriber's VP8 decoder stopped for good (see DecoderWatch).
    out["decoderStoppedMs"] = None if decoders.stopped is None else ms(decoders.stopped)
    out["stallMs"] = {}
    for n, s in subs.items():
        ts = [t for t, _ in s.widths if start <= t <= end]
        out["stallMs"][n] = max((round((b - a) * 1000) for a, b in zip(ts, ts[1:])), default=None)
    if os.environ.get("SIMULCAST_SUMMARY"):
        out["debug"] = {}
        for n, s in subs.items():
            ts = [t for t, _ in s.widths]
            gaps = sorted(((b - a, a) for a, b in zip(ts, ts[1:])), reverse=True)[:5]
            out["debug"][n] = {"gaps": [[ms(a), round(g * 1000)] for g, a in gaps], "aiortc": s.watched(ms)}
        out["debug"]["warnings"] = [[ms(t), m] for t, m in decoders.first]
    out["seconds"] = round(time.monotonic() - t0, 1)
    if os.environ.get("SIMULCAST_SUMMARY"):  # for a human debugging a run
        with open(f"{os.environ['SIMULCAST_SUMMARY']}.{mode}.json", "w") as f:
            json.dump(out, f)
    print(json.dumps(out))


if __name__ == "__main__":
    run_main(main, sys.argv[1:5], 200)
