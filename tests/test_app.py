"""End to end in the real FiftyOne App: propagate masks with the plugin, serve the App from a subprocess, drive
Debian's headless Chromium with Playwright, and check (and keep) two screenshots:

- ``artifacts/app/sample_with_masks.png``: the sample open in the App's modal, on the clip's LAST frame, with
  ``frames.frtm`` (the propagated Segmentation) shown;
- ``artifacts/app/propagate_form.png``: the ``propagate`` operator's form, opened from the operator browser.

``artifacts/app/sample_without_masks.png`` (the same frame with every label field hidden) is kept beside them, and
``*_failure.png`` shots when a step fails. Skipped (not failed) only when Chromium, Playwright or the App server
cannot start here at all. Chromium comes from Debian (``scripts/setup.sh --test``); Playwright never downloads one.
"""

import contextlib
import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

fo = pytest.importorskip("fiftyone")
pw = pytest.importorskip("playwright.sync_api")

import frtm_plugin  # noqa: E402
from frtm_plugin.io.davis import load_sequence  # noqa: E402
from frtm_plugin.io.labels import read_label_png  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "demo"
ARTIFACTS = ROOT / "artifacts" / "app"
N_FRAMES = 8
CHROMIUM = os.environ.get("FRTM_CHROMIUM", "/usr/bin/chromium")
# Flags from the build notes: without the networking ones Chromium keeps dialling Google on this closed network.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"]
VIEWPORT = {"width": 1400, "height": 900}
# The propagated mask is drawn in a colour the scene lacks, so it can be found in the screenshot.
OVERLAY = "#ffff00"


def _write_video(path: Path, frames, fps=10):
    """H.264 MP4 (the only video the App plays)."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def _overlay_scheme():
    """frames.frtm and its instances drawn in the overlay colour, so they can be found in a screenshot."""
    return fo.ColorScheme(color_by="field", opacity=0.7, fields=[
        {"path": "frames.frtm", "fieldColor": OVERLAY, "maskTargetsColors": [{"intTarget": 1, "color": OVERLAY}]},
        {"path": "frames.frtm_instances", "fieldColor": OVERLAY}])


@pytest.fixture(scope="module")
def app_dataset(tmp_path_factory):
    """A persistent one-video dataset (the App server is another process) with gt, a first-frame prompt and the
    plugin's output: frames.frtm (Segmentation) and frames.frtm_instances (Detections)."""
    seq = load_sequence(DEMO, "rollerblade")
    path = tmp_path_factory.mktemp("app-media") / "rollerblade.mp4"
    _write_video(path, [seq.read_frame(i) for i in range(N_FRAMES)])
    gts = [read_label_png(seq.annotation_paths[i]) for i in range(N_FRAMES)]
    name = f"frtm-app-{os.getpid()}"
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    ds = fo.Dataset(name, persistent=True)
    try:
        ds.add_sample(fo.Sample(filepath=str(path)))
        s = ds.first()
        for i, gt in enumerate(gts):
            s.frames[i + 1]["gt"] = fo.Segmentation(mask=gt)
        s.frames[1]["prompt"] = fo.Segmentation(mask=gts[0])
        s.save()
        ds.compute_metadata()
        ds.app_config.color_scheme = _overlay_scheme()
        ds.save()
        report = frtm_plugin.propagate(ds, "prompt", "frtm", model="d-only", max_size=256, progress=False)
        assert len(report.processed) == 1 and report.frames == N_FRAMES
        schema = ds.get_frame_field_schema()
        assert {"frtm", "frtm_instances"} <= set(schema)
        yield ds
    finally:
        ds.delete()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen):
    """The server runs in its own session: end its whole process group (Ctrl-C first, as a user would)."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGINT, 10), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            pass


@pytest.fixture(scope="module")
def app_url(app_dataset, tmp_path_factory):
    """The App server (``python -m fiftyone.server.main``) in a subprocess, on a free port, sharing this process's
    database and plugins folder (conftest.py's environment)."""
    port = _free_port()
    log = tmp_path_factory.mktemp("app-server") / "server.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "fiftyone.server.main", "--port", str(port),
                                 "--address", "127.0.0.1"], env=os.environ.copy(), cwd=ROOT,
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.skip(f"the FiftyOne App server exited ({proc.returncode}): {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url + "/", timeout=5) as r:  # loopback: the App server started above
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.skip(f"the FiftyOne App server did not answer within 120 s: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        # A fresh server holds no dataset, and the first browser to connect sometimes ends on "No dataset selected"
        # (a race in the App's start-up). Open the dataset once through the App's own event endpoint, as the App's
        # initializer would, so the server's state holds it before any browser connects.
        _load_in_server(url, app_dataset.name)
        yield url
    finally:
        _stop(proc)


def _load_in_server(url, name):
    """(Re)load a dataset into the App server's state through the App's own event endpoint, as the App's
    initializer does: the state then holds the dataset and its current App config (the colour scheme)."""
    body = ('{"initializer": {"dataset": "%s"}, "events": ["state_update"], "subscription": "frtm-test-%s",'
            ' "polling": true}' % (name, time.monotonic_ns())).encode()
    req = urllib.request.Request(url + "/events", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:  # loopback only
        assert name in r.read().decode()


@pytest.fixture(scope="module")
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no Chromium at {CHROMIUM} (scripts/setup.sh --test installs Debian's chromium)")
    try:
        play = pw.sync_playwright().start()
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"Playwright could not start: {e}")
    try:
        try:
            b = play.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS, timeout=60_000)
        except Exception as e:  # noqa: BLE001
            pytest.skip(f"Chromium could not start: {e}")
        try:
            yield b
        finally:
            b.close()
    finally:
        play.stop()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport=VIEWPORT)
    pg = ctx.new_page()
    pg.set_default_timeout(30_000)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield pg
    finally:
        ctx.close()


@contextlib.contextmanager
def _failure_shot(pg, name):
    """On a failure, keep what the browser showed as artifacts/app/<name>_failure.png."""
    (ARTIFACTS / f"{name}_failure.png").unlink(missing_ok=True)
    try:
        yield
    except BaseException:
        try:
            pg.screenshot(path=str(ARTIFACTS / f"{name}_failure.png"))
        except Exception:  # noqa: BLE001
            pass
        raise


def _open(pg, url, ready_selector, attempts=2):
    """Load a page of the App; reload once if it never gets ready (a start-up race of the App)."""
    for i in range(attempts):
        pg.goto(url, wait_until="load", timeout=60_000)
        try:
            pg.locator(ready_selector).first.wait_for(timeout=40_000)
            return
        except pw.TimeoutError:
            if i == attempts - 1:
                raise


def _png(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int32)


def _image_rect(shot: np.ndarray):
    """Where the video frame lies in a screenshot of the looker canvas: the rows and columns that differ from the
    canvas background (the frame is letterboxed on a flat background)."""
    bg = shot[2, 2]
    fg = np.abs(shot - bg).sum(-1) > 30
    rows, cols = np.flatnonzero(fg.mean(1) > 0.5), np.flatnonzero(fg.mean(0) > 0.5)
    return rows[0], rows[-1] + 1, cols[0], cols[-1] + 1


def _overlay_pixels(shot: np.ndarray) -> np.ndarray:
    """Pixels tinted by the yellow overlay at opacity 0.7: R, G >= 0.7 * 255, B <= 0.3 * 255."""
    r, g, b = shot[..., 0], shot[..., 1], shot[..., 2]
    return (r > 170) & (g > 170) & (b < 100)


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def _fit(mask: np.ndarray, h: int, w: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), Image.NEAREST)) > 0


def _close_modal(pg):
    """A click on the backdrop (the viewport's corner, outside the modal's panel) closes it; Escape does not while a
    control of the modal has the focus."""
    pg.mouse.click(VIEWPORT["width"] - 3, VIEWPORT["height"] - 3)
    pw.expect(pg.locator('[data-cy="modal"]')).to_be_hidden()


def _show_only(modal, fields_on, all_fields):
    for f in all_fields:
        box = modal.locator(f'[data-cy="checkbox-{f}"] input')
        if box.is_checked() != (f in fields_on):
            box.click()
    for f in all_fields:
        pw.expect(modal.locator(f'[data-cy="checkbox-{f}"] input')).to_be_checked(checked=f in fields_on)


def _go_to_frame(pg, modal, index):
    """Step the modal's video with the timeline's "Step forward" button to 0-based frame ``index``; return the
    playhead's text, switched to frame numbers ("#<index> / #<count>")."""
    time_label = modal.get_by_test_id("timeline-playhead-time")
    pw.expect(time_label).not_to_have_text("0:00.00 / 0:00.00", timeout=30_000)
    if not time_label.inner_text().startswith("#"):
        time_label.click()
    want = f"#{index} / #{N_FRAMES}"
    step = modal.get_by_test_id("timeline-controls-step-forward")
    for _ in range(2 * N_FRAMES):
        now = time_label.inner_text()
        if now == want:
            break
        step.click()
        pw.expect(time_label).not_to_have_text(now, timeout=10_000)
    pg.mouse.move(2, 2)
    pg.wait_for_timeout(1500)
    return time_label.inner_text()


def _go_to_last_frame(pg, modal):
    """Step the modal's video to its last frame; return the playhead's text ("#<index> / #<count>", from 0)."""
    return _go_to_frame(pg, modal, N_FRAMES - 1)


def test_sample_modal_shows_propagated_masks(page, app_dataset, app_url):
    """Opens the sample in the modal (URL state ``?id=``), steps to the last frame, and screenshots the canvas with
    all label fields hidden, then with only frames.frtm shown.

    Checks: the DOM shows frames.frtm active and the playhead on the last frame; without labels no overlay-coloured
    pixels are present; with frames.frtm, the overlay-coloured pixels coincide with the stored mask of the LAST frame
    projected onto the displayed frame (IoU > 0.5), and clearly better than with the first frame's mask (the prompt),
    so what is shown is the propagated result, on the frame it belongs to."""
    ds = app_dataset
    sample = ds.first()
    last = sample.frames[N_FRAMES]["frtm"].get_mask() > 0
    first = sample.frames[1]["frtm"].get_mask() > 0
    assert _iou(last, first) < 0.5, "the object hardly moves: the frame check below would be meaningless"
    fields = ["frames.gt", "frames.prompt", "frames.frtm", "frames.frtm_instances"]

    with _failure_shot(page, "sample_with_masks"):
        _check_sample_modal(page, app_url, ds, sample, last, first, fields)


def _check_sample_modal(page, app_url, ds, sample, last, first, fields):
    _open(page, f"{app_url}/datasets/{ds.name}?id={sample.id}", '[data-cy="modal"] [data-cy="checkbox-frames.frtm"]')
    modal = page.locator('[data-cy="modal"]')
    canvas = modal.locator('[data-cy="looker"] canvas')

    _show_only(modal, [], fields)
    _go_to_last_frame(page, modal)
    off = _png(canvas.screenshot())
    page.screenshot(path=str(ARTIFACTS / "sample_without_masks.png"))

    _show_only(modal, ["frames.frtm"], fields)
    page.wait_for_timeout(1000)  # toggling a field reloads the looker (back to the first frame): step again
    playhead = _go_to_last_frame(page, modal)
    on = _png(canvas.screenshot())
    page.screenshot(path=str(ARTIFACTS / "sample_with_masks.png"))

    assert playhead == f"#{N_FRAMES - 1} / #{N_FRAMES}"
    assert modal.locator('[data-cy="checkbox-frames.frtm"] input').is_checked()

    scores = {}
    for name, shot in (("off", off), ("on", on)):
        y0, y1, x0, x1 = _image_rect(shot)
        h, w = y1 - y0, x1 - x0
        assert abs(w / h - last.shape[1] / last.shape[0]) < 0.03, (name, (y0, y1, x0, x1))
        tint = _overlay_pixels(shot[y0:y1, x0:x1])
        scores[name] = dict(tinted=tint.mean(), last=_iou(tint, _fit(last, h, w)), first=_iou(tint, _fit(first, h, w)))
    print("overlay checks:", scores)
    assert scores["off"]["tinted"] < 0.002, scores  # the scene itself has (almost) no overlay-coloured pixels
    assert scores["on"]["last"] > 0.5, scores  # the propagated mask is drawn where it was stored
    assert scores["on"]["last"] > scores["on"]["first"] + 0.2, scores  # ... for the frame on screen

    _close_modal(page)  # the server would reopen it for the next page


def test_propagate_operator_form(page, app_dataset, app_url):
    """Opens the operator browser (backtick key), searches "propagate", opens it and screenshots the form.

    Checks (DOM): the operator is listed under its label; the form's title and the labels "Prompt field",
    "Output field", "Model" appear; the prompt choice was resolved from the dataset (frames.prompt), the output field
    defaults to "frtm"; and with those defaults the form validates (no "Required property", Execute enabled)."""
    with _failure_shot(page, "propagate_form"):
        _check_form(page, app_url, app_dataset)


def _check_form(page, app_url, app_dataset):
    _open(page, f"{app_url}/datasets/{app_dataset.name}", '[data-cy="fo-grid"]')
    modal = page.locator('[data-cy="modal"]')
    page.wait_for_timeout(1500)  # the App restores the server's state (an open sample) shortly after loading
    if modal.is_visible():  # the server remembers a sample left open: back to the grid
        _close_modal(page)
    dismiss = page.get_by_role("button", name="Dismiss")  # the "Enterprise" pop-up, beside the form
    if dismiss.count() and dismiss.first.is_visible():
        dismiss.first.click()
    page.keyboard.press("`")
    page.keyboard.type("propagate")
    entry = page.get_by_text("FRTM: propagate masks through videos")
    pw.expect(entry).to_be_visible()
    entry.click()

    dialog = page.locator('[data-cy="operators-prompt-modal"]')
    pw.expect(dialog).to_be_visible()
    pw.expect(dialog.get_by_role("button", name="Execute")).to_be_enabled(timeout=30_000)
    pw.expect(dialog.get_by_text("Required property")).to_have_count(0)
    page.screenshot(path=str(ARTIFACTS / "propagate_form.png"))

    text = dialog.inner_text()
    for label in ("FRTM: propagate masks", "Prompt field", "Output field", "Model", "frames.prompt"):
        assert label in text, (label, text)
    assert "frtm" in dialog.locator("input").evaluate_all("els => els.map(e => e.value)")


# -- keyframes drawn the App's way, propagated from the App's form ------------------------------------------------------

KEYFRAME = 5  # frame_number of the annotated (middle) frame; the App shows it as "#4"


@pytest.fixture(scope="module")
def keyframe_dataset(tmp_path_factory):
    """A video whose only prompt is a box the App's way on a middle frame: ``frames.prompts`` Detections, one
    ``fo.Instance``, ``keyframe=True`` there and box-only copies with ``keyframe=False`` on the later frames, and the
    annotation schema active (as the demo leaves it)."""
    seq = load_sequence(DEMO, "rollerblade")
    path = tmp_path_factory.mktemp("app-kf-media") / "rollerblade.mp4"
    _write_video(path, [seq.read_frame(i) for i in range(N_FRAMES)])
    gt = read_label_png(seq.annotation_paths[KEYFRAME - 1]) == 1
    name = f"frtm-app-kf-{os.getpid()}"
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    ds = fo.Dataset(name, persistent=True)
    try:
        ds.add_sample(fo.Sample(filepath=str(path)))
        rows, cols = np.flatnonzero(gt.any(1)), np.flatnonzero(gt.any(0))
        h, w = gt.shape
        box = [cols[0] / w, rows[0] / h, (cols[-1] + 1 - cols[0]) / w, (rows[-1] + 1 - rows[0]) / h]
        skater = fo.Instance()
        s = ds.first()
        for fn in range(KEYFRAME, N_FRAMES + 1):
            s.frames[fn]["prompts"] = fo.Detections(detections=[fo.Detection(
                label="skater", bounding_box=box, instance=skater, keyframe=fn == KEYFRAME)])
        s.save()
        ds.compute_metadata()
        ds.set_label_schemas({"frames.prompts": ds.generate_label_schemas("frames.prompts")})
        ds.activate_label_schemas("frames.prompts")
        ds.app_config.color_scheme = _overlay_scheme()
        ds.save()
        yield ds
    finally:
        ds.delete()


def test_keyframe_box_propagated_from_the_app_form(page, keyframe_dataset, app_url):
    """A box drawn the App's way on a middle frame, the propagate operator run from the App's own form (D-only for
    speed, direction both), then the result on a frame BEFORE the keyframe and one after it, in the modal.

    Screenshots: ``keyframe_form.png`` (the form with the keyframes it found), ``keyframe_before.png`` (frame #1,
    before the keyframe: filled by the backward pass) and ``keyframe_after.png`` (frame #7). Checks: the form says it
    found 1 keyframe label and ignores the App's copies; after Execute the dataset holds the output on every frame;
    on both frames the overlay-coloured pixels coincide with the stored mask of that frame (IoU > 0.5)."""
    ds = keyframe_dataset
    with _failure_shot(page, "keyframe"):
        _open(page, f"{app_url}/datasets/{ds.name}", '[data-cy="fo-grid"]')
        page.wait_for_timeout(1500)
        if page.locator('[data-cy="modal"]').is_visible():
            _close_modal(page)
        dismiss = page.get_by_role("button", name="Dismiss")
        if dismiss.count() and dismiss.first.is_visible():
            dismiss.first.click()
        page.keyboard.press("`")
        page.keyboard.type("propagate")
        page.get_by_text("FRTM: propagate masks through videos").click()
        dialog = page.locator('[data-cy="operators-prompt-modal"]')
        pw.expect(dialog).to_be_visible()
        pw.expect(dialog.get_by_text(re.compile(r"Keyframes: 1 keyframe label"))).to_be_visible(timeout=30_000)
        assert "copies the App made between keyframes are ignored" in dialog.inner_text()
        dialog.get_by_text("Target model only (no S)").click()
        execute = dialog.get_by_role("button", name="Execute")
        pw.expect(execute).to_be_enabled(timeout=30_000)
        pw.expect(dialog.get_by_text("Required property")).to_have_count(0)
        page.screenshot(path=str(ARTIFACTS / "keyframe_form.png"))
        execute.click()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            ds.reload()
            if "frtm" in ds.get_frame_field_schema() and ds.count("frames.frtm") == N_FRAMES \
                    and ds.first()["frtm_frtm"] is not None:
                break
            time.sleep(1)
        assert ds.count("frames.frtm") == N_FRAMES, "the operator run from the App did not label every frame"
        cfg = frtm_plugin.run_config(ds, "frtm")
        assert cfg["direction"] == "both" and cfg["model"] == "d-only"
        sample = ds.first()
        masks = {fn: sample.frames[fn]["frtm"].get_mask() == 1 for fn in (2, 8)}
        assert all(m.any() for m in masks.values())

        page.keyboard.press("Escape")
        _open(page, f"{app_url}/datasets/{ds.name}?id={sample.id}",
              '[data-cy="modal"] [data-cy="checkbox-frames.frtm"]')
        modal = page.locator('[data-cy="modal"]')
        canvas = modal.locator('[data-cy="looker"] canvas')
        _show_only(modal, ["frames.frtm"], ["frames.prompts", "frames.frtm", "frames.frtm_instances"])
        page.wait_for_timeout(1000)
        scores = {}
        for fn, shot_name in ((2, "keyframe_before"), (8, "keyframe_after")):  # the second steps on from the first
            assert _go_to_frame(page, modal, fn - 1) == f"#{fn - 1} / #{N_FRAMES}"
            shot = _png(canvas.screenshot())
            page.screenshot(path=str(ARTIFACTS / f"{shot_name}.png"))
            y0, y1, x0, x1 = _image_rect(shot)
            tint = _overlay_pixels(shot[y0:y1, x0:x1])
            scores[fn] = _iou(tint, _fit(masks[fn], y1 - y0, x1 - x0))
        print("keyframe overlay IoU per frame:", scores)
        assert all(v > 0.5 for v in scores.values()), scores
        _close_modal(page)


def _plot_traces(pg, panel_id):
    """The traces Plotly holds for the panel's plot: [{name, x, y}]."""
    handle = pg.wait_for_function("""(id) => {
        const plot = document.querySelector(`[data-cy="panel-content-${id}"] .js-plotly-plot`);
        return plot && plot.data ? plot.data.map(t => ({name: t.name, x: Array.from(t.x || []),
                                                         y: Array.from(t.y || [])})) : null;
    }""", arg=panel_id, timeout=30_000)  # the panel redraws its plot as frames load
    return handle.json_value()


def test_modal_panel_plots_jf_and_moves_the_playhead(page, app_dataset, app_url):
    """The modal's "FRTM: J&F over the video" panel beside the video (split view): one J line per object with the
    stored J; a click on the plot at frame 5 moves the video there (the timeline then reads "#4", 0-based), and a step
    of the video's own timeline moves the plot's playhead marker to frame 6. Screenshot:
    artifacts/app/jf_timeline_panel.png."""
    from frtm_plugin.fo import sdk

    ds = app_dataset
    frtm_plugin.evaluate(ds, "frtm", "gt", eval_key="davis", progress=False)
    sample = ds.first()
    series = sdk.jf_series(sample, ds, "davis")
    panel_id = "frtm_jf_timeline"
    _load_in_server(app_url, ds.name)  # the test before used another dataset: the server's state holds this one
    with _failure_shot(page, "jf_timeline_panel"):
        modal = page.locator('[data-cy="modal"]')
        plot = modal.locator(f'[data-cy="panel-content-{panel_id}"] .js-plotly-plot')
        attempts = 3
        for attempt in range(attempts):
            try:
                _open(page, f"{app_url}/datasets/{ds.name}?id={sample.id}",
                      '[data-cy="modal"] [data-cy="checkbox-frames.frtm"]')
                tab = modal.locator(f'[data-cy="panel-tab-{panel_id}"]')
                try:  # 1.22 lists the plugin's modal panels as tabs of the modal
                    tab.wait_for(timeout=15_000)
                except pw.TimeoutError:  # otherwise they are one click away, in the "+" menu
                    modal.locator('[data-cy="new-panel-btn"]').first.click()
                    page.get_by_text("FRTM: J&F over the video").first.click()
                tab.click()
                split = modal.locator('button[title="Split horizontally"]').first
                try:  # a second attempt finds the panel beside the video already: the App keeps the layout
                    split.wait_for(timeout=10_000)
                    split.click()
                except pw.TimeoutError:
                    pass
                pw.expect(plot).to_be_visible(timeout=60_000)
                traces = {t["name"]: t for t in _plot_traces(page, panel_id)}
                break
            except (AssertionError, pw.TimeoutError):
                # On a loaded machine the App can apply the server's state (no sample open) after the modal opened,
                # closing it before the panel or its plot is there: open it again (as _open reloads a slow
                # start-up). A modal still open without the plot is a real failure.
                if attempt == attempts - 1 or modal.is_visible():
                    raise
        objects = list(series["objects"])
        assert [n for n in traces if n.endswith(" J")] == [f"object {o} J" for o in objects]
        for o in objects:
            assert traces[f"object {o} J"]["y"] == pytest.approx(series["objects"][o]["J"], nan_ok=True)
        assert traces["frame J&F"]["y"] == pytest.approx(series["JF"], nan_ok=True)
        # the frames the protocol does not score (here the first and the last) are grey bands on the plot
        bands = page.evaluate("""(id) => (document.querySelector(`[data-cy="panel-content-${id}"] .js-plotly-plot`)
            .layout.shapes || []).map(b => (b.x0 + b.x1) / 2)""", panel_id)
        assert bands == [1, N_FRAMES] and "not scored (DAVIS protocol)" in traces

        time_label = modal.get_by_test_id("timeline-playhead-time")
        pw.expect(time_label).not_to_have_text("0:00.00 / 0:00.00", timeout=30_000)
        time_label.click()  # frame numbers instead of time
        pw.expect(time_label).to_have_text(f"#0 / #{N_FRAMES}")
        area = plot.locator(".nsewdrag").first.bounding_box()
        x_min, x_max = 0.5, N_FRAMES + 0.5  # the x axis range the panel sets
        page.mouse.click(area["x"] + area["width"] * (5 - x_min) / (x_max - x_min), area["y"] + area["height"] / 2)
        pw.expect(time_label).to_have_text(f"#4 / #{N_FRAMES}", timeout=30_000)

        modal.get_by_test_id("timeline-controls-step-forward").click()
        pw.expect(time_label).to_have_text(f"#5 / #{N_FRAMES}", timeout=10_000)
        deadline = time.monotonic() + 30
        while _plot_traces(page, panel_id)[-1]["x"] != [6, 6]:
            assert time.monotonic() < deadline, f"the playhead marker stayed at {_plot_traces(page, panel_id)[-1]}"
            page.wait_for_timeout(250)
        page.mouse.move(2, 2)
        page.screenshot(path=str(ARTIFACTS / "jf_timeline_panel.png"))
    _close_modal(page)


def test_heatmap_at_frame_size_in_the_colour_scale(page, app_dataset, app_url):
    """Coarse-score heatmaps stored by a propagation, shown alone on the last frame with "colour by value" chosen
    in the App's colour settings: drawn in the viridis scale, green to yellow (scores from 0.5 up) where the stored
    mask is, purple (low scores) or nothing (0) elsewhere. Screenshot: artifacts/app/heatmap.png."""
    ds = app_dataset
    frtm_plugin.propagate(ds, "prompt", "scored", model="d-only", max_size=256, store_heatmaps=True, progress=False)
    last = ds.first().frames[N_FRAMES]["scored"].get_mask() > 0
    assert any(c["path"] == "frames.scored_scores" for c in ds.app_config.color_scheme.colorscales)
    fields = ["frames.gt", "frames.prompt", "frames.frtm", "frames.frtm_instances", "frames.scored",
              "frames.scored_instances", "frames.scored_scores"]
    try:
        with _failure_shot(page, "heatmap"):
            _open(page, f"{app_url}/datasets/{ds.name}?id={ds.first().id}",
                  '[data-cy="modal"] [data-cy="checkbox-frames.scored_scores"]')
            modal = page.locator('[data-cy="modal"]')
            sample_tab = modal.locator('[data-cy="panel-tab-fo-sample-modal-plugin"]')
            if sample_tab.count():
                sample_tab.first.click()
            _show_only(modal, ["frames.scored_scores"], fields)
            # As a user would: colour annotations by value (the App draws heatmaps in the field's colour, fading
            # with the score, when colouring by field).
            modal.locator('[data-cy="action-color-settings"]').first.click()
            page.locator('[data-cy="colorBy-controls"]').get_by_text("value", exact=True).click()
            page.locator('[data-cy="close-color-modal"]').click()
            page.wait_for_timeout(1000)
            _go_to_last_frame(page, modal)
            shot = _png(modal.locator('[data-cy="looker"] canvas').screenshot())
            page.screenshot(path=str(ARTIFACTS / "heatmap.png"))
            _close_modal(page)
        y0, y1, x0, x1 = _image_rect(shot)
        region = shot[y0:y1, x0:x1]
        inside = _fit(last, y1 - y0, x1 - x0)
        green_over_blue = region[..., 1] - region[..., 2]  # viridis: > 0 from teal (0.5) up, < 0 at its purple end
        inside_gb, outside_gb = green_over_blue[inside].mean(), green_over_blue[~inside].mean()
        print("G - B inside / outside the mask:", inside_gb, outside_gb)
        assert inside_gb > outside_gb + 40
    finally:
        for f in ("scored", "scored_instances", "scored_scores"):
            ds.delete_frame_field(f)
        ds.delete_sample_fields(["scored_frtm", "scored_frtm_keyframes"])
        ds.app_config.color_scheme = _overlay_scheme()
        ds.save()
        _load_in_server(app_url, ds.name)


def test_grid_panel_lists_videos_with_their_jf(page, app_dataset, app_url):
    """The grid's "FRTM: J&F per video" panel, opened from the "+" beside the Samples tab: one bar per video and the
    dataset summary of the evaluation, the same numbers the SDK stored. Screenshot: artifacts/app/jf_videos_panel.png.
    """
    ds = app_dataset
    summary = frtm_plugin.evaluate(ds, "frtm", "gt", eval_key="davis", progress=False)
    with _failure_shot(page, "jf_videos_panel"):
        _open(page, f"{app_url}/datasets/{ds.name}", '[data-cy="fo-grid"]')
        dismiss = page.get_by_text("Dismiss", exact=True)
        if dismiss.count():  # FiftyOne's Enterprise banner covers the panel bar
            dismiss.first.click()
        tab = page.get_by_text("Samples", exact=True).first.bounding_box()
        page.mouse.click(tab["x"] + tab["width"] + 40, tab["y"] + tab["height"] / 2)  # the "+" of the panel bar
        page.get_by_text("FRTM: J&F per video").first.click()
        bars = page.locator(".js-plotly-plot .barlayer .point")
        pw.expect(bars).to_have_count(len(ds), timeout=60_000)
        pw.expect(page.get_by_text(f"{summary['overall']['J&F']:.3f}", exact=True).first).to_be_visible()
        pw.expect(page.get_by_text("Show the worst frames")).to_be_visible()
        page.mouse.move(2, 2)
        page.screenshot(path=str(ARTIFACTS / "jf_videos_panel.png"))
        # Close it: the App keeps open panels in the session. (Last in this file: the session update that closing
        # sends can close a modal that a test after it has just opened.)
        page.locator('[data-cy="panel-tab-frtm_jf_videos"] button[title="Close"]').first.click()
        pw.expect(page.locator('[data-cy="panel-tab-frtm_jf_videos"]')).to_have_count(0)
