"""A fault-injecting HTTP proxy for tests: answers 500s, stalls, drops connections and cuts response
bodies short in front of a real server, on a deterministic schedule per request body; it keeps every whole
answer the server gave (`answers`), to compare what a client stored with what was sent to it."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections import Counter

import httpx

# each request's attempts, in order; after its plan runs out a request is forwarded untouched
PLANS = [(), ("500",), ("drop",), ("stall",), ("cut",), ("500", "drop"), ("stall", "cut", "500")]


class FaultProxy:
    def __init__(self, upstream: str, stall_s: float = 5.0, plans: list[tuple[str, ...]] = PLANS):
        self.upstream, self.stall_s, self.plans = upstream.rstrip("/"), stall_s, plans
        self.answers: dict[bytes, list[bytes]] = {}  # request body -> the server's 200 answers to it, in order
        self.attempts: Counter = Counter()
        self.faults: Counter = Counter()  # what was injected, by kind ("ok" = forwarded)
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        self.ready.wait(10)
        return f"http://127.0.0.1:{self.port}/v1"

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    async def _shutdown(self) -> None:
        """Cancel handlers still stalling, then close the listener and the upstream client."""
        self.server.close()
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await self.client.aclose()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.client = httpx.AsyncClient(timeout=600)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()

    def _fault(self, body: bytes) -> str:
        key = hashlib.sha1(body).hexdigest()
        plan = self.plans[int(key, 16) % len(self.plans)]
        attempt = self.attempts[key]
        self.attempts[key] += 1
        return plan[attempt] if attempt < len(plan) else "ok"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            method, path, _ = head[0].split(" ", 2)
            headers = {k.lower(): v for k, v in (h.split(": ", 1) for h in head[1:] if ": " in h)}
            body = await reader.readexactly(int(headers.get("content-length", 0)))
            fault = self._fault(body)
            self.faults[fault] += 1
            if fault == "drop":
                return
            if fault == "stall":
                await asyncio.sleep(self.stall_s)
                return
            if fault == "500":
                status, data = 500, b'{"error": "injected fault"}'
            else:
                fwd = {k: v for k, v in headers.items() if k in ("content-type", "authorization")}
                resp = await self.client.request(method, self.upstream + path, content=body, headers=fwd)
                status, data = resp.status_code, resp.content
                if status == 200:
                    self.answers.setdefault(body, []).append(data)
            length = len(data)
            if fault == "cut":
                data = data[: len(data) // 2]
            writer.write(
                f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n"
                f"Connection: close\r\n\r\n".encode()
                + data
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
