"""posenc-extrapolate end to end: --quick run, its table, PNG and JSON; same seed, same numbers."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from posenc import extrapolate

PYTHON_DIR = Path(__file__).resolve().parents[2] / "python"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_cli(args, cwd):
    env = dict(os.environ)
    if env.get("POSENC_TEST_INSTALLED") != "1":  # same rule as conftest.py
        env["PYTHONPATH"] = str(PYTHON_DIR) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-m", "posenc.extrapolate", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("quick")
    proc = run_cli(["--quick", "--no-progress", "--out", str(out)], cwd=out)
    return out, proc.stdout


def test_quick_prints_table_with_every_encoding_and_length(quick_run):
    out, stdout = quick_run
    data = json.loads((out / "results.json").read_text())
    lengths = data["config"]["eval_lengths"]
    L = data["config"]["train_len"]
    assert lengths == [L * f for f in extrapolate.QUICK_FACTORS]
    assert max(lengths) > L
    table = stdout[stdout.index("Perplexity per byte"):]
    header = next(line for line in table.splitlines() if line.startswith("encoding"))
    assert header.split()[1:1 + len(lengths)] == [str(n) for n in lengths]
    rows = {line.split()[0]: line for line in table.splitlines()[3:] if line.strip()}
    for enc in extrapolate.ENCODINGS:
        assert enc in rows, f"no table row for {enc}"
    # Learned absolute says it cannot go past its table; everything else has a number per length.
    assert rows["learned"].count(f"n/a (table {L})") == len(lengths) - 1
    for enc in extrapolate.ENCODINGS:
        if enc != "learned":
            assert "n/a" not in rows[enc]
            assert len(rows[enc].split()) == 1 + len(lengths) + 1  # name, ppls, train seconds
    assert (out / "table.txt").read_text().strip() == table.split("\n\nwrote")[0].strip()


def test_quick_png_is_valid(quick_run):
    out, _ = quick_run
    png = (out / "extrapolate.png").read_bytes()
    assert png[:8] == PNG_MAGIC
    assert png[12:16] == b"IHDR"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width > 100 and height > 100
    assert png.rstrip()[-8:-4] == b"IEND"


def test_quick_json_has_every_encoding_and_length(quick_run):
    out, _ = quick_run
    data = json.loads((out / "results.json").read_text())
    cfg = data["config"]
    L = cfg["train_len"]
    assert cfg["quick"] is True
    assert list(data["results"]) == list(extrapolate.ENCODINGS)
    assert data["na_marker"] == f"n/a (table {L})"
    unigram = data["unigram_ppl"]
    assert 1.0 < unigram < 256.0
    for enc, r in data["results"].items():
        assert sorted(map(int, r["eval"])) == cfg["eval_lengths"]
        for n, e in r["eval"].items():
            if enc == "learned" and int(n) > L:
                assert e["ppl"] is None and e["note"] == data["na_marker"]
                assert "past the table" in e["error"]
                continue
            assert math.isfinite(e["ppl"]) and e["ppl"] >= 1.0, (enc, n, e)
            assert e["bits_per_byte"] == pytest.approx(math.log2(e["ppl"]))
            assert e["bytes"] == data["corpus"]["scored_bytes"]
        # Even the smoke-test model learns something: held-out at L beats the unigram model.
        assert r["eval"][str(L)]["ppl"] < unigram, enc


def numbers(data):
    return {
        enc: (r["train_loss_last10pct"], {n: e["ppl"] for n, e in r["eval"].items()})
        for enc, r in data["results"].items()
    }


def test_same_seed_same_numbers(tmp_path):
    def run(seed, name):
        args = ["--encodings", "alibi,learned", "--train-len", "16", "--steps", "8",
                "--batch-size", "4", "--d-model", "16", "--heads", "2", "--layers", "1",
                "--eval-factors", "1,2", "--eval-bytes", "2048", "--seed", str(seed),
                "--no-plot", "--no-progress", "--out", str(tmp_path / name)]
        assert extrapolate.main(args) == 0
        return json.loads((tmp_path / name / "results.json").read_text())

    a, b = run(3, "a"), run(3, "b")
    assert numbers(a) == numbers(b)
    assert math.isfinite(a["results"]["alibi"]["eval"]["32"]["ppl"])
    assert a["results"]["learned"]["eval"]["32"]["note"] == "n/a (table 16)"
    # A different seed trains a different model.
    assert numbers(run(4, "c")) != numbers(a)


def test_own_corpus_and_bad_arguments(tmp_path):
    corpus = tmp_path / "text.txt"
    corpus.write_bytes(("the quick brown fox jumps over the lazy dog. " * 400).encode())
    args = ["--corpus", str(corpus), "--encodings", "none", "--train-len", "16", "--steps", "4",
            "--batch-size", "4", "--d-model", "16", "--heads", "2", "--layers", "1",
            "--eval-factors", "1,4", "--no-plot", "--no-progress", "--out", str(tmp_path / "o")]
    assert extrapolate.main(args) == 0
    data = json.loads((tmp_path / "o" / "results.json").read_text())
    assert data["corpus"]["name"] == str(corpus)
    assert data["corpus"]["bytes"] == corpus.stat().st_size
    with pytest.raises(SystemExit, match="unknown encoding"):
        extrapolate.main(["--encodings", "none,bogus", "--out", str(tmp_path / "x")])
    tiny = tmp_path / "tiny.txt"
    tiny.write_bytes(b"too short")
    with pytest.raises(SystemExit, match="corpus too small"):
        extrapolate.main(["--corpus", str(tiny), "--out", str(tmp_path / "y")])
