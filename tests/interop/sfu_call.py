"""A 1:1 call in `mode: "sfu"` with aiortc peers: media goes through confer's SFU.

usage: sfu_call.py HTTP_ADDR ALICE_TOKEN BOB_TOKEN

alice calls bob over REST with mode "sfu", bob accepts; both join the call's
room over /rtc, publish camera video and decode >= 30 frames of each other.
Then alice mutes her video with PUT /calls/:id/mute-video: bob hears
participant-updated with the track muted and stops receiving her video; after
the unmute it resumes. Prints one JSON summary; exit 0 only when all held.
"""
import asyncio
import json
import sys
import time

import httpx
from aiortc import RTCPeerConnection

from sfu_room import run_main, Client, Pattern, until


async def main(addr, alice_t, bob_t):
    started = time.monotonic()
    auth = lambda t: {"Authorization": f"Bearer {t}"}  # noqa: E731
    async with httpx.AsyncClient(base_url=f"http://{addr}") as http:
        r = await http.post("/calls", json={"callerId": "alice", "calleeId": "bob", "callType": "video", "mode": "sfu"},
                            headers=auth(alice_t))
        r.raise_for_status()
        call_id, room_id = r.json()["callSession"]["id"], r.json()["roomId"]
        assert r.json()["callSession"]["mode"] == "sfu", r.json()
        (await http.put(f"/calls/{call_id}/accept", headers=auth(bob_t))).raise_for_status()

        alice, bob = Client("alice", addr, alice_t), Client("bob", addr, bob_t)
        for c, shade in ((alice, 40), (bob, 220)):
            await c.connect()
            await c.join(room_id)
            c.pub = RTCPeerConnection()
            c.pub.addTrack(Pattern(shade))
            await c.publish(room_id, ["camera"])
        await until(lambda: all(sum(c.frames.values()) >= 30 for c in (alice, bob)), "30 frames each way")

        # A stranger cannot enter the call's room.
        r = await http.get(f"/rooms/{room_id}", headers=auth(bob_t))
        r.raise_for_status()
        assert len(r.json()["room"]["participants"]) == 2, r.json()

        (await http.put(f"/calls/{call_id}/mute-video", json={"mute": True}, headers=auth(alice_t))).raise_for_status()
        upd = await bob.expect("participant-updated")
        assert upd["participant"]["peerId"] == alice.peer_id, upd
        assert all(t["muted"] for t in upd["participant"]["tracks"] if t["kind"] == "video"), upd
        await asyncio.sleep(0.5)
        muted_at = sum(bob.frames.values())
        await asyncio.sleep(1.5)
        while_muted = sum(bob.frames.values()) - muted_at
        assert while_muted <= 3, f"bob decoded {while_muted} frames of muted video"

        (await http.put(f"/calls/{call_id}/mute-video", json={"mute": False}, headers=auth(alice_t))).raise_for_status()
        resumed_from = sum(bob.frames.values())
        await until(lambda: sum(bob.frames.values()) >= resumed_from + 15, "video after unmute", 5)

        await asyncio.sleep(5.5)  # one analytics report
        r = await http.get(f"/calls/{call_id}/analytics", headers=auth(bob_t))
        r.raise_for_status()
        analytics = r.json()["analytics"]
        assert analytics["source"] == "sfu" and analytics["callId"] == call_id, analytics
        assert len(analytics["participants"]) == 2 and analytics["quality"]["rating"], analytics
        assert analytics["setupTimeMs"] is not None and analytics["setupTimeMs"] >= 0, analytics

        (await http.put(f"/calls/{call_id}/hangup", headers=auth(alice_t))).raise_for_status()
        for c in (alice, bob):
            await c.send({"type": "room-leave", "roomId": room_id})
        await asyncio.sleep(0.3)
        summary = {"ok": True, "aliceDecoded": sum(alice.frames.values()), "bobDecoded": sum(bob.frames.values()),
                   "callQuality": analytics["quality"],
                   "framesWhileMuted": while_muted, "seconds": round(time.monotonic() - started, 2)}
        for c in (alice, bob):
            await c.pub.close()
            await c.sub.close()
            await c.ws.close()
        print(json.dumps(summary))


if __name__ == "__main__":
    run_main(main, sys.argv[1:4], 90)
