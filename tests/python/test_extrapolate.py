"""posenc-extrapolate end to end: --quick run, its table, PNG and JSON; same seed, same numbers."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import posenc
from posenc import extrapolate

PYTHON_DIR = Path(__file__).resolve().parents[2] / "python"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SCALED = [extrapolate.scaled_name(k) for k in extrapolate.SCALINGS]
FINETUNED = [extrapolate.finetuned_name(k) for k in extrapolate.FT_SCALINGS]
# Row order of a default (or --quick) run: the RoPE scaling rows follow rope.
ROWS = list(extrapolate.ENCODINGS[: extrapolate.ENCODINGS.index("rope") + 1]) + SCALED + FINETUNED \
    + list(extrapolate.ENCODINGS[extrapolate.ENCODINGS.index("rope") + 1:])


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
    body = table.split("\n\nwrote")[0].splitlines()[3:]
    names = [line.split()[0] for line in body if line.strip() and not line.startswith("-")]
    assert names[: len(ROWS)] == ROWS
    rows = {line.split()[0]: line for line in body if line.strip()}
    for name in SCALED:  # evaluation only: no training time
        assert len(rows[name].split()) == 1 + len(lengths) + 1 and rows[name].split()[-1] == "-"
    for name in FINETUNED:
        assert float(rows[name].split()[-1]) >= 0.0
    assert any(line.startswith("rope+<scaling>: ") for line in body)
    assert any(line.startswith("rope+<scaling>-ft2x: ") for line in body)
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
    assert list(data["results"]) == ROWS
    assert cfg["rope_scalings"] == list(extrapolate.SCALINGS)
    assert cfg["finetune_steps"] == cfg["steps"] // 10 > 0
    assert cfg["finetune_lr"] == pytest.approx(0.1 * cfg["lr"])
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


def test_quick_scalings_equal_rope_at_L_and_differ_past_it(quick_run):
    out, _ = quick_run
    data = json.loads((out / "results.json").read_text())
    L = data["config"]["train_len"]
    res = data["results"]
    rope = {int(n): e["ppl"] for n, e in res["rope"]["eval"].items()}
    for name in SCALED:
        assert res[name]["base"] == "rope" and res[name]["train_seconds"] is None
        ppl = {int(n): e["ppl"] for n, e in res[name]["eval"].items()}
        assert ppl[L] == rope[L], name  # factor 1 / dynamic below L: exactly plain rope
        for n in ppl:
            if n > L:
                assert ppl[n] != rope[n], (name, n)
    assert res["rope+dynamic"]["dynamic_block"] == L
    # Fine-tuned copies: their own weights and factor 2, so they differ from rope even at L.
    for name in FINETUNED:
        assert res[name]["finetune"]["steps"] == data["config"]["finetune_steps"]
        assert res[name]["finetune"]["length"] == 2 * L
        assert res[name]["eval"][str(L)]["ppl"] != rope[L], name
    # At L and 2L the scalings do not change the rows of the other encodings or each other's.
    assert len({res[n]["eval"][str(2 * L)]["ppl"] for n in SCALED + FINETUNED}) == 6


def numbers(data):
    return {
        enc: (r["train_loss_last10pct"], {n: e["ppl"] for n, e in r["eval"].items()})
        for enc, r in data["results"].items()
    }


TINY = ["--train-len", "16", "--steps", "8", "--batch-size", "4", "--d-model", "16",
        "--heads", "2", "--layers", "1", "--eval-factors", "1,2", "--eval-bytes", "2048",
        "--no-plot", "--no-progress"]


def test_finetune_flag_and_base_model_untouched(tmp_path):
    def run(name, *extra):
        assert extrapolate.main(["--encodings", "rope", *TINY, *extra, "--out",
                                 str(tmp_path / name)]) == 0
        return json.loads((tmp_path / name / "results.json").read_text())

    plain = run("plain", "--rope-scalings", "none", "--finetune-steps", "0")
    assert list(plain["results"]) == ["rope"]
    tuned = run("tuned", "--finetune-steps", "3", "--finetune-lr", "1e-3")
    assert list(tuned["results"]) == ["rope"] + SCALED + FINETUNED
    # Scaling and fine-tuning copies never change the trained rope model's own row.
    assert numbers(tuned)["rope"] == numbers(plain)["rope"]
    for name in FINETUNED:
        ft = tuned["results"][name]["finetune"]
        assert (ft["steps"], ft["lr"], ft["length"], ft["factor"]) == (3, 1e-3, 32, 2)
        assert math.isfinite(tuned["results"][name]["train_loss_last10pct"])
        assert tuned["results"][name]["train_seconds"] > 0
    a, b = (tuned["results"][n]["eval"]["16"]["ppl"] for n in FINETUNED)
    assert a != b  # PI and YaRN tune different frequencies
    only = run("only", "--rope-scalings", "yarn,ntk", "--finetune-steps", "0")
    assert list(only["results"]) == ["rope", "rope+yarn", "rope+ntk"]
    assert only["results"]["rope+yarn"]["eval"] == tuned["results"]["rope+yarn"]["eval"]


def test_rope_scaling_frequencies():
    from posenc.rope_config import RopeConfig

    d, L = 16, 64
    plain = posenc.ops.rope_inv_freq(d, 10000.0)
    for kind in extrapolate.SCALINGS:
        sc = extrapolate.RopeScaling(kind, d, L)
        assert sc.frequencies(L) is None and sc.frequencies(L // 2) is None, kind
    freqs = {k: extrapolate.RopeScaling(k, d, L).frequencies(4 * L) for k in extrapolate.SCALINGS}
    for kind, (inv, af) in freqs.items():
        assert inv.dtype == torch.float32 and inv.shape == plain.shape
        assert not torch.allclose(inv, plain, rtol=1e-3), kind
        assert inv[-1] < plain[-1] * 0.6, kind  # the slowest pair is stretched (s = 4)
    for i, a in enumerate(extrapolate.SCALINGS):
        for b in extrapolate.SCALINGS[i + 1:]:
            if {a, b} != {"ntk", "dynamic"}:
                assert not torch.equal(freqs[a][0], freqs[b][0]), (a, b)
    torch.testing.assert_close(freqs["linear"][0], plain / 4, rtol=1e-6, atol=0)
    assert freqs["linear"][1] == freqs["ntk"][1] == freqs["dynamic"][1] == 1.0
    assert freqs["yarn"][1] == pytest.approx(0.1 * math.log(4) + 1)
    # Over a whole window of n = 4L, dynamic NTK is NTK-aware with s = 4 (why it is evaluated
    # block by block); within the window's first L it is plain.
    assert torch.equal(freqs["dynamic"][0], freqs["ntk"][0])
    assert torch.equal(RopeConfig(d, rope_type="ntk", factor=4.0).compute()[0], freqs["ntk"][0])
    # Fine-tuned: factor 2 even at L, growing past 2L.
    ft = extrapolate.RopeScaling("yarn", d, L, extrapolate.FT_FACTOR)
    assert ft.factor(L) == ft.factor(2 * L) == 2.0 and ft.factor(8 * L) == 8.0
    assert ft.frequencies(L)[1] == pytest.approx(0.1 * math.log(2) + 1)
    with pytest.raises(ValueError, match="unknown RoPE scaling"):
        extrapolate.RopeScaling("longrope", d, L)


def test_scaled_model_uses_the_scaling_and_dynamic_is_plain_up_to_L():
    torch.manual_seed(0)
    L = 8
    model = extrapolate.ByteLM("rope", L, 16, 2, 2).eval()
    x = torch.randint(0, 256, (2, 4 * L))
    with torch.no_grad():
        # Compared at equal shapes: a shorter pass need not equal the longer one's prefix to
        # the bit (BLAS/SDPA kernels may block a 4-row problem differently from an 8-row one).
        plain_half, plain_short, plain_long = model(x[:, : L // 2]), model(x[:, :L]), model(x)
        torch.testing.assert_close(plain_half, plain_short[:, : L // 2])  # causal: same prefix
        for kind in extrapolate.SCALINGS:
            model.rope_scaling = extrapolate.RopeScaling(kind, 8, L)
            assert torch.equal(model(x[:, :L]), plain_short), kind
            assert torch.equal(model(x[:, : L // 2]), plain_half), kind
            scaled = model(x)
            assert not torch.allclose(scaled, plain_long, atol=1e-4), kind
            # Causal: the first L positions of a longer dynamic pass see the longer length's base.
            if kind == "dynamic":
                assert not torch.allclose(scaled[:, :L], plain_short, atol=1e-4)
        model.rope_scaling = None
        assert torch.equal(model(x), plain_long)
    # Block-by-block evaluation (dynamic) at n = L is one pass: exactly the plain number; at 4L
    # its first block is predicted at length L, i.e. unscaled.
    held = torch.randint(0, 256, (8 * L + 1,))
    model.rope_scaling = extrapolate.RopeScaling("dynamic", 8, L)
    by_block = extrapolate.evaluate(model, held, L, 1024, "", True, block=L)
    model.rope_scaling = None
    assert by_block == extrapolate.evaluate(model, held, L, 1024, "", True)
    model.rope_scaling = extrapolate.RopeScaling("ntk", 8, L)  # identity at every pass <= L
    blocks = extrapolate.evaluate(model, held, 4 * L, 1024, "", True, block=L)
    model.rope_scaling = None
    plain_blocks = extrapolate.evaluate(model, held, 4 * L, 1024, "", True, block=L)
    plain_once = extrapolate.evaluate(model, held, 4 * L, 1024, "", True)
    assert blocks["bytes"] == plain_once["bytes"] == 8 * L - 4 * L + 4 * L
    assert blocks["ppl"] != plain_blocks["ppl"]
    # Without a scaling, block-by-block is the same model on the same contexts: same NLL.
    assert plain_blocks["ppl"] == pytest.approx(plain_once["ppl"], rel=1e-5)


def test_same_seed_same_numbers(tmp_path):
    def run(seed, name):
        args = ["--encodings", "alibi,learned,rope", *TINY, "--finetune-steps", "2",
                "--seed", str(seed), "--out", str(tmp_path / name)]
        assert extrapolate.main(args) == 0
        return json.loads((tmp_path / name / "results.json").read_text())

    a, b = run(3, "a"), run(3, "b")
    assert numbers(a) == numbers(b)
    assert list(a["results"]) == ["alibi", "learned", "rope"] + SCALED + FINETUNED
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
    with pytest.raises(SystemExit, match=r"unknown RoPE scaling\(s\) \['pi'\]"):
        extrapolate.main(["--rope-scalings", "linear,pi", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="--rope-scalings needs rope"):
        extrapolate.main(["--encodings", "alibi", "--rope-scalings", "yarn", "--out",
                          str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="--finetune-steps needs rope"):
        extrapolate.main(["--encodings", "alibi", "--finetune-steps", "5", "--out",
                          str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="--finetune-steps must be >= 0"):
        extrapolate.main(["--finetune-steps", "-1", "--out", str(tmp_path / "x")])
    for lr in ("0", "-1e-3", "nan"):
        with pytest.raises(SystemExit, match="--finetune-lr must be > 0"):
            extrapolate.main([f"--finetune-lr={lr}", "--out", str(tmp_path / "x")])
    # Without rope there are no scaling rows and nothing to fine-tune (no error by default).
    assert list(data["results"]) == ["none"]
    assert data["config"]["rope_scalings"] == [] and data["config"]["finetune_steps"] == 0
    tiny = tmp_path / "tiny.txt"
    tiny.write_bytes(b"too short")
    with pytest.raises(SystemExit, match="corpus too small"):
        extrapolate.main(["--corpus", str(tiny), "--out", str(tmp_path / "y")])


def test_fused_and_materialized_attention_agree_and_report_cost(tmp_path):
    # The relative encodings train and evaluate through posenc.ops.relative_attention by
    # default; the materialized path (bias + causal mask into SDPA) must give the same model.
    def run(path, name):
        args = ["--encodings", "alibi,t5,kerple,xl,forgetting_gate,nope", *TINY, "--attention", path,
                "--out", str(tmp_path / name)]
        assert extrapolate.main(args) == 0
        return json.loads((tmp_path / name / "results.json").read_text())

    fused, mat = run("fused", "f"), run("materialized", "m")
    assert fused["config"]["attention"] == "fused" and mat["config"]["attention"] == "materialized"
    for enc in ("alibi", "t5", "kerple", "xl", "forgetting_gate", "none"):
        a, b = numbers(fused)[enc], numbers(mat)[enc]
        assert a[0] == pytest.approx(b[0], rel=1e-4)
        for n in a[1]:
            assert a[1][n] == pytest.approx(b[1][n], rel=1e-4)
            e = fused["results"][enc]["eval_cost"][n]
            assert e["seconds"] > 0 and (e["peak_rss_mib"] is None or e["peak_rss_mib"] > 0)
    cost = (tmp_path / "f" / "cost.txt").read_text()
    assert "attention path: fused" in cost and all(enc in cost for enc in ("alibi", "xl"))


def test_out_of_memory_at_a_length_is_reported_not_fatal(tmp_path, monkeypatch):
    real = extrapolate.evaluate

    def evaluate(model, heldout, length, *a, **kw):
        if length >= 32:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes")
        return real(model, heldout, length, *a, **kw)

    monkeypatch.setattr(extrapolate, "evaluate", evaluate)
    args = ["--encodings", "alibi", *TINY[:-4], "--eval-factors", "1,2,4", "--eval-bytes", "2048",
            "--no-plot", "--no-progress", "--out", str(tmp_path)]
    assert extrapolate.main(args) == 0
    ev = json.loads((tmp_path / "results.json").read_text())["results"]["alibi"]["eval"]
    assert math.isfinite(ev["16"]["ppl"])
    assert ev["32"]["note"] == ev["64"]["note"] == extrapolate.OOM_MARKER
    assert "can't allocate" in ev["32"]["error"] and "not tried" in ev["64"]["error"]
    assert extrapolate.OOM_MARKER in (tmp_path / "table.txt").read_text()


def test_progress_bars_only_on_a_terminal():
    # A job logging to a file must not fill it with bar redraws: tqdm's disable=None turns the
    # bar off when the stream is not a terminal; --no-progress turns it off everywhere.
    import io

    from tqdm import tqdm

    assert extrapolate._bar_disable(True) is True
    assert extrapolate._bar_disable(False) is None

    class Tty(io.StringIO):
        def isatty(self):
            return True

    for stream, drawn in ((io.StringIO(), False), (Tty(), True)):
        for _ in tqdm(range(3), file=stream, disable=extrapolate._bar_disable(False), mininterval=0):
            pass
        assert bool(stream.getvalue()) == drawn, stream.getvalue()
