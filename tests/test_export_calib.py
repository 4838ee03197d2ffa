"""INT8 calibration chosen by measurement (--calib-method auto), the VNNI / reduce_range decision, accuracy in parity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_user_error

# Real `flags` lines from /proc/cpuinfo (trimmed to the features that matter, in the kernel's order).
XEON_ICELAKE = ("fpu vme de pse tsc msr pae mce cx8 apic sep mtrr sse sse2 ssse3 fma cx16 sse4_1 sse4_2 avx f16c avx2 "
                "avx512f avx512dq avx512cd avx512bw avx512vl avx512ifma avx512vbmi umip pku ospke avx512_vbmi2 gfni "
                "vaes vpclmulqdq avx512_vnni avx512_bitalg avx512_vpopcntdq rdpid md_clear flush_l1d arch_capabilities")
XEON_SAPPHIRE = XEON_ICELAKE + " avx_vnni avx512_bf16 amx_bf16 avx512_fp16 amx_tile amx_int8"
ALDER_LAKE = ("fpu vme de pse tsc msr pae mce cx8 apic sep sse sse2 ssse3 fma cx16 sse4_1 sse4_2 avx f16c avx2 sha_ni "
              "umip pku ospke waitpkg gfni vaes vpclmulqdq rdpid movdiri movdir64b fsrm md_clear serialize "
              "arch_lbr ibt flush_l1d arch_capabilities avx_vnni")
# This development machine (AMD EPYC, Zen 2/3): AVX2, no VNNI.
EPYC_ZEN3 = ("fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht "
             "syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology nonstop_tsc cpuid "
             "extd_apicid tsc_known_freq pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt "
             "tsc_deadline_timer aes xsave avx f16c rdrand hypervisor lahf_lm cmp_legacy cr8_legacy abm sse4a "
             "misalignsse 3dnowprefetch osvw topoext vmmcall fsgsbase tsc_adjust bmi1 avx2 smep bmi2 erms invpcid "
             "rdseed adx smap clflushopt clwb sha_ni xsaveopt xsavec xgetbv1 xsaves clzero xsaveerptr arat umip "
             "vaes vpclmulqdq rdpid fsrm")
EPYC_ZEN4 = EPYC_ZEN3 + " avx512f avx512dq avx512ifma avx512cd avx512bw avx512vl avx512_bf16 avx512vbmi avx512_vbmi2 " \
                        "gfni avx512_vnni avx512_bitalg avx512_vpopcntdq"


@pytest.mark.parametrize("line, machine, vnni, reduce", [
    (XEON_ICELAKE, "x86_64", True, False),
    (XEON_SAPPHIRE, "x86_64", True, False),
    (ALDER_LAKE, "x86_64", True, False),
    (EPYC_ZEN3, "x86_64", False, True),
    (EPYC_ZEN4, "AMD64", True, False),
    (None, "x86_64", None, True),  # flags unreadable on x86: the safe side
    ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics asimddp", "aarch64", None, False),
])
def test_int8_saturation_decision_on_recorded_flags(line, machine, vnni, reduce):
    from tl.export.cpuflags import int8_saturation

    d = int8_saturation(None if line is None else set(line.split()), machine)
    assert (d.vnni, d.reduce_range) == (vnni, reduce), d
    assert d.reason and d.to_dict()["machine"] == machine


def test_this_cpu_flags_are_read():
    import platform

    from tl.export.cpuflags import cpu_flags, this_cpu

    flags = cpu_flags()
    if platform.system() == "Linux":
        assert flags and len(flags) > 10
    assert this_cpu().machine == platform.machine()


def test_reduce_range_choice():
    from tl.export.calib import reduce_range_decision
    from tl.export.cpuflags import int8_saturation

    amd = int8_saturation(set(EPYC_ZEN3.split()), "x86_64")
    xeon = int8_saturation(set(XEON_ICELAKE.split()), "x86_64")
    assert reduce_range_decision("auto", trt=False, cpu=amd)["reduce_range"] is True
    assert reduce_range_decision("auto", trt=False, cpu=xeon)["reduce_range"] is False
    for_trt = reduce_range_decision("auto", trt=True, cpu=amd)  # the QDQ file also feeds TensorRT: keep 8 bits
    assert for_trt["reduce_range"] is False and "--reduce-range on" in for_trt["reason"]
    assert reduce_range_decision("on", trt=True, cpu=xeon)["reduce_range"] is True
    off = reduce_range_decision("off", trt=False, cpu=amd)
    assert off["reduce_range"] is False and off["cpu"]["vnni"] is False


# -- choosing among recorded candidates ---------------------------------------------------------

def test_choose_highest_agreement_then_lowest_logit_error():
    from tl.export.calib import Candidate, choose

    def c(m, agree, mean):
        return Candidate(m, agree, mean, mean * 4)

    assert choose([c("minmax", 0.96, 0.01), c("entropy", 0.98, 0.09), c("percentile", 0.97, 0.02)]).method == "entropy"
    assert choose([c("minmax", 0.98, 0.05), c("entropy", 0.98, 0.03), c("percentile", 0.98, 0.04)]).method == "entropy"
    # A full tie keeps the earlier method (minmax: the cheapest, and what TensorRT users expect).
    assert choose([c("percentile", 0.9, 0.02), c("minmax", 0.9, 0.02)]).method == "minmax"
    # Accuracy never outranks agreement: the FP32 model is the reference.
    best = choose([Candidate("minmax", 0.95, 0.01, 0.1, accuracy=0.99), Candidate("entropy", 0.97, 0.01, 0.1, accuracy=0.90)])
    assert best.method == "entropy"
    with pytest.raises(ValueError):
        choose([])


def test_selection_excludes_calibration_images(tmp_path):
    from tl.export.calib import selection_images
    from tl.export.parity import ParityImages
    from tl.runtime.errors import TLError

    files = [tmp_path / f"{i}.png" for i in range(5)]
    images = ParityImages(np.arange(5, dtype=np.float32)[:, None], "val-dir x", tuple(map(str, files)),
                          np.array([0, 1, 0, 1, 0]))
    sel = selection_images(images, [files[1], files[3]])
    assert sel.rows.tolist() == [0, 2, 4] and sel.batch[:, 0].tolist() == [0, 2, 4] and sel.labels.tolist() == [0, 0, 0]
    with pytest.raises(TLError, match="also a calibration image"):
        selection_images(images, files)
    with pytest.raises(TLError, match="--val-dir"):
        selection_images(ParityImages(np.zeros((2, 1), np.float32), "synthetic"), [])


# -- labels and accuracy ------------------------------------------------------------------------

def test_parity_labels_from_class_folders_and_checkpoint(synth_data):
    from tl.export.parity import accuracy, parity_images
    from tl.runtime.images import list_images
    from tl.runtime.spec import ModelSpec

    spec = ModelSpec.create(arch="resnet18", classes=["circle", "square", "triangle", "cross"], image_size=16)
    labelled = parity_images(spec=spec, ckpt=None, val_dir=synth_data / "val", count=8)
    names = [Path(f).parent.name for f in labelled.files]
    assert [spec.classes[i] for i in labelled.labels] == names
    unlabelled = parity_images(spec=spec, ckpt=None, val_dir=synth_data, count=8)  # train/ and val/ are not classes
    assert unlabelled.labels is None
    files = [str(p) for p in list_images(synth_data / "val")]
    ckpt = {"data": {"val_files": files, "val_labels": [i % 4 for i in range(len(files))],
                     "classes": list(spec.classes)}}  # as `tl train` records them: a list
    recorded = parity_images(spec=spec, ckpt=ckpt, val_dir=None, count=1000)
    assert recorded.labels.tolist() == [i % 4 for i in range(len(files))]
    ckpt["data"]["classes"] = list(reversed(spec.classes))  # another class order: the labels mean nothing here
    assert parity_images(spec=spec, ckpt=ckpt, val_dir=None, count=1000).labels is None
    logits = np.array([[0.1, 2.0], [3.0, 1.0], [0.0, 1.0], [5.0, 4.0]])
    assert accuracy(logits, np.array([1, 0, 0, 0])) == 0.75 and accuracy(logits, None) is None


# -- one real export ----------------------------------------------------------------------------

@pytest.mark.slow
def test_auto_keeps_the_measured_best_and_records_every_candidate(tl_cli, make_checkpoint, synth_data, tmp_path):
    import onnx
    import torch

    from tl.export.calib import SELECTION_RULE, Candidate, choose
    from tl.export.cpuflags import this_cpu
    from tl.export.parity import artifact_logits, parity_images
    from tl.train.checkpoint import load_model

    out, ckpt = tmp_path / "exp", make_checkpoint("resnet18", image_size=32)
    r = tl_cli("export", ckpt, "--out", out, "--onnx", "--int8", "--calib-method", "auto",
               "--calib-dir", synth_data / "train", "--calib-count", "8", "--val-dir", synth_data / "val",
               "--parity-count", "16")
    assert r.code == 0, r.err
    report = json.loads((out / "export.json").read_text())
    cal = report["calibration"]
    assert [c["method"] for c in cal["candidates"]] == ["minmax", "entropy", "percentile"]
    assert cal["requested"] == "auto" and cal["rule"] == SELECTION_RULE and cal["per_channel"] is True
    assert cal["method"] == choose([Candidate(**c) for c in cal["candidates"]]).method
    # Judged on the validation images only (calibration drew from train/), all of them labelled.
    assert cal["selection_images"] == {"count": 16, "source": f"val-dir {synth_data / 'val'}", "labelled": True}
    assert cal["saturation"]["reduce_range"] == this_cpu().reduce_range == cal["reduce_range"]
    # The kept file is the winner: its agreement on those images is the one recorded for it.
    model, spec, _ = load_model(ckpt)
    images = parity_images(spec=spec, ckpt=None, val_dir=synth_data / "val", count=16)
    with torch.inference_mode():
        ref = model(torch.from_numpy(images.batch)).numpy()
    logits, _ = artifact_logits(out / "model.int8.onnx", images.batch)
    won = next(c for c in cal["candidates"] if c["method"] == cal["method"])
    assert (ref.argmax(1) == logits.argmax(1)).mean() == pytest.approx(won["top1_agreement"])
    assert (logits.argmax(1) == images.labels).mean() == pytest.approx(won["accuracy"])
    # Accuracy beside agreement: eager FP32 and each artifact, in export.json and the table.
    assert report["reference_accuracy"] == pytest.approx((ref.argmax(1) == images.labels).mean())
    arts = {a["file"]: a for a in report["artifacts"]}
    assert arts["model.int8.onnx"]["accuracy"] == pytest.approx(won["accuracy"])
    assert arts["model.onnx"]["accuracy"] == pytest.approx(report["reference_accuracy"])
    assert f"eager FP32 accuracy {report['reference_accuracy']:.1%}" in " ".join(r.out.split())
    assert "accuracy" in r.out and f"INT8 calibration: {cal['method']} (auto" in r.out
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "model.int8.onnx", "model.onnx"]
    proto = onnx.load(str(out / "model.int8.onnx"))
    weights = [onnx.numpy_helper.to_array(t) for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    bound = 64 if cal["reduce_range"] else 127  # 7-bit weights where reduce_range is on
    assert max(int(np.abs(w).max()) for w in weights) <= bound
    # Per-channel weights: each output channel has its own scale, so each one reaches the end of the range.
    per_channel_max = np.concatenate([np.abs(w).reshape(len(w), -1).max(1) for w in weights if w.ndim == 4])
    assert len(per_channel_max) > 1000 and (per_channel_max >= bound - 1).mean() > 0.99


def test_auto_without_validation_images_is_a_user_error(tl_cli, make_checkpoint, synth_data, tmp_path):
    r = tl_cli("export", make_checkpoint(image_size=32), "--out", tmp_path / "o", "--int8",
               "--calib-method", "auto", "--calib-dir", synth_data / "train")
    assert_user_error(r, "--calib-method auto", "--val-dir")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_bad_reduce_range_and_calib_method(tl_cli, make_checkpoint, tmp_path):
    from tl.export.options import ExportOptions
    from tl.runtime.errors import TLError

    ckpt = make_checkpoint(image_size=32)
    assert_user_error(tl_cli("export", ckpt, "--int8", "--reduce-range", "maybe", "--out", tmp_path / "o"),
                      "--reduce-range")
    with pytest.raises(TLError, match="--reduce-range must be one of auto, on, off"):
        ExportOptions(checkpoint=ckpt, reduce_range="7bit")
    with pytest.raises(TLError, match="--calib-method must be one of minmax, entropy, percentile, auto"):
        ExportOptions(checkpoint=ckpt, calib_method="kl")
