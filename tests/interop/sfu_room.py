"""A group room through confer's SFU, with aiortc peers only.

usage: sfu_room.py HTTP_ADDR MEDIA_ADDR ALICE BOB CAROL DAVE   (tokens)

1. alice creates a room and publishes camera video + microphone audio (a
   tone); bob and carol join and each decode >= 60 frames of alice's video,
   and bob hears active-speakers naming alice (RFC 6464 levels).
2. alice adds a screen share by renegotiation (source "screen"): bob and carol
   get track-published and a new subscribe-offer, and decode it.
3. dave joins late and decodes alice's camera within 2 s of room-join.
4. garbage datagrams hit the media port; a malformed publish SDP gets an error.
5. alice leaves: the others get track-unpublished for her 3 tracks,
   participant-left, and a renegotiated subscribe-offer.
Prints one JSON summary line; exit 0 only when every check held.
"""
import asyncio
import json
import os
import re
import socket
import sys
import time

import aioice.ice
import httpx
import numpy
import websockets
from aiortc import AudioStreamTrack, RTCPeerConnection, RTCSessionDescription, VideoStreamTrack
from av import AudioFrame, VideoFrame

aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]
if os.environ.get("SFU_DEBUG") == "ice":
    import logging
    logging.basicConfig(level=logging.DEBUG)

TIMEOUT = 30


class Pattern(VideoStreamTrack):
    def __init__(self, shade):
        super().__init__()
        self.shade, self.n = shade, 0

    async def recv(self):
        pts, time_base = await self.next_timestamp()
        img = numpy.zeros((240, 320, 3), numpy.uint8)
        img[:, :, 0] = (numpy.arange(320) + self.n * 4) % 256
        img[:, :, 1] = self.shade
        self.n += 1
        frame = VideoFrame.from_ndarray(img, format="bgr24")
        frame.pts, frame.time_base = pts, time_base
        return frame


class Tone(AudioStreamTrack):
    """A 440 Hz tone at about -10 dBov, so RFC 6464 levels say someone speaks."""

    def __init__(self):
        super().__init__()
        self.n = 0

    async def recv(self):
        frame = await super().recv()  # paces 20 ms frames of silence
        t = (numpy.arange(frame.samples) + self.n) / frame.sample_rate
        self.n += frame.samples
        pcm = (numpy.sin(2 * numpy.pi * 440 * t) * 10000).astype(numpy.int16).reshape(1, -1)
        tone = AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        tone.sample_rate, tone.pts, tone.time_base = frame.sample_rate, frame.pts, frame.time_base
        return tone


class Client:
    """One participant: a WebSocket, a publisher PC and a subscriber PC."""

    def __init__(self, name, addr, token):
        self.name, self.addr, self.token = name, addr, token
        self.inbox = asyncio.Queue()
        self.events = []
        self.event_times = []  # time.monotonic() each event arrived
        self.pub = None
        self.sub = RTCPeerConnection()
        self.frames = {}  # subscriber track id -> decoded frames
        self.first_frame_at = None
        self.offers = 0
        self.sub_lock = asyncio.Lock()

        @self.sub.on("track")
        def on_track(track):
            asyncio.ensure_future(self.consume(track))

    async def consume(self, track):
        while True:
            try:
                await track.recv()
            except Exception:
                return
            if track.kind == "video":
                self.frames[track.id] = self.frames.get(track.id, 0) + 1
                if self.first_frame_at is None:
                    self.first_frame_at = time.monotonic()

    async def connect(self):
        self.ws = await websockets.connect(f"ws://{self.addr}/rtc?token={self.token}", max_size=2**22)
        asyncio.ensure_future(self.reader())

    async def reader(self):
        async for raw in self.ws:
            msg = json.loads(raw)
            self.events.append(msg)
            self.event_times.append(time.monotonic())
            if msg["type"] == "subscribe-offer":
                asyncio.ensure_future(self.answer(msg))
            else:
                await self.inbox.put(msg)

    async def answer(self, msg):
        async with self.sub_lock:
            await self.sub.setRemoteDescription(RTCSessionDescription(msg["sdp"], "offer"))
            await self.sub.setLocalDescription(await self.sub.createAnswer())
            await self.send({"type": "subscribe-answer", "roomId": msg["roomId"], "sdp": self.sub.localDescription.sdp})
            self.offers += 1
            if os.environ.get("SFU_DEBUG"):
                print(f"--- {self.name} offer\n{msg['sdp']}\n--- answer\n{self.sub.localDescription.sdp}", file=sys.stderr)

    async def send(self, msg):
        await self.ws.send(json.dumps(msg))

    async def expect(self, kind, pred=lambda m: True):
        while True:
            msg = await asyncio.wait_for(self.inbox.get(), TIMEOUT)
            if msg["type"] == kind and pred(msg):
                return msg
            if msg["type"] == "error" and kind != "error":
                raise AssertionError(f"{self.name} got {msg}")

    async def join(self, room_id):
        await self.send({"type": "room-join", "roomId": room_id, "reqId": self.name})
        joined = await self.expect("room-joined")
        assert joined["reqId"] == self.name and joined["peerId"], joined
        assert joined["iceServers"], "room-joined carries iceServers"
        self.peer_id = joined["peerId"]
        return joined

    async def publish(self, room_id, sources):
        """Offer every track; `sources` are in transceiver order."""
        await self.pub.setLocalDescription(await self.pub.createOffer())
        sdp = self.pub.localDescription.sdp
        tracks = [{"mid": t.mid, "source": src} for t, src in zip(self.pub.getTransceivers(), sources)]
        await self.send({"type": "publish-offer", "roomId": room_id, "sdp": sdp, "tracks": tracks})
        ans = await self.expect("publish-answer")
        await self.pub.setRemoteDescription(RTCSessionDescription(ans["sdp"], "answer"))


class Upstream(asyncio.DatagramProtocol):
    """A test proxy's socket towards the server: it hands the proxy its
    transport (`proxy.upstream`) and every datagram the server sends
    (`proxy.from_server`)."""

    def __init__(self, proxy):
        self.proxy = proxy

    def connection_made(self, transport):
        self.proxy.upstream = transport

    def datagram_received(self, data, addr):
        self.proxy.from_server(data)


def run_main(main, args, timeout):
    """Run `main(*args)`; on any failure print the traceback and a JSON
    `{"ok": false, "error": ...}` line, and exit 1."""
    try:
        asyncio.run(asyncio.wait_for(main(*args), timeout))
    except Exception as e:  # noqa: BLE001 - report any failure plainly
        import traceback
        traceback.print_exc()
        print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}))
        sys.exit(1)


async def until(pred, what, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def main(addr, media, alice_t, bob_t, carol_t, dave_t):
    started = time.monotonic()
    async with httpx.AsyncClient() as http:
        r = await http.post(f"http://{addr}/rooms", json={"name": "standup"},
                            headers={"Authorization": f"Bearer {alice_t}"})
        r.raise_for_status()
        room_id = r.json()["room"]["id"]

    alice, bob, carol, dave = (Client(n, addr, t) for n, t in
                               (("alice", alice_t), ("bob", bob_t), ("carol", carol_t), ("dave", dave_t)))
    for c in (alice, bob, carol):
        await c.connect()
        await c.join(room_id)

    # 1. camera + microphone to two subscribers.
    alice.pub = RTCPeerConnection()
    alice.pub.addTrack(Pattern(80))
    alice.pub.addTrack(Tone())
    await alice.publish(room_id, ["camera", "microphone"])
    cand = await alice.expect("room-ice-candidate")
    assert cand["pc"] == "publisher" and " typ host" in cand["candidate"]["candidate"], cand
    for c in (bob, carol):
        for _ in range(2):
            ev = await c.expect("track-published")
            assert ev["peerId"] == alice.peer_id, ev
    await until(lambda: all(max(c.frames.values(), default=0) >= 60 for c in (bob, carol)), "60 frames at bob and carol")
    assert not alice.frames, "a participant never receives its own tracks"
    speaking = await bob.expect("active-speakers", lambda e: any(x["peerId"] == alice.peer_id for x in e["speakers"]))
    assert 0 < speaking["speakers"][0]["level"] <= 1, speaking

    # 2. screen share by renegotiation.
    alice.pub.addTrack(Pattern(200))
    await alice.publish(room_id, ["camera", "microphone", "screen"])
    for c in (bob, carol):
        ev = await c.expect("track-published", lambda e: e["track"]["source"] == "screen")
        assert ev["track"]["kind"] == "video", ev
    await until(lambda: all(len([n for n in c.frames.values() if n >= 10]) >= 2 for c in (bob, carol)),
                "the screen share decoded at bob and carol")
    screen_track = ev["track"]["id"]

    # 3. a late joiner sees video within 2 s.
    await dave.connect()
    t0 = time.monotonic()
    joined = await dave.join(room_id)
    listed = [t["source"] for p in joined["room"]["participants"] for t in p["tracks"]]
    assert sorted(listed) == ["camera", "microphone", "screen"], listed
    await until(lambda: dave.first_frame_at is not None, "dave's first frame", float(os.environ.get("LATE_WAIT") or 5))
    late_join_s = dave.first_frame_at - t0
    assert late_join_s < 2.0, f"late joiner waited {late_join_s:.2f}s for video"

    # 4. garbage on the room's media port (its worker's: the candidate in
    # alice's answer), and a malformed offer: errors, no outage.
    host = media.rsplit(":", 1)[0]
    port = re.search(r" (\d+) typ host", alice.pub.remoteDescription.sdp).group(1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(200):
        s.sendto(os.urandom(1 + i * 7 % 1400), (host, int(port)))
    s.sendto(b"\x00\x01\x00\x00\x21\x12\xa4\x42" + b"x" * 12, (host, int(port)))
    await carol.send({"type": "publish-offer", "roomId": room_id, "sdp": "v=0 this is not sdp",
                      "tracks": [{"mid": "0", "source": "camera"}]})
    err = await carol.expect("error")
    assert err["code"] == "bad-request" and "sdp" in err["message"], err
    before = dict(bob.frames)
    await until(lambda: sum(bob.frames.values()) > sum(before.values()) + 30, "media still flowing after garbage")

    # 5. the publisher leaves.
    offers_before = {c.name: c.offers for c in (bob, carol, dave)}
    await alice.send({"type": "room-leave", "roomId": room_id})
    for c in (bob, carol, dave):
        gone = set()
        while len(gone) < 3:
            ev = await c.expect("track-unpublished")
            assert ev["peerId"] == alice.peer_id, ev
            gone.add(ev["trackId"])
        assert screen_track in gone
        left = await c.expect("participant-left")
        assert left["peerId"] == alice.peer_id, left
    await until(lambda: all(c.offers > offers_before[c.name] for c in (bob, carol, dave)),
                "renegotiated subscriber offers after the publisher left")
    async with httpx.AsyncClient() as http:
        r = await http.get(f"http://{addr}/rooms/{room_id}", headers={"Authorization": f"Bearer {bob_t}"})
        r.raise_for_status()
        people = [p["userId"] for p in r.json()["room"]["participants"]]
    assert "alice" not in people and len(people) == 3, people

    for c in (bob, carol, dave):
        await c.send({"type": "room-leave", "roomId": room_id})
    await asyncio.sleep(0.5)
    summary = {
        "ok": True,
        "frames": {c.name: c.frames for c in (bob, carol)},
        "lateJoinSeconds": round(late_join_s, 3),
        "daveFrames": sum(dave.frames.values()),
        "seconds": round(time.monotonic() - started, 2),
    }
    for c in (alice, bob, carol, dave):
        if c.pub:
            await c.pub.close()
        await c.sub.close()
        await c.ws.close()
    print(json.dumps(summary))


if __name__ == "__main__":
    run_main(main, sys.argv[1:7], 120)
