"""recipes/compare.py end to end on tiny configs: equal steps over seeds, one JSONL of results,
the table and the plot; an interrupted study resumes without redoing finished runs."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
import compare  # noqa: E402

RECIPE = """[model]
preset = "tiny"
arch = "{arch}"

[train]
batch_size = 2
seq_len = 64
lr = 1e-3
warmup = 1
threads = 1
"""


@pytest.fixture
def study(tmp_path):
    from wavelm.audio import save_audio
    from wavelm.data.folder import prepare_folder

    t = np.arange(4000) / 16000
    for split, n in (("train", 3), ("val", 1), ("test", 1)):
        for i in range(n):
            save_audio(tmp_path / "audio" / split / f"{i}.wav", 0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t), 16000)
    prepare_folder(tmp_path / "audio", tmp_path / "cache", workers=1, progress=False)
    configs = []
    for arch in ("conv", "conformer"):
        p = tmp_path / f"{arch}.toml"
        p.write_text(RECIPE.format(arch=arch) + ("\n[study]\nwhole_splits = false\n" if arch == "conformer" else ""))
        configs.append(str(p))
    return tmp_path, ["--data", str(tmp_path / "cache"), "--configs", *configs, "--steps", "4",
                      "--seeds", "0,1", "--best-seeds", "2", "--eval-every", "2", "--out", str(tmp_path / "s")]


@pytest.mark.slow
def test_study_runs_resumes_and_reports(study, capsys):
    from wavelm.model.config import ModelConfig
    from wavelm.train import TrainConfig, train

    tmp, argv = study
    out = tmp / "s"
    assert compare.main(argv + ["--max-runs", "1"]) == 0          # stopped after one run
    rows = compare.read_results(out / "results.jsonl")
    assert [(r["config"], r["seed"]) for r in rows] == [("conv", 0)]
    first = (out / "conv" / "seed0" / "best" / "model.safetensors").stat().st_mtime_ns
    # the next run was killed at step 2: a last/ checkpoint and no result line
    train(TrainConfig(batch_size=2, seq_len=64, lr=1e-3, warmup=1, threads=1, steps=4, seed=0, eval_every=2,
                      val_crops=32),
          ModelConfig.from_name("tiny", arch="conformer"), str(tmp / "cache"), out / "conformer" / "seed0",
          overwrite=True, stop_at=2, progress=False)
    assert compare.main(argv + ["--bench"]) == 0
    rows = compare.read_results(out / "results.jsonl")
    runs = {(r["config"], r["seed"]): r for r in rows if r["kind"] == "run"}
    assert set(runs) == {("conv", 0), ("conv", 1), ("conformer", 0), ("conformer", 1)}
    assert (out / "conv" / "seed0" / "best" / "model.safetensors").stat().st_mtime_ns == first   # not redone
    assert runs["conformer", 0]["resumed"] and not runs["conv", 1]["resumed"]
    assert all(r["steps"] == 4 and r["tokens_seen"] == 4 * 128 and r["val_crop_bits"] > 0 for r in runs.values())
    assert all(r["val_bits"] > 0 and r["test_bits"] > 0 for (c, _), r in runs.items() if c == "conv")
    assert all(r["val_bits"] is None and r["test_bits"] is None for (c, _), r in runs.items() if c == "conformer")
    assert {r["config"] for r in rows if r["kind"] == "speed"} == {"conv", "conformer"}
    text = capsys.readouterr().out
    assert "| conv |" in text and "val bits, mean (min..max)" in text
    # the reading: conv vs conformer (ConvSamba's claim), on the val crops since conformer has no whole-split bits
    claim = [ln for ln in text.splitlines() if "(`conv` vs `conformer`)" in ln]
    assert len(claim) == 1 and "val crops" in claim[0]
    assert any(w in claim[0] for w in ("confirmed", "refuted", "not resolved (seed ranges overlap)"))
    assert compare.main(argv + ["--bench", "--max-runs", "0"]) == 0     # measured once per config
    assert sorted(r["config"] for r in compare.read_results(out / "results.jsonl") if r["kind"] == "speed") == ["conformer", "conv"]
    assert compare.main(["--out", str(out), "--plot", str(tmp / "v.png")]) == 0
    assert (tmp / "v.png").stat().st_size > 1000
    assert json.loads((out / "results.jsonl").read_text().splitlines()[0])["kind"] == "run"


def test_verdict_counts_a_difference_only_beyond_the_seed_spread():
    def cfg(val, seeds=2):
        return {"val": (sum(val) / len(val), min(val), max(val)), "crops": None, "seeds": seeds}

    assert compare.verdict(cfg([3.0, 3.1]), cfg([3.2, 3.3]))[0] == "confirmed"
    assert compare.verdict(cfg([3.2, 3.3]), cfg([3.0, 3.1]))[0] == "refuted"
    assert compare.verdict(cfg([3.0, 3.25]), cfg([3.2, 3.3]))[0].startswith("not resolved (seed ranges")
    assert compare.verdict(cfg([3.0], 1), cfg([3.5], 1))[0] == "not resolved (one seed)"
    assert "difference +0.200" in compare.verdict(cfg([3.0, 3.1]), cfg([3.2, 3.3]))[1]


def test_study_table_rejects_unknown_study_keys(tmp_path, capsys):
    p = tmp_path / "a.toml"
    p.write_text(RECIPE.format(arch="conv") + "\n[study]\nwhole_split = false\n")
    with pytest.raises(SystemExit) as e:
        compare.load_recipe(p, compare.parse_args(["--out", str(tmp_path), "--steps", "2"]), "x")
    assert e.value.code == 2 and "[study] takes one key" in capsys.readouterr().err


def test_a_scored_split_is_kept_for_a_resumed_study(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(compare, "split_bits", lambda net, cache, split, mf: calls.append(split) or 3.5)
    assert compare.saved_split_bits(tmp_path, None, None, "val", None, 920, "k1") == 3.5
    # killed while scoring test: the rerun reads val back, scores test only
    assert compare.saved_split_bits(tmp_path, None, None, "val", None, 920, "k1") == 3.5
    assert compare.saved_split_bits(tmp_path, None, None, "test", None, 920, "k1") == 3.5
    assert calls == ["val", "test"]
    # another best checkpoint or file limit is another score
    compare.saved_split_bits(tmp_path, None, None, "val", None, 900, "k1")
    compare.saved_split_bits(tmp_path, None, None, "val", 2, 920, "k1")
    assert calls == ["val", "test", "val", "val"]
    saved = json.loads((tmp_path / "scores.json").read_text())
    assert saved["run_key"] == "k1"
    assert set(saved["bits"]) == {"val@920/all", "test@920/all", "val@900/all", "val@920/2"}
    # a run directory reused with other settings: its old scores are not read back
    compare.saved_split_bits(tmp_path, None, None, "val", None, 920, "k2")
    assert calls[-1] == "val" and len(calls) == 5


def test_a_benched_config_not_trained_yet_has_its_row_and_no_claim():
    rows = [{"kind": "speed", "config": "conv", "arch": "conv", "params": 2_185_408,
             "train_tokens_per_s": 25_294.4, "decode_samples_per_s": 16_611.3},
            {"kind": "speed", "config": "transformer", "train_tokens_per_s": 23_097.9,
             "decode_samples_per_s": 9_025.0}]           # a row from before speed rows carried params
    text = compare.table(rows)
    assert "| conv | conv | 2.19M | - | 0 | - | - | - | - | 25,294 | 16,611 |" in text
    assert "| transformer | - | - | - | 0 | - | - | - | - | 23,098 | 9,025 |" in text
    assert compare.reading(rows) == ""


@pytest.mark.slow
def test_pooled_lines_count_as_done_seeds_and_pool_with_new_runs(study, capsys):
    """A study whose run folders were lost keeps going from its results file in git, on another
    machine: the seeds of a `pooled` line are not trained again, the table pools them with the
    runs made since, and a run's key does not depend on where the data lies."""
    import shutil

    from wavelm.data.folder import TokenCache

    tmp, argv = study
    argv = argv[:argv.index("--configs") + 2] + argv[argv.index("--steps"):]       # conv alone
    results = tmp / "kept" / "results.jsonl"
    results.parent.mkdir()
    args = compare.parse_args(argv)
    recipe = compare.load_recipe(Path(args.configs[0]), args, "anywhere")
    key0 = compare.run_key(recipe, 0, None, compare.data_id(TokenCache(tmp / "cache")))
    pooled = {"kind": "pooled", "config": "conv", "seeds": [0], "keys": {"0": key0}, "arch": "conv", "params": 1000,
              "tokens_seen": 512, "val_crop_bits": [7.0, 7.0, 7.0], "val_bits": [6.0, 6.0, 6.0],
              "test_bits": [6.5, 6.5, 6.5]}
    results.write_text(json.dumps(pooled) + "\n")
    argv += ["--results", str(results), "--best-seeds", "0"]
    assert compare.main(argv + ["--seeds", "0"]) == 0
    assert not (tmp / "s" / "conv" / "seed0").exists()                  # seed 0 is done: nothing trained
    assert compare.main(argv + ["--seeds", "0,1"]) == 0
    assert not (tmp / "s" / "conv" / "seed0").exists() and (tmp / "s" / "conv" / "seed1" / "best").is_dir()
    rows = compare.read_results(results)
    assert [r["kind"] for r in rows] == ["pooled", "run"] and not (tmp / "s" / "results.jsonl").exists()
    v = rows[1]["val_bits"]
    row = compare.summarize(rows)[0]
    assert row["seeds"] == 2
    assert row["val"] == pytest.approx(((6.0 + v) / 2, min(6.0, v), max(6.0, v)))
    capsys.readouterr()
    assert compare.main(["--results", str(results), "--table", "--plot", str(tmp / "p.png")]) == 0
    assert "| conv | conv |" in capsys.readouterr().out and (tmp / "p.png").stat().st_size > 1000
    # the same study on another machine: the data elsewhere, a fresh --out; nothing is trained again
    shutil.copytree(tmp / "cache", tmp / "moved")
    moved = [str(tmp / "moved") if a == str(tmp / "cache") else str(tmp / "s2") if a == str(tmp / "s") else a
             for a in argv]
    assert compare.main(moved + ["--seeds", "0,1"]) == 0
    assert not (tmp / "s2" / "conv").exists()
    # a pooled seed made with other settings stops the study instead of mixing into its table
    results.write_text(json.dumps(dict(pooled, keys={"0": "0" * 16})) + "\n")
    with pytest.raises(SystemExit) as e:
        compare.main(argv + ["--seeds", "0"])
    assert e.value.code == 2 and "conv seed 0 in" in capsys.readouterr().err


def test_results_file_checks(tmp_path, capsys):
    p = tmp_path / "results.jsonl"
    run = {"kind": "run", "config": "conv", "seed": 0, "key": "k"}
    pooled = {"kind": "pooled", "config": "conv", "seeds": [0, 1], "keys": {"0": "a", "1": "b"}, "tokens_seen": 1,
              "val_crop_bits": None, "val_bits": None, "test_bits": None}
    for rows, says in (([{k: v for k, v in pooled.items() if k != "keys"}], "a pooled line needs keys"),
                       ([pooled, run], "conv seed 0 has a run line and is in a pooled line")):
        p.write_text("".join(json.dumps(r) + "\n" for r in rows))
        with pytest.raises(SystemExit) as e:
            compare.read_results(p)
        assert e.value.code == 2 and says in capsys.readouterr().err
    assert compare.done_keys([pooled, dict(run, seed=2)], "conv", 1) == ["b"]
    assert compare.done_keys([pooled, dict(run, seed=2)], "conv", 2) == ["k"]


def test_an_unwritable_results_file_stops_the_study_before_training(study, capsys):
    tmp, argv = study
    (tmp / "ro").mkdir()
    (tmp / "ro" / "results.jsonl").mkdir()                               # a folder where the file should be
    with pytest.raises(SystemExit) as e:
        compare.main(argv + ["--results", str(tmp / "ro" / "results.jsonl")])
    assert e.value.code == 2 and "results.jsonl: is a folder" in capsys.readouterr().err
    assert not (tmp / "s" / "conv").exists()
