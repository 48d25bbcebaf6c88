"""The synthetic model: the shipped tokenizer, Gemma 3 1B's block geometry, random weights;
loaded and measured by the real llama-bench, marked synthetic in every record."""

from __future__ import annotations

from pathlib import Path

import pytest

from synapse_os.bench import synthetic
from tests.bench.conftest import error_text, invoke, read_ndjson


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "synth.gguf"
    result = invoke(["bench", "synth-model", "--size", "350M", "-o", str(out), "--seed", "7"])
    assert result.exit_code == 0, error_text(result)
    assert "random weights (seed 7)" in result.output
    return out


def test_the_synthetic_model_has_the_asked_size_and_the_real_tokenizer(
        synth: Path, small_model: tuple[Path, str]) -> None:
    import gguf

    size = synth.stat().st_size
    assert abs(size - 350 * 1024**2) < 16e6  # within one block (~15 MB) of the request
    fields = gguf.GGUFReader(synth).fields
    shipped = gguf.GGUFReader(small_model[0]).fields
    assert fields["general.architecture"].contents() == "gemma3"
    assert fields["gemma3.embedding_length"].contents() == synthetic.EMBED
    assert fields["gemma3.block_count"].contents() == 3
    for key in ("tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
        assert fields[key].contents()[:1000] == shipped[key].contents()[:1000]
    assert fields["tokenizer.ggml.tokens"].contents()[-5:] == \
        shipped["tokenizer.ggml.tokens"].contents()[-5:]
    assert synthetic.synthetic_mark(synth) == {"seed": 7, "tokenizer_from": small_model[1]}
    assert synthetic.synthetic_mark(small_model[0]) is None


def test_llama_bench_measures_it_and_the_records_say_synthetic(
        synth: Path, llama_bench: Path, tmp_path: Path) -> None:
    out = tmp_path / "synth.jsonl"
    result = invoke(["bench", "run", "--label", "synthetic", "-o", str(out), "--model",
                     str(synth), "--llama-bench", str(llama_bench), "-p", "0", "-n", "4",
                     "--pg", "off", "-r", "3", "--threads", "2", "--bandwidth-mib", "64"])
    assert result.exit_code == 0, error_text(result)
    [record] = read_ndjson(out)
    model = record["synapse"]["model"]
    assert model["origin"] == "synthetic" and model["synthetic"]["seed"] == 7
    assert record["n_gen"] == 4 and record["synapse"]["median_ts"] > 0
    assert record["model_size"] > 300e6  # every block is read per token: bandwidth-bound
    assert 0 < record["synapse"]["roofline"]["fraction"] < 2


def test_a_size_below_one_block_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "tiny.gguf"
    result = invoke(["bench", "synth-model", "--size", "100M", "-o", str(out)])
    assert result.exit_code == 2
    assert "smaller than its token embedding and one block" in error_text(result)
    assert not out.exists() and not list(tmp_path.iterdir())
    result = invoke(["bench", "synth-model", "--size", "lots", "-o", str(out)])
    assert result.exit_code == 2 and "is not a size" in error_text(result)
