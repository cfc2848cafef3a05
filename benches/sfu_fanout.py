"""1 publisher -> N subscribers through confer's SFU, measured from outside.

usage: sfu_fanout.py HTTP_ADDR SERVER_PID N SECONDS TOKEN...   (N+1 tokens)

aiortc publishes VP8 video (640x480 noise, so the encoder spends its bitrate)
and Opus audio; N aiortc subscribers receive. After everyone is connected the
window starts: server CPU (utime+stime of SERVER_PID from /proc) and the SFU's
/metrics counters are sampled at both ends. Prints one JSON line:
forwarded packets/s, server CPU us per forwarded packet, and loss (what the
subscribers' getStats say they lost, against what the server forwarded).
A benchmark, not a test: run it through benches/sfu_fanout.sh.
"""
import asyncio
import json
import os
import sys
import time

import aioice.ice
import httpx
import numpy
import websockets
from aiortc import AudioStreamTrack, RTCPeerConnection, RTCSessionDescription, VideoStreamTrack
from av import VideoFrame

aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]
TICKS = os.sysconf("SC_CLK_TCK")


class Noise(VideoStreamTrack):
    """Random pixels: the encoder spends its whole bitrate (~850 packets/s).
    With FANOUT_VIDEO=light, a small moving gradient instead (~30 packets/s),
    which 20 Python subscribers can receive without dropping."""

    light = os.environ.get("FANOUT_VIDEO") == "light"
    n = 0

    async def recv(self):
        pts, time_base = await self.next_timestamp()
        if self.light:
            self.n += 1
            img = numpy.zeros((240, 320, 3), numpy.uint8)
            img[:, :, 0] = (numpy.arange(320) + self.n * 4) % 256
        else:
            img = numpy.random.randint(0, 255, (480, 640, 3), numpy.uint8)
        frame = VideoFrame.from_ndarray(img, format="bgr24")
        frame.pts, frame.time_base = pts, time_base
        return frame


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024


async def metrics(http):
    text = (await http.get("/metrics")).text
    out = {}
    for line in text.splitlines():
        if line.startswith("confer_rtp_packets_") and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


class Peer:
    def __init__(self, addr, token):
        self.addr, self.token = addr, token
        self.sub = RTCPeerConnection()
        self.pub = None
        self.inbox = asyncio.Queue()

        @self.sub.on("track")
        def on_track(track):
            async def drain():
                while True:
                    try:
                        await track.recv()
                    except Exception:
                        return
            asyncio.ensure_future(drain())

    async def connect(self, room):
        self.ws = await websockets.connect(f"ws://{self.addr}/rtc?token={self.token}", max_size=2**22)
        asyncio.ensure_future(self.reader())
        await self.ws.send(json.dumps({"type": "room-join", "roomId": room}))
        while (await self.inbox.get())["type"] != "room-joined":
            pass

    async def reader(self):
        async for raw in self.ws:
            msg = json.loads(raw)
            if msg["type"] == "subscribe-offer":
                await self.sub.setRemoteDescription(RTCSessionDescription(msg["sdp"], "offer"))
                await self.sub.setLocalDescription(await self.sub.createAnswer())
                await self.ws.send(json.dumps({"type": "subscribe-answer", "roomId": msg["roomId"],
                                               "sdp": self.sub.localDescription.sdp}))
            else:
                await self.inbox.put(msg)


async def main(addr, pid, n, seconds, *tokens):
    pid, n, seconds = int(pid), int(n), float(seconds)
    async with httpx.AsyncClient(base_url=f"http://{addr}") as http:
        r = await http.post("/rooms", json={"name": "fanout", "maxParticipants": n + 1},
                            headers={"Authorization": f"Bearer {tokens[0]}"})
        room = r.json()["room"]["id"]
        publisher = Peer(addr, tokens[0])
        await publisher.connect(room)
        publisher.pub = RTCPeerConnection()
        publisher.pub.addTrack(Noise())
        publisher.pub.addTrack(AudioStreamTrack())
        await publisher.pub.setLocalDescription(await publisher.pub.createOffer())
        tracks = [{"mid": t.mid, "source": s} for t, s in zip(publisher.pub.getTransceivers(), ["camera", "microphone"])]
        await publisher.ws.send(json.dumps({"type": "publish-offer", "roomId": room,
                                            "sdp": publisher.pub.localDescription.sdp, "tracks": tracks}))
        while (msg := await publisher.inbox.get())["type"] != "publish-answer":
            pass
        await publisher.pub.setRemoteDescription(RTCSessionDescription(msg["sdp"], "answer"))

        subs = [Peer(addr, t) for t in tokens[1:n + 1]]
        for s in subs:
            await s.connect(room)
        # Wait until every subscriber leg is connected and receiving.
        deadline = time.monotonic() + 60
        while sum(1 for s in subs if s.sub.connectionState == "connected") < n:
            assert time.monotonic() < deadline, "subscribers did not all connect"
            await asyncio.sleep(0.2)
        await asyncio.sleep(3)

        async def received():
            total = lost = 0
            for s in subs:
                for st in (await s.sub.getStats()).values():
                    if st.type == "inbound-rtp":
                        total += st.packetsReceived
                        lost += max(st.packetsLost, 0)
            return total, lost

        m0, c0, (r0, l0), t0 = await metrics(http), cpu_seconds(pid), await received(), time.monotonic()
        await asyncio.sleep(seconds)
        m1, c1, (r1, l1), t1 = await metrics(http), cpu_seconds(pid), await received(), time.monotonic()
        fwd = sum(v - m0.get(k, 0) for k, v in m1.items() if "forwarded" in k)
        inn = sum(v - m0.get(k, 0) for k, v in m1.items() if "received" in k)
        got, lost = r1 - r0, l1 - l0
        print(json.dumps({
            "video": "light" if Noise.light else "noise",
            "subscribers": n,
            "seconds": round(t1 - t0, 2),
            "publisherPacketsPerSecond": round(inn / (t1 - t0)),
            "forwardedPacketsPerSecond": round(fwd / (t1 - t0)),
            "serverCpuSeconds": round(c1 - c0, 3),
            "serverCpuUsPerForwardedPacket": round((c1 - c0) * 1e6 / fwd, 2) if fwd else None,
            "subscriberPacketsReceived": got,
            "subscriberPacketsLost": lost,
            "loss": round(lost / (got + lost), 5) if got + lost else None,
            "serverRssMiB": round(rss_mib(pid), 1),
        }))
        for p in [publisher] + subs:
            await p.sub.close()
            if p.pub:
                await p.pub.close()
            await p.ws.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
