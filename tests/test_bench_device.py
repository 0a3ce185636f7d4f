"""``engine-plugins bench device`` on the CPU: the device runs depend on it, so CI keeps it working."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engine_plugins.bench.device import format_table, main, run_bench, tiled


def test_tiling_repeats_the_periodic_system():
    pos = np.array([[0.5, 0.5, 0.5], [1.5, 2.0, 2.5]])
    box = np.diag([3.0, 4.0, 5.0])
    p, b, names = tiled(pos, box, ["A", "B"], 2)
    assert p.shape == (16, 3) and names == ["A", "B"] * 8
    np.testing.assert_array_equal(b, 2 * box)
    np.testing.assert_array_equal(p[:2], pos)
    frac = p @ np.linalg.inv(box)  # every copy is the original shifted by whole cells
    shifts = (frac.reshape(8, 2, 3) - (pos @ np.linalg.inv(box))[None]).round(12)
    assert {tuple(s[0]) for s in shifts} == {(i, j, k) for i in (0, 1) for j in (0, 1) for k in (0, 1)}
    assert np.all(shifts[:, 0] == shifts[:, 1])


def test_bench_device_runs_on_the_cpu(tmp_path):
    res = run_bench(["propagate-transport", "train-rm"], replicas=[1], jumps=1, train_steps=1, progress=False)
    assert res["devices"][0] == "cpu" and not res["failed"] and not res["skipped"]
    rows = {(r["task"], r["device"]): r for r in res["rows"]}
    prop, train = rows[("propagate-transport", "cpu")], rows[("train-rm", "cpu")]
    assert prop["atoms"] == 320 and prop["rate"] > 0 and prop["vs_cpu"] == 1.0
    assert train["loss_finite"] and train["artifact_runs_on_cpu"] and train["rate"] > 0
    assert "propagate-transport" in format_table(res)


def test_bench_device_reports_missing_data_and_bad_tasks(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["generate"], molecules_dir=str(tmp_path / "none"), output=str(out), progress=False) == 0
    res = json.loads(out.read_text())
    assert "engine-plugins data molecules" in res["skipped"]["generate"]
    assert (tmp_path / "b.png").is_file()
    assert main(["no-such-task"], progress=False) == 2
    assert "unknown task" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_asking_for_cuda_without_one_is_a_clear_error():
    from engine_plugins.bench.propagate import transport_start
    from engine_plugins.methods.gpff.generate import GenerationError, GenerationTask, generate
    from engine_plugins.methods.gpff.samplers import SamplerError as GPFFSamplerError
    from engine_plugins.methods.propagator.sampler import SamplerError, propagate

    models = Path(__file__).resolve().parent.parent / "exported_models"
    pos, box, names, _ = transport_start("Li0.25-s1.55", 2)
    with pytest.raises(SamplerError, match="no CUDA device.*--device cpu"):
        propagate(str(models / "propagator_transport.pt"), pos, names, box, 800.0, n_jumps=1, device="cuda",
                  progress=False)
    with pytest.raises((GenerationError, GPFFSamplerError), match="no CUDA device"):
        generate(str(models / "gpff_qm9like.pt"), [GenerationTask(["C", "H", "H", "H", "H"])], nfe=2, device="cuda")
