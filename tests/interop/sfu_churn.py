"""20 join/publish/leave cycles through confer's SFU, with aiortc.

usage: sfu_churn.py HTTP_ADDR SERVER_PID ALICE_TOKEN BOB_TOKEN

bob stays in the room; alice joins, publishes video + audio, waits until bob
decodes her video, and leaves, 20 times. The server's RSS is read from /proc
after cycle 5 and after cycle 20. Prints one JSON line; exit 0 when every cycle
delivered video.
"""
import asyncio
import json
import sys
import time

import httpx
from aiortc import AudioStreamTrack, RTCPeerConnection

from sfu_room import run_main, Client, Pattern, until

CYCLES = 20


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))


async def main(addr, pid, alice_t, bob_t):
    started = time.monotonic()
    async with httpx.AsyncClient() as http:
        r = await http.post(f"http://{addr}/rooms", json={"name": "churn"},
                            headers={"Authorization": f"Bearer {alice_t}"})
        r.raise_for_status()
        room_id = r.json()["room"]["id"]
    bob = Client("bob", addr, bob_t)
    await bob.connect()
    await bob.join(room_id)
    rss = {}
    slowest = 0.0
    for cycle in range(1, CYCLES + 1):
        cycle_started = time.monotonic()
        alice = Client("alice", addr, alice_t)
        await alice.connect()
        await alice.join(room_id)
        alice.pub = RTCPeerConnection()
        alice.pub.addTrack(Pattern(cycle * 10))
        alice.pub.addTrack(AudioStreamTrack())
        before = sum(bob.frames.values())
        await alice.publish(room_id, ["camera", "microphone"])
        await until(lambda: sum(bob.frames.values()) >= before + 5, f"bob's video in cycle {cycle}", 25)
        slowest = max(slowest, time.monotonic() - cycle_started)
        await alice.send({"type": "room-leave", "roomId": room_id})
        await bob.expect("participant-left")
        await alice.pub.close()
        await alice.sub.close()
        await alice.ws.close()
        if cycle in (5, CYCLES):
            await asyncio.sleep(0.5)
            rss[cycle] = rss_kib(int(pid))
    await bob.send({"type": "room-leave", "roomId": room_id})
    await asyncio.sleep(0.3)
    await bob.sub.close()
    await bob.ws.close()
    print(json.dumps({"ok": True, "cycles": CYCLES, "rssKiBAfter5": rss[5], "rssKiBAfter20": rss[CYCLES],
                      "bobFrames": sum(bob.frames.values()), "slowestCycleSeconds": round(slowest, 2), "seconds": round(time.monotonic() - started, 2)}))


if __name__ == "__main__":
    run_main(main, sys.argv[1:5], 240)
