"""The console in a real browser: Debian's headless Chromium driven by Selenium (chromedriver from
the same package), against a gateway with authentication on, signed in as an admin through the
sign-in page. One test per page: it loads the page, checks what it shows against the API,
performs the page's action, and saves a screenshot (``$INTERLACE_SCREENSHOTS``, else the test's
temporary folder; the README's pictures come from here).

Not in the default suite (``norecursedirs``): .ci/run runs this folder in its own bounded step,
after installing ``chromium`` and ``chromium-driver``. The gateway runs in a thread of its own,
since Selenium's calls block.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from agents.echo import EchoWorker
from gateway.app import create_app
from gateway.core.auth import api_key_digest
from protocols.mcp import MCPOptions, mount
from protocols.mcp.server import service_for
from registry.identity import Identity
from registry.records import sign
from schemas.agent_record import AgentRecord
from tests.conftest import serve_app, test_config
from tests.fixtures.mcp_support import UpstreamProcess

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the dev extra")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [
    pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="apt-get install chromium chromium-driver"),
    pytest.mark.timeout(300),
]
KEY = "console-admin-key-0123456789"


class GatewayThread:
    """A gateway (and an MCP upstream it federates) served from its own thread and event loop."""

    def __init__(self, tmp: Path, upstream_url: str) -> None:
        keys = tmp / "keys.yaml"
        keys.write_text(yaml.safe_dump([{"principal": "ops", "key_sha256": api_key_digest(KEY), "groups": ["admin"]}]))
        self.app = create_app(test_config(api_keys=str(keys), wait_timeout_s=30), workers=[EchoWorker()])
        mount(self.app, MCPOptions(upstreams=(("tools", upstream_url),)))
        self.url: str | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        async with serve_app(self.app) as url:
            self.url = url
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> GatewayThread:
        self._thread.start()
        assert self._ready.wait(30), "the gateway did not start"
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("console")
    with UpstreamProcess("everything") as upstream, GatewayThread(tmp, upstream.url) as gw:
        with httpx.Client(base_url=gw.url, timeout=30, headers={"Authorization": f"Bearer {KEY}"}) as api:
            yield gw, api


@pytest.fixture(scope="module")
def browser(stack, tmp_path_factory):
    gw, _ = stack
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        driver.get(f"{gw.url}/ui/agents")  # not signed in: the sign-in page, then back here
        assert "/ui/login" in driver.current_url
        driver.find_element(By.ID, "credential").send_keys(KEY)
        driver.find_element(By.CSS_SELECTOR, "#login button").click()
        WebDriverWait(driver, 15).until(ec.url_contains("/ui/agents"))
        yield driver
    finally:
        driver.quit()


def shot(driver, name: str, tmp_path: Path) -> None:
    folder = Path(os.environ.get("INTERLACE_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(folder / f"console-{name}.png"))


def load(driver, gw, path: str, wait_for: str) -> float:
    """Open ``path``; seconds until ``wait_for`` (a CSS selector) is on the page."""
    started = time.monotonic()
    driver.get(f"{gw.url}{path}")
    WebDriverWait(driver, 15).until(ec.presence_of_element_located((By.CSS_SELECTOR, wait_for)))
    return time.monotonic() - started


def submit(api: httpx.Client, text: str, **metadata) -> dict:
    body = {"agent": "echo", "message": {"role": "user", "parts": [{"kind": "text", "text": text}]}}
    resp = api.post("/tasks", json={**body, "metadata": metadata})
    assert resp.status_code in (200, 202), resp.text
    return resp.json()


def register(api: httpx.Client, name: str) -> str:
    who = Identity.generate()
    now = int(time.time())
    record = AgentRecord.model_validate(
        {
            "did": who.did,
            "name": name,
            "version": "1",
            "skills": [{"id": "translate", "name": "Translate", "description": "Translate text", "tags": ["language"]}],
            "endpoints": {"a2a": "http://127.0.0.1:9/a2a"},
            "home_node": "elsewhere",
            "seq": 1,
            "issued_at": now,
            "expires_at": now + 300,
            "network": "interlace",
        }
    )
    resp = api.post("/registry/agents", json=sign(record, who).dump())
    assert resp.status_code in (200, 201), resp.text
    return who.did


def test_overview(stack, browser, tmp_path):
    gw, api = stack
    load(browser, gw, "/ui", "#node-facts")
    health = api.get("/healthz").json()
    assert browser.find_element(By.ID, "node-id").text == health["node"]
    assert "ready" in browser.find_element(By.ID, "backend").text
    failed = submit(api, "this one fails", fail="the agent says no")
    browser.refresh()
    WebDriverWait(browser, 15).until(ec.text_to_be_present_in_element((By.ID, "failures"), failed["id"][:12]))
    assert "the agent says no" in browser.find_element(By.ID, "failures").text
    shot(browser, "overview", tmp_path)


def test_agents_shows_the_records_and_revokes_one(stack, browser, tmp_path):
    gw, api = stack
    did = register(api, "translator")
    load(browser, gw, "/ui/agents", "#agents")
    listed = {row.get_attribute("data-name") for row in browser.find_elements(By.CSS_SELECTOR, "#agents tbody tr")}
    assert listed == {a["name"] for a in api.get("/registry/agents").json()["agents"]}
    assert browser.find_element(By.ID, "agent-total").text == str(api.get("/registry/agents").json()["total"])
    shot(browser, "agents", tmp_path)
    browser.find_element(By.CSS_SELECTOR, f'tr[data-did="{did}"] a').click()
    WebDriverWait(browser, 15).until(ec.presence_of_element_located((By.ID, "card")))
    assert did in browser.find_element(By.ID, "card").text
    browser.find_element(By.ID, "revoke").click()
    browser.switch_to.alert.accept()
    WebDriverWait(browser, 15).until(ec.text_to_be_present_in_element((By.ID, "revoke-result"), "revoked"))
    assert did in [r["did"] for r in api.get("/registry/revocations").json()["revocations"]]
    assert api.get(f"/registry/agents/{did}").status_code == 404


def test_tasks_list_and_a_task_streaming_then_canceled(stack, browser, tmp_path):
    gw, api = stack
    done = submit(api, "hello from the list")
    load(browser, gw, "/ui/tasks?agent=echo", "#tasks")
    WebDriverWait(browser, 15).until(ec.text_to_be_present_in_element((By.ID, "tasks"), done["id"][:12]))
    shown = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#tasks tbody tr td:first-child a")]
    assert shown == [t["id"][:12] for t in api.get("/tasks", params={"limit": 50}).json()["tasks"]][: len(shown)]
    slow = submit(api, "a slow one", delay_ms=60_000)
    load(browser, gw, f"/ui/tasks/{slow['id']}", "#events")
    assert browser.find_element(By.ID, "task-state").text in ("submitted", "working")
    browser.find_element(By.ID, "cancel").click()
    WebDriverWait(browser, 15).until(ec.text_to_be_present_in_element((By.ID, "task-state"), "canceled"))
    assert api.get(f"/tasks/{slow['id']}").json()["status"]["state"] == "canceled"
    shot(browser, "task", tmp_path)


def test_a_task_that_asks_is_continued_from_its_page(stack, browser, tmp_path):
    gw, api = stack
    asked = submit(api, "question first", ask="What is your name?")
    load(browser, gw, f"/ui/tasks/{asked['id']}", "#events")
    WebDriverWait(browser, 15).until(ec.text_to_be_present_in_element((By.ID, "task-state"), "input-required"))
    form = browser.find_element(By.ID, "continue")
    form.find_element(By.NAME, "text").send_keys("Ada")
    form.find_element(By.TAG_NAME, "button").click()
    WebDriverWait(browser, 15).until(ec.text_to_be_present_in_element((By.ID, "task-state"), "completed"))
    task = api.get(f"/tasks/{asked['id']}").json()
    assert task["status"]["state"] == "completed" and "Ada" in browser.find_element(By.ID, "artifacts").text


def test_routing_explains_the_ranking(stack, browser, tmp_path):
    gw, api = stack
    load(browser, gw, "/ui/routing", "#route-form")
    browser.find_element(By.NAME, "text").send_keys("echo a message back")
    browser.find_element(By.CSS_SELECTOR, "#route-form button").click()
    WebDriverWait(browser, 15).until(ec.presence_of_element_located((By.ID, "candidates")))
    expected = api.post("/route", params={"limit": 10}, json={"text": "echo a message back"}).json()["candidates"]
    rows = browser.find_elements(By.CSS_SELECTOR, "#candidates tbody tr")
    assert [r.find_elements(By.TAG_NAME, "td")[1].text for r in rows] == [c["agent"] for c in expected]
    shot(browser, "routing", tmp_path)


def test_playground_sends_text_data_and_a_file_and_streams_the_answer(stack, browser, tmp_path):
    gw, api = stack
    load(browser, gw, "/ui/playground?agent=echo", "#playground")
    browser.find_element(By.ID, "pg-text").send_keys("Hello, playground")
    upload = tmp_path / "note.txt"
    upload.write_bytes(b"file bytes \x00\x01")
    browser.find_element(By.ID, "pg-file").send_keys(str(upload))
    browser.find_element(By.ID, "pg-send").click()
    WebDriverWait(browser, 15).until(ec.text_to_be_present_in_element((By.ID, "pg-state"), "completed"))
    assert "Hello, playground" in browser.find_element(By.ID, "pg-stream").text
    task_id = browser.find_element(By.ID, "pg-task").get_attribute("href").rsplit("/", 1)[1]
    task = api.get(f"/tasks/{task_id}").json()
    kinds = [p["kind"] for p in task["artifacts"][0]["parts"]]
    assert task["status"]["state"] == "completed" and kinds == ["text", "file"]
    shot(browser, "playground", tmp_path)
    browser.find_element(By.ID, "pg-task").click()  # the answer's file downloads from its page
    WebDriverWait(browser, 15).until(ec.presence_of_element_located((By.CSS_SELECTOR, "#artifacts a.file")))
    href = browser.find_element(By.CSS_SELECTOR, "#artifacts a.file").get_attribute("href")
    cookies = {c["name"]: c["value"] for c in browser.get_cookies()}
    assert httpx.get(href, cookies=cookies, timeout=10).content == b"file bytes \x00\x01"


def test_mcp_upstreams_lists_what_the_gateway_federates(stack, browser, tmp_path):
    gw, api = stack
    load(browser, gw, "/ui/upstreams", "section.upstream")
    section = browser.find_element(By.CSS_SELECTOR, 'section.upstream[data-name="tools"]')
    catalog = service_for(gw.app).upstreams.clients["tools"].catalog
    assert catalog["tools"] and all(t["name"] in section.text for t in catalog["tools"])
    assert all(p["name"] in section.text for p in catalog["prompts"])
    shot(browser, "upstreams", tmp_path)


def test_metrics_draws_the_sampled_history(stack, browser, tmp_path):
    gw, api = stack
    for i in range(3):
        submit(api, f"metric {i}")
    load(browser, gw, "/ui/metrics", "#charts")
    # The page redraws from the sampled history every 5 s; the sampler takes a point as often.
    row = WebDriverWait(browser, 30).until(
        ec.presence_of_element_located((By.CSS_SELECTOR, '#latest tr[data-agent="echo"]'))
    )
    points = api.get("/ui/metrics.json").json()["points"]
    assert points and "echo" in points[-1]["agents"] and row.find_elements(By.TAG_NAME, "td")
    assert browser.find_elements(By.CSS_SELECTOR, "#chart-rate polyline")
    shot(browser, "metrics", tmp_path)
