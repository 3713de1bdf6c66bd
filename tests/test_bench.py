"""mimic-bench: timing statistics, the step built from the real modules, and a tiny CLI run."""

from __future__ import annotations

import json

import pytest
import torch

from mimic_runner.bench import timing
from mimic_runner.bench.mfu import count_flops, peak_tflops, utilisation
from mimic_runner.bench.steps import make_step, model_overrides


def test_summarize_median_and_quartiles() -> None:
    st = timing.summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (st.median, st.q1, st.q3, st.min, st.max, st.n) == (3.0, 2.0, 4.0, 1.0, 5.0, 5)
    assert st.iqr == 2.0 and st.as_dict()["iqr"] == 2.0
    assert timing.summarize([7.0]).median == 7.0
    with pytest.raises(ValueError):
        timing.summarize([])


def test_interleaved_round_robin_and_paired_ratio() -> None:
    order: list[str] = []
    cases = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    out = timing.interleaved(cases, repeats=3, warmup=1)
    assert order == ["a", "b"] * 4  # warm-up round, then A, B, A, B, ...
    assert [len(v) for v in out.values()] == [3, 3]
    assert timing.paired_ratio([2.0, 4.0, 9.0], [1.0, 2.0, 3.0]).median == 2.0


def test_peak_table() -> None:
    assert peak_tflops("NVIDIA H100 80GB HBM3", "bf16-mixed") == pytest.approx(989.4)
    assert peak_tflops("NVIDIA H100 PCIe", "bf16-mixed") == pytest.approx(756.0)
    assert peak_tflops("NVIDIA H200", "32-true") in (494.7, 66.9)  # TF32 unless disabled
    assert peak_tflops("Some CPU", "32-true") is None
    u = utilisation(flops=2_000_000_000_000, seconds=2.0, peak=10.0)
    assert u["achieved_tflops"] == pytest.approx(1.0) and u["mfu"] == pytest.approx(0.1)


def test_overrides_only_set_ensemble_keys_for_ensembles() -> None:
    # channels_last always explicit: small_cnn on the CPU defaults to it otherwise.
    assert model_overrides("baseline", "resnet18", 5, "loop") == [
        "model=baseline", "backbone=resnet18", "++model.channels_last=false"]
    assert "model.ensemble_impl=wide" in model_overrides("expl_ensemble", "small_cnn", 5, "wide")


def test_step_runs_the_real_module_and_updates_weights() -> None:
    step = make_step("expl_ensemble", "small_cnn", ensemble_size=2, impl="wide", batch_size=2,
                     size=32)
    assert type(step.module).__name__ == "EnsembleModule" and step.module.consistency == "mean"
    before = [p.detach().clone() for p in step.module.parameters()]
    loss = step.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, step.module.parameters()))
    assert count_flops(step) > 0


def test_gradcam_cases_agree_with_pytorch_grad_cam() -> None:
    pytest.importorskip("pytorch_grad_cam")
    from mimic_runner.bench.gradcam import build_classifier, cases

    net = build_classifier("small_cnn")
    fns, diff = cases(net, torch.randn(2, 3, 32, 32))
    assert set(fns) == {"ours", "pytorch-grad-cam"} and diff < 1e-4


@pytest.mark.slow  # about a minute on a loaded 2-core machine
def test_cli_tiny_run_writes_json(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from mimic_runner.cli.bench import main

    out = tmp_path / "bench.json"
    rc = main(["--models", "baseline,normal_ensemble,expl_ensemble", "--backbones", "small_cnn",
               "--sizes", "2", "--impls", "loop,wide", "--batch-size", "2", "--image-size", "32",
               "--repeats", "2", "--warmup", "0", "--cam-backbone", "small_cnn",
               "--cam-batch", "2", "--cam-size", "32", "--data-epochs", "1",
               "--data-override", "data.synth.params.n=240", "--devices", "cpu",
               "--out", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert {"date", "command", "torch", "cpu_count", "load_average_start"} <= set(res["meta"])
    assert len(res["steps"]) == 5 and all(r["seconds"]["n"] == 2 for r in res["steps"])
    kinds = {r["ratio"] for r in res["ratios"]}
    assert {"expl/normal", "loop/wide"} <= kinds
    assert res["gradcam"][0]["speedup"]["median"] > 0
    assert res["data"]["images_per_s"]["median"] > 0 and res["data"]["consumers"]
    assert all(m["flops"] > 0 and m["mfu"] is None for m in res["mfu"])  # no peak for a CPU
    assert "Training step" in capsys.readouterr().out


def test_cli_rejects_unknown_names(capsys) -> None:  # type: ignore[no-untyped-def]
    from mimic_runner.cli.bench import main

    assert main(["--impls", "loop,fast", "--sections", "steps"]) == 2
    assert "unknown impl fast" in capsys.readouterr().err


def test_channels_last_option_of_the_modules() -> None:
    """``++model.channels_last=true`` stores NHWC conv weights and changes no result."""
    from mimic_runner.bench.steps import build_module, random_batch

    torch.manual_seed(0)
    a = build_module(model_overrides("expl_ensemble", "small_cnn", 2, "loop")).eval()
    torch.manual_seed(0)
    b = build_module(model_overrides("expl_ensemble", "small_cnn", 2, "loop",
                                     channels_last=True)).eval()
    w = b.net.backbones[0].stages[1][1][0].weight  # (32, 16, 3, 3): NCHW != NHWC strides
    assert w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
    x = random_batch(2, 32)["image"]
    torch.testing.assert_close(b(x).logits, a(x).logits, rtol=1e-4, atol=1e-5)
