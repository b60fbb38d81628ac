"""Load test for `digitlab serve`: N clients for T seconds, paced or as fast as they can, loopback only.

    python bench/load.py --run runs/seed-ann                          # 50 clients x 10/s, then 16 flat out
    python bench/load.py --run runs/seed-ann --scenario 50x10 --duration 20
    python bench/load.py --run runs/seed-ann --scenario 8xmax --duration 10 --max-batch 1
    python bench/load.py --run runs/seed-ann --url http://127.0.0.1:8000 --server-pid 1234
    python bench/load.py --run runs/seed-ann --scenario 50x10 --feedback-rate 10 --duration 30   # corrections too

A scenario is CLIENTSxRATE: each client sends RATE one-digit JSON requests per second on a fixed
schedule (random phase, so clients don't fire together), or, with `max`, sends its next request as
soon as the last one is answered. Without --url the script starts `digitlab serve RUN` itself (RUN,
given here as --run, is positional there) on a free 127.0.0.1 port and stops it at the end. Every
request is one real MNIST test digit, fetched from the server's /api/sample, posted as {"pixels": 28x28}.

The load generator is Python too and shares the machine's cores with the server, so it is part of
what is measured: the table shows both processes' CPU use, and `other CPU %` what the rest of the
machine used meanwhile (other people's work, and time the hypervisor took: with it high, latency says
more about them than about the server). Latency is measured by the client, from sending a request to
reading the whole response; `server ms` is the server's own time_ms.
Bounded: at most MAX_CLIENTS clients, MAX_DURATION_S seconds per scenario, MAX_REQUESTS requests.

The goal, for paced scenarios (a fixed request rate, as real users send; the README's is 50x10 = 500 req/s):
client-measured p50 <= 5 ms and p99 <= 20 ms. Each paced scenario's row says whether it was met, and a line
after the table says it in words; --require-goal makes a miss the exit status 3. Flat-out scenarios measure
throughput, where latency is queueing by design: no goal.

--feedback-rate R runs every scenario twice, corrections off and on (in alternating slices of 5 s or more,
up to 4 of each, so that other work on the machine weighs on both rows alike): while the clients predict,
FEEDBACK_SENDERS more connections POST /api/feedback, R per second between them (each a test digit and
its true label). Each correction carries a nonce in its pixels (row 0, values 0..3: no ink worth the
name), so that at the end every row of the feedback database is matched to the post it came from: the
row says how many were acknowledged (200), how many of those are missing from the database (lost) and
how many posts were stored more than once (duplicated). Without --url the server gets a temporary
database of its own; with --url, --feedback-db names the server's, and only this run's rows are counted.
The issue-13 goal: none lost, none stored twice, no failed post ("database is locked" or else);
a miss is exit status 1, like a failed request.
"""
from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np

MAX_CLIENTS = 200
MAX_DURATION_S = 120.0
MAX_REQUESTS = 200_000  # per scenario, whatever the rate
REQUEST_TIMEOUT_S = 10.0
STARTUP_TIMEOUT_S = 120.0
WARMUP_REQUESTS = 200
DIGITS = 10  # distinct test digits cycled through
GOAL_P50_MS = 5.0  # paced scenarios: client-measured latency goals
GOAL_P99_MS = 20.0
FEEDBACK_SENDERS = 10  # connections posting corrections, each paced at rate / FEEDBACK_SENDERS (random phase)
FEEDBACK_SLICES = 4  # corrections off and on alternate, in at most this many slices of each
FEEDBACK_SLICE_S = 5.0  # seconds, at least, per slice
NONCE_PIXELS = 24  # row 0's first pixels carry a correction's nonce, 2 bits each: 16-bit run token, 32-bit count


@dataclass
class FeedbackLog:
    """The corrections posted during one scenario, and what the database holds of them afterwards."""
    rate: float  # per second, all senders together
    token: int  # this scenario's, in every nonce: tells its rows from anyone else's
    sent: int = 0
    acked: dict = field(default_factory=dict)  # nonce -> the row id the server answered
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    error_kinds: dict = field(default_factory=dict)
    rows: int | None = None  # rows in the database that carry this scenario's token
    lost: int | None = None  # acknowledged, but no row (or another id) in the database
    duplicated: int | None = None  # rows beyond the first for one nonce
    unacknowledged: int = 0  # stored, though the client got no 200 (a timeout): not lost, reported

    def ok(self) -> bool:
        """The goal: every post acknowledged and stored once, none lost, no error reached a client."""
        return self.errors == 0 and self.lost == 0 and self.duplicated == 0 and self.rows == len(self.acked)

    def line(self) -> str:
        verdict = "met" if self.ok() else "NOT met"
        return (f"corrections: {self.sent} posted, {len(self.acked)} acknowledged, {self.rows} rows in the database; "
                f"{self.lost} lost, {self.duplicated} stored twice, {self.unacknowledged} stored unacknowledged, "
                f"{self.errors} failed{f' {self.error_kinds}' if self.errors else ''}: "
                f"goal (none lost or doubled, no errors) {verdict}")


@dataclass
class Result:
    scenario: str
    paced: bool = False  # a fixed request rate (the latency goal applies), not as fast as possible
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    server_ms: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    errors: int = 0
    error_kinds: dict = field(default_factory=dict)
    late: int = 0  # paced sends that started more than 5 ms after their slot
    server_cpu_s: float | None = None
    client_cpu_s: float = 0.0
    other_cpu_s: float | None = None  # the machine's busy time besides server and clients: competing work
    rss_before_mb: float | None = None
    rss_after_mb: float | None = None
    feedback: FeedbackLog | None = None  # corrections posted alongside (--feedback-rate)

    def row(self) -> dict:
        lat = np.asarray(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        ok = len(self.latencies_ms)
        fb = self.feedback
        fb_lat = np.asarray(fb.latencies_ms) if fb and fb.latencies_ms else np.full(1, np.nan)
        return {
            "scenario": self.scenario, "requests": ok + self.errors, "errors": self.errors,
            "req/s": ok / self.seconds if self.seconds else 0.0,
            "p50 ms": float(np.percentile(lat, 50)), "p90 ms": float(np.percentile(lat, 90)),
            "p99 ms": float(np.percentile(lat, 99)), "max ms": float(lat.max()),
            "server ms p50": float(np.percentile(self.server_ms, 50)) if self.server_ms else float("nan"),
            "server ms p99": float(np.percentile(self.server_ms, 99)) if self.server_ms else float("nan"),
            "mean batch": float(np.mean(self.batch_sizes)) if self.batch_sizes else float("nan"),
            "late": self.late,
            "server CPU %": 100 * self.server_cpu_s / self.seconds if self.server_cpu_s is not None else float("nan"),
            "client CPU %": 100 * self.client_cpu_s / self.seconds if self.seconds else 0.0,
            "other CPU %": 100 * self.other_cpu_s / self.seconds if self.other_cpu_s is not None else float("nan"),
            "RSS MB before": self.rss_before_mb, "RSS MB after": self.rss_after_mb,
            "goal": ("met" if self.goal_met() else "NOT met") if self.paced else "-",
            "corrections/s": (len(fb.acked) / self.seconds if self.seconds else 0.0) if fb else None,
            "corr. acked": len(fb.acked) if fb else None, "corr. rows": fb.rows if fb else None,
            "lost": fb.lost if fb else None, "doubled": fb.duplicated if fb else None,
            "corr. errors": fb.errors if fb else None,
            "corr. p50 ms": float(np.percentile(fb_lat, 50)) if fb else None,
            "corr. p99 ms": float(np.percentile(fb_lat, 99)) if fb else None,
        }

    def goal_met(self) -> bool:
        """p50 <= GOAL_P50_MS and p99 <= GOAL_P99_MS, with every request answered."""
        if not self.latencies_ms or self.errors:
            return False
        p50, p99 = np.percentile(self.latencies_ms, [50, 99])
        return bool(p50 <= GOAL_P50_MS and p99 <= GOAL_P99_MS)

    def goal_line(self) -> str:
        p50, p99 = np.percentile(self.latencies_ms or [float("nan")], [50, 99])
        verdict = "met" if self.goal_met() else "NOT met"
        return (f"{self.scenario}: goal p50 <= {GOAL_P50_MS:g} ms and p99 <= {GOAL_P99_MS:g} ms {verdict} "
                f"(p50 {p50:.2f} ms, p99 {p99:.1f} ms, {self.errors} errors)")


def parse_scenario(text: str) -> tuple[int, float]:
    """"50x10" -> (50 clients, 10 per second each); "16xmax" -> (16, 0 = as fast as they can)."""
    try:
        clients, rate = text.lower().split("x", 1)
        clients, rate = int(clients), (0.0 if rate == "max" else float(rate))
    except ValueError:
        raise argparse.ArgumentTypeError(f"scenario must look like 50x10 or 16xmax, got {text!r}") from None
    if not 1 <= clients <= MAX_CLIENTS:
        raise argparse.ArgumentTypeError(f"clients must be 1..{MAX_CLIENTS}, got {clients}")
    if rate < 0 or rate > 1000:
        raise argparse.ArgumentTypeError(f"rate must be 0 < rate <= 1000 per client (or max), got {rate}")
    return clients, rate


def require_loopback(url: str) -> str:
    host = urlsplit(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise SystemExit(f"load.py only targets this machine: {url} is not a loopback address (use 127.0.0.1)")
    return url.rstrip("/")


# ---------------------------------------------------------------- the server under test

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(run: str, max_batch: int | None, log_path: Path,
                 feedback_db: Path | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "digitlab", "serve", run, "--host", "127.0.0.1", "--port", str(port)]
    if max_batch:
        cmd += ["--max-batch", str(max_batch)]
    if feedback_db:
        cmd += ["--feedback-db", str(feedback_db)]
    log = log_path.open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with code {proc.returncode}; see {log_path}")
        try:
            if httpx.get(url + "/api/health", timeout=1.0).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_server(proc)
    raise SystemExit(f"the server did not answer within {STARTUP_TIMEOUT_S:.0f} s; see {log_path}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()  # SIGTERM: uvicorn shuts down gracefully
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def machine_busy_seconds() -> float | None:
    """CPU seconds all cores have spent busy since boot (/proc/stat: everything but idle and iowait)."""
    try:
        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # guest time is in user already


def rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_seconds(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    except (OSError, IndexError, ValueError):
        return None


# ---------------------------------------------------------------- the clients

class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time.

    Hand-written because the load generator shares the CPUs with the server: httpx.AsyncClient
    spent about 2.7 ms of CPU per request here (86% of a core at 320 req/s, short of the 500 asked
    for); this costs about 0.1 ms (6% of a core at 500 req/s, with uvloop).
    It understands only what uvicorn sends back to these requests: Content-Length bodies.
    """

    def __init__(self):
        self.transport = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future | None = None
        self.closed = False

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        _, conn = await asyncio.get_running_loop().create_connection(cls, host, port)
        return conn

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None or self.waiter.done():
            return
        head = bytes(self.buffer[:end]).lower()
        at = head.find(b"content-length:")
        if at < 0:
            self.waiter.set_exception(RuntimeError("response without Content-Length"))
            return
        length = int(head[at + 15:head.find(b"\r\n", at) if head.find(b"\r\n", at) > 0 else None])
        total = end + 4 + length
        if len(self.buffer) >= total:
            status, body = int(head[9:12]), bytes(self.buffer[end + 4:total])
            del self.buffer[:total]
            self.waiter.set_result((status, body))

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection closed ({exc or 'by the server'})"))

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        if self.closed:
            raise ConnectionError("connection closed")
        loop = asyncio.get_running_loop()
        self.waiter = waiter = loop.create_future()
        timer = loop.call_later(REQUEST_TIMEOUT_S, lambda: waiter.done() or waiter.set_exception(TimeoutError()))
        self.transport.write(raw)
        try:
            return await waiter
        finally:
            timer.cancel()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def predict_request(host: str, port: int, body: bytes, path: str = "/api/predict") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def fetch_samples(url: str) -> list[tuple[list, int]]:
    """DIGITS test digits from the server: (28x28 pixels as lists of ints, true digit)."""
    samples = []
    with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_S) as client:
        for i in range(DIGITS):
            r = client.get("/api/sample", params={"index": i})
            r.raise_for_status()
            samples.append((r.json()["pixels"], r.json()["true_digit"]))
    return samples


def fetch_bodies(url: str) -> list[bytes]:
    return [json.dumps({"pixels": pixels}).encode() for pixels, _ in fetch_samples(url)]


# ---------------------------------------------------------------- corrections (--feedback-rate)

def with_nonce(pixels: list, nonce: int) -> list:
    """The digit with `nonce` written into row 0, 2 bits a pixel (values 0..3 of 255)."""
    return [[(nonce >> 2 * i) & 3 for i in range(NONCE_PIXELS)] + list(pixels[0][NONCE_PIXELS:])] + list(pixels[1:])


def nonce_of(pixels: list) -> int:
    return sum((int(v) & 3) << 2 * i for i, v in enumerate(pixels[0][:NONCE_PIXELS]))


def correction_body(samples, nonce: int) -> bytes:
    pixels, label = samples[nonce % len(samples)]
    return json.dumps({"label": label, "pixels": with_nonce(pixels, nonce)}).encode()


async def one_correction(conn: Connection, raw: bytes, nonce: int, log: FeedbackLog) -> Connection:
    """POST one correction and record the row id it was acknowledged with."""
    start = time.perf_counter()
    try:
        status, body = await conn.request(raw)
        elapsed = (time.perf_counter() - start) * 1e3
        if status != 200:
            detail = body[:200].decode(errors="replace")
            raise RuntimeError(f"HTTP {status} {detail}")
        row_id = int(json.loads(body)["id"])
    except Exception as exc:  # noqa: BLE001 - every failure is counted and reported by kind
        log.errors += 1
        kind = str(exc) if isinstance(exc, RuntimeError) else type(exc).__name__
        log.error_kinds[kind] = log.error_kinds.get(kind, 0) + 1
        conn.close()
        host, port = conn.transport.get_extra_info("peername")[:2] if conn.transport else ("127.0.0.1", 0)
        return await Connection.open(host, port)
    log.acked[nonce] = row_id
    log.latencies_ms.append(elapsed)
    return conn


async def feedback_loop(conn: Connection, host: str, port: int, samples, log: FeedbackLog, rate: float,
                        stop_at: float, seed: int) -> None:
    """One sender: corrections at `rate` per second, each with the next nonce of the scenario's token."""
    period = 1.0 / rate
    next_at = time.perf_counter() + random.Random(seed).random() * period
    while next_at < stop_at and log.sent < MAX_REQUESTS:
        delay = next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        next_at += period
        nonce = log.token << 32 | log.sent
        log.sent += 1
        raw = predict_request(host, port, correction_body(samples, nonce), "/api/feedback")
        conn = await one_correction(conn, raw, nonce, log)
    conn.close()


def audit_feedback(db: Path, log: FeedbackLog) -> None:
    """Match the database's rows to the posts: lost, duplicated and unacknowledged rows of this token."""
    from digitlab.feedback import FeedbackStore  # the store's own reader, not the bench's idea of its schema

    stored: dict[int, list[int]] = {}  # nonce -> row ids
    with FeedbackStore.open(db) as store:
        for c in store.corrections():
            if c.original_kind != "pixels" or c.original is None:
                continue
            nonce = nonce_of(json.loads(c.original))
            if nonce >> 32 == log.token:
                stored.setdefault(nonce, []).append(c.id)
    log.rows = sum(len(ids) for ids in stored.values())
    log.duplicated = sum(len(ids) - 1 for ids in stored.values())
    log.lost = sum(1 for nonce, row_id in log.acked.items() if row_id not in stored.get(nonce, ()))
    log.unacknowledged = sum(1 for nonce in stored if nonce not in log.acked)


async def one_request(conn: Connection, raw: bytes, result: Result) -> Connection:
    """Send one request and record it; returns the connection to use next (a new one after a failure)."""
    start = time.perf_counter()
    try:
        status, body = await conn.request(raw)
        elapsed = (time.perf_counter() - start) * 1e3
        if status != 200:
            raise RuntimeError(f"HTTP {status}")
        doc = json.loads(body)
        if not 0 <= doc["digit"] <= 9:
            raise RuntimeError("bad digit in response")
    except Exception as exc:  # noqa: BLE001 - every failure is counted and reported by kind
        result.errors += 1
        kind = str(exc) if isinstance(exc, RuntimeError) else type(exc).__name__
        result.error_kinds[kind] = result.error_kinds.get(kind, 0) + 1
        conn.close()  # a failed exchange leaves the connection in an unknown state
        host, port = conn.transport.get_extra_info("peername")[:2] if conn.transport else ("127.0.0.1", 0)
        return await Connection.open(host, port)
    result.latencies_ms.append(elapsed)
    result.server_ms.append(doc["time_ms"])
    result.batch_sizes.append(doc["batch_size"])
    return conn


async def client_loop(conn, raws, rate: float, stop_at: float, budget: list[int], result: Result, seed: int):
    rng = random.Random(seed)
    k = rng.randrange(len(raws))
    period = 1.0 / rate if rate else 0.0
    next_at = time.perf_counter() + rng.random() * period  # random phase
    while budget[0] > 0:
        if rate:
            delay = next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.005:
                result.late += 1
            if next_at >= stop_at:
                break
            next_at += period
        elif time.perf_counter() >= stop_at:
            break
        budget[0] -= 1
        k = (k + 1) % len(raws)
        conn = await one_request(conn, raws[k], result)
    conn.close()


async def run_scenario(url: str, bodies, clients: int, rate: float, duration: float, pid: int | None,
                       feedback: tuple[float, list] | None = None, into: Result | None = None) -> Result:
    """One scenario; with feedback = (corrections per second, samples), corrections are posted alongside.
    With `into`, a further slice of that scenario: its requests, seconds and CPU are added to it."""
    name = f"{clients} clients x {'max' if not rate else f'{rate:g}/s'}"
    result = into or Result(name, paced=bool(rate))
    host, port = urlsplit(url).hostname, urlsplit(url).port or 80
    raws = [predict_request(host, port, b) for b in bodies]
    # Every connection is open before the clock starts: the table measures requests, not handshakes.
    conns = await asyncio.gather(*(Connection.open(host, port) for _ in range(clients)))
    senders = []
    if feedback is not None:
        fb_rate, samples = feedback
        if result.feedback is None:
            result.scenario += f" + {fb_rate:g} corrections/s"
            result.feedback = FeedbackLog(fb_rate, token=random.randrange(1, 1 << 16))
        senders = await asyncio.gather(*(Connection.open(host, port) for _ in range(FEEDBACK_SENDERS)))
    if result.rss_before_mb is None:
        result.rss_before_mb = rss_mb(pid)
    cpu0, mine0, busy0 = cpu_seconds(pid), time.process_time(), machine_busy_seconds()
    start = time.perf_counter()
    budget = [MAX_REQUESTS]
    await asyncio.gather(*(client_loop(c, raws, rate, start + duration, budget, result, seed=i)
                           for i, c in enumerate(conns)),
                         *(feedback_loop(c, host, port, samples, result.feedback, fb_rate / len(senders),
                                         start + duration, seed=10_000 + i) for i, c in enumerate(senders)))
    result.seconds += time.perf_counter() - start
    cpu1, mine, busy1 = cpu_seconds(pid), time.process_time() - mine0, machine_busy_seconds()
    server = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None
    result.server_cpu_s = None if server is None else (result.server_cpu_s or 0.0) + server
    result.client_cpu_s += mine
    if None not in (busy0, busy1, server):
        result.other_cpu_s = (result.other_cpu_s or 0.0) + max(0.0, busy1 - busy0 - server - mine)
    result.rss_after_mb = rss_mb(pid)
    return result


async def run_all(url: str, scenarios, duration: float, pid: int | None, feedback_rate: float | None = None,
                  feedback_db: Path | None = None) -> list[Result]:
    """Each scenario in turn; with feedback_rate, each twice: corrections off and on, in alternating slices of
    FEEDBACK_SLICE_S or more (so that other work on the machine weighs on both alike), audited in feedback_db."""
    samples = fetch_samples(url)
    bodies = [json.dumps({"pixels": pixels}).encode() for pixels, _ in samples]
    host, port = urlsplit(url).hostname, urlsplit(url).port or 80
    warm, conn = Result("warm-up"), await Connection.open(host, port)
    for i in range(WARMUP_REQUESTS):
        conn = await one_request(conn, predict_request(host, port, bodies[i % len(bodies)]), warm)
    conn.close()
    if warm.errors:
        raise SystemExit(f"warm-up requests failed: {warm.error_kinds}")
    results = []
    for clients, rate in scenarios:
        if not feedback_rate:
            results.append(await run_scenario(url, bodies, clients, rate, duration, pid))
            continue
        off = on = None
        slices = max(1, min(FEEDBACK_SLICES, int(duration // FEEDBACK_SLICE_S)))
        for _ in range(slices):
            off = await run_scenario(url, bodies, clients, rate, duration / slices, pid, into=off)
            on = await run_scenario(url, bodies, clients, rate, duration / slices, pid, (feedback_rate, samples), on)
        audit_feedback(feedback_db, on.feedback)
        results += [off, on]
    return results


# ---------------------------------------------------------------- report

def format_table(rows: list[dict]) -> str:
    cols = list(rows[0])
    cells = [[_fmt(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = lambda vals: "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(vals, widths)))  # noqa: E731
    return "\n".join([line(cols), line(["-" * w for w in widths])] + [line(row) for row in cells])


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.0f}" if abs(v) >= 100 else f"{v:.2f}"
    return str(v)


def _event_loop_runner():
    try:  # uvloop halves the client's own CPU use; asyncio's loop also works
        import uvloop
        return uvloop.run
    except ImportError:
        return asyncio.run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True,
                   help="the trained run to serve (without --url: started as `digitlab serve RUN`)")
    p.add_argument("--url", help="a server already running on 127.0.0.1 (default: start one on a free port)")
    p.add_argument("--server-pid", type=int, help="with --url: the server's pid, to report its memory and CPU")
    p.add_argument("--scenario", action="append", type=parse_scenario,
                   help="CLIENTSxRATE, repeatable (default: 50x10 then 16xmax)")
    p.add_argument("--duration", type=float, default=20.0, help=f"seconds per scenario (at most {MAX_DURATION_S:.0f})")
    p.add_argument("--max-batch", dest="max_batch", type=int, help="passed to `digitlab serve` (default: its own)")
    p.add_argument("--feedback-rate", dest="feedback_rate", type=float,
                   help="run each scenario twice, the second time with this many corrections per second "
                        "POSTed to /api/feedback, and check that none is lost or stored twice")
    p.add_argument("--feedback-db", dest="feedback_db", type=Path,
                   help="with --url and --feedback-rate: the server's feedback database, to audit "
                        "(without --url the server gets a temporary one)")
    p.add_argument("--json", dest="json_out", help="also write the rows to this JSON file")
    p.add_argument("--require-goal", action="store_true",
                   help=f"exit with status 3 when a paced scenario misses p50 <= {GOAL_P50_MS:g} ms, "
                        f"p99 <= {GOAL_P99_MS:g} ms")
    args = p.parse_args(argv)
    if not 0 < args.duration <= MAX_DURATION_S:
        p.error(f"--duration must be in (0, {MAX_DURATION_S:.0f}]")
    scenarios = args.scenario or [parse_scenario("50x10"), parse_scenario("16xmax")]
    if args.feedback_rate is not None and not 0 < args.feedback_rate <= 1000:
        p.error("--feedback-rate must be in (0, 1000] corrections per second")
    if args.feedback_rate and args.url and not args.feedback_db:
        p.error("--feedback-rate with --url needs --feedback-db, the server's database, to count the rows in")
    if not Path(args.run).is_dir():
        p.error(f"{args.run} is not a run directory (train one with `digitlab train`)")

    proc = None
    scratch = tempfile.TemporaryDirectory(prefix="digitlab-load-")  # the server's feedback database, unless --url
    try:
        feedback_db = args.feedback_db
        if args.url:
            url, pid = require_loopback(args.url), args.server_pid
        else:
            log = Path(os.environ.get("TMPDIR", "/tmp")) / f"digitlab-load-server-{os.getpid()}.log"
            print(f"starting `digitlab serve {args.run}` (log: {log})", flush=True)
            if args.feedback_rate:
                feedback_db = Path(scratch.name) / "feedback.sqlite"
            proc, url = start_server(args.run, args.max_batch, log, feedback_db)
            pid = proc.pid
        modes = 2 if args.feedback_rate else 1
        print(f"target {url}; {len(scenarios) * modes} scenario(s) of {args.duration:g} s; {os.cpu_count()} CPUs "
              f"shared by server and clients; load average {os.getloadavg()[0]:.2f} (other work competes)", flush=True)
        results = _event_loop_runner()(run_all(url, scenarios, args.duration, pid, args.feedback_rate, feedback_db))
    finally:
        if proc is not None:
            stop_server(proc)
        scratch.cleanup()
    rows = [r.row() for r in results]
    print(format_table(rows))
    for r in results:
        if r.paced:
            print(r.goal_line())
        if r.errors:
            print(f"{r.scenario}: errors {r.error_kinds}")
        if r.feedback:
            print(f"{r.scenario}: {r.feedback.line()}")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=2))
    if any(r.errors or (r.feedback and not r.feedback.ok()) for r in results):
        return 1
    return 3 if args.require_goal and not all(r.goal_met() for r in results if r.paced) else 0


if __name__ == "__main__":
    sys.exit(main())
