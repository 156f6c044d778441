"""The ops dashboard in a real browser: Debian's chromium driven by Playwright, in
front of the real pipeline (tasks, verification, queue on Redis, a worker) and the
gateway, as processes. The test signs in with a key, opens each view, creates a
task and watches it finish, clicks retry on a failed one, and saves a screenshot
of each step under build/test-output/dashboard (printed, and listed in
dashboard.json with the time to first render and the bytes of each view). A second test signs in
with a read-only key (tasks.read): no action buttons, and the actions sent
anyway are refused by the services (403); dashboard-readonly.json lists its
screenshots."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fault.stack import PipelineStack, Process, pipeline_stack, stack_env
from tests.support import servers
from tests.support.auth import create_key
from tests.support.gateway_process import start_gateway
from tests.support.vectors import dstack_create_task_json

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
# The test's output: screenshots, dashboard.json and dashboard-readonly.json.
SHOTS = Path(__file__).resolve().parents[2] / "build" / "test-output" / "dashboard"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

playwright_api = pytest.importorskip("playwright.async_api")
if not Path(CHROMIUM).exists():  # .ci/run installs it; a bare machine skips, saying why
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)", allow_module_level=True)


@dataclass
class Dashboard:
    stack: PipelineStack
    base: str
    gateway: Process
    out: Path


@pytest.fixture(scope="module")
def dash(
    postgres_server_url: str,
    redis_url: str,
    s3: servers.S3Server,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Dashboard]:
    work = tmp_path_factory.mktemp("dashboard")
    # Screenshots and figures outlive the run (pytest keeps only its last three
    # temporary folders, shared by every run of this user on the machine).
    out = SHOTS
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    with servers.postgres_database(postgres_server_url, prefix="verifier_dash") as database:
        env = stack_env(
            database_url=database,
            redis_url=redis_url,
            s3=s3,
            workdir=work,
            queue_name=f"dash-{uuid.uuid4().hex[:8]}",
            scheduler_enabled="false",
        )
        with pipeline_stack(env, workers=1) as stack:
            port = servers.free_port()
            gateway = start_gateway(stack.env, port, work / "gateway.log")
            try:
                yield Dashboard(stack, f"http://127.0.0.1:{port}", gateway, out)
            finally:
                gateway.stop()


@pytest.fixture
async def page(dash: Dashboard) -> AsyncIterator[Any]:
    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = await browser.new_context(viewport={"width": 1280, "height": 900})
        tab = await context.new_page()
        errors: list[str] = []
        tab.on("pageerror", lambda exc: errors.append(str(exc)))
        yield tab
        await browser.close()
        assert not errors, f"script errors in the page: {errors}"


async def ready(page: Any, view: str) -> None:
    await page.wait_for_selector(f'main[data-view="{view}"][data-ready="true"]', timeout=30_000)


async def shot(page: Any, dash: Dashboard, name: str, figures: dict[str, Any]) -> None:
    prefix = figures.get("prefix", "")
    path = dash.out / f"{prefix}{len(figures['screenshots']) + 1:02d}-{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    figures["screenshots"].append(str(path))


async def view_bytes(page: Any) -> int:
    """Bytes the page fetched so far (documents, script, API responses), then reset."""
    total = await page.evaluate(
        "performance.getEntriesByType('resource').reduce((s, e) => s + (e.encodedBodySize || 0), 0)"
        " + performance.getEntriesByType('navigation').reduce("
        "(s, e) => s + (e.encodedBodySize || 0), 0)"
    )
    await page.evaluate("performance.clearResourceTimings()")
    return int(total)


async def open_view(
    page: Any, dash: Dashboard, view: str, hash_: str, figures: dict[str, Any]
) -> None:
    started = await page.evaluate("performance.now()")
    await page.evaluate(f"location.hash = {json.dumps(hash_)}")
    await ready(page, view)
    rendered = await page.evaluate("performance.now()")
    figures["views"][hash_.split("/")[0].split("?")[0]] = {
        "render_ms": round(rendered - started, 1),
        "bytes": await view_bytes(page),
    }


async def test_dashboard_views_a_task_finishing_and_a_retry(page: Any, dash: Dashboard) -> None:
    figures: dict[str, Any] = {"views": {}, "screenshots": []}
    auth = {"authorization": f"Bearer {dash.stack.api_key}"}
    async with httpx.AsyncClient(base_url=dash.base, timeout=30, headers=auth) as http:
        # --- sign in ---------------------------------------------------------------------
        await page.goto(dash.base + "/dashboard")
        await page.wait_for_selector("#login-form")
        await shot(page, dash, "login", figures)
        # The stack's admin key (authentication is on, as in production).
        await page.fill("#key", dash.stack.api_key)
        await page.click("#login-form button")
        await ready(page, "overview")
        paint = await page.evaluate(
            "Object.fromEntries(performance.getEntriesByType('paint')"
            ".map(e => [e.name, Math.round(e.startTime)]))"
        )
        first = figures["views"]["overview"] = {"first_paint_ms": paint, "bytes": 0}
        first["bytes"] = await view_bytes(page)
        assert await page.locator("#counts .card").count() == 6
        assert await page.locator("#charts svg").count() == 2
        # The key travels as a Bearer header on every API call (no cookie, no query).
        assert (
            await page.evaluate("sessionStorage.getItem('verifier.apiKey')")
        ) == dash.stack.api_key
        await shot(page, dash, "overview", figures)

        # --- a task created, watched live until it finishes --------------------------------
        created = await http.post("/api/v1/tasks", json=dstack_create_task_json())
        assert created.status_code == 200, created.text
        task_id = created.json()["id"]
        await open_view(page, dash, "task", f"task/{task_id}", figures)
        await page.wait_for_selector("#task-status .s-completed", timeout=120_000)
        await page.wait_for_selector("#snippet", timeout=30_000)
        key = (await http.get("/api/v1/verifier/signing-key")).json()["publicKey"]
        assert key in await page.inner_text("#snippet")
        assert "completed" in await page.inner_text("#events")
        assert "passed" in await page.inner_text("#task-head")
        await shot(page, dash, "task-completed", figures)

        # --- a failed task retried from its page ----------------------------------------------
        failing = await http.post(
            "/api/v1/tasks", json=dstack_create_task_json(expectedComposeHash="0" * 64)
        )
        failed_id = failing.json()["id"]
        await dash.stack.wait_finished([failed_id])
        await open_view(page, dash, "task", f"task/{failed_id}", figures)
        await page.wait_for_selector("#task-status .s-failed")
        await shot(page, dash, "task-failed", figures)
        await page.click('button[data-action="Retry"]')
        await page.wait_for_selector('#events >> text="retried"', timeout=30_000)
        await page.wait_for_selector("#task-status .s-failed", timeout=120_000)
        task = (await http.get(f"/api/v1/tasks/{failed_id}")).json()
        assert task["attempts"] == 2  # it ran again
        events = (await http.get(f"/api/v1/tasks/{failed_id}/events")).json()["events"]
        assert [e["type"] for e in events].count("retried") == 1
        await shot(page, dash, "task-retried", figures)

        # --- the lists: tasks (filtered, find by id), apps, workers, dead letters --------------
        await open_view(page, dash, "tasks", "tasks?status=failed", figures)
        assert failed_id in await page.inner_text("#task-list")
        assert task_id not in await page.inner_text("#task-list")
        await shot(page, dash, "tasks-failed", figures)
        await page.fill('#find input[name="id"]', task_id)
        await page.click("#find button")
        await ready(page, "task")
        assert task_id in await page.inner_text("#task-head")

        app_id = uuid.uuid4().hex
        made = await http.post(
            "/api/v1/apps",
            json={"id": app_id, "name": "dash-app", "appConfigType": "phala_cloud"},
        )
        assert made.status_code == 200, made.text
        await open_view(page, dash, "apps", "apps", figures)
        row = page.locator("tr", has_text=app_id)
        assert await row.count() == 1
        assert "enabled" in await row.inner_text()
        await row.locator('button[data-action="Pause"]').click()
        await page.wait_for_selector(f'tr:has-text("{app_id}") >> text="paused"')
        app = (await http.get(f"/api/v1/apps/{app_id}")).json()["app"]
        assert app["schedulePaused"] is True
        await shot(page, dash, "apps", figures)

        await open_view(page, dash, "workers", "workers", figures)
        assert "online" in await page.inner_text("main")
        await shot(page, dash, "workers", figures)

        malformed = await http.post(
            "/api/v1/tasks",
            json=dstack_create_task_json(
                evidence={"quote": "00" * 64, "eventLog": "[]", "collateral": "{}"}
            ),
        )
        broken_id = malformed.json()["id"]
        await dash.stack.wait_finished([broken_id])
        await open_view(page, dash, "deadletters", "deadletters", figures)
        assert broken_id in await page.inner_text("main")
        assert failed_id not in await page.inner_text("main")  # a verdict, not an error
        await shot(page, dash, "dead-letters", figures)

        for name in ("dashboard", "dashboard.js"):
            response = await http.get(f"/{name}")
            figures[f"{name}_bytes"] = len(response.content)
            assert "script-src 'self'" in response.headers["content-security-policy"]
    (dash.out / "dashboard.json").write_text(json.dumps(figures, indent=2))
    print(f"\ndashboard figures and screenshots: {dash.out / 'dashboard.json'}")
    print(json.dumps(figures, indent=2))


async def test_a_read_only_key_sees_no_actions_and_the_service_refuses_them(
    page: Any, dash: Dashboard
) -> None:
    """A tasks.read key: every view renders without an action button, and an
    action sent anyway, with that key, from the page itself, is refused by the
    service (403), not only hidden; nothing changes."""
    figures: dict[str, Any] = {"views": {}, "screenshots": [], "prefix": "readonly-"}
    reader = create_key(dash.stack.env, f"dash-reader-{uuid.uuid4().hex[:6]}", "tasks.read")
    admin = {"authorization": f"Bearer {dash.stack.api_key}"}
    async with httpx.AsyncClient(base_url=dash.base, timeout=30, headers=admin) as http:
        failing = await http.post(
            "/api/v1/tasks", json=dstack_create_task_json(expectedComposeHash="0" * 64)
        )
        failed_id = failing.json()["id"]
        app_id = uuid.uuid4().hex
        made = await http.post(
            "/api/v1/apps",
            json={"id": app_id, "name": "dash-readonly", "appConfigType": "phala_cloud"},
        )
        assert made.status_code == 200, made.text
        await dash.stack.wait_finished([failed_id])

        await page.goto(dash.base + "/dashboard")
        await page.fill("#key", reader)
        await page.click("#login-form button")
        await ready(page, "overview")
        assert "read-only" in await page.inner_text("#who")
        assert await page.locator("#counts .card").count() == 6
        assert await page.locator("button.act").count() == 0
        await shot(page, dash, "overview", figures)

        await open_view(page, dash, "task", f"task/{failed_id}", figures)
        await page.wait_for_selector("#task-status .s-failed")
        assert await page.locator("button[data-action]").count() == 0  # no Retry, no Cancel
        await shot(page, dash, "task-failed", figures)

        await open_view(page, dash, "apps", "apps", figures)
        row = page.locator("tr", has_text=app_id)
        assert await row.count() == 1
        assert await row.locator("button[data-action]").count() == 0  # no Pause, no Trigger
        await shot(page, dash, "apps", figures)

        await open_view(page, dash, "tasks", "tasks?status=failed", figures)
        assert failed_id in await page.inner_text("#task-list")
        assert await page.locator("button.act").count() == 0
        await shot(page, dash, "tasks", figures)

        # The actions the buttons would send, sent anyway with the page's own key.
        attempts = {
            "retry": ("POST", f"/api/v1/tasks/{failed_id}:retry"),
            "retry all failed": ("POST", "/api/v1/tasks:retryFailed"),
            "cancel": ("DELETE", f"/api/v1/tasks/{failed_id}"),
            "pause queue": ("POST", "/api/v1/queue/pause"),
            "pause schedule": ("POST", f"/api/v1/apps/{app_id}:pauseSchedule"),
            "trigger schedule": ("POST", f"/api/v1/apps/{app_id}:triggerSchedule"),
            "discard job": ("POST", f"/api/v1/queue/jobs/{failed_id}:discard"),
        }
        for what, (method, path) in attempts.items():
            code = await page.evaluate(
                """async ([method, path]) => {
                    const key = sessionStorage.getItem('verifier.apiKey');
                    const headers = {
                        authorization: 'Bearer ' + key,
                        'content-type': 'application/json',
                    };
                    const body = method === 'POST' ? '{}' : undefined;
                    const response = await fetch(path, {method, headers, body});
                    return response.status;
                }""",
                [method, path],
            )
            assert code == 403, f"{what}: {code}"
        task = (await http.get(f"/api/v1/tasks/{failed_id}")).json()
        assert (task["status"], task["attempts"]) == ("failed", 1)
        events = (await http.get(f"/api/v1/tasks/{failed_id}/events")).json()["events"]
        assert "retried" not in [e["type"] for e in events]
        status = (await http.get("/api/v1/queue/status")).json()
        assert status["paused"] is False
        app = (await http.get(f"/api/v1/apps/{app_id}")).json()["app"]
        assert not app.get("schedulePaused")
        await shot(page, dash, "refused", figures)
    (dash.out / "dashboard-readonly.json").write_text(json.dumps(figures, indent=2))
    print(f"\nread-only dashboard figures and screenshots: {dash.out / 'dashboard-readonly.json'}")
    print(json.dumps(figures, indent=2))
