"""The Dagster UI in a real headless Chromium, clicked the way a person uses it.

A real `dagster dev -w workspace.yaml` (127.0.0.1, temporary DAGSTER_HOME, the shared FastChat data as
`fastchat.jsonl` beside the demo files, registered as partitions before the server starts) is driven
through its web UI with Playwright:

1. *Lineage* (the global asset graph): select `packed_arrow` and its upstream
   `tokenized_conversations` (a fresh partition has no tokenized spill yet, and the UI warns that
   materializing `packed_arrow` alone "may fail because the upstream assets ... have not been
   materialized"), click **Materialize selected (2)…**;
2. the partition dialog: pick `fastchat.jsonl`, **Launch 1 run**;
3. the toast's **View** link: the run page, until it says *Success*;
4. the output `<COLLATE_OUTPUT_DIR>/fastchat.arrow` (the one layout of the `collate` command and the
   graph: outputs and rejects beside each other, the spill in `.collate_tokenized/`) loads with
   `datasets.Dataset.from_file`;
5. the asset page `/assets/packed_arrow` shows the materialization's metadata, and its rows, tokens and
   fill are those of the file.

Screenshots of the graph, the dialog, the finished run and the asset's metadata go to a temporary
folder (printed), and with COLLATE_UPDATE_SCREENSHOTS=1 also to docs/screenshots/ in the checkout.

Needs the `playwright` Python package and Debian's Chromium at /usr/bin/chromium (or the browser
named by COLLATE_E2E_CHROMIUM); Playwright never downloads a browser here. Skipped with the reason
when either is missing.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest

from .conftest import REPO_DIR, RUN_QUERY, SMOLLM2_DIR, DagsterDev, record_timing

CHROMIUM = Path(os.environ.get("COLLATE_E2E_CHROMIUM", "/usr/bin/chromium"))
# Without the background-networking flags Chromium's own connections are refused on a closed network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1400, "height": 900}

PARTITION = "fastchat.jsonl"
OUTPUT_STEM = "fastchat"
MAX_LENGTH = 8192  # the default of COLLATE_MAX_LENGTH
UI_TIMEOUT_MS = 120_000  # a page, its code location and its graph
ACTION_TIMEOUT_MS = 30_000  # one click or one element once the page is there
RUN_TIMEOUT_S = 300.0
SCREENSHOTS_DIR = REPO_DIR / "docs" / "screenshots"
SCREENSHOT_NAMES = ("graph", "materialize_dialog", "run_succeeded", "asset_metadata")

pytestmark = [
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"no Chromium at {CHROMIUM} (apt-get install chromium, or set COLLATE_E2E_CHROMIUM)",
    ),
]
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the playwright Python package is not installed (pip install playwright)"
)
expect = sync_api.expect



@pytest.fixture(scope="module")
def dagster_dev(tmp_path_factory, fastchat_jsonl_dir):
    """`dagster dev` whose input folder holds the demo files and fastchat.jsonl, all registered first,
    with the automation sensor stopped (COLLATE_AUTOMATION=false).

    Named like the conftest fixture so that a failure report carries the tail of the server's log.
    The shared SmolLM2 tokenizer is used when it is there, else the embedded demo tokenizer.
    """
    root = tmp_path_factory.mktemp("browser")
    (root / "input").mkdir()
    shutil.copyfile(fastchat_jsonl_dir / PARTITION, root / "input" / PARTITION)
    tokenizer = SMOLLM2_DIR if (SMOLLM2_DIR / "tokenizer.json").exists() else None
    # the automation sensor starts stopped: this test materializes by hand, as a user of the UI does
    server = DagsterDev.start(root, register_first=True, tokenizer=tokenizer, automation="false")
    print(f"\ndagster dev ready at {server.url} after {server.startup_seconds:.1f} s (log: {server.log_path})")
    try:
        yield server
    finally:
        print(f"\ndagster dev stopped in {server.stop():.1f} s")


@pytest.fixture
def page(request, tmp_path):
    """A headless Chromium page (Debian's browser, never a downloaded one); closed afterwards, after a
    screenshot of what it showed (`failure.png`, path printed) when the test failed."""
    failed_before = request.session.testsfailed
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport=VIEWPORT)
            context.set_default_timeout(ACTION_TIMEOUT_MS)
            context.set_default_navigation_timeout(UI_TIMEOUT_MS)
            expect.set_options(timeout=ACTION_TIMEOUT_MS)
            page = context.new_page()
            # A new DAGSTER_HOME greets its first visitor with "Join the Dagster community" (Skip /
            # Submit), at any moment of the first page; dismiss it whenever it is in the way.
            page.add_locator_handler(
                page.get_by_text("Join the Dagster community"),
                lambda _: page.get_by_role("button", name="Skip", exact=True).click(),
            )
            yield page
            if request.session.testsfailed > failed_before:  # the call phase is reported before teardown
                path = tmp_path / "screenshots" / "failure.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(path))
                print(f"\nthe page at the failure ({page.url}): {path}")
        finally:
            browser.close()


class Screenshots:
    """Saves each screenshot to a temporary folder, and to docs/screenshots/ when asked to."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.update_docs = os.environ.get("COLLATE_UPDATE_SCREENSHOTS") == "1"

    def take(self, page, name: str) -> Path:
        assert name in SCREENSHOT_NAMES, name
        _dismiss_community_modal(page)
        path = self.folder / f"{name}.png"
        page.screenshot(path=str(path))
        if self.update_docs:
            SCREENSHOTS_DIR.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, SCREENSHOTS_DIR / path.name)
        return path


def _dismiss_community_modal(page) -> None:
    """The locator handler only runs before actions; a screenshot is none, so look once more here."""
    skip = page.get_by_role("button", name="Skip", exact=True)
    if page.get_by_text("Join the Dagster community").is_visible():
        skip.click()
        expect(page.get_by_text("Join the Dagster community")).to_be_hidden()


def _page_text(page) -> str:
    try:
        return page.inner_text("body")[-3000:]
    except Exception as exc:  # the page is gone: say so instead of hiding the real failure
        return f"(no page text: {exc})"


def graph_node(page, asset: str):
    """The node of `asset` in the asset graph (its name box carries the name as its tooltip)."""
    return page.locator(f'[data-tooltip="{asset}"]')


def _metadata_value(page, key: str) -> str:
    """The value cell of the asset page's metadata row `key` (rows: key | timestamp | value)."""
    row = page.get_by_role("row").filter(has=page.get_by_role("cell", name=key, exact=True))
    expect(row).to_have_count(1, timeout=UI_TIMEOUT_MS)
    return row.get_by_role("cell").last.inner_text().strip()


def _wait_for_run(page, server: DagsterDev, run_id: str) -> str:
    """Watch the run page until its status tag reads Success or Failure/Canceled; returns the final
    status the server reports over GraphQL."""
    success = page.get_by_text("Success", exact=True)
    failed = page.get_by_text(re.compile(r"^(Failure|Canceled)$"))
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        if success.first.is_visible():
            break
        if failed.first.is_visible():
            break
        page.wait_for_timeout(1000)
    else:
        status = server.graphql(RUN_QUERY, {"runId": run_id})["runOrError"]
        raise AssertionError(f"run {run_id} not finished after {RUN_TIMEOUT_S:.0f} s: {status}\n{_page_text(page)}")
    return server.graphql(RUN_QUERY, {"runId": run_id})["runOrError"]["status"]


def test_materialize_packed_arrow_from_the_ui(dagster_dev, page, tmp_path):
    datasets = pytest.importorskip("datasets", reason="datasets is needed to load the packed Arrow file")
    server = dagster_dev
    shots = Screenshots(tmp_path / "screenshots")
    started = time.perf_counter()

    # 1. The global asset graph: click packed_arrow, shift-click its upstream tokenized_conversations.
    #    (Clicking the nodes, not the list beside the graph, which would pan the graph to the node.)
    page.goto(f"{server.url}/asset-groups")
    expect(page.get_by_text("Global asset lineage")).to_be_visible(timeout=UI_TIMEOUT_MS)
    packed = graph_node(page, "packed_arrow")
    tokenized = graph_node(page, "tokenized_conversations")
    expect(packed).to_be_visible(timeout=UI_TIMEOUT_MS)
    expect(graph_node(page, "raw_conversations")).to_be_visible(timeout=UI_TIMEOUT_MS)
    packed.click()
    tokenized.click(modifiers=["Shift"])
    materialize = page.get_by_role("button", name=re.compile(r"Materialize selected \(2\)"))
    expect(materialize).to_be_enabled(timeout=UI_TIMEOUT_MS)
    expect(page).to_have_url(re.compile(r"/asset-groups/.*packed_arrow.*tokenized_conversations"))
    shots.take(page, "graph")

    # 2. The partition dialog: pick fastchat.jsonl and launch one run.
    materialize.click()
    dialog = page.get_by_role("dialog").filter(has_text="Launch runs to materialize 2 assets")
    expect(dialog).to_be_visible(timeout=UI_TIMEOUT_MS)
    dialog.get_by_text("Select a partition or create one").click()
    page.get_by_role("menuitem", name=PARTITION).click()
    page.keyboard.press("Escape")  # closes the partition list, not the dialog
    expect(page.get_by_role("menuitem", name=PARTITION)).to_have_count(0)
    expect(page.get_by_placeholder("Filter partitions")).to_have_count(0)
    expect(dialog.get_by_text("1 partition", exact=True)).to_be_visible()
    launch = dialog.get_by_role("button", name="Launch 1 run")
    expect(launch).to_be_enabled()
    shots.take(page, "materialize_dialog")
    launch.click()

    # 3. The toast links to the run; its page shows the run finish.
    view = page.get_by_role("link", name="View", exact=True)
    expect(view).to_be_visible(timeout=UI_TIMEOUT_MS)
    href = view.get_attribute("href")
    match = re.search(r"/runs/([0-9a-f-]{36})", href or "")
    assert match, f"the launch toast links to {href!r}, not a run\n{_page_text(page)}"
    run_id = match.group(1)
    launched = time.perf_counter()
    page.goto(f"{server.url}/runs/{run_id}")
    status = _wait_for_run(page, server, run_id)
    run_seconds = time.perf_counter() - launched
    assert status == "SUCCESS", f"run {run_id} ended {status}\n{_page_text(page)}"
    expect(page.get_by_text(f"partition: {PARTITION}")).to_be_visible()
    expect(page.get_by_text("RUN_SUCCESS", exact=True)).to_be_visible(timeout=UI_TIMEOUT_MS)
    shots.take(page, "run_succeeded")

    run = server.graphql(RUN_QUERY, {"runId": run_id})["runOrError"]
    tags = {t["key"]: t["value"] for t in run["tags"]}
    assert tags.get("dagster/partition") == PARTITION, tags
    assert sorted(a["path"] for a in run["assetSelection"]) == [["packed_arrow"], ["tokenized_conversations"]]

    # 4. The output file loads as a datasets.Dataset; the layout is the `collate` command's.
    arrow_path = server.output_dir / f"{OUTPUT_STEM}.arrow"
    assert arrow_path.is_file(), f"no {arrow_path}; output folder holds {sorted(server.output_dir.rglob('*'))}"
    assert (server.output_dir / f"{OUTPUT_STEM}.rejects.jsonl").is_file()
    assert (server.output_dir / ".collate_tokenized" / f"{OUTPUT_STEM}.manifest.json").is_file()
    assert not (server.output_dir / "arrow").exists() and not (server.output_dir / "_tokenized").exists()
    rows = datasets.Dataset.from_file(str(arrow_path))
    assert {"input_ids", "labels", "position_ids", "seq_lengths"} <= set(rows.column_names), rows.column_names
    assert rows.num_rows > 0
    tokens = 0
    for row in rows:
        n = len(row["input_ids"])
        assert 0 < n <= MAX_LENGTH
        assert len(row["labels"]) == len(row["position_ids"]) == n
        assert sum(row["seq_lengths"]) == n
        tokens += n

    # 5. The asset page shows that materialization's metadata, matching the file.
    page.goto(f"{server.url}/assets/packed_arrow")
    expect(page.get_by_text("Latest materialization")).to_be_visible(timeout=UI_TIMEOUT_MS)
    expect(page.get_by_text(PARTITION, exact=True).first).to_be_visible(timeout=UI_TIMEOUT_MS)
    shown = {key: _metadata_value(page, key) for key in ("rows", "tokens", "fill", "path")}
    assert int(shown["rows"]) == rows.num_rows, shown
    assert int(shown["tokens"]) == tokens, shown
    assert float(shown["fill"]) == pytest.approx(tokens / (rows.num_rows * MAX_LENGTH), rel=1e-9), shown
    assert Path(shown["path"]) == arrow_path, shown
    page.get_by_role("row").filter(has=page.get_by_role("cell", name="fill", exact=True)).scroll_into_view_if_needed()
    shots.take(page, "asset_metadata")

    total = time.perf_counter() - started
    record_timing(
        f"browser: dagster dev up in {server.startup_seconds:.1f} s; UI flow {total:.1f} s, of which the run "
        f"{run_seconds:.1f} s ({rows.num_rows} rows, {tokens} tokens, fill {float(shown['fill']):.3f}); "
        f"screenshots in {shots.folder}" + (f" and {SCREENSHOTS_DIR}" if shots.update_docs else "")
    )
