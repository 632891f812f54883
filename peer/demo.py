"""The crpeer demo: several peers edit one notes table and converge live.

Run it with ``./scripts/demo`` (``--help`` for options). It needs no
configuration: each peer gets a fresh database in a temporary directory, and
the peers talk over the in-process memory transport. It prints what happens
and ends with a verdict (exit 0 when every peer holds the same notes).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import sys
import tempfile
import time
from pathlib import Path

from peer import events
from peer.peer import Peer
from peer.retry import Backoff
from peer.store import Store
from transports.memory import MemoryNetwork, MemoryTransport

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY NOT NULL, body TEXT, author TEXT)"
)
NAMES = ["laptop", "phone", "desktop", "tablet", "watch", "tv"]


def digest(store: Store) -> str:
    rows = store.execute("SELECT id, body, author FROM notes ORDER BY id")
    return hashlib.sha256(repr(rows).encode()).hexdigest()[:12]


class Demo:
    def __init__(self, count: int, seed: int, directory: Path) -> None:
        self.started = time.monotonic()
        self.rng = random.Random(seed)
        self.network = MemoryNetwork(seed=seed)
        self.names = NAMES[:count]
        self.stores: list[Store] = []
        self.peers: list[Peer] = []
        for index, name in enumerate(self.names):
            store = Store(directory / f"{name}.db")
            store.execute(SCHEMA)
            store.make_crr("notes")
            self.stores.append(store)
            # A ring: each peer dials the next one; writes relay around it.
            dial = [f"memory://{self.names[(index + 1) % count]}"] if count > 1 else []
            peer = Peer(
                store,
                [MemoryTransport(self.network, name)],
                name=name,
                connect=dial,
                backoff=Backoff(initial=0.05, maximum=1.0),
                seed=seed + index,
                insecure=True,
            )
            peer.subscribe(self._printer(name))
            self.peers.append(peer)

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:6.2f}s] {text}", flush=True)

    def _printer(self, name: str) -> events.EventCallback:
        def show(event: events.Event) -> None:
            match event:
                case events.Connected(remote=remote):
                    self.say(f"{name}: connected to {remote.name}")
                case events.Eose(remote=remote):
                    self.say(f"{name}: caught up with {remote.name} (EOSE)")
                case events.Changed(remote=remote, rows=rows):
                    self.say(f"{name}: {rows} change rows from {remote.name}")
                case events.Disconnected(remote=remote, error=error):
                    why = f" ({error})" if error else ""
                    self.say(f"{name}: disconnected from {remote.name}{why}")

        return show

    async def write(self, index: int, note_id: int, body: str) -> None:
        await self.peers[index].execute(
            "INSERT INTO notes VALUES (?, ?, ?) ON CONFLICT (id) DO UPDATE "
            "SET body = excluded.body, author = excluded.author",
            (note_id, body, self.names[index]),
        )
        self.say(f"{self.names[index]} writes note {note_id}: {body!r}")

    async def converge(self, within: float) -> bool:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if len({digest(s) for s in self.stores}) == 1:
                return True
            await asyncio.sleep(0.05)
        return False

    async def run(self, keep_running: bool) -> bool:
        for peer in self.peers:
            await peer.start()
        for index in range(len(self.peers)):
            await self.write(index, index, f"first note from {self.names[index]}")
        await self.converge(10)
        self.say("everyone caught up; now live edits, including the same note at once")
        for index in range(len(self.peers)):
            await self.write(index, 100, f"{self.names[index]} edits the shared note")
        await self.converge(10)
        if len(self.peers) > 2:
            cut = self.names[-1]
            others = self.names[:-1]
            self.say(f"partition: {cut} is cut off from {', '.join(others)}")
            self.network.partition([cut], others)
            await self.write(len(self.peers) - 1, 200, "written while offline")
            await self.write(0, 201, "written while the other was offline")
            await asyncio.sleep(0.5)
            self.say("healing the partition")
            self.network.heal()
        converged = await self.converge(30)
        while keep_running:
            await asyncio.sleep(2)
            await self.write(self.rng.randrange(len(self.peers)), self.rng.randrange(300), "tick")
        return converged

    async def close(self) -> None:
        for peer in self.peers:
            await peer.stop()
        for store in self.stores:
            store.close()


async def amain(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="crpeer-demo-") as directory:
        demo = Demo(args.peers, args.seed, Path(directory))
        try:
            converged = await asyncio.wait_for(
                demo.run(args.keep_running), timeout=None if args.keep_running else 60
            )
            print()
            for name, store in zip(demo.names, demo.stores, strict=True):
                count = store.execute("SELECT count(*) FROM notes")[0][0]
                print(f"  {name:8} {count} notes  digest {digest(store)}")
            shared = demo.stores[0].execute("SELECT body FROM notes WHERE id = 100")
            print(f"  shared note 100 settled on: {shared[0][0] if shared else None!r}")
        finally:
            await demo.close()
        print(f"verdict: {'converged' if converged else 'DIVERGED'} ({len(demo.peers)} peers)")
        return 0 if converged else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--peers", type=int, default=4, choices=range(2, len(NAMES) + 1), metavar="N"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep-running", action="store_true", help="keep writing until Ctrl-C")
    args = parser.parse_args(argv)
    try:
        return asyncio.run(amain(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
