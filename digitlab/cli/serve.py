"""`digitlab serve RUN`: the drawing page and the HTTP API for a trained run (digitlab.serving).

    digitlab serve runs/20261126-071500-seed-ann-s0              # http://127.0.0.1:8000
    digitlab serve runs/... --port 8080 --host 0.0.0.0           # reachable from other machines
    digitlab serve runs/... --allowed-hosts digits.example.org    # the Host names it answers (loopback: its own)
"""
from __future__ import annotations

import errno
import ipaddress
import socket

from digitlab.cli import fail, run_family


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve a run as a web page (draw a digit) and an HTTP API")
    p.add_argument("run", help="a run directory")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    p.add_argument("--max-batch", dest="max_batch", type=int, default=None,
                   help="most requests that share one forward pass (default: 64; 1 turns micro-batching off)")
    p.add_argument("--access-log", dest="access_log", action="store_true",
                   help="log every request (off by default: a log line per request costs CPU under load)")
    p.add_argument("--allowed-hosts", dest="allowed_hosts", default=None,
                   help="comma-separated Host header names to answer, '*' for any (default: localhost, 127.0.0.1 "
                        "and [::1] on a loopback address, so other sites' pages can't reach it; any elsewhere)")
    p.add_argument("--max-connections", dest="max_connections", type=int, default=None,
                   help="open connections served at most; requests beyond get 503 (default: 512)")
    p.add_argument("--feedback-db", dest="feedback_db", default=None,
                   help="SQLite file for the corrections sent to /api/feedback (default: the user's data folder, "
                        "$DIGITLAB_DATA_HOME or $XDG_DATA_HOME/digitlab/feedback.sqlite)")
    p.add_argument("--admin-token", dest="admin_token", default=None,
                   help="allow POST /api/admin/reload {\"run\": PATH} (switch runs while serving) to whoever sends "
                        "'Authorization: Bearer TOKEN' (default: clients on this machine only)")
    p.set_defaults(func=cmd_serve, family=lambda args: run_family(args.run))


def cmd_serve(args) -> int:
    from digitlab.runs import open_run
    run = open_run(args.run)
    if not 0 <= args.port <= 65535:
        return fail(f"--port must be between 0 and 65535, got {args.port}")
    from digitlab.serving import LOOPBACK_HOSTS, MAX_BATCH, Limits, create_app, log_config, server_config
    max_batch = MAX_BATCH if args.max_batch is None else args.max_batch
    if max_batch < 1:
        return fail(f"--max-batch must be at least 1, got {max_batch}")
    limits = Limits()
    if args.max_connections is not None:
        if args.max_connections < 1:
            return fail(f"--max-connections must be at least 1, got {args.max_connections}")
        limits = Limits(max_connections=args.max_connections)
    if args.allowed_hosts is None:
        allowed_hosts = list(LOOPBACK_HOSTS) if _is_loopback(args.host) else ["*"]
    else:
        allowed_hosts = [h.strip().lower() for h in args.allowed_hosts.split(",") if h.strip()]
        bad = [h for h in allowed_hosts if "*" in h[1:] or (h.startswith("*") and h != "*" and not h.startswith("*."))]
        if not allowed_hosts or bad:
            return fail(f"--allowed-hosts takes host names, '*.example.org' or '*', comma-separated; "
                        f"got {args.allowed_hosts!r}")

    # Bind first, so that a port in use is reported in a second, not after the model has loaded.
    try:
        sock = _listen(args.host, args.port)
    except OSError as exc:
        hint = f" (another server on that port? try --port {args.port + 1})" if exc.errno == errno.EADDRINUSE else ""
        return fail(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}{hint}", 1)

    import uvicorn
    try:  # the model is loaded now: one that can't load (or answers NaN) is an error message, not a traceback
        app = create_app(run.path, max_batch=max_batch, limits=limits, allowed_hosts=allowed_hosts, preload=True)
        app.state.admin_token = args.admin_token
        if args.feedback_db:  # a bad path fails now, not at the first correction; the default opens on first use
            from digitlab.feedback import FeedbackStore
            app.state.feedback_store = FeedbackStore.open(args.feedback_db)
    except BaseException:
        sock.close()
        raise
    if not _is_loopback(args.host):
        print(f"warning: listening on {args.host}: anyone who can reach this machine can use the server")
    if "*" not in allowed_hosts:
        print(f"answering requests for the hosts {', '.join(allowed_hosts)} (--allowed-hosts to change)")
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"serving {run.path} at http://{shown}:{port}/ (API docs at /docs); Ctrl-C stops", flush=True)
    config = uvicorn.Config(**server_config(app, access_log=args.access_log, log_level="info",
                                            log_config=log_config(), timeout_graceful_shutdown=5))
    server = uvicorn.Server(config)
    with sock:
        server.run(sockets=[sock])
    return 0 if server.started else 1  # uvicorn has logged why it could not start


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restart without waiting
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
