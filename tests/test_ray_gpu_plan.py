"""tl predict --ray's GPU plan on a Ray that declares one GPU (its actors run ONNX Runtime as they find
it: on CPU where there is no CUDA): decoding in CPU tasks of their own, one inference actor with
num_gpus=1 fed through the object store, and still tl predict's answers."""

from __future__ import annotations

import pytest

from tl.runtime.predict import PredictOptions, predict_files, text_name


@pytest.fixture(scope="module")
def gpu_ray():
    import ray

    from tl.runtime.raydata import RayOptions, connected

    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        with connected(RayOptions()):  # uses this Ray as it is
            yield ray
    finally:
        ray.shutdown()


def test_decode_tasks_feed_one_actor_per_gpu(gpu_ray, make_onnx, synth_data, tmp_path):
    import pyarrow.parquet as pq

    from tl.runtime.raydata import RayOptions, classify, write_results

    model = make_onnx()[0]
    photos = synth_data / "val"
    ds = classify(PredictOptions(model=model, paths=[photos], top_k=2, batch_size=4), RayOptions())
    plan = str(ds)
    assert "decode_batch" in plan and "Infer" in plan, plan
    out = tmp_path / "r.parquet"
    run = write_results(ds, out)
    stats = ds.stats()
    assert "MapBatches(decode_batch)" in stats and "MapBatches(Infer)" in stats, stats  # two stages, not fused
    rows = {r["path"]: r for r in pq.read_table(out).to_pylist()}
    plain = predict_files(PredictOptions(model=model, paths=[photos], top_k=2)).predictions
    assert run.rows == len(rows) == len(plain) and run.errors == 0
    for p in plain:
        r = rows[text_name(p.source)]
        assert (r["label"], r["score"], [(k["label"], k["score"]) for k in r["top_k"]]) == (p.label, p.score, p.top_k)
