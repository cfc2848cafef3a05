"""One room across two cluster nodes, with aiortc peers (SPEC 13).

usage: sfu_cluster.py HTTP_A HTTP_B MEDIA_PORTS_A ALICE BOB   (tokens)

alice is connected to node A, bob to node B. alice creates the room through
B's REST API and joins it first over A, so the room is placed on A; bob's
messages about it go to B, which relays them to A and A's replies and events
back. MEDIA_PORTS_A is a comma-separated list of A's media ports.

1. alice publishes camera + microphone; bob (on B) gets room-joined with his
   reqId and alice listed, her two tracks (listed or track-published), a
   subscribe-offer whose
   candidates are A's media ports, and decodes >= 60 frames of her video.
2. bob publishes his camera through B: his publish-answer comes back
   relayed, names A's media port, and alice decodes his video.
3. chat both ways; bob's track-mute reaches alice as participant-updated.
4. bob leaves: alice gets participant-left; bob gets nothing more.
Prints one JSON summary line; exit 0 only when every check held.
"""
import asyncio
import json
import re
import sys
import time

import httpx
from aiortc import RTCPeerConnection

from sfu_room import Client, Pattern, Tone, run_main, until


def ports(sdp):
    return {int(p) for p in re.findall(r"a=candidate:\S+ \d+ udp \d+ \S+ (\d+) typ host", sdp)}


async def main(http_a, http_b, media_ports_a, alice_t, bob_t):
    started = time.monotonic()
    media_a = {int(p) for p in media_ports_a.split(",")}
    async with httpx.AsyncClient() as http:
        r = await http.post(f"http://{http_b}/rooms", json={"name": "across"},
                            headers={"Authorization": f"Bearer {alice_t}"})
        r.raise_for_status()
        room_id = r.json()["room"]["id"]

    alice, bob = Client("alice", http_a, alice_t), Client("bob", http_b, bob_t)
    await alice.connect()
    await alice.join(room_id)
    alice.pub = RTCPeerConnection()
    alice.pub.addTrack(Pattern(80))
    alice.pub.addTrack(Tone())
    await alice.publish(room_id, ["camera", "microphone"])

    # 1. bob, on B, in the room on A.
    await bob.connect()
    t0 = time.monotonic()
    joined = await bob.join(room_id)
    join_ms = (time.monotonic() - t0) * 1000
    listed = [p["peerId"] for p in joined["room"]["participants"]]
    assert alice.peer_id in listed, joined
    joined_ev = await alice.expect("participant-joined")
    assert joined_ev["participant"]["peerId"] == bob.peer_id, joined_ev
    await until(lambda: max(bob.frames.values(), default=0) >= 60, "60 frames of alice's video at bob")
    # alice's tracks: listed in room-joined if they were up by then, else
    # announced by track-published, as on one node.
    listed = [t["source"] for p in joined["room"]["participants"] if p["peerId"] == alice.peer_id for t in p["tracks"]]
    announced = [e["track"]["source"] for e in bob.events
                 if e["type"] == "track-published" and e["peerId"] == alice.peer_id]
    assert sorted(listed + announced) == ["camera", "microphone"], (listed, announced)
    offers = [e for e in bob.events if e["type"] == "subscribe-offer"]
    sub_ports = ports(offers[0]["sdp"])
    assert sub_ports and sub_ports <= media_a, f"bob's subscribe-offer names {sub_ports}, A's media is {media_a}"

    # 2. bob publishes through B.
    bob.pub = RTCPeerConnection()
    bob.pub.addTrack(Pattern(200))
    await bob.publish(room_id, ["camera"])
    pub_ports = ports(bob.pub.remoteDescription.sdp)
    assert pub_ports and pub_ports <= media_a, f"bob's publish-answer names {pub_ports}"
    ev = await alice.expect("track-published", lambda e: e["peerId"] == bob.peer_id)
    assert ev["track"]["source"] == "camera", ev
    await until(lambda: max(alice.frames.values(), default=0) >= 30, "30 frames of bob's video at alice")

    # 3. chat both ways, and a mute.
    await bob.send({"type": "room-message", "roomId": room_id, "text": "hi from B"})
    got = await alice.expect("room-message")
    assert got["text"] == "hi from B" and got["from"]["peerId"] == bob.peer_id, got
    await alice.send({"type": "room-message", "roomId": room_id, "text": "hi from A"})
    got = await bob.expect("room-message", lambda m: m["text"] == "hi from A")
    assert got["from"]["peerId"] == alice.peer_id, got
    bob_track = ev["track"]["id"]
    await bob.send({"type": "track-mute", "roomId": room_id, "trackId": bob_track, "muted": True})
    upd = await alice.expect("participant-updated", lambda e: e["participant"]["peerId"] == bob.peer_id)
    muted = [t["muted"] for t in upd["participant"]["tracks"] if t["id"] == bob_track]
    assert muted == [True], upd

    # 4. bob leaves.
    await bob.send({"type": "room-leave", "roomId": room_id})
    left = await alice.expect("participant-left")
    assert left["peerId"] == bob.peer_id, left

    for c in (alice, bob):
        await c.ws.close()
        for pc in (c.pub, c.sub):
            if pc:
                await pc.close()
    print(json.dumps({
        "ok": True,
        "roomId": room_id,
        "bobJoinMs": round(join_ms, 1),
        "framesAtBob": max(bob.frames.values()),
        "framesAtAlice": max(alice.frames.values()),
        "subscribePorts": sorted(sub_ports),
        "seconds": round(time.monotonic() - started, 1),
    }))


if __name__ == "__main__":
    run_main(main, sys.argv[1:6], 90)
