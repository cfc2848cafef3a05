"""Call-quality analytics through a lossy path, with aiortc.

usage: sfu_quality.py HTTP_ADDR MEDIA_ADDR ALICE_TOKEN BOB_TOKEN LOSS

alice publishes video + an audio tone; bob subscribes. With LOSS > 0, alice's
publisher PeerConnection reaches the SFU through a UDP proxy written here that
drops that fraction of her RTP datagrams (never STUN, DTLS or RTCP, so the
connection itself comes up). After three 5-second reports the script reads
GET /rooms/:id/analytics, checks bob heard connection-quality, everyone
leaves, and the persisted summary is read back. Prints one JSON line.
"""
import asyncio
import json
import random
import re
import sys
import time

import httpx
from aiortc import RTCPeerConnection, RTCSessionDescription

from sfu_room import run_main, Client, Pattern, Tone, Upstream, until


class Proxy(asyncio.DatagramProtocol):
    """client <-> proxy <-> server, dropping `loss` of client RTP."""

    def __init__(self, server, loss):
        self.server, self.loss = server, loss
        self.client = None
        self.upstream = None
        self.rtp = self.dropped = 0

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.client = addr
        is_rtp = len(data) >= 12 and 128 <= data[0] < 192 and not 192 <= data[1] <= 223
        if is_rtp:
            self.rtp += 1
            if random.random() < self.loss:
                self.dropped += 1
                return
        self.upstream.sendto(data)

    def from_server(self, data):
        if self.client:
            self.transport.sendto(data, self.client)


async def main(addr, media, alice_t, bob_t, loss):
    loss = float(loss)
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    host = media.rsplit(":", 1)[0]
    proxy = Proxy(None, loss)
    ptransport, _ = await loop.create_datagram_endpoint(lambda: proxy, local_addr=("127.0.0.1", 0))
    proxy_port = ptransport.get_extra_info("sockname")[1]

    auth = lambda t: {"Authorization": f"Bearer {t}"}  # noqa: E731
    async with httpx.AsyncClient(base_url=f"http://{addr}") as http:
        r = await http.post("/rooms", json={"name": f"quality {loss}"}, headers=auth(alice_t))
        r.raise_for_status()
        room_id = r.json()["room"]["id"]
        alice, bob = Client("alice", addr, alice_t), Client("bob", addr, bob_t)
        for c in (alice, bob):
            await c.connect()
            await c.join(room_id)
        alice.pub = RTCPeerConnection()
        alice.pub.addTrack(Pattern(90))
        alice.pub.addTrack(Tone())
        await alice.pub.setLocalDescription(await alice.pub.createOffer())
        tracks = [{"mid": t.mid, "source": s} for t, s in zip(alice.pub.getTransceivers(), ["camera", "microphone"])]
        await alice.send({"type": "publish-offer", "roomId": room_id, "sdp": alice.pub.localDescription.sdp, "tracks": tracks})
        answer = (await alice.expect("publish-answer"))["sdp"]
        # The room's worker port, from the answer's candidate.
        port = re.search(r" (\d+) typ host", answer).group(1)
        proxy.server = (host, int(port))
        await loop.create_datagram_endpoint(lambda: Upstream(proxy), remote_addr=proxy.server)
        if loss > 0:
            answer = answer.replace(f"127.0.0.1 {port} typ host", f"127.0.0.1 {proxy_port} typ host")
            assert str(proxy_port) in answer, "the answer's candidate was not redirected to the proxy"
        await alice.pub.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        await until(lambda: sum(bob.frames.values()) >= 10, "bob decoding alice")
        await asyncio.sleep(16)  # three 5-second reports
        r = await http.get(f"/rooms/{room_id}/analytics", headers=auth(bob_t))
        r.raise_for_status()
        live = r.json()["analytics"]
        quality_events = [m for m in bob.events if m["type"] == "connection-quality"]

        for c in (alice, bob):
            await c.send({"type": "room-leave", "roomId": room_id})
        await asyncio.sleep(0.5)
        r = await http.get(f"/rooms/{room_id}/analytics", headers=auth(alice_t))
        r.raise_for_status()
        stored = r.json()["analytics"]
        for c in (alice, bob):
            if c.pub:
                await c.pub.close()
            await c.sub.close()
            await c.ws.close()

    pa = next(p for p in live["participants"] if p["userId"] == "alice")
    print(json.dumps({
        "ok": True,
        "loss": loss,
        "proxyRtp": proxy.rtp,
        "proxyDropped": proxy.dropped,
        "proxyDropRate": round(proxy.dropped / proxy.rtp, 4) if proxy.rtp else 0,
        "aliceVideoLoss": pa["publish"]["video"]["packetLoss"],
        "aliceAudioLoss": pa["publish"]["audio"]["packetLoss"],
        "aliceVideo": pa["publish"]["video"],
        "aliceQuality": pa["quality"],
        "roomQuality": live["quality"],
        "samples": len(live["samples"]),
        "lastSample": live["samples"][-1] if live["samples"] else None,
        "liveStatus": live["status"],
        "storedStatus": stored["status"],
        "storedSamples": len(stored["samples"]),
        "connectionQualityEvents": len(quality_events),
        "seconds": round(time.monotonic() - started, 2),
    }))


if __name__ == "__main__":
    run_main(main, sys.argv[1:6], 90)
