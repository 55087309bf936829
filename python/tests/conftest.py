"""Session fixtures: a demo feature repo with extra push-fed views, applied, materialized and
served by the real ``larder`` binary on free loopback ports."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List

import pytest

import larder

REPO_ROOT = Path(__file__).parents[2]

#: The views the tests write to, beside the demo's. `all_types` has one feature per type.
EXTRA_DEFINITIONS = """
sources:
  - name: types_push
    type: push
  - name: scores_push
    type: push
  - name: documents_push
    type: push
feature_views:
  - name: all_types
    version: 1
    entities: [user]
    source: types_push
    features:
      - {name: f_int32, dtype: int32}
      - {name: f_int64, dtype: int64}
      - {name: f_float32, dtype: float32}
      - {name: f_float64, dtype: float64}
      - {name: f_bool, dtype: bool}
      - {name: f_string, dtype: string}
      - {name: f_bytes, dtype: bytes}
      - {name: f_timestamp, dtype: timestamp}
      - {name: f_list_int64, dtype: list<int64>}
      - {name: f_list_string, dtype: list<string>}
      - {name: f_vector, dtype: vector<4>}
  - name: scores
    version: 1
    entities: [user]
    source: scores_push
    features:
      - {name: s0, dtype: int64}
      - {name: s1, dtype: int64}
      - {name: s2, dtype: int64}
      - {name: s3, dtype: int64}
      - {name: s4, dtype: int64}
      - {name: s5, dtype: int64}
      - {name: s6, dtype: int64}
      - {name: s7, dtype: int64}
  - name: documents
    version: 1
    entities: [user]
    source: documents_push
    features:
      - name: embedding
        dtype: vector<4>
        vector_index: {metric: cosine}
      - {name: category, dtype: string}
"""


def free_port() -> int:
    """A port that was free on the loopback interface a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def larder_bin() -> str:
    """The larder binary: $LARDER_BIN, else the workspace's debug build. Missing: the
    session fails (never skips)."""
    path = Path(os.environ.get("LARDER_BIN") or REPO_ROOT / "target" / "debug" / "larder")
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"the larder binary {path} is missing: build it (cargo build -p larder-cli) or set "
            "LARDER_BIN"
        )
    return str(path)


def run(larder_bin: str, repo: Path, *args: str) -> str:
    """Runs a larder command in `repo`, failing the test on a non-zero exit."""
    completed = subprocess.run(
        [larder_bin, "--repo", str(repo), *args], capture_output=True, text=True, timeout=120
    )
    if completed.returncode != 0:
        pytest.fail(f"larder {' '.join(args)} failed:\n{completed.stdout}\n{completed.stderr}")
    return completed.stdout


@dataclass
class Server:
    """The served repo."""

    repo: Path
    url: str
    binary: str
    log: Path


def demo_repo(larder_bin: str, base: Path, entities: int = 200) -> "tuple[Path, int]":
    """`larder init` in `base/demo`, serving on free loopback ports from the embedded store;
    returns the repo and its HTTP port."""
    repo = base / "demo"
    subprocess.run(
        [larder_bin, "init", str(repo), "--entities", str(entities)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    config = (repo / "larder.yaml").read_text()
    port, grpc_port = free_port(), free_port()
    serving = (
        "serving:\n"
        "  host: 127.0.0.1\n"
        f"  port: {port}\n"
        f"  grpc_port: {grpc_port}\n"
        "  max_entities_per_request: 10000\n"
    )
    config = re.sub(r"(?ms)^serving:.*?(?=^\S|\Z)", serving, config)
    config = re.sub(
        r"(?ms)^online_store:.*?(?=^\S|\Z)",
        "online_store:\n  type: embedded\n  path: data/online.redb\n",
        config,
    )
    (repo / "larder.yaml").write_text(config)
    return repo, port


@pytest.fixture(scope="session")
def server(larder_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`larder init` + extra views + apply + materialize + `larder serve` on free ports."""
    base = tmp_path_factory.mktemp("larder")
    repo, port = demo_repo(larder_bin, base)
    (repo / "features" / "sdk_tests.yaml").write_text(EXTRA_DEFINITIONS)
    run(larder_bin, repo, "apply")
    run(larder_bin, repo, "materialize")

    with running_server(larder_bin, repo, port, base / "serve.log") as served:
        yield served


@contextlib.contextmanager
def running_server(larder_bin: str, repo: Path, port: int, log: Path) -> Iterator[Server]:
    """`larder serve` in `repo` (larder.yaml must name `port`), until the block ends."""
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            [larder_bin, "--repo", str(repo), "serve"], stdout=log_file, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    probe = larder.Client(url, timeout=2.0)
    deadline = time.monotonic() + 60
    try:
        while not probe.health():
            if process.poll() is not None:
                pytest.fail(f"larder serve exited with {process.returncode}:\n{log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"larder serve did not answer /health within 60 s:\n{log.read_text()}")
            time.sleep(0.05)
        yield Server(repo=repo, url=url, binary=larder_bin, log=log)
    finally:
        probe.close()
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def client(server: Server) -> Iterator[larder.Client]:
    """A client of the served repo."""
    with larder.Client(server.url, timeout=30.0) as c:
        yield c


@pytest.fixture(scope="session")
def store(server: Server) -> larder.FeatureStore:
    """Local mode over the same repo."""
    return larder.FeatureStore(server.repo, binary=server.binary)


def larder_get_json(server: Server, entities: List[int], features: List[str]) -> dict:
    """`larder get --json` for user ids (the CLI's answer, for expected values)."""
    import json

    out = run(
        server.binary,
        server.repo,
        "get",
        "--json",
        "--entity",
        "user_id=" + ",".join(map(str, entities)),
        "--features",
        ",".join(features),
    )
    return json.loads(out)
