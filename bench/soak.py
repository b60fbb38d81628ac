"""Soak test for `digitlab serve` (not in CI): minutes of mixed traffic, good and bad, then three goals.

    python bench/soak.py --run runs/seed-ann                     # 10 minutes
    python bench/soak.py --run runs/seed-ann --minutes 2         # a short check
    python bench/soak.py --run runs/seed-ann --url http://127.0.0.1:8000 --server-pid 1234

The traffic, all at once, each kind on its own connections (loopback only):
  json      28x28 pixels as JSON, CLIENTS clients x RATE/s on keep-alive connections (the latency goal)
  upload    a PNG as a multipart form                    raw     PNG or JPEG bytes as the body
  sample    GET /api/sample                               bad     an input the server must refuse with
            the right 4xx (not an image, broken JSON, 27 rows, text/plain, a 40 KB head, an unknown route...)
  slow      a form upload sent in ten pieces over a second (a phone on a bad network): it must still be read
  aborted   a client that sends part of an upload and hangs up: nothing to answer, nothing may leak
Without --url the script starts `digitlab serve RUN` on a free 127.0.0.1 port and stops it at the end.

Goals (issue 15): the server's RSS at the end within +-10% of its RSS after the warm-up (no leak), no 5xx
answer at all, and the JSON predictions' p99 latency under 50 ms (measured by the client, request sent
to response read). The load generator shares the machine's CPUs with the server: the table says how many.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import importlib.util
import io
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

# Run as a script, bench/ comes first on sys.path, where bench/numbers.py would shadow the standard library's
# `numbers` (numpy imports it): take it off before importing numpy.
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


def _load_bench():
    """bench/load.py, for its server handling (start, stop, RSS, the loopback check): one copy of each."""
    spec = importlib.util.spec_from_file_location("bench_load", HERE / "load.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


load = _load_bench()
fetch_bodies, require_loopback, rss_mb = load.fetch_bodies, load.require_loopback, load.rss_mb
start_server, stop_server, _event_loop_runner = load.start_server, load.stop_server, load._event_loop_runner

RSS_TOLERANCE = 0.10  # end RSS within +-10% of the RSS after warm-up
P99_GOAL_MS = 50.0
TIMEOUT_S = 15.0  # a request unanswered this long counts as an error
MAX_MINUTES = 120.0


@dataclass
class Kind:
    """What one kind of traffic got back."""
    name: str
    expected: str  # what counts as the right answer, in words
    statuses: collections.Counter = field(default_factory=collections.Counter)
    latencies_ms: list[float] = field(default_factory=list)  # right answers after the warm-up
    wrong: int = 0  # answers that were not the expected one (5xx included)
    failures: collections.Counter = field(default_factory=collections.Counter)  # transport errors by kind

    def record(self, status: int | None, ok: bool, ms: float, measuring: bool, failure: str | None = None):
        if status is not None:
            self.statuses[status] += 1
        if failure:
            self.failures[failure] += 1
        if not ok:
            self.wrong += 1
        elif measuring:
            self.latencies_ms.append(ms)

    def row(self) -> dict:
        lat = np.asarray(self.latencies_ms) if self.latencies_ms else None
        return {"traffic": self.name, "requests": sum(self.statuses.values()) + sum(self.failures.values()),
                "answers": " ".join(f"{s}:{n}" for s, n in sorted(self.statuses.items())) or "-",
                "expected": self.expected, "wrong": self.wrong,
                "p50 ms": float(np.percentile(lat, 50)) if lat is not None else None,
                "p99 ms": float(np.percentile(lat, 99)) if lat is not None else None}


# ---------------------------------------------------------------- HTTP over a raw connection

class Client:
    """One keep-alive HTTP/1.1 connection, reopened after the server closes it or an exchange fails."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def _open(self):
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    def close(self):
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def exchange(self, raw: bytes, pieces: int = 1, gap_s: float = 0.0) -> tuple[int, bytes]:
        """Send `raw` (in `pieces` with `gap_s` between them: a slow client) and read one response."""
        await self._open()
        try:
            step = math.ceil(len(raw) / pieces)
            for i in range(0, len(raw), step):
                self.writer.write(raw[i:i + step])
                await self.writer.drain()
                if gap_s and i + step < len(raw):
                    await asyncio.sleep(gap_s)
            head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), TIMEOUT_S)
            lower = head.lower()
            at = lower.find(b"content-length:")
            length = int(lower[at + 15:lower.find(b"\r\n", at)]) if at >= 0 else 0
            body = await asyncio.wait_for(self.reader.readexactly(length), TIMEOUT_S)
        except BaseException:
            self.close()  # the connection's state is unknown
            raise
        if b"connection: close" in lower:
            self.close()
        return int(head[9:12]), body


def request(method: str, path: str, host: str, port: int, body: bytes = b"", ctype: str | None = None,
            extra: str = "") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}"]
    if ctype:
        lines.append(f"Content-Type: {ctype}")
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode() + body


def multipart(png: bytes, name: str = "digit.png") -> tuple[bytes, str]:
    boundary = "soak" + os.urandom(8).hex()
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + png + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def image_bytes(pixels: list[list[int]], fmt: str) -> bytes:
    """A test digit as a picture a user would send: 112 px, ink dark on light paper."""
    im = Image.fromarray(255 - np.asarray(pixels, dtype=np.uint8)).resize((112, 112), Image.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def good_prediction(status: int, body: bytes) -> bool:
    if status != 200:
        return False
    doc = json.loads(body)
    proba = doc["probabilities"]
    return 0 <= doc["digit"] <= 9 and len(proba) == 10 and all(isinstance(p, float) and math.isfinite(p)
                                                                  for p in proba)


def good_sample(status: int, body: bytes) -> bool:
    return status == 200 and good_prediction(200, json.dumps(json.loads(body)["prediction"]).encode())


# ---------------------------------------------------------------- the traffic

class Soak:
    def __init__(self, url: str, pid: int | None, seconds: float, warmup_s: float, json_clients: int,
                 json_rate: float):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port or 80
        self.pid, self.seconds, self.warmup_s = pid, seconds, warmup_s
        self.json_clients, self.json_rate = json_clients, json_rate
        self.kinds = {k.name: k for k in (
            Kind("json", "200"), Kind("upload", "200"), Kind("raw", "200"), Kind("sample", "200"),
            Kind("bad", "its 4xx"), Kind("slow", "200"), Kind("aborted", "none"))}
        self.rss: list[tuple[float, float]] = []  # (seconds since start, MB)
        self.bodies = [json.loads(b) for b in fetch_bodies(url)]

    def measuring(self) -> bool:
        return time.monotonic() - self.start >= self.warmup_s

    async def one(self, kind: str, client: Client, raw: bytes, check, pieces: int = 1, gap_s: float = 0.0):
        t = time.perf_counter()
        try:
            status, body = await client.exchange(raw, pieces, gap_s)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            self.kinds[kind].record(None, False, 0.0, False, type(exc).__name__)
            return
        ms = (time.perf_counter() - t) * 1e3
        self.kinds[kind].record(status, status < 500 and check(status, body), ms, self.measuring())

    async def paced(self, rate: float, action, seed: int):
        """Call `action()` `rate` times a second (random phase) until the end."""
        rng = random.Random(seed)
        period = 1.0 / rate
        next_at = time.monotonic() + rng.random() * period
        while next_at < self.stop_at:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += period
            await action(rng)

    # each kind: a coroutine that runs until the end
    async def json_client(self, i: int):
        c = Client(self.host, self.port)
        raws = [request("POST", "/api/predict", self.host, self.port, json.dumps(b).encode(), "application/json")
                for b in self.bodies]
        await self.paced(self.json_rate, lambda rng: self.one("json", c, rng.choice(raws), good_prediction), i)
        c.close()

    async def uploads(self):
        c_form, c_raw, c_sample = (Client(self.host, self.port) for _ in range(3))
        pngs = [image_bytes(b["pixels"], "PNG") for b in self.bodies]
        jpegs = [image_bytes(b["pixels"], "JPEG") for b in self.bodies]

        async def form(rng):
            body, ctype = multipart(rng.choice(pngs))
            await self.one("upload", c_form, request("POST", "/api/predict", self.host, self.port, body, ctype),
                           good_prediction)

        async def raw(rng):
            fmt, data = rng.choice([("image/png", pngs), ("image/jpeg", jpegs)])
            await self.one("raw", c_raw, request("POST", "/api/predict", self.host, self.port, rng.choice(data), fmt),
                           good_prediction)

        async def sample(rng):
            await self.one("sample", c_sample, request("GET", "/api/sample", self.host, self.port), good_sample)
        await asyncio.gather(self.paced(3, form, 101), self.paced(3, raw, 102), self.paced(1, sample, 103))

    def bad_requests(self) -> list[tuple[bytes, int]]:
        h, p = self.host, self.port
        post = lambda body, ctype: request("POST", "/api/predict", h, p, body, ctype)  # noqa: E731
        rows27 = json.dumps({"pixels": [[0.5] * 28] * 27}).encode()
        return [
            (post(b"hello, world", "image/png"), 422),
            (post(b"\x89PNG\r\n\x1a\n" + bytes(100), "image/png"), 422),
            (post(b'{"pixels": [[0.5, ', "application/json"), 400),
            (post(rows27, "application/json"), 422),
            (post(b'{"pixels": [[NaN]]}', "application/json"), 422),
            (post(b"7", "text/plain"), 415),
            (post(b"--x\r\n", "multipart/form-data"), 400),
            (request("GET", "/api/health", h, p, extra=f"Cookie: a={'b' * 40_000}\r\n"), 431),
            (request("GET", "/api/nothing", h, p), 404),
            (request("GET", "/api/predict", h, p), 405),
            (request("GET", "/api/sample?index=99999", h, p), 422),
        ]

    async def bad(self):
        c = Client(self.host, self.port)
        cases = self.bad_requests()

        async def one_bad(rng):
            raw, want = rng.choice(cases)
            await self.one("bad", c, raw, lambda s, b: s == want and "error" in json.loads(b))
        await self.paced(4, one_bad, 104)
        c.close()

    async def slow(self):
        png = image_bytes(self.bodies[0]["pixels"], "PNG")
        body, ctype = multipart(png)
        raw = request("POST", "/api/predict", self.host, self.port, body, ctype)
        while time.monotonic() < self.stop_at:  # one after another, each taking about a second to send
            c = Client(self.host, self.port)
            await self.one("slow", c, raw, good_prediction, pieces=10, gap_s=0.1)
            c.close()

    async def aborted(self):
        async def one_abort(rng):
            kind = self.kinds["aborted"]
            try:
                _, writer = await asyncio.open_connection(self.host, self.port)
                head = (f"POST /api/predict HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                        "Content-Type: image/png\r\nContent-Length: 200000\r\n\r\n").encode()
                writer.write(head + os.urandom(rng.randrange(1, 20_000)))  # then hang up
                await writer.drain()
                writer.close()
                kind.record(None, True, 0.0, False)
                kind.statuses["sent"] += 1
            except OSError as exc:
                kind.record(None, False, 0.0, False, type(exc).__name__)
        await self.paced(2, one_abort, 105)

    async def sample_rss(self):
        while time.monotonic() < self.stop_at:
            mb = rss_mb(self.pid)
            if mb is not None:
                self.rss.append((time.monotonic() - self.start, mb))
            await asyncio.sleep(1.0)

    async def run(self):
        self.start = time.monotonic()
        self.stop_at = self.start + self.seconds
        await asyncio.gather(*(self.json_client(i) for i in range(self.json_clients)), self.uploads(), self.bad(),
                             self.slow(), self.aborted(), self.sample_rss())
        self.end_rss = rss_mb(self.pid)


# ---------------------------------------------------------------- report

def rss_at(samples: list[tuple[float, float]], t: float) -> float | None:
    """The RSS sample nearest after second `t` (the warm-up's end)."""
    after = [mb for s, mb in samples if s >= t]
    return after[0] if after else None


def goals(soak: Soak) -> list[dict]:
    five = sum(n for k in soak.kinds.values() for s, n in k.statuses.items() if isinstance(s, int) and s >= 500)
    p99 = soak.kinds["json"].row()["p99 ms"]
    warm, end = rss_at(soak.rss, soak.warmup_s), soak.end_rss
    change = (end - warm) / warm if warm and end else None
    return [
        {"goal": "server RSS, after warm-up -> end", "value": f"{warm:.0f} -> {end:.0f} MB ({change:+.1%})"
         if change is not None else "- (no server pid)", "target": f"within +-{RSS_TOLERANCE:.0%}",
         "met": "met" if change is not None and abs(change) <= RSS_TOLERANCE else "NOT MET"},
        {"goal": "5xx answers", "value": str(five), "target": "0", "met": "met" if five == 0 else "NOT MET"},
        {"goal": "JSON prediction p99", "value": f"{p99:.1f} ms" if p99 is not None else "-",
         "target": f"< {P99_GOAL_MS:.0f} ms", "met": "met" if p99 is not None and p99 < P99_GOAL_MS else "NOT MET"},
    ]


def format_table(rows: list[dict]) -> str:
    cols = list(rows[0])
    cells = [[_fmt(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    return "\n".join([line(cols), line(["-" * w for w in widths])] + [line(row) for row in cells])


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.1f}"
    return str(v)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="the trained run to serve (without --url: `digitlab serve RUN`)")
    p.add_argument("--url", help="a server already running on 127.0.0.1 (default: start one on a free port)")
    p.add_argument("--server-pid", type=int, help="with --url: the server's pid, to follow its memory")
    p.add_argument("--minutes", type=float, default=10.0, help="how long (default: 10)")
    p.add_argument("--warmup", type=float, default=None,
                   help="seconds of the same traffic before RSS and latency count (default: 15%% of it, at most 60)")
    p.add_argument("--json-clients", type=int, default=4, help="JSON prediction clients (default: 4)")
    p.add_argument("--json-rate", type=float, default=10.0, help="requests per second per JSON client (default: 10)")
    p.add_argument("--json", dest="json_out", help="also write the tables to this JSON file")
    args = p.parse_args(argv)
    if not 0 < args.minutes <= MAX_MINUTES:
        p.error(f"--minutes must be in (0, {MAX_MINUTES:.0f}]")
    if not (1 <= args.json_clients <= 100 and 0 < args.json_rate <= 200):
        p.error("--json-clients must be 1..100 and --json-rate in (0, 200]")
    seconds = args.minutes * 60
    warmup = args.warmup if args.warmup is not None else min(60.0, 0.15 * seconds)
    if not 0 <= warmup < seconds:
        p.error("--warmup must be shorter than the run")

    proc = None
    try:
        if args.url:
            url, pid = require_loopback(args.url), args.server_pid
        else:
            log = Path(os.environ.get("TMPDIR", "/tmp")) / f"digitlab-soak-server-{os.getpid()}.log"
            print(f"starting `digitlab serve {args.run}` (log: {log})", flush=True)
            proc, url = start_server(args.run, None, log)
            pid = proc.pid
        print(f"target {url}; {args.minutes:g} min of mixed traffic ({warmup:.0f} s warm-up); {os.cpu_count()} CPUs "
              f"shared by server and clients; load average {os.getloadavg()[0]:.2f}", flush=True)
        soak = Soak(url, pid, seconds, warmup, args.json_clients, args.json_rate)
        _event_loop_runner()(soak.run())
    finally:
        if proc is not None:
            stop_server(proc)
    traffic = [k.row() for k in soak.kinds.values()]
    verdict = goals(soak)
    print(format_table(traffic))
    for k in soak.kinds.values():
        if k.failures:
            print(f"{k.name}: transport errors {dict(k.failures)}")
    print()
    print(format_table(verdict))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"traffic": traffic, "goals": verdict, "rss": soak.rss}, indent=2))
    return 0 if all(g["met"] == "met" for g in verdict) else 1


if __name__ == "__main__":
    sys.exit(main())
