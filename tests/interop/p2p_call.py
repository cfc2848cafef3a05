"""A 1:1 P2P video call between two aiortc peers whose offer, answer and ICE
candidates travel only through confer's /rtc relay.

usage: p2p_call.py HTTP_ADDR ALICE_TOKEN BOB_TOKEN [relay]
Succeeds (exit 0) when each side decoded >= 30 frames from the other, bob saw
alice's hangup, and GET /calls/:id says "ended". With "relay", both peers take
their ICE servers from GET /ice-config and use iceTransportPolicy "relay", so
all media crosses confer's TURN server (UDP).
"""
import asyncio
import fractions
import json
import sys
import time

import aioice.ice
import httpx
import numpy
import websockets
from aiortc import (RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription,
                    VideoStreamTrack)
from aiortc.rtcconfiguration import RTCIceTransportPolicy
from aiortc.sdp import candidate_from_sdp
from av import VideoFrame

# aioice skips loopback and gathers on every other interface: tests stay on 127.0.0.1.
aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]

FRAMES = 30
TIMEOUT = 60


class Pattern(VideoStreamTrack):
    """A moving colour gradient, 320x240 at 30 fps."""

    def __init__(self, shade):
        super().__init__()
        self.shade = shade
        self.n = 0

    async def recv(self):
        pts, time_base = await self.next_timestamp()
        img = numpy.zeros((240, 320, 3), numpy.uint8)
        img[:, :, 0] = (numpy.arange(320) + self.n * 4) % 256
        img[:, :, 1] = self.shade
        img[:, :, 2] = (numpy.arange(240)[:, None] + self.n) % 256
        self.n += 1
        frame = VideoFrame.from_ndarray(img, format="bgr24")
        frame.pts, frame.time_base = pts, time_base
        return frame


def candidates_of(sdp):
    """(mid, line) for every a=candidate line of a local description."""
    mid, out = None, []
    for line in sdp.splitlines():
        if line.startswith("a=mid:"):
            mid = line[6:].strip()
        elif line.startswith("a=candidate:"):
            out.append((mid, line[2:]))
    return out


class Peer:
    def __init__(self, name, addr, token, config=None):
        self.name, self.addr, self.token = name, addr, token
        self.pc = RTCPeerConnection(config)
        self.pc.addTrack(Pattern(60 if name == "alice" else 180))
        self.decoded = 0
        self.done = asyncio.Event()
        self.inbox = asyncio.Queue()
        self.relayed_candidates = 0

        @self.pc.on("track")
        def on_track(track):
            asyncio.ensure_future(self.consume(track))

    async def consume(self, track):
        while True:
            try:
                await track.recv()
            except Exception:
                return
            self.decoded += 1
            if self.decoded >= FRAMES:
                self.done.set()

    async def connect(self):
        self.ws = await websockets.connect(f"ws://{self.addr}/rtc?token={self.token}", max_size=2**20)
        asyncio.ensure_future(self.reader())

    async def reader(self):
        async for raw in self.ws:
            msg = json.loads(raw)
            if msg["type"] == "ice-candidate":
                await self.add_candidate(msg)
            else:
                await self.inbox.put(msg)

    async def add_candidate(self, msg):
        c = msg["candidate"]
        assert msg["from"] != self.name and msg["callId"], msg
        line = c["candidate"]
        cand = candidate_from_sdp(line[len("candidate:"):] if line.startswith("candidate:") else line)
        cand.sdpMid = c.get("sdpMid")
        cand.sdpMLineIndex = c.get("sdpMLineIndex")
        try:
            await self.pc.addIceCandidate(cand)
        except Exception:
            pass  # a duplicate of one already in the SDP
        self.relayed_candidates += 1

    async def expect(self, kind):
        while True:
            msg = await self.inbox.get()
            if msg["type"] == "error":
                raise AssertionError(f"{self.name} got error {msg}")
            if msg["type"] == kind:
                return msg

    async def send(self, msg):
        await self.ws.send(json.dumps(msg))

    async def trickle(self, call_id):
        for mid, line in candidates_of(self.pc.localDescription.sdp):
            index = next(i for i, t in enumerate(self.pc.getTransceivers()) if t.mid == mid)
            await self.send({"type": "ice-candidate", "callId": call_id,
                             "candidate": {"candidate": line, "sdpMid": mid, "sdpMLineIndex": index}})


async def ice_config(addr, token):
    """RTCConfiguration from /ice-config: TURN over UDP only, relay policy."""
    async with httpx.AsyncClient() as http:
        r = await http.get(f"http://{addr}/ice-config", headers={"Authorization": f"Bearer {token}"})
        r.raise_for_status()
    turn = r.json()["iceServers"][1]
    udp = [u for u in turn["urls"] if u.endswith("transport=udp")]
    return RTCConfiguration(iceServers=[RTCIceServer(urls=udp, username=turn["username"], credential=turn["credential"])],
                            iceTransportPolicy=RTCIceTransportPolicy.RELAY)


async def main(addr, alice_token, bob_token, mode=None):
    started = time.monotonic()
    relay = mode == "relay"
    configs = [await ice_config(addr, t) if relay else None for t in (alice_token, bob_token)]
    alice, bob = Peer("alice", addr, alice_token, configs[0]), Peer("bob", addr, bob_token, configs[1])
    await alice.connect()
    await bob.connect()

    await alice.pc.setLocalDescription(await alice.pc.createOffer())
    await alice.send({"type": "call-initiate", "calleeId": "bob", "callType": "video",
                      "sdp": alice.pc.localDescription.sdp, "reqId": 1})
    created = await alice.expect("call-created")
    assert created["reqId"] == 1, created
    call_id = created["callSession"]["id"]

    offer = await bob.expect("call-initiate")
    assert offer["callId"] == call_id and offer["from"] == "alice", offer
    await bob.send({"type": "call-accept", "callId": call_id})
    await bob.pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], "offer"))
    await bob.pc.setLocalDescription(await bob.pc.createAnswer())
    await bob.send({"type": "call-answer", "callId": call_id, "sdp": bob.pc.localDescription.sdp})
    await bob.trickle(call_id)

    accepted = await alice.expect("call-accept")
    assert accepted["callSession"]["status"] == "active", accepted
    answer = await alice.expect("call-answer")
    assert answer["from"] == "bob"
    await alice.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
    await alice.trickle(call_id)

    await asyncio.wait_for(asyncio.gather(alice.done.wait(), bob.done.wait()), TIMEOUT)

    await alice.send({"type": "call-hangup", "callId": call_id})
    hangup = await bob.expect("call-hangup")
    assert hangup["from"] == "alice" and hangup["callId"] == call_id, hangup
    async with httpx.AsyncClient() as http:
        r = await http.get(f"http://{addr}/calls/{call_id}", headers={"Authorization": f"Bearer {alice_token}"})
        r.raise_for_status()
        status = r.json()["callSession"]["status"]
    assert status == "ended", status
    assert alice.relayed_candidates > 0 and bob.relayed_candidates > 0, "no candidate went through the relay"
    if relay:
        for p in (alice, bob):
            kinds = {l.split()[7] for _, l in candidates_of(p.pc.localDescription.sdp)}
            assert kinds == {"relay"}, f"{p.name} offered non-relay candidates: {kinds}"

    print(json.dumps({"ok": True, "relay": relay, "callId": call_id, "aliceDecoded": alice.decoded, "bobDecoded": bob.decoded,
                      "relayedCandidates": [alice.relayed_candidates, bob.relayed_candidates],
                      "seconds": round(time.monotonic() - started, 2)}))
    await alice.pc.close()
    await bob.pc.close()
    await alice.ws.close()
    await bob.ws.close()


if __name__ == "__main__":
    try:
        asyncio.run(asyncio.wait_for(main(*sys.argv[1:5]), TIMEOUT + 30))
    except Exception as e:  # noqa: BLE001 - report any failure plainly
        print(f"p2p_call failed: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
