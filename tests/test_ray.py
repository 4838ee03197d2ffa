"""tl predict --ray and tl.runtime.raydata on a real local Ray (2 CPUs, one per module): the same answers
as tl predict, every input once (also when an actor's process is killed mid-run), the error column,
Parquet and CSV output, and the bad inputs."""

from __future__ import annotations

import collections
import csv
import os
import shutil
import signal
from pathlib import Path

import pytest

from conftest import assert_user_error, run_tl_subprocess
from tl.runtime.errors import TLError
from tl.runtime.predict import PredictOptions, predict_files, text_name

RAY_CPUS = 2


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module; tl's connected() uses a Ray that is already running as it is."""
    import ray

    from tl.runtime.raydata import RayOptions, connected

    with connected(RayOptions(num_cpus=RAY_CPUS)):
        yield ray


@pytest.fixture(scope="module")
def model(make_onnx):
    return make_onnx()[0]


@pytest.fixture(scope="module")
def photos(synth_data, tmp_path_factory) -> Path:
    """The synthetic images, a corrupt one, a text file and a name that is not UTF-8."""
    root = tmp_path_factory.mktemp("ray") / "photos"
    shutil.copytree(synth_data, root)
    (root / "train" / "circle" / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "notes.txt").write_text("not an image")
    first = sorted((root / "val" / "square").glob("*.png"))[0]
    shutil.copy(first, os.fsdecode(os.fsencode(root / "val" / "square") + b"/sq\xff.png"))
    return root


@pytest.fixture(scope="module")
def plain(model, photos):
    """What tl predict answers on the same folder: {path as written: Prediction}."""
    result = predict_files(PredictOptions(model=model, paths=[photos], top_k=3))
    return {text_name(p.source): p for p in result.predictions}, {text_name(str(f)) for f, _ in result.failures}


def _read(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def _assert_same_answers(rows: list[dict], plain) -> None:
    preds, failed = plain
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)), [p for p, n in collections.Counter(paths).items() if n > 1]
    assert set(paths) == set(preds) | failed
    for r in rows:
        if r["path"] in failed:
            assert r["label"] is None and r["score"] is None and r["top_k"] is None
            assert r["error"].startswith(r["path"]) and "not a readable image" in r["error"]
            continue
        p = preds[r["path"]]
        assert r["error"] is None
        assert (r["label"], r["index"], r["score"]) == (p.label, p.index, p.score)
        assert [(k["label"], k["score"]) for k in r["top_k"]] == p.top_k


def test_same_answers_as_tl_predict_in_parquet(local_ray, model, photos, plain, tmp_path):
    from tl.runtime.raydata import RayOptions, classify, write_results

    out = tmp_path / "results.parquet"
    run = write_results(classify(PredictOptions(model=model, paths=[photos], top_k=3, batch_size=8), RayOptions()),
                        out)
    rows = _read(out)
    assert run.rows == len(rows) == len(plain[0]) + 1 and run.errors == 1
    _assert_same_answers(rows, plain)
    assert not [p for p in tmp_path.iterdir() if p.name != out.name]  # no temporaries left


def test_cli_csv_equals_tl_predict_csv(local_ray, tl_cli, model, photos, tmp_path):
    out = tmp_path / "results.csv"
    r = tl_cli("predict", model, photos, "--top-k", "2", "--ray", "-o", out)
    assert_user_error(r, "1 of", "error column of")
    assert "images on a local Ray" in r.err
    with open(out, newline="", encoding="utf-8") as f:
        rows = {row["path"]: row for row in csv.DictReader(f)}
    plain_csv = tmp_path / "plain.csv"
    tl_cli("predict", model, photos, "--top-k", "2", "--format", "csv", "-o", plain_csv)
    with open(plain_csv, newline="", encoding="utf-8") as f:
        expected = {row["source"]: row for row in csv.DictReader(f)}
    assert set(rows) == set(expected) | {str(photos / "train" / "circle" / "broken.jpg")}
    for path, row in expected.items():
        assert [rows[path][k] for k in ("label", "index", "score", "top_k", "error")] == \
            [row["label"], row["index"], row["score"], row["top_k"], ""]


def test_globs_and_list_files(local_ray, tl_cli, model, photos, plain, tmp_path):
    listing = tmp_path / "images.txt"
    listed = sorted((photos / "val" / "circle").glob("*.png"))[:3]
    listing.write_text("# three images and one that is gone\n" + "".join(f"{p}\n" for p in listed) + "gone.jpg\n")
    out = tmp_path / "r.parquet"
    r = tl_cli("predict", model, listing, str(photos / "train" / "square" / "*.jpg"), "--ray", "-o", out)
    assert_user_error(r, "1 of")
    rows = {row["path"]: row for row in _read(out)}
    squares = {str(p) for p in (photos / "train" / "square").glob("*.jpg")}
    assert set(rows) == {str(p) for p in listed} | {"gone.jpg"} | squares
    assert "not found" in rows["gone.jpg"]["error"]
    for p in squares | {str(p) for p in listed}:
        assert rows[p]["label"] == plain[0][p].label and rows[p]["score"] == plain[0][p].score


def _descendants(pid: int) -> list[int]:
    children = collections.defaultdict(list)
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                children[int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])].append(int(d.name))
            except (OSError, ValueError, IndexError):
                continue
    found, todo = [], [pid]
    while todo:
        for c in children[todo.pop()]:
            found.append(c)
            todo.append(c)
    return found


def _actor_pids() -> list[int]:
    """This test's Ray Data inference actors: descendants of this process titled ray::MapWorker(...)."""
    pids = []
    for pid in _descendants(os.getpid()):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::MapWorker(MapBatches(Infer))"):
                pids.append(pid)
        except OSError:
            continue
    return pids


def test_every_input_once_when_an_actor_is_killed(local_ray, model, photos, plain):
    """SIGKILL one actor's process after the first results: Ray restarts it and retries its batch."""
    from tl.runtime.raydata import RayOptions, classify

    ds = classify(PredictOptions(model=model, paths=[photos], top_k=3, batch_size=2), RayOptions())
    rows, killed, after = [], None, 0
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        rows += batch.to_pylist()
        if killed is None:
            pids = _actor_pids()
            assert pids, "no inference actor process found"
            killed = pids[0]
            os.kill(killed, signal.SIGKILL)
        else:
            after += batch.num_rows
    assert after > 0, "the run ended before the kill could matter"
    assert killed not in _actor_pids()
    _assert_same_answers(rows, plain)


def test_a_model_the_workers_cannot_read(local_ray, model, photos, tmp_path):
    """The driver loads the model; by the time the actors start, the file is gone (a path that is not
    on every node of a cluster): one error, and no output file."""
    from tl.runtime.raydata import RayOptions, classify, write_results

    copy = tmp_path / "model.onnx"
    shutil.copy(model, copy)
    ds = classify(PredictOptions(model=copy, paths=[photos / "val"]), RayOptions())
    copy.unlink()
    out = tmp_path / "r.parquet"
    with pytest.raises(TLError, match="cannot load the model: model not found") as e:
        write_results(ds, out)
    assert "every node" in str(e.value) and "\n" not in str(e.value)
    assert not out.exists()


def test_an_object_store_url(local_ray, model, photos, plain, tmp_path):
    """A URL goes through Ray's filesystem layer (pyarrow.fs): file:// here, s3:// or gs:// on a cluster."""
    from tl.runtime.raydata import RayOptions, classify, write_results

    url = f"file://{photos / 'val' / 'circle'}"
    out = tmp_path / "r.parquet"
    write_results(classify(PredictOptions(model=model, paths=[url], top_k=3), RayOptions()), out)
    rows = _read(out)
    expected = sorted(p for p in plain[0] if p.startswith(str(photos / "val" / "circle")))
    assert sorted(r["path"] for r in rows) == [f"file://{p}" for p in expected]
    for r in rows:
        p = plain[0][r["path"].removeprefix("file://")]
        assert (r["label"], r["score"], r["error"]) == (p.label, p.score, None)
