"""Screenshots of a finished study in the MLflow UI, taken with headless Chromium (see README.md beside this file).

    python docs/mlflow-ui/screenshots.py --results-dir /path/to/results --study NAME

Starts `mlflow ui` on the study's SQLite store (a free port on 127.0.0.1), opens the link the study prints
(`trainables.tracking.ui_link`) in a fresh browser profile and checks that it shows the study's runs in the
model-training view, then saves into this folder:

- runs-table.png: the runs table as the printed link opens it (best log_likelihood first), with metric columns;
- run-artifacts.png: the best trial's run page, artifacts tab, with latent.png (or samples.png) open;
- compare.png: MLflow's compare view of the three best trials: run names, metrics and their pictures.

Needs Playwright's Python package (pip install playwright; no browser download: it drives the system's
Chromium, --chromium, default /usr/bin/chromium). Any failure is one line on stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import mlflow

from trainables import tracking

HERE = Path(__file__).resolve().parent
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
METRIC_COLUMNS = ("log_likelihood", "log_likelihood_se", "reconstruction_error", "elbo", "adversary_elbo",
                  "kl_qz_pz")
TAG_COLUMNS = (tracking.FATE, tracking.METHOD)
HIDDEN_COLUMNS = ("Dataset", "Models")  # empty for a study
PICTURES = ("latent.png", "samples.png", "reconstructions.png")  # the first one a run has is shown
VIEWPORT = {"width": 1920, "height": 1000}
TIMEOUT_MS = 60_000


class ScreenshotError(RuntimeError):
    pass


# ----------------------------------------------------------------------------- the study and the server
def study_runs(uri: str, study: str | None):
    """(client, experiment, parent run, trial runs that finished: the study's best trial first, then by
    validation log-likelihood)."""
    client = mlflow.MlflowClient(uri)
    if study:
        exp = client.get_experiment_by_name(study)
    else:  # the newest study in the store
        exps = [e for e in client.search_experiments(order_by=["creation_time DESC"]) if tracking.STUDY in e.tags]
        exp = exps[0] if exps else None
    if exp is None:
        raise ScreenshotError(f"no study {study or ''} in {uri}; run one (python study/run.py) or pass --study")
    parent = tracking.find_study_run(client, exp.experiment_id)
    if parent is None:
        raise ScreenshotError(f"experiment {exp.name} has no study run (tag kind=study)")
    trials = [r for r in tracking.trial_runs(client, exp.experiment_id, parent.info.run_id)
              if "log_likelihood" in r.data.metrics and r.data.tags.get(tracking.FATE) == "finished"]
    if len(trials) < 2:
        raise ScreenshotError(f"study {exp.name} has {len(trials)} finished trial(s); the compare view needs 2")
    best = parent.data.tags.get("best_trial_number")
    trials.sort(key=lambda r: (r.data.tags.get(tracking.TRIAL_NUMBER) != best, -r.data.metrics["log_likelihood"]))
    return client, exp, parent, trials


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ui(uri: str, port: int, log: Path) -> subprocess.Popen:
    """`mlflow ui` on the store, once /health answers."""
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host",
                                 "127.0.0.1", "--port", str(port), "--workers", "1"], stdout=out,
                                stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ScreenshotError(f"mlflow ui exited with code {proc.returncode}; see {log}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
            return proc
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise ScreenshotError(f"mlflow ui did not answer on port {port} within 120 s; see {log}")


# ----------------------------------------------------------------------------- pages
# MLflow 3.17 opens its "MLflow Assistant" side panel on the first visit from localhost; a returning visitor's
# browser remembers it was closed (these keys), so the screenshots show the pages as they are used.
NO_ASSISTANT = """
window.localStorage.setItem("mlflow.assistant.fab.autoOpenedOnFirstLoad_v1", "true");
window.localStorage.setItem("mlflow.assistant.panelOpen_v1", "false");
"""


def close_assistant(page) -> None:
    """Close the assistant's panel if it is open all the same."""
    close = page.locator("button[data-component-id='mlflow.assistant.chat_panel.close']")
    if close.count() and close.first.is_visible():
        close.first.click()
        close.first.wait_for(state="hidden")


def check_link(page, link: str, parent_name: str) -> None:
    """The study's printed link, in a fresh profile: the model-training view's runs table with the parent run."""
    page.goto(link)
    try:
        page.get_by_text("matching runs").wait_for(timeout=TIMEOUT_MS)
        page.locator(".ag-row").filter(has_text=parent_name).first.wait_for(timeout=TIMEOUT_MS)
    except Exception as err:  # noqa: BLE001  (Playwright's timeout: say what was expected)
        raise ScreenshotError(f"{link} did not show the runs table with the run {parent_name!r} ({err})") from None
    training = page.get_by_role("radio", name="Model training")
    if training.count() and not training.first.is_checked():
        raise ScreenshotError(f"{link} opened the GenAI view, not 'Model training'")
    print(f"link OK: {link} opens the runs table (Model training view)")


def choose_columns(page, show: tuple[str, ...], hide: tuple[str, ...]) -> None:
    """Tick (show) and untick (hide) columns in the 'Columns' menu: search each name, click its tree node."""
    page.get_by_test_id("column-selection-dropdown").first.click()
    search = page.get_by_placeholder("Search columns")
    for names, wanted in ((show, True), (hide, False)):
        for name in names:
            search.fill(name)
            node = page.locator("[class*='tree-treenode']").filter(has_text=re.compile(f"^{re.escape(name)}$"))
            try:
                node.first.wait_for(timeout=3000)
            except Exception:  # noqa: BLE001  (e.g. no VAE trial: no `elbo` column)
                continue
            checked = "checkbox-checked" in (node.first.get_attribute("class") or "")
            if checked != wanted:
                node.first.locator("[class*='tree-checkbox']").first.click()
    page.keyboard.press("Escape")


def widen_run_names(page, width: int = 440) -> None:
    """Drag the Run Name column's right edge: the names say what each trial is."""
    header = page.locator(".ag-header-cell[col-id='attributes.`Run Name`']").first
    box = header.bounding_box()
    if box is None:
        return
    x, y = box["x"] + box["width"] - 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + width - box["width"], y, steps=10)
    page.mouse.up()


def runs_table(page, parent_id: str, trial_id: str, path: Path) -> None:
    close_assistant(page)
    page.locator(f".ag-row[row-id='{parent_id}']").first.wait_for(timeout=TIMEOUT_MS)
    if not page.locator(f".ag-row[row-id='{trial_id}']").count():  # sorted by a metric, MLflow lists runs flat
        expand = page.locator(f".ag-row[row-id='{parent_id}'] button[data-component-id*='runnamecellrenderer']")
        expand.first.click()  # show the trial runs nested under the study's run
    page.locator(f".ag-row[row-id='{trial_id}']").first.wait_for(timeout=TIMEOUT_MS)
    choose_columns(page, METRIC_COLUMNS + TAG_COLUMNS, HIDDEN_COLUMNS)
    page.locator(".ag-header-cell").filter(has_text="log_likelihood").first.wait_for(timeout=TIMEOUT_MS)
    widen_run_names(page)
    page.wait_for_timeout(1000)
    bottom = page.evaluate("Math.max(...Array.from(document.querySelectorAll('.ag-row'))"
                           ".map(r => r.getBoundingClientRect().bottom))")
    page.screenshot(path=path, clip={"x": 0, "y": 0, "width": VIEWPORT["width"],
                                     "height": min(max(bottom + 60, 400), VIEWPORT["height"])})


def wait_for_pictures(page, name: str, count: int = 1) -> None:
    """Until `count` previews of the artifact `name` have loaded (MLflow shows them as <img alt=NAME>)."""
    page.wait_for_function("([name, count]) => Array.from(document.images).filter(i => i.alt === name && "
                           "i.complete && i.naturalWidth > 0).length >= count", arg=[name, count], timeout=TIMEOUT_MS)


def run_artifacts(page, client, base: str, exp_id: str, run, path: Path) -> str:
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    picture = next((p for p in PICTURES if p in names), None)
    if picture is None:
        raise ScreenshotError(f"run {run.info.run_name!r} has none of {PICTURES} at its top level")
    page.goto(f"{base}/#/experiments/{exp_id}/runs/{run.info.run_id}/artifacts?workflowType=machine_learning")
    node = page.locator(f"[data-testid='artifact-tree-node'][artifact-name='{picture}']").first
    node.wait_for(timeout=TIMEOUT_MS)
    close_assistant(page)
    node.click()
    wait_for_pictures(page, picture)
    page.wait_for_timeout(1500)
    page.screenshot(path=path)
    return picture


def collapse(page, title: str) -> None:
    """Fold one section of the compare page (its header toggles it)."""
    header = page.get_by_role("button", name=title, exact=True)
    if header.count() == 0:
        header = page.get_by_text(title, exact=True)
    header.first.click()


def fit_to_content(page, most: int = 2600) -> None:
    """Make the window as tall as the page's scrolling content (MLflow scrolls inside a container, so
    Playwright's full_page screenshots stop at the window), then scroll back to the top."""
    height = page.evaluate("Math.max(...Array.from(document.querySelectorAll('*')).map(e => e.scrollHeight))")
    page.set_viewport_size({"width": VIEWPORT["width"], "height": min(max(height + 40, VIEWPORT["height"]), most)})
    page.evaluate("document.querySelectorAll('*').forEach(e => { if (e.scrollTop) e.scrollTop = 0; })")
    page.wait_for_timeout(1500)


def compare(page, base: str, exp_id: str, runs, picture: str, path: Path) -> None:
    ids = urllib.parse.quote(json.dumps([r.info.run_id for r in runs]))
    exps = urllib.parse.quote(json.dumps([exp_id]))
    page.goto(f"{base}/#/compare-runs?runs={ids}&experiments={exps}&workflowType=machine_learning")
    page.get_by_text(f"Comparing {len(runs)} Runs").wait_for(timeout=TIMEOUT_MS)
    close_assistant(page)
    for title in ("Visualizations", "Parameters", "Tags"):
        collapse(page, title)
    artifacts = page.get_by_text("Artifacts", exact=True).first
    artifacts.scroll_into_view_if_needed()
    # the previews overlap the file list in this layout: click the node itself, not at its position
    page.locator(f"[data-testid='artifact-tree-node'][artifact-name='{picture}']").first.dispatch_event("click")
    wait_for_pictures(page, picture, len(runs))
    fit_to_content(page)
    bottom = page.evaluate("([name]) => Math.max(...Array.from(document.images).filter(i => i.alt === name)"
                           ".map(i => i.getBoundingClientRect().bottom))", [picture])
    page.screenshot(path=path, clip={"x": 0, "y": 0, "width": VIEWPORT["width"], "height": bottom + 40})
    page.set_viewport_size(VIEWPORT)


# ----------------------------------------------------------------------------- main
def parse(argv: list[str] | None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results-dir", default="results", help="the study's results folder (default: ./results)")
    p.add_argument("--tracking-uri", help="MLflow store (default: sqlite:///RESULTS/mlflow.db)")
    p.add_argument("--study", help="the study (default: the newest in the store)")
    p.add_argument("--out", default=str(HERE), help=f"where the PNGs go (default: {HERE})")
    p.add_argument("--chromium", default="/usr/bin/chromium", help="Chromium binary (default: /usr/bin/chromium)")
    p.add_argument("--ui", help="use this running MLflow UI/server (http://HOST:PORT) instead of starting one")
    p.add_argument("--compare", type=int, default=3, help="runs in the compare view (default: 3)")
    return p.parse_args(argv)


def take(args) -> None:
    from playwright.sync_api import sync_playwright

    uri = args.tracking_uri or f"sqlite:///{Path(args.results_dir).expanduser().resolve() / 'mlflow.db'}"
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise ScreenshotError(f"no MLflow store at {uri.removeprefix('sqlite:///')}; pass --results-dir")
    client, exp, parent, trials = study_runs(uri, args.study)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = Path(tempfile.gettempdir()) / "mlflow-ui-screenshots.log"
    if args.ui:
        base, proc = args.ui.rstrip("/"), None
        link = tracking.ui_link(base, exp.experiment_id)
    else:
        port = free_port()
        base, proc = f"http://127.0.0.1:{port}", start_ui(uri, port, log)
        link = tracking.ui_link(uri, exp.experiment_id, port)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, args=CHROMIUM_FLAGS, headless=True)
            context = browser.new_context(viewport=VIEWPORT)  # a fresh profile: as a first visit
            context.add_init_script(NO_ASSISTANT)
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            try:
                shoot(page, client, base, link, exp, parent, trials, args.compare, out)
            except Exception as err:
                failed = Path(tempfile.gettempdir()) / "mlflow-ui-failed.png"
                page.screenshot(path=failed)
                raise ScreenshotError(f"{type(err).__name__}: {tracking.one_line(str(err).splitlines()[0], 300)} "
                                      f"(the page then: {failed}; mlflow ui's log: {log})") from err
            browser.close()
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    log.unlink(missing_ok=True)  # kept when something failed
    for name in ("runs-table.png", "run-artifacts.png", "compare.png"):
        print(f"saved {out / name}")


def shoot(page, client, base: str, link: str, exp, parent, trials, n_compare: int, out: Path) -> None:
    check_link(page, link, parent.info.run_name)
    runs_table(page, parent.info.run_id, trials[0].info.run_id, out / "runs-table.png")
    picture = run_artifacts(page, client, base, exp.experiment_id, trials[0], out / "run-artifacts.png")
    compare(page, base, exp.experiment_id, trials[:n_compare], picture, out / "compare.png")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        take(args)
    except ScreenshotError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
