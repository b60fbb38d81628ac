"""Shared fixtures and the suite's rules.

Fixtures: real MNIST (cached once per machine; where it came from is printed at the end of the run) and
one small run trained the way a user trains, for the whole session. `figures` records a measured figure
(say, the drawn-digit accuracy the README quotes) to print in the run's summary, under xdist too.

Rules, when CI is set (.ci/run sets it): a skipped test fails the run unless its reason is allow-listed
below (a missing browser is a failure, not a skip), and hypothesis runs derandomised (the "ci" profile).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest
from hypothesis import settings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The suite never writes into the user's own state or data folders (compare's signing key, the feedback
# database): one throwaway folder per session, inherited by every subprocess. The MNIST cache stays shared.
_SANDBOX = tempfile.mkdtemp(prefix="digitlab-tests-")
os.environ.setdefault("DIGITLAB_STATE_DIR", os.path.join(_SANDBOX, "state"))
os.environ.setdefault("DIGITLAB_DATA_HOME", os.path.join(_SANDBOX, "data"))

USER_KERAS_BACKEND = os.environ.get("KERAS_BACKEND")  # as the session started, before any test chose one
IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
# Skips a CI run may keep: (substring of the reason, why it is not lost coverage).
ALLOWED_CI_SKIPS = [
    ("root writes into read-only folders", "a file-mode check that root, which ignores modes, cannot make"),
]

# Property tests: derandomised in CI, so a run is reproducible and the examples found stay @examples in the
# tests; elsewhere hypothesis explores freely (HYPOTHESIS_PROFILE=explore for a long search).
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.register_profile("explore", max_examples=1000, print_blob=True)
settings.load_profile("ci" if IN_CI else os.environ.get("HYPOTHESIS_PROFILE", "dev"))

FIGURES = pytest.StashKey[dict]()
NETWORK_SOURCES = ("mirror:", "pypi:", "debian:")


# ---------------------------------------------------------------- figures printed at the end of the run

def _figures(config) -> dict:
    return config.stash.setdefault(FIGURES, {})


@pytest.fixture(scope="session")
def figures(request):
    """figures(name, text): print `name: text` in this run's summary (from an xdist worker as well)."""
    def record(name: str, text: str) -> None:
        _figures(request.config)[name] = text
        if hasattr(request.config, "workeroutput"):  # an xdist worker: sent to the controller when it finishes
            request.config.workeroutput.setdefault("digitlab_figures", {})[name] = text
    return record


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):  # pytest-xdist, in the controller: a worker finished
    _figures(node.config).update(getattr(node, "workeroutput", {}).get("digitlab_figures", {}))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    found = _figures(config)
    if found:
        terminalreporter.write_sep("-", "digitlab: data and figures measured by this run")
        for name, text in sorted(found.items()):
            terminalreporter.write_line(f"{name}: {text}")
    bad = config.stash.get(BAD_SKIPS, [])
    if bad:
        terminalreporter.write_sep("!", f"CI: {len(bad)} test(s) skipped without an allow-listed reason")
        for nodeid, reason in bad:
            terminalreporter.write_line(f"{nodeid}: {reason}")
        terminalreporter.write_line("A skip in CI is lost coverage: install what the test needs (scripts/setup.sh), "
                                    "or add the reason to ALLOWED_CI_SKIPS in tests/conftest.py, saying why.")


# ---------------------------------------------------------------- no silent skips in CI

BAD_SKIPS = pytest.StashKey[list]()


class SkipWatch:
    """Collects every skip with its reason (in the xdist controller, the workers' reports arrive here too)."""

    def __init__(self):
        self.skips: list[tuple[str, str]] = []

    def pytest_runtest_logreport(self, report):
        if report.skipped and not hasattr(report, "wasxfail"):
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            self.skips.append((report.nodeid, reason.removeprefix("Skipped: ")))


def pytest_configure(config):
    config.pluginmanager.register(SkipWatch(), "digitlab-skip-watch")


def pytest_sessionfinish(session, exitstatus):
    if not IN_CI or hasattr(session.config, "workerinput"):  # judged once, in the controller
        return
    watch = session.config.pluginmanager.get_plugin("digitlab-skip-watch")
    bad = [(nodeid, reason) for nodeid, reason in watch.skips
           if not any(allowed in reason for allowed, _ in ALLOWED_CI_SKIPS)]
    session.config.stash[BAD_SKIPS] = bad
    if bad and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# ---------------------------------------------------------------- data and the session's run

@pytest.fixture(scope="session")
def mnist(figures):
    """The canonical MNIST; the summary says which source it came from (a cache read, or a download)."""
    from digitlab.data import load_mnist
    ds = load_mnist()
    p = ds.provenance
    how = "downloaded over the network" if p["source"].startswith(NETWORK_SOURCES) else "read locally, no network"
    figures("MNIST source", f"{p['source']} ({p['detail']}), sha256 {p['sha256'][:16]}...: {how}")
    return ds


def digitlab_process(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m digitlab ARGS` in a fresh process, as a user runs it (the backend picked by main())."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    # In-process tests that call main() may have set KERAS_BACKEND in this worker; a user's process has
    # only what the user set.
    env.pop("KERAS_BACKEND", None)
    if USER_KERAS_BACKEND:
        env["KERAS_BACKEND"] = USER_KERAS_BACKEND
    proc = subprocess.run([sys.executable, "-m", "digitlab", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"digitlab {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, mnist):
    """seed-ann trained by `digitlab train` (so on JAX, unless KERAS_BACKEND says otherwise) on a 12k subset
    for 3 epochs, then evaluated: about 96% test accuracy in a few seconds. No ONNX export: the session's
    tests run the Keras model."""
    from digitlab.runs import open_run
    out = tmp_path_factory.mktemp("runs") / "seed-ann"
    digitlab_process(["train", "--model", "seed-ann", "--epochs", "3", "--batch-size", "64", "--val", "1000",
                      "--train-size", "12000", "--seed", "0", "--quiet", "--no-export", "--out", str(out)])
    return open_run(out)


@pytest.fixture(scope="session")
def trained_predictor(trained_run):
    """The trained run's model, loaded once, as the one inference path (digitlab.predictor)."""
    from digitlab.predictor import Predictor
    return Predictor.from_run(trained_run)


@pytest.fixture(scope="session")
def ci() -> bool:
    """True when the suite runs in CI, where a test must fail rather than skip for want of a tool."""
    return IN_CI


@pytest.fixture(scope="module")
def browser(ci):
    """Headless Chromium for the browser tests (tests/browser_support.py): a skip without it, a failure in CI."""
    from browser_support import chromium
    with chromium(ci) as b:
        yield b


@pytest.fixture(scope="module")
def server_url(trained_run):
    """A real uvicorn server for the trained run, on a free loopback port, in a thread."""
    from browser_support import served
    with served(trained_run.path) as url:
        yield url
