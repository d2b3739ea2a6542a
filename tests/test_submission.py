"""Benchmark archives and local test evaluation from a fine-tuned checkpoint (docs/submission.md).

The archives are checked by unpacking them and reading them back with independent readers (our
Task1 reader, OpenCV's PNG decoder); the end-to-end runs go through ``rsfm``'s ``main`` on tiny
synthetic test sets with randomly initialised debug models saved as the loader's file formats, and
local scores are compared with scoring the written predictions by ``rsfm eval det|seg``.
"""
import json
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from rsfm_ds.cli import main
from rsfm_ds.data.det.dota import DOTA_V2_CLASSES, Detections, read_task1_dir
from rsfm_ds.errors import ConfigError, DataError
from rsfm_ds.evaluation.submission import (check_archive_path, write_dota_submission,
                                           write_loveda_submission)

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
# The 18 DOTA v2.0 class names as the DOTA website lists them (independent of our constant).
DOTA2_NAMES = ["plane", "baseball-diamond", "bridge", "ground-track-field", "small-vehicle", "large-vehicle",
               "ship", "tennis-court", "basketball-court", "storage-tank", "soccer-ball-field", "roundabout",
               "harbor", "swimming-pool", "helicopter", "container-crane", "airport", "helipad"]
CPU = ["--device", "cpu", "--workers", "0"]


def _unzip(path: Path, dest: Path) -> list:
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        z.extractall(dest)
    return names


# ------------------------------------------------------------------------------------------ archives


def test_dota_archive_is_flat_has_every_class_file_and_round_trips(tmp_path):
    dets = {"small-vehicle": Detections(["P0001", "P0002"], [0.9, 0.123456789],
                                        [[1, 2, 11, 2, 11, 7, 1, 7],
                                         [100.25, 5, 120.5, 5, 120.5, 9.125, 100.25, 9.125]]),
            "helipad": Detections(["P0003"], [0.5], [[0, 0, 4, 0, 4, 4, 0, 4]])}
    out = tmp_path / "sub.zip"
    report = write_dota_submission(dets, DOTA_V2_CLASSES, out)
    names = _unzip(out, tmp_path / "x")
    assert sorted(names) == sorted(f"Task1_{c}.txt" for c in DOTA2_NAMES)
    assert all("/" not in n for n in names)
    assert report.counts["small-vehicle"] == 2 and report.counts["plane"] == 0
    back = read_task1_dir(tmp_path / "x", DOTA2_NAMES)
    for name in DOTA2_NAMES:
        expected = dets.get(name, Detections())
        assert list(back[name].image_ids) == list(expected.image_ids)
        assert np.array_equal(back[name].scores, expected.scores)  # full precision
        np.testing.assert_allclose(back[name].polygons, expected.polygons, atol=5e-4)
    assert (tmp_path / "x" / "Task1_plane.txt").stat().st_size == 0
    assert not out.with_name("sub.zip.partial").exists()


def test_dota_archive_refuses_a_class_outside_the_dataset(tmp_path):
    with pytest.raises(DataError, match="small_vehicle"):
        write_dota_submission({"small_vehicle": Detections()}, DOTA_V2_CLASSES, tmp_path / "a.zip")
    assert not (tmp_path / "a.zip").exists()


@pytest.mark.parametrize("encoding, offset", [("index", 0), ("mask", 1)])
def test_loveda_archive_pngs_decode_to_the_predictions(tmp_path, encoding, offset):
    rng = np.random.default_rng(0)
    preds = {"3.png": rng.integers(0, 7, (40, 56)), "1366.png": rng.integers(0, 7, (32, 32))}
    out = tmp_path / "loveda.zip"
    write_loveda_submission(list(preds.items()), out, encoding)
    names = _unzip(out, tmp_path / "x")
    assert sorted(names) == ["1366.png", "3.png"]
    for name, pred in preds.items():
        decoded = cv2.imread(str(tmp_path / "x" / name), cv2.IMREAD_UNCHANGED)
        assert decoded.dtype == np.uint8 and decoded.ndim == 2
        assert np.array_equal(decoded, pred + offset)


def test_loveda_archive_refuses_bad_predictions_and_leaves_nothing(tmp_path):
    out = tmp_path / "l.zip"
    with pytest.raises(DataError, match="0..6"):
        write_loveda_submission([("1.png", np.full((4, 4), 7))], out)
    with pytest.raises(DataError, match="two test images"):
        write_loveda_submission([("1.png", np.zeros((4, 4))), ("Rural/1.png", np.zeros((4, 4)))], out)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_archive_path_must_be_a_zip_outside_the_inputs(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(ConfigError, match="must be a .zip"):
        check_archive_path(tmp_path / "out.tar", [tmp_path / "images"])
    with pytest.raises(ConfigError, match="inside the input"):
        check_archive_path(tmp_path / "images" / "out.zip", [tmp_path / "images"])
    with pytest.raises(ConfigError, match="does not exist"):
        check_archive_path(tmp_path / "nowhere" / "out.zip", [])
    assert check_archive_path(tmp_path / "out.zip", [tmp_path / "images"]) == tmp_path / "out.zip"


# ------------------------------------------------------------------------------ end to end (CPU)


def _save_model(task: str, config: str, overrides, path: Path, prefix: str = "") -> Path:
    """A randomly initialised fine-tuning model of ``config`` saved as ``path`` (.safetensors or
    .pth), the consolidated formats ``rsfm submit`` reads."""
    from rsfm_ds.engine.inference import load_task_config
    from rsfm_ds.engine.tasks import get_task

    torch.manual_seed(0)
    cfg = load_task_config(task, ROOT / config, overrides)
    model = get_task(task).build(cfg).build_model()
    state = {prefix + k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def dota_test(tmp_path_factory):
    """Two 320 px synthetic DOTA test images cut by hand into four 256 px patches each, named as
    the devkit names them (``<id>__1__<x>___<y>``), and a detector checkpoint."""
    from rsfm_ds.data.synth.detection import synth_dota

    d = tmp_path_factory.mktemp("dota")
    synth_dota(d / "test", images=2, size=320, seed=3)
    (d / "split" / "images").mkdir(parents=True)
    for path in sorted((d / "test" / "images").glob("*.png")):
        image = cv2.imread(str(path))
        for y in (0, 64):
            for x in (0, 64):
                cv2.imwrite(str(d / "split" / "images" / f"{path.stem}__1__{x}___{y}.png"), image[y:y + 256, x:x + 256])
    ckpt = _save_model("det", "configs/det/dota2_debug.yaml", [], d / "det.safetensors")
    return d, ckpt


def test_submit_dota_writes_the_merged_task1_archive(dota_test, tmp_path):
    d, ckpt = dota_test
    out = tmp_path / "dota.zip"
    code = main(["submit", "dota", "--config", str(ROOT / "configs/det/dota2_debug.yaml"), "--checkpoint", str(ckpt),
                 "--images", str(d / "split"), "--out", str(out), "--patch-dets", str(tmp_path / "patches"), *CPU])
    assert code == 0
    names = _unzip(out, tmp_path / "x")
    assert sorted(names) == sorted(f"Task1_{c}.txt" for c in DOTA2_NAMES)
    got = read_task1_dir(tmp_path / "x", DOTA2_NAMES)
    assert sum(len(v) for v in got.values()) > 0
    ids = {str(i) for v in got.values() for i in v.image_ids}
    assert ids <= {"P0000", "P0001"}  # whole images, not patches
    # The archive equals the patch files merged by `rsfm dota merge` (through files, not memory);
    # empty files are removed first, as `rsfm dota merge` fails on them.
    for path in (tmp_path / "patches").glob("Task1_*.txt"):
        if path.stat().st_size == 0:
            path.unlink()
    assert main(["dota", "merge", "--dets", str(tmp_path / "patches"), "--out", str(tmp_path / "merged")]) == 0
    for name in DOTA2_NAMES:
        assert (tmp_path / "x" / f"Task1_{name}.txt").read_text() == \
            (tmp_path / "merged" / f"Task1_{name}.txt").read_text(), name
    # The debug detector predicts 5 classes; the other 13 files are there, empty.
    predicted = {"plane", "ship", "storage-tank", "small-vehicle", "tennis-court"}
    assert all(len(got[c]) == 0 for c in DOTA2_NAMES if c not in predicted)


def _run(argv, capsys):
    code = main(argv)
    return code, capsys.readouterr().err.strip()


def test_submit_user_errors_are_one_line(dota_test, tmp_path, capsys):
    d, ckpt = dota_test
    det_cfg = str(ROOT / "configs/det/dota2_debug.yaml")
    base = ["submit", "dota", "--config", det_cfg, "--checkpoint", str(ckpt), *CPU]
    cases = [
        (base[:5] + [str(tmp_path / "none.safetensors"), *CPU, "--images", str(d / "split"), "--out",
                     str(tmp_path / "a.zip")], "none.safetensors"),
        (["submit", "dota", "--config", str(ROOT / "configs/seg/potsdam_debug.yaml"), "--checkpoint", str(ckpt),
          "--images", str(d / "split"), "--out", str(tmp_path / "a.zip"), *CPU], "a seg run config"),
        (base + ["--images", str(tmp_path), "--out", str(tmp_path.parent / f"{tmp_path.name}-a.zip")], "no images"),
        (base + ["--images", str(d / "split"), "--out", str(d / "split" / "a.zip")], "inside the input"),
        (["submit", "dota", "--config", str(ROOT / "configs/det/dior_debug.yaml"), "--checkpoint", str(ckpt),
          "--images", str(d / "split"), "--out", str(tmp_path / "a.zip"), *CPU], "data.dataset is 'dior'"),
    ]
    for argv, needle in cases:
        code, err = _run(argv, capsys)
        assert code == 2 and needle in err and "\n" not in err, (argv, err)
    seg_ckpt = _save_model("seg", "configs/seg/potsdam_debug.yaml", [], tmp_path / "seg.pth")
    code, err = _run(base[:5] + [str(seg_ckpt), *CPU, "--images", str(d / "split"), "--out",
                                 str(tmp_path / "b.zip")], capsys)
    assert code == 2 and "another task" in err and "\n" not in err, err
    assert not list(tmp_path.glob("*.zip"))


LOVEDA = ["data.dataset=loveda", "data.num_classes=7"]


def test_submit_loveda_writes_index_pngs_named_as_the_test_images(tmp_path):
    from rsfm_ds.data.synth.segmentation import synth_loveda

    synth_loveda(tmp_path / "LoveDA", images=2, size=256, seed=0)
    test_images = sorted(p.name for p in (tmp_path / "LoveDA" / "Test").glob("*/images_png/*.png"))
    overrides = LOVEDA + [f"data.root={tmp_path / 'LoveDA'}"]
    ckpt = _save_model("seg", "configs/seg/potsdam_debug.yaml", overrides, tmp_path / "seg.pth", prefix="module.")
    decoded = {}
    for encoding in ("index", "mask"):
        out = tmp_path / f"{encoding}.zip"
        assert main(["submit", "loveda", "--config", str(ROOT / "configs/seg/potsdam_debug.yaml"), "--checkpoint",
                     str(ckpt), "--images", str(tmp_path / "LoveDA"), "--out", str(out), "--encoding", encoding,
                     *CPU, *overrides]) == 0
        names = _unzip(out, tmp_path / encoding)
        assert sorted(names) == test_images
        decoded[encoding] = {n: cv2.imread(str(tmp_path / encoding / n), cv2.IMREAD_UNCHANGED) for n in names}
    for name in test_images:
        index, mask = decoded["index"][name], decoded["mask"][name]
        assert index.shape == (256, 256) and index.dtype == np.uint8 and index.max() <= 6
        assert np.array_equal(mask, index + 1)


def _noisy_ground_truth(loaded, dataset, options):
    """Stand-in detector output: every object's box shifted by up to 6 px (some fall below IoU 0.5),
    random scores, one in five dropped, plus a random false positive per image."""
    from rsfm_ds.ops.rotated import polygon_to_box

    rng = np.random.default_rng(0)
    out = {}
    for r in dataset.records:
        boxes = polygon_to_box(torch.from_numpy(r.polygons).double()).numpy()
        boxes[:, :2] += rng.uniform(-6, 6, (len(boxes), 2))
        keep = rng.random(len(boxes)) > 0.2
        false = np.array([[rng.uniform(20, 230), rng.uniform(20, 230), 30.0, 12.0, 0.3]])
        out[r.image_id] = (np.concatenate([boxes[keep], false]).astype(np.float32),
                           rng.random(int(keep.sum()) + 1), np.concatenate([r.labels[keep], [0]]))
    return out


@pytest.mark.parametrize("detector", ["model", "noisy ground truth"])
def test_eval_dior_equals_scoring_its_task1_files(tmp_path, capsys, monkeypatch, detector):
    """The scores `rsfm eval dior` prints equal `rsfm eval det` on the files it wrote: with the
    random debug detector (AP ~0) and with noisy ground truth in its place (AP well inside (0, 1))."""
    from rsfm_ds.data.synth.detection import synth_dior

    root = tmp_path / "dior"
    synth_dior(root, images=15, size=256, seed=1)
    cfg = str(ROOT / "configs/det/dior_debug.yaml")
    ckpt = _save_model("det", "configs/det/dior_debug.yaml", [f"data.root={root}"], tmp_path / "dior.safetensors")
    if detector != "model":
        monkeypatch.setattr("rsfm_ds.engine.benchmarks.predict_detections", _noisy_ground_truth)
    out = tmp_path / "out"
    assert main(["eval", "dior", "--config", cfg, "--checkpoint", str(ckpt), "--root", str(root), "--out", str(out),
                 *CPU]) == 0
    table = capsys.readouterr().out
    assert "mAP" in table and "IoU > 0.5, difficult ignored, voc07 AP" in table
    local = json.loads((out / "metrics.json").read_text())
    assert main(["eval", "det", "--dets", str(out / "task1"), "--labels", str(root), "--dataset", "dior",
                 "--images", str(root / "ImageSets/Main/test.txt"), "--json", str(tmp_path / "files.json")]) == 0
    files = json.loads((tmp_path / "files.json").read_text())
    assert sum(local["num_dets"].values()) > 0
    for name in ("airplane", "ship", "storagetank", "vehicle", "tenniscourt"):
        assert local["num_gts"][name] == files["num_gts"][name]
        assert local["num_dets"][name] == files["num_dets"][name]
        assert local["AP"][name] == pytest.approx(files["AP"][name], abs=1e-9) or \
            local["AP"][name] is files["AP"][name] is None
    if detector != "model":
        assert 0.2 < local["mAP"] < 0.99


def test_eval_potsdam_equals_scoring_its_predictions(tmp_path, capsys):
    from rsfm_ds.data.seg.potsdam import prepare_potsdam
    from rsfm_ds.data.synth.segmentation import synth_potsdam

    synth_potsdam(tmp_path / "raw", tiles=2, seed=0, size=512)
    prepared = tmp_path / "prepared"
    prepare_potsdam(tmp_path / "raw", prepared, protocol=5, crop=256, stride=256, eroded=True)
    cfg = str(ROOT / "configs/seg/potsdam_debug.yaml")
    ckpt = _save_model("seg", "configs/seg/potsdam_debug.yaml", [], tmp_path / "seg.safetensors")
    out = tmp_path / "out"
    assert main(["eval", "potsdam", "--config", cfg, "--checkpoint", str(ckpt), "--root", str(prepared),
                 "--out", str(out), *CPU]) == 0
    assert "aAcc (OA)" in capsys.readouterr().out
    local = json.loads((out / "metrics.json").read_text())
    assert local["eroded"] is True and local["pixels"] > 0
    assert main(["eval", "seg", "--pred", str(out / "pred"), "--label", str(prepared / "ann_dir" / "val"),
                 "--num-classes", "5", "--class-names", "impervious_surfaces,building,low_vegetation,tree,car",
                 "--json", str(tmp_path / "files.json")]) == 0
    files = json.loads((tmp_path / "files.json").read_text())
    for key in ("aAcc", "mIoU", "mF1", "pixels", "IoU", "F1"):
        assert local[key] == files[key], key
    # A root prepared from the full-reference labels is refused before any model is built.
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "prepare.json").write_text(json.dumps({"eroded": False, "protocol": 5}))
    code = main(["eval", "potsdam", "--config", cfg, "--checkpoint", str(ckpt), "--root", str(tmp_path / "full"),
                 "--out", str(tmp_path / "o2"), *CPU])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--eroded" in err and "\n" not in err


def test_eval_det_names_the_task1_file_of_an_unknown_class(tmp_path, capsys):
    (tmp_path / "dets").mkdir()
    (tmp_path / "dets" / "Task1_small_vehicle.txt").write_text("P0001 0.5 0 0 4 0 4 4 0 4\n")
    (tmp_path / "labelTxt").mkdir()
    code = main(["eval", "det", "--dets", str(tmp_path / "dets"), "--labels", str(tmp_path / "labelTxt")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Task1_small_vehicle.txt" in err and "'small_vehicle'" in err and "\n" not in err


ZERO_WRITER = '''
"""Each rank: the debug segmentation model, ZeRO-3 over the ranks, one checkpoint tag (test helper)."""
import sys
from pathlib import Path

import deepspeed
import torch
from safetensors.torch import save_file

from rsfm_ds.checkpoint import layout
from rsfm_ds.engine.deepspeed_setup import init_distributed
from rsfm_ds.engine.inference import load_task_config
from rsfm_ds.engine.tasks import get_task

ckpt_dir, reference = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
ckpt_dir = Path(ckpt_dir)
init_distributed()  # also unlinks DeepSpeed's CPU shared-memory segments once mapped
torch.manual_seed(0)
model = get_task("seg").build(load_task_config("seg", "configs/seg/potsdam_debug.yaml")).build_model()
rank = torch.distributed.get_rank()
if rank == 0:
    save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, reference)
config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3},
          "optimizer": {"type": "AdamW", "params": {"torch_adam": True, "lr": 0.0}}}
engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=config)
engine.save_checkpoint(str(ckpt_dir), tag="step_00000001", client_state={"step": 1})
torch.distributed.barrier()
if rank == 0:
    layout.mark_complete(ckpt_dir / "step_00000001", 1)
torch.distributed.destroy_process_group()
'''


@pytest.mark.distributed
def test_a_zero3_training_checkpoint_loads_into_the_inference_model_exactly(tmp_path):
    """A 2-rank ZeRO-3 checkpoint folder (partitions consolidated by DeepSpeed's reader) fills every
    tensor of a freshly built model with the values the ranks started from."""
    import os
    import signal
    import subprocess

    from safetensors.torch import load_file

    from launching import DEEPSPEED, MARK, free_port, job_processes, wait_for
    from rsfm_ds.engine.inference import load_full_weights, load_task_config
    from rsfm_ds.engine.tasks import get_task

    script = tmp_path / "write_zero.py"
    script.write_text(ZERO_WRITER)
    mark = f"submission-{os.getpid()}"
    env = dict(os.environ, **{MARK: mark}, PYTHONPATH=str(ROOT))
    cmd = [DEEPSPEED, "--num_gpus", "2", "--master_port", str(free_port()), str(script),
           str(tmp_path / "checkpoints"), str(tmp_path / "reference.safetensors")]
    # Its own session, so a timeout ends the launcher and both ranks together.
    job = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)
    try:
        output, _ = job.communicate(timeout=600)  # the first use of DeepSpeed on CPU JIT-builds an op
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGKILL)
        output, _ = job.communicate()
    finally:
        assert wait_for(lambda: not job_processes(mark), 30), job_processes(mark)
    assert job.returncode == 0, output[-4000:]
    reference = load_file(str(tmp_path / "reference.safetensors"))
    torch.manual_seed(1)  # other initial values than the checkpoint's
    model = get_task("seg").build(load_task_config("seg", ROOT / "configs/seg/potsdam_debug.yaml")).build_model()
    metadata = load_full_weights(model, tmp_path / "checkpoints")
    assert metadata["world_size"] == "2" and metadata["step"] == "1"
    state = model.state_dict()
    assert sorted(state) == sorted(reference)
    assert all(torch.equal(state[k], reference[k]) for k in reference)


def test_weights_that_do_not_fit_are_refused_with_the_reason(tmp_path):
    from safetensors.torch import save_file

    from rsfm_ds.engine.inference import load_full_weights, load_task_config
    from rsfm_ds.engine.tasks import get_task
    from rsfm_ds.errors import CheckpointError

    cfg = load_task_config("seg", ROOT / "configs/seg/potsdam_debug.yaml")
    model = get_task("seg").build(cfg).build_model()
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file({k: v for k, v in state.items() if k.startswith("backbone.")}, str(tmp_path / "backbone.safetensors"))
    with pytest.raises(CheckpointError, match="backbone weights only"):
        load_full_weights(model, tmp_path / "backbone.safetensors")
    six = get_task("seg").build(load_task_config("seg", ROOT / "configs/seg/potsdam_debug.yaml",
                                                 ["data.num_classes=6"])).build_model()
    save_file({k: v.detach().clone().contiguous() for k, v in six.state_dict().items()},
              str(tmp_path / "six.safetensors"))
    with pytest.raises(CheckpointError, match=r"has shape \(6, .*\) in the checkpoint but \(5, "):
        load_full_weights(model, tmp_path / "six.safetensors")
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # untouched on failure
