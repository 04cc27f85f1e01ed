"""The official JS client (``@a2a-js/sdk`` 1.3.0, under node) through the gateway: send, get, stream,
subscribe and cancel, both bindings, 1.0 and 0.3, to the echo agent on the bus and to an
``a2a-sdk`` agent behind the connector.

The client is installed with npm into a cache directory once per session (``INTERLACE_NPM_CACHE``,
default ``~/.cache/interlace/a2a-js``); CI can prepare it with
``mkdir -p DIR && cp tests/js/a2a-package.json DIR/package.json && npm install --prefix DIR --no-audit --no-fund``.
The tests skip only when npm is not installed; a failing install or client fails them.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import pytest_asyncio

from tests.conftest import REPO
from tests.fixtures.a2a_support import a2a_env

JS_DIR = REPO / "tests" / "js"


@pytest.fixture(scope="session")
def a2a_js() -> Path:
    npm, node = shutil.which("npm"), shutil.which("node")
    if npm is None or node is None:
        pytest.skip("npm/node are not installed")
    cache = Path(os.environ.get("INTERLACE_NPM_CACHE") or Path.home() / ".cache" / "interlace" / "a2a-js")
    cache.mkdir(parents=True, exist_ok=True)
    wanted = (JS_DIR / "a2a-package.json").read_text()
    installed = cache / "node_modules" / "@a2a-js" / "sdk" / "package.json"
    manifest = cache / "package.json"
    if not (installed.exists() and manifest.exists() and manifest.read_text() == wanted):
        manifest.write_text(wanted)
        proc = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--prefix", str(cache)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if proc.returncode != 0:
            pytest.fail(f"npm install of @a2a-js/sdk failed:\n{proc.stderr[-3000:]}")
    shutil.copy(JS_DIR / "a2a_client.mjs", cache / "a2a_client.mjs")
    return cache


pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env():
    async with a2a_env() as e:
        yield e


async def run_js(cache: Path, **args) -> dict:
    proc = await asyncio.create_subprocess_exec(
        shutil.which("node") or "node",
        str(cache / "a2a_client.mjs"),
        json.dumps(args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cache,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail("the JS client did not finish in 60 s")
    if proc.returncode != 0:
        pytest.fail(f"the JS client failed (exit {proc.returncode}):\n{err.decode()[-3000:]}")
    return json.loads(out.decode().strip().splitlines()[-1])


@pytest.mark.parametrize("version", ["1.0", "0.3"])
@pytest.mark.parametrize("binding", ["JSONRPC", "HTTP+JSON"])
@pytest.mark.parametrize("target", ["echo", "remote"])
async def test_js_client(env, a2a_js, target, binding, version):
    report = await run_js(a2a_js, base=env.target(target), binding=binding, version=version, tag=f"js-{target}")
    assert report["protocol"] == version
    assert report["send"] == {"kind": "task", "state": "TASK_STATE_COMPLETED", "text": "hello js"}
    assert report["get"] == {"state": "TASK_STATE_COMPLETED", "text": "hello js", "sameId": True}
    assert report["stream"]["cases"] == ["task", "statusUpdate", "artifactUpdate", "statusUpdate"]
    assert report["stream"]["finalState"] == "TASK_STATE_COMPLETED"
    assert report["subscribe"]["cases"][0] == "task" and report["subscribe"]["canceled"] == "TASK_STATE_CANCELED"
    assert report["subscribe"]["finalState"] == "TASK_STATE_CANCELED"
    assert report["cancelFinished"] != "no error"
