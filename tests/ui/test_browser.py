"""The UIs as a person uses them: Debian's Chromium, driven by Playwright, against `genops ui`'s servers.

The servers are started the way `genops ui` starts them (orchestration/local_ui.py: `dagster dev` and
`mlflow ui`, each in its own process group, stopped SIGINT -> SIGTERM -> SIGKILL) on temporary stores:
a tiny DVC checkout (GENOPS_ROOT) with a fresh DAGSTER_HOME, and an MLflow SQLite store holding one run
(metrics, a sample-grid PNG) and a registered version with alias `champion` (tests/ui/browser_stores.py).
Screenshots go to outputs/ui-screenshots/ (git-ignored). No browser is downloaded: the system
Chromium (`apt-get install chromium`) is used, and the tests skip when it is missing.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from browser_stores import METRICS, MODEL, PROJECT, make_checkout, make_mlflow_store

from orchestration.local_ui import UiStack, ensure_dagster_yaml, ui_commands, wait_for_http
from orchestration.resources import local_mlflow_uri

pytestmark = [pytest.mark.slow]

playwright = pytest.importorskip("playwright.sync_api", reason="playwright (requirements.lock) is not installed")
PlaywrightTimeout, sync_playwright = playwright.TimeoutError, playwright.sync_playwright

CHROMIUM = os.environ.get("GENOPS_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = PROJECT / "outputs" / "ui-screenshots"
SERVER_START_S = 300  # both servers import the whole code location; on a loaded 2-core box that is minutes
RUN_S = 600  # a UI-launched run imports the code location again, then runs `dvc repro generate` (tiny)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(base: Path, name: str) -> tuple[UiStack, dict]:
    """The temporary stores, and `genops ui`'s command for server `name` only (its own process group)."""
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set GENOPS_CHROMIUM)")
    root = make_checkout(base / "checkout")
    home = base / "dagster_home"
    home.mkdir()
    ensure_dagster_yaml(home)
    artifacts = root / "mlflow" / "store" / "artifacts"
    artifacts.mkdir(parents=True)
    store = make_mlflow_store(local_mlflow_uri(root), artifacts) if name == "mlflow" else {}
    port = free_port()
    command = ui_commands(port, port, local_mlflow_uri(root), artifacts)[name]
    env = {**os.environ, "GENOPS_ROOT": str(root), "DAGSTER_HOME": str(home),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    stack = UiStack({name: command})
    stack.start(env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/server_info" if name == "dagster" else f"{url}/health", SERVER_START_S,
                      stack.processes[name])
    except BaseException:
        stack.stop()
        raise
    return stack, {"url": url, "root": root, **store}


@pytest.fixture(scope="module")
def dagster(tmp_path_factory):
    stack, server = _start(tmp_path_factory.mktemp("dagster"), "dagster")
    yield server
    stack.stop()


@pytest.fixture(scope="module")
def mlflow_ui(tmp_path_factory):
    stack, server = _start(tmp_path_factory.mktemp("mlflow"), "mlflow")
    yield server
    stack.stop()


@pytest.fixture(scope="module")
def page():
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(90_000)  # first paints wait on GraphQL/REST answers from loaded servers
        yield page
        browser.close()


def shot(page, name: str) -> None:
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def dismiss_dagster_welcome(page) -> None:
    """Dagster's first-visit 'Join the Dagster community' dialog covers the page: press Skip."""
    dialog = page.get_by_text("Join the Dagster community")
    try:
        dialog.wait_for(timeout=15_000)
    except PlaywrightTimeout:  # already dismissed in this browser profile
        return
    page.get_by_role("button", name="Skip").click()
    dialog.wait_for(state="hidden")


def close_mlflow_assistant(page) -> None:
    """MLflow 3.17's first-visit 'MLflow Assistant' panel covers the right of the page: close it."""
    close = page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]')
    try:
        close.wait_for(timeout=15_000)
    except PlaywrightTimeout:  # already closed in this browser profile
        return
    close.click()
    close.wait_for(state="hidden")


def graphql(url: str, query: str) -> dict:
    request = urllib.request.Request(f"{url}/graphql", data=json.dumps({"query": query}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())["data"]


def test_dagster_asset_graph_shows_every_group(dagster, page):
    groups = {node["groupName"] for node in graphql(dagster["url"], "{ assetNodes { groupName } }")["assetNodes"]}
    assert {"data", "base_models", "evaluation", "ablations"} <= groups, groups
    page.goto(f"{dagster['url']}/asset-groups")
    dismiss_dagster_welcome(page)
    for group in sorted(groups):  # a folder of the lineage sidebar (and a collapsed node of the graph)
        page.get_by_text(group, exact=True).first.wait_for()
    page.get_by_role("button", name=re.compile(r"Materialize all$")).wait_for()
    shot(page, "dagster-asset-graph")


def test_dagster_materializes_a_data_asset_and_shows_its_dvc_metadata(dagster, page):
    page.goto(f"{dagster['url']}/assets/synthetic_world")
    dismiss_dagster_welcome(page)
    page.get_by_text("Never materialized").wait_for()
    page.get_by_role("button", name=re.compile(r"Materialize$")).click()
    page.get_by_text(re.compile(r"Launched run")).wait_for()
    shot(page, "dagster-run-launched")
    deadline = time.monotonic() + RUN_S
    materialized = page.get_by_text("dataset_version", exact=True)
    while True:  # the asset page does not push the new materialization: reload it, as a person would
        page.wait_for_timeout(5_000)
        page.reload()
        # A loaded server paints skeletons for seconds, and right after the run the page can show the new
        # materialization with "No metadata found" until a later load: give each load time to fill in.
        page.get_by_text("Latest materialization").wait_for()
        try:
            materialized.wait_for(timeout=20_000)
            break
        except PlaywrightTimeout:
            pass
        assert time.monotonic() < deadline, f"no materialization of synthetic_world within {RUN_S}s"
    lock = yaml.safe_load((dagster["root"] / "dvc.lock").read_text())["stages"]
    md5 = lock["generate"]["outs"][0]["md5"]
    manifest = json.loads((dagster["root"] / "data" / "raw" / "world_manifest.json").read_text())
    metadata = page.locator("table").filter(has_text="dataset_version")
    metadata.get_by_text(md5, exact=True).wait_for()
    for dataset, count in manifest["counts"].items():
        assert metadata.get_by_text(f'"{dataset}": {count}').count(), (dataset, count)
    shot(page, "dagster-synthetic-world-materialized")


def test_mlflow_lists_the_run_with_its_metrics(mlflow_ui, page):
    page.goto(f"{mlflow_ui['url']}/#/experiments/{mlflow_ui['experiment_id']}/runs")
    close_mlflow_assistant(page)
    page.get_by_text("1 matching run").wait_for()
    shot(page, "mlflow-experiment")
    page.get_by_role("link", name="sd_base-tiny").click()
    close_mlflow_assistant(page)
    for key, values in METRICS.items():
        row = page.get_by_role("row").filter(has_text=key)
        row.first.wait_for()
        assert f"{values[-1]}" in row.first.inner_text(), (key, row.first.inner_text())
    shot(page, "mlflow-run-overview")


def test_mlflow_run_artifacts_show_the_sample_grid(mlflow_ui, page):
    page.goto(f"{mlflow_ui['url']}/#/experiments/{mlflow_ui['experiment_id']}/runs/{mlflow_ui['run_id']}/artifacts")
    close_mlflow_assistant(page)
    page.get_by_text("samples", exact=True).click()
    page.get_by_text("sample_grid.png", exact=True).click()
    image = page.locator("img[alt='samples/sample_grid.png']")
    image.wait_for()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    assert image.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [64, 64]
    shot(page, "mlflow-sample-grid")


def test_mlflow_registry_shows_the_champion_alias(mlflow_ui, page):
    page.goto(f"{mlflow_ui['url']}/#/models/{MODEL}")
    close_mlflow_assistant(page)
    row = page.get_by_role("row").filter(has_text=f"Version {mlflow_ui['version']}")
    row.get_by_text("champion").wait_for()
    shot(page, "mlflow-registry-champion")


def test_screenshots_are_kept_out_of_git():
    probe = SCREENSHOTS.relative_to(PROJECT) / "probe.png"
    result = subprocess.run(["git", "check-ignore", str(probe)], check=False, cwd=PROJECT, capture_output=True, text=True)
    assert result.stdout.strip() == str(probe), "outputs/ui-screenshots/ must be git-ignored"
