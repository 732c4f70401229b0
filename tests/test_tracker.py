"""The streaming tracker on real clips, the multi-object merge, and its errors on bad input."""

import math

import numpy as np
import pytest
import torch

from frtm_plugin.core.backbone import build_backbone
from frtm_plugin.core.merge import merge_labels, soft_aggregate
from frtm_plugin.core.segnet import SegNetwork
from frtm_plugin.core.target_model import SolverConfig
from frtm_plugin.core.tracker import FRTMTracker, TrackerConfig, fit_mask, masks_from_label_map
from frtm_plugin.io.davis import load_sequence, sequence_from_dirs
from frtm_plugin.io.labels import read_label_png
from frtm_plugin.metrics import evaluate_sequence

# J and F of D-only MobileNetV2 (offline ImageNet weights, layer4, released solver settings, 5 first-frame samples)
# on the first FRAMES frames at 854x480, measured on CPU; the floors sit a few points below to guard regressions.
FRAMES = 20
D_ONLY_FLOORS = {  # sequence: (J floor, F floor)
    "dog-agility": (0.70, 0.57),  # measured 0.746, 0.617
    "rollerblade": (0.72, 0.77),  # measured 0.768, 0.826
    "motorbike": (0.75, 0.73),  # measured 0.804, 0.784
}


@pytest.fixture(scope="module")
def mobilenet():
    return build_backbone("mobilenet_v2")  # offline ImageNet weights from the installed package


# -- merge -------------------------------------------------------------------------------------------------------

def test_soft_aggregate_keeps_only_the_winner():
    p = torch.tensor([[[0.9, 0.2, 0.6]], [[0.8, 0.1, 0.7]]])
    merged = soft_aggregate(p)
    assert merged.shape == (3, 1, 3)
    assert ((merged > 0).sum(dim=0) == 1).all()
    assert merged[:, 0, 1].argmax() == 0  # both low: background wins


def test_soft_aggregate_equals_the_plain_torch_formula():
    """The row-by-row arithmetic is the released formula: min background, odds, softmax over rows, winner only."""
    from frtm_plugin.core.merge import EPS

    g = torch.Generator().manual_seed(1)
    for n in (1, 3, 7):
        probs = torch.rand(n, 48, 64, generator=g)
        probs[:, :4] = 0.0  # clamped corners of the formula
        probs[:, -4:] = 1.0
        p = probs.clamp(EPS, 1 - EPS)
        p = torch.cat([(1 - p).min(dim=0, keepdim=True).values, p], dim=0)
        segs = torch.softmax(p / (1 - p), dim=0)
        reference = segs * (torch.arange(n + 1).view(-1, 1, 1) == segs.argmax(dim=0, keepdim=True))
        assert torch.allclose(soft_aggregate(probs), reference, atol=1e-6)


def test_released_merge_is_winner_and_above_half():
    g = torch.Generator().manual_seed(0)
    p = torch.rand(3, 40, 40, generator=g)
    first = soft_aggregate(p)
    winner = first.argmax(dim=0)
    expected = torch.where(first.max(dim=0).values > 0.5, winner, torch.zeros_like(winner))
    expected[winner == 0] = 0
    assert torch.equal(merge_labels(p, "released"), expected)
    assert torch.equal(merge_labels(p, "single"), winner)
    assert not torch.equal(merge_labels(p, "released"), merge_labels(p, "single"))  # the modes do differ here


def test_single_object_merge_is_threshold_half():
    p = torch.rand(1, 30, 30, generator=torch.Generator().manual_seed(1))
    for mode in ("released", "single"):
        assert torch.equal(merge_labels(p, mode), (p[0] > 0.5).long())


# -- masks ---------------------------------------------------------------------------------------------------------

def test_fit_mask_pads_one_pixel_and_rejects_more():
    m = np.ones((480, 853), np.uint8)
    fitted = fit_mask(m, (480, 854), 1)
    assert fitted.shape == (480, 854) and fitted[:, :853].all() and not fitted[:, 853].any()
    assert fit_mask(np.ones((481, 855), bool), (480, 854), 1).all()
    with pytest.raises(ValueError, match="852.*480x854|480x852"):
        fit_mask(np.ones((480, 852), bool), (480, 854), 7)


def test_masks_from_label_map_skips_background_and_void():
    lm = np.array([[0, 1, 255], [3, 3, 0]], np.uint8)
    masks = masks_from_label_map(lm)
    assert sorted(masks) == [1, 3] and masks[3].sum() == 2


# -- bad input -----------------------------------------------------------------------------------------------------

def _tiny_tracker(backbone, **kw):
    cfg = TrackerConfig(solver=SolverConfig(channels=8, init_cg_iters=(2,), update_cg_iters=(2,)), num_aug=1, **kw)
    return FRTMTracker(backbone, None, cfg)


def test_errors_on_bad_input(mobilenet):
    frame = np.zeros((64, 96, 3), np.uint8)
    tr = _tiny_tracker(mobilenet)
    with pytest.raises(ValueError, match="no object to track"):
        tr.step(frame)
    with pytest.raises(ValueError, match="no object to track"):  # only "not visible here": nothing to follow
        tr.step(frame, {1: np.zeros((64, 96), bool)})
    mask = np.zeros((64, 96), bool)
    mask[20:40, 30:60] = True
    with pytest.raises(ValueError, match="62x96.*64x96"):
        tr.step(frame, {1: mask[:62]})
    with pytest.raises(ValueError, match="uint8"):
        tr.step(frame.astype(np.float32), {1: mask})
    with pytest.raises(ValueError, match="object ids"):
        tr.step(frame, {255: mask})
    for bad in (-0.5, float("nan")):
        with pytest.raises(ValueError, match="search_margin must be >= 0"):
            FRTMTracker(mobilenet, None, TrackerConfig(search_margin=bad))
        with pytest.raises(ValueError, match="search_growth must be >= 0"):
            FRTMTracker(mobilenet, None, TrackerConfig(search_growth=bad))
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match=r"auto_hide must be in \[0, 1\)"):
            FRTMTracker(mobilenet, None, TrackerConfig(auto_hide=bad))
    out = tr.step(frame, {1: mask[:, :95]})  # one pixel narrow: padded
    assert out.labels.shape == (64, 96) and (out.labels == 1).sum() == mask[:, :95].sum()


def test_a_failed_step_leaves_the_frame_counter(mobilenet):
    """A step that raises is not a frame: the next error (and the next object's start) names the right frame."""
    frame = np.zeros((64, 96, 3), np.uint8)
    mask = np.zeros((64, 96), bool)
    mask[20:40, 30:60] = True
    tr = _tiny_tracker(mobilenet)
    for bad in ({1: mask[:60]}, {1: np.zeros((64, 96), bool)}, {300: mask}):
        with pytest.raises(ValueError):
            tr.step(frame, bad)
        assert tr.frame_index == -1 and not tr.objects
    tr.step(frame, {1: mask})
    assert tr.frame_index == 0
    with pytest.raises(ValueError, match="frame 1: the mask of object 2 is 60x96"):
        tr.step(frame, {2: mask[:60]})
    tr.step(frame, {2: np.zeros((64, 96), bool)})  # "not visible here" for an object not started: it waits
    assert tr.frame_index == 1 and 2 not in tr.objects
    tr.step(frame, {2: mask})
    assert tr.frame_index == 2 and tr.objects[2].start_frame == 2 and tr.objects[1].start_frame == 0


def test_default_inference_cap_shrinks_large_frames_only(mobilenet):
    from frtm_plugin.core.tracker import DEFAULT_MAX_SIZE, inference_size

    assert TrackerConfig().max_size == DEFAULT_MAX_SIZE
    assert inference_size((2160, 3840), DEFAULT_MAX_SIZE) == (480, 854)
    assert inference_size((480, 854), DEFAULT_MAX_SIZE) == (480, 854)  # DAVIS 480p runs at its own size
    assert inference_size((2160, 3840), None) == (2160, 3840)  # None still means full resolution


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    from frtm_plugin.models import build_tracker

    with pytest.raises(FileNotFoundError, match="model checkpoint not found"):
        build_tracker(str(tmp_path / "nope.pth"))


def test_models_fill_only_the_settings_left_to_them(tmp_path, mobilenet):
    """Our models (the shipped checkpoint's meta, D-only) set D's memory rate; an explicit setting wins; a
    checkpoint without inference settings (the authors' format) keeps the released rate."""
    from frtm_plugin.core.segnet import save_segnet_checkpoint
    from frtm_plugin.core.target_model import OFFLINE_LEARNING_RATE, RELEASED_LEARNING_RATE, TargetModel
    from frtm_plugin.models import (DEFAULT_CHECKPOINT, D_ONLY_INFERENCE, OFFLINE_INFERENCE, SEARCH_MARGIN,
                                    build_tracker, model_config, model_inference)

    assert OFFLINE_LEARNING_RATE != RELEASED_LEARNING_RATE
    assert model_inference(None) == D_ONLY_INFERENCE  # D-only: the memory rate, and its probability's gain
    assert D_ONLY_INFERENCE["solver"] == OFFLINE_INFERENCE["solver"]
    d_only = model_config(TrackerConfig(), D_ONLY_INFERENCE)
    assert d_only.d_only_gain == D_ONLY_INFERENCE["tracker"]["d_only_gain"] != 1.0
    assert d_only.solver.learning_rate == OFFLINE_LEARNING_RATE
    assert model_config(TrackerConfig(d_only_gain=1.0), D_ONLY_INFERENCE).d_only_gain == 1.0  # explicit wins
    # both keep D's scores near the object's last box; an explicit margin (math.inf: the whole frame) wins
    assert d_only.search_margin == OFFLINE_INFERENCE["tracker"]["search_margin"] == SEARCH_MARGIN
    assert model_config(TrackerConfig(search_margin=math.inf), OFFLINE_INFERENCE).search_margin == math.inf
    assert model_config(TrackerConfig(), {}).search_margin is None  # the authors' checkpoints: the whole frame
    # no model keeps a lost object's window or hides what D stops scoring (measured fragile: docs/tracker_settings.md)
    for config in (d_only, model_config(TrackerConfig(), OFFLINE_INFERENCE), model_config(TrackerConfig(), {})):
        assert config.search_growth is None and not config.auto_hide
    assert model_config(TrackerConfig(), OFFLINE_INFERENCE).d_only_gain is None  # models with S leave it
    assert model_inference({"meta": {}}) == {} and model_inference({"meta": {"inference": OFFLINE_INFERENCE}}) == \
        OFFLINE_INFERENCE
    assert model_config(TrackerConfig(), OFFLINE_INFERENCE).solver.learning_rate == OFFLINE_LEARNING_RATE
    assert model_config(TrackerConfig(), {}).solver.learning_rate is None
    mine = TrackerConfig(solver=SolverConfig(learning_rate=0.3), max_size=480, search_margin=1.0, search_growth=0.0,
                         auto_hide=0.0)
    assert model_config(mine, OFFLINE_INFERENCE) == mine
    with pytest.raises(ValueError, match="unknown entries.*'rate'"):
        model_config(TrackerConfig(), {"solver": {"rate": 0.1}})
    with pytest.raises(ValueError, match="unknown entries.*'segnet'"):
        model_config(TrackerConfig(), {"segnet": {}})
    with pytest.raises(ValueError, match="unknown entries.*'gain'"):
        model_config(TrackerConfig(), {"tracker": {"gain": 2.0}})

    # a model with learning_rate None runs at the released rate
    tm = TargetModel(4, SolverConfig(channels=2, init_cg_iters=(1,)))
    tm.initialize(torch.randn(1, 4, 3, 3), (torch.rand(1, 48, 48) > 0.5).float())
    assert tm.memory.learning_rate == RELEASED_LEARNING_RATE

    if DEFAULT_CHECKPOINT.is_file():
        tracker, _ = build_tracker("default", config=TrackerConfig(max_size=480))
        assert tracker.config.solver.learning_rate == OFFLINE_LEARNING_RATE and tracker.config.max_size == 480
    assert build_tracker("d-only")[0].config == d_only
    released = tmp_path / "released.pth"
    torch.manual_seed(0)
    save_segnet_checkpoint(released, SegNetwork({k: mobilenet.channels[k] for k in mobilenet.seg_layers}),
                           {"backbone": "mobilenet_v2"})
    assert build_tracker(str(released))[0].config.solver.learning_rate is None


# -- real clips ----------------------------------------------------------------------------------------------------

def _run(tracker, seq, n_frames):
    prompts = seq.prompts()
    preds, gts = [], []
    for i in range(n_frames):
        out = tracker.step(seq.read_frame(i), masks_from_label_map(prompts[i]) if i in prompts else None)
        preds.append(out.labels.numpy().astype(np.uint8))
        gts.append(read_label_png(seq.annotation_paths[i]))
    return np.stack(gts), np.stack(preds)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(D_ONLY_FLOORS))
def test_d_only_mobilenet_on_davis(davis_root, mobilenet, name):
    torch.set_num_threads(2)
    tracker = FRTMTracker(mobilenet, None, TrackerConfig())
    seq = load_sequence(davis_root, name)
    gt, pred = _run(tracker, seq, FRAMES)
    res = evaluate_sequence(gt, pred)
    print(f"{name}: J={res.J_mean:.3f} F={res.F_mean:.3f} over frames 1..{FRAMES - 2}")
    j_floor, f_floor = D_ONLY_FLOORS[name]
    assert res.J_mean >= j_floor and res.F_mean >= f_floor
    # Memory is fixed once the object has started: nothing accumulates per frame.
    assert tracker.memory_bytes() == tracker.objects[1].target_model.memory.nbytes


@pytest.mark.slow
def test_judo_objects_entering_late(judo_root, mobilenet):
    """Objects 2..4 start on frames 5, 8, 13; 00005.png is one column narrower than the frame."""
    torch.set_num_threads(2)
    seq = sequence_from_dirs(judo_root / "JPEGImages", judo_root / "Annotations")
    prompts = seq.prompts()
    assert sorted(prompts) == [0, 5, 8, 13]
    tracker = FRTMTracker(mobilenet, None, TrackerConfig(max_size=480))
    starts = {1: 0, 2: 5, 3: 8, 4: 13}
    for i in range(len(seq)):
        out = tracker.step(seq.read_frame(i), masks_from_label_map(prompts[i]) if i in prompts else None)
        assert out.labels.shape == (480, 854)  # returned at the input size although inferred at 480x270
        present = set(torch.unique(out.labels).tolist()) - {0}
        started = {k for k, s in starts.items() if s <= i}
        assert present <= started, f"frame {i}: objects {present - started} appear before their start"
        assert set(out.probabilities) == started
        assert set(out.coarse_scores) == {k for k, s in starts.items() if s < i}
        if i in prompts:  # on its start frame an object is labelled from its own mask
            for obj_id, mask in masks_from_label_map(prompts[i]).items():
                m = fit_mask(mask, (480, 854), obj_id)
                lab = out.labels.numpy() == obj_id
                assert (lab & m).sum() / (lab | m).sum() > 0.9
        else:  # every started object is still found
            assert present == started, f"frame {i}: lost {started - present}"
    assert len(tracker.objects) == 4


def test_segmentation_network_path_runs(mobilenet):
    """D + S (random S weights): probabilities come from S at the inference size, not from D's upsampled scores."""
    torch.manual_seed(0)
    segnet = SegNetwork({k: mobilenet.channels[k] for k in mobilenet.seg_layers})
    cfg = TrackerConfig(solver=SolverConfig(channels=8, init_cg_iters=(2,), update_cg_iters=(2,)), num_aug=2)
    tracker = FRTMTracker(mobilenet, segnet, cfg)
    g = np.random.default_rng(0)
    frame = g.integers(0, 255, (96, 128, 3), dtype=np.uint8)
    mask = np.zeros((96, 128), bool)
    mask[30:60, 40:90] = True
    tracker.step(frame, {1: mask})
    out = tracker.step(frame)
    p = out.probabilities[1]
    assert p.shape == (96, 128) and (p > 0).all() and (p < 1).all()
    assert out.coarse_scores[1].shape == (6, 8)


def test_argmax_rows_equals_argmax_with_ties():
    from frtm_plugin.core.merge import argmax_rows

    x = torch.randint(0, 3, (4, 50, 60)).float()  # many ties
    assert torch.equal(argmax_rows(x), x.argmax(dim=0))


def _held_bytes(tracker) -> int:
    """Bytes of every tensor the tracker's objects hold (D's weights and the sample memory)."""
    total = 0
    for obj in tracker.objects.values():
        tm = obj.target_model
        total += sum(t.numel() * t.element_size() for t in (tm.w1, tm.w2)) + tm.memory.nbytes
    return total


@pytest.mark.slow
def test_memory_is_flat_on_a_long_video(long_video, mobilenet):
    """What the tracker holds does not grow with the video: after 120 frames (15 refits, the memory full after
    75 inserts) it holds exactly what it held after the first frame."""
    from frtm_plugin.io.video import iter_video_frames

    torch.set_num_threads(2)
    cfg = TrackerConfig(solver=SolverConfig(memory_size=40), num_aug=1, max_size=160)
    tracker = FRTMTracker(mobilenet, None, cfg)
    frames = iter_video_frames(long_video)
    first = next(frames)
    mask = np.zeros(first.shape[:2], bool)
    mask[300:500, 350:450] = True  # a person-sized box in the middle of the scene
    tracker.step(first, {1: mask})
    start = _held_bytes(tracker)
    for i, frame in zip(range(119), frames):
        tracker.step(frame)
    frames.close()
    tm = tracker.objects[1].target_model
    assert tm.frame_num == 119 and tm.memory.count == 40  # full: slots are being replaced
    assert _held_bytes(tracker) == start


def test_d_only_probability_definition(davis_root, mobilenet):
    """D-only's probability is D's upsampled score mapped by (gain, center): on the first tracked frame a sharper gain
    changes the probabilities by that map and not the mask; a lower center grows the mask; later frames differ
    because D's memory learned the sharper labels."""
    seq = load_sequence(davis_root, "rollerblade")
    frames = [seq.read_frame(i)[:240, :320] for i in range(11)]  # D is refitted on its memory every 8 frames
    first = masks_from_label_map(seq.prompts()[0][:240, :320])

    def run(**kw):
        tracker = FRTMTracker(mobilenet, None, TrackerConfig(max_size=None, **kw))
        outs = [tracker.step(frames[0], first)] + [tracker.step(f) for f in frames[1:]]
        return [o.probabilities[1] for o in outs[1:]], [o.labels for o in outs[1:]]

    (p, lab), (ps, labs), (pc, labc) = run(), run(d_only_gain=4.0), run(d_only_center=0.3)
    inside = (p[0] > 0) & (p[0] < 1)
    assert inside.sum() > 100
    assert torch.allclose(ps[0][inside], (0.5 + 4 * (p[0][inside] - 0.5)).clamp(0, 1), atol=1e-5)
    assert torch.equal(labs[0], lab[0])
    assert (labc[0] >= lab[0]).all() and labc[0].sum() > lab[0].sum()
    assert not torch.equal(ps[-1], (0.5 + 4 * (p[-1] - 0.5)).clamp(0, 1))


def test_search_window_cuts_positive_scores_outside_the_grown_box():
    """Cells whose centres lie outside the box grown by margin x its longer side keep only their negative scores;
    cells inside keep theirs; an infinite margin is the whole frame."""
    from frtm_plugin.core.tracker import search_window

    scores = torch.linspace(-1, 2, 6 * 8).reshape(6, 8)  # cells of 16 px on a 96x128 frame
    box = (32.0, 48.0, 48.0, 64.0)  # one cell: row 2, column 3; grown by 0.25 * 16 = 4 px
    cut = search_window(scores, box, (96, 128), 0.25)
    inside = torch.zeros(6, 8, dtype=torch.bool)
    inside[2, 3] = True
    assert torch.equal(cut[inside], scores[inside])
    assert torch.equal(cut[~inside], scores[~inside].clamp(max=0))
    assert (scores[~inside] > 0).any()  # something was cut
    grown = search_window(scores, box, (96, 128), 1.0)  # 16 px on every side: the 3x3 cells around it
    assert torch.equal(grown[1:4, 2:5], scores[1:4, 2:5]) and (grown[0] <= 0).all()
    assert search_window(scores, box, (96, 128), math.inf) is scores


def test_a_lost_object_is_looked_for_where_it_was_lost_in_a_growing_window(mobilenet):
    """An empty output keeps the window at the last box and grows it by search_growth x margin per frame lost; the
    next output moves it; with infinite growth (as before) a lost object is looked for in the whole frame; a "not
    visible" keyframe's cleared box stays cleared (the whole frame)."""
    from frtm_plugin.core.tracker import _Object

    tracker = _tiny_tracker(mobilenet, search_margin=0.25, search_growth=0.5)
    obj = _Object(target_model=None, start_frame=0)
    seen = torch.zeros(96, 128, dtype=torch.bool)
    seen[32:48, 48:80] = True
    tracker._follow(obj, seen)
    assert obj.last_box == (32.0, 48.0, 48.0, 80.0) and tracker._margin(obj) == 0.25
    for lost in (1, 2):
        tracker._follow(obj, torch.zeros_like(seen))
        assert obj.last_box == (32.0, 48.0, 48.0, 80.0) and obj.lost_frames == lost
        assert tracker._margin(obj) == 0.25 * (1 + 0.5 * lost)
    found = torch.zeros_like(seen)
    found[40:60, 60:90] = True
    tracker._follow(obj, found)
    assert obj.last_box == (40.0, 60.0, 60.0, 90.0) and tracker._margin(obj) == 0.25

    released = _tiny_tracker(mobilenet, search_margin=0.25)  # growth None, no model settings: math.inf
    obj = _Object(target_model=None, start_frame=0)
    released._follow(obj, seen)
    released._follow(obj, torch.zeros_like(seen))
    assert released._margin(obj) == math.inf
    hidden = _Object(target_model=None, start_frame=0, hidden=True)  # box cleared by its keyframe
    tracker._follow(hidden, torch.zeros_like(seen))
    assert hidden.last_box is None


class _ScriptedTargetModel:
    """Stands in for an object's D: returns the given score maps frame by frame and records what it learns."""

    def __init__(self, scores):
        self.scores, self.learned = list(scores), []

    def predict(self, feature):
        return feature, self.scores.pop(0)

    def update(self, projected, soft_label, visible=None):
        self.learned.append(bool(visible))
        return bool(visible)


def test_an_object_d_stops_scoring_is_hidden_until_it_scores_again(mobilenet):
    """auto_hide: on a frame where D scores above 0.5 on fewer than auto_hide x the object's running mean of such
    cells, its output is empty and D learns nothing, as after a "not visible" keyframe; it comes back once D scores
    reappear_fraction of that mean again. Off (0, the released behaviour) the same faint scores make a mask."""
    frame = np.zeros((160, 192, 3), np.uint8)  # D's grid: 10 x 12 cells
    mask = np.zeros((160, 192), bool)
    mask[48:112, 64:144] = True

    def scores(cells):  # `cells` score cells of the object's area at 0.9, the rest -0.5
        s = torch.full((10, 12), -0.5)
        s.view(-1)[torch.nonzero(torch.from_numpy(mask[8::16, 8::16]).flatten()).flatten()[:cells]] = 0.9
        return s

    script = [20, 20, 20, 1, 3, 12, 20]  # confident cells per tracked frame: seen x3, lost, faint, back, seen
    outputs = {}
    for auto_hide in (0.1, 0.0):
        tracker = _tiny_tracker(mobilenet, auto_hide=auto_hide)
        tracker.step(frame, {1: mask})
        d = tracker.objects[1].target_model = _ScriptedTargetModel(scores(c) for c in script)
        outputs[auto_hide] = [int((tracker.step(frame).labels == 1).sum()) for _ in script]
        if auto_hide:
            assert d.learned == [True, True, True, False, False, True, True]
    hide, released = outputs[0.1], outputs[0.0]
    assert all(n > 0 for n in hide[:3]) and hide[3] == hide[4] == 0 and hide[5] > 0 and hide[6] > 0
    assert released[3] > 0 and released[4] > 0 and released[:3] == hide[:3]


def test_search_window_keeps_d_only_output_near_the_last_box(davis_root, mobilenet):
    """With a margin, D-only's mask on each frame lies within the previous frame's box grown by the margin (plus one
    score cell: the upsampling blends a cell with its neighbour); without one, the masks differ (the window acts)
    and whole-frame search is the released behaviour (margin None equals math.inf)."""
    seq = load_sequence(davis_root, "bmx-bumps")
    frames = [seq.read_frame(i) for i in range(0, 40, 2)]
    first = masks_from_label_map(seq.prompts()[0])

    def run(margin):
        tracker = FRTMTracker(mobilenet, None, TrackerConfig(max_size=None, search_margin=margin, d_only_gain=2.0))
        return [tracker.step(frames[0], first).labels] + [tracker.step(f).labels for f in frames[1:]]

    windowed, whole, released = run(0.25), run(math.inf), run(None)
    assert all(torch.equal(a, b) for a, b in zip(whole, released))
    assert any(not torch.equal(a, b) for a, b in zip(windowed, whole))
    for prev, cur in zip(windowed, windowed[1:]):
        ys, xs = torch.nonzero(prev == 1, as_tuple=True)
        if ys.numel() == 0:
            continue
        y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
        pad = 0.25 * max(y1 - y0, x1 - x0) + mobilenet.stride
        cy, cx = torch.nonzero(cur == 1, as_tuple=True)
        assert cy.numel() > 0
        assert cy.min() >= y0 - pad and cy.max() < y1 + pad and cx.min() >= x0 - pad and cx.max() < x1 + pad
