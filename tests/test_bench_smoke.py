"""The benchmark harness runs (one tiny case, one repeat); no timing is asserted."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytest.importorskip("torch")


def test_compare_runs_one_tiny_case(tmp_path, monkeypatch):
    from bench import compare

    tiny = compare.Case("tiny/gru/B2/T5/I3/H4", "latency", "gru", 2, 5, 3, 4)
    monkeypatch.setattr(compare, "all_cases", lambda: [tiny])
    out_json = tmp_path / "r.json"
    res = compare.main(["--threads", "1", "--repeats", "1", "--no-cold", "--no-memory",
                        "--json", str(out_json), "--png", "", "--md", "", "--matmul-size", "64"])
    r = res["results"][0]
    assert r["case"] == tiny.name
    assert r["max_abs_diff"] < 1e-4
    assert r["infer_fastseq_ms"] > 0 and r["train_torch_ms"] > 0
    assert json.loads(out_json.read_text())["results"][0]["case"] == tiny.name
