"""The iterative loop and its command, on a tiny random Llama."""

import json
import math
import tempfile

import pytest

transformers = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")

from hf_tiny import tiny_model, tiny_tokenizer  # noqa: E402

from cringe_kernels.iterative import IterativeConfig, Labels, run_iterative  # noqa: E402

datasets.disable_progress_bars()


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def char_sum(prompts, completions, **kwargs):
    """Toy judge: any deterministic score that varies between completions."""
    return [float(sum(map(ord, c)) % 11) for c in completions]


def _config(tmp_path, **overrides):
    options = dict(rounds=1, num_generations=3, max_new_tokens=6, min_gap=-1.0, loss_kwargs=dict(k=3),
                   output_dir=str(tmp_path), progress=False, max_length=64,
                   training_args=dict(learning_rate=1e-3, per_device_train_batch_size=2))
    options.update(overrides)
    return IterativeConfig(**options)


@pytest.mark.parametrize("mode", ["pairwise", "binary"])
def test_iterative_one_round(tmp_path, tok, mode, monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    seen = {}

    def judge(prompts, completions, **kwargs):
        seen.update(kwargs)
        seen["prompts"] = prompts
        return char_sum(prompts, completions)

    prompts = [{"prompt": "Q: hi? A:", "topic": "greeting"},
               {"prompt": [{"role": "user", "content": "Q: bye?"}], "topic": "farewell"}]
    lines = []
    out = tmp_path / "out"
    results = run_iterative(tiny_model(len(tok)), tok, prompts, [judge], _config(out, mode=mode), log=lines.append)
    assert [(r.round, r.final) for r in results] == [(1, False), (2, True)]
    first = results[0]
    assert first.examples == (2 if mode == "pairwise" else 6)
    assert math.isfinite(first.train_loss) and math.isfinite(first.logp_rejected_after)
    assert "ce" in first.train_metrics
    # The reward functions get the prompt file's other columns, one entry per completion, as TRL passes them.
    assert seen["topic"] == ["greeting"] * 3 + ["farewell"] * 3
    assert seen["prompts"][3] == [{"role": "user", "content": "Q: bye?"}]
    for name in ("metrics.md", "metrics.csv", "metrics.json", "samples_round_1.jsonl"):
        assert (out / name).exists(), name
    assert "| final |" in (out / "metrics.md").read_text()
    assert (out / "final_model" / "config.json").exists() and (out / "final_model" / "tokenizer.json").exists()
    assert list(scratch.iterdir()) == []  # no leftover temporary folders
    assert len(lines) == 4


def test_round_without_pairs_is_labelled_by_its_number_and_json_is_strict(tmp_path, tok):
    out = tmp_path / "out"
    config = _config(out, rounds=1, min_gap=1e9, save_final_model=False)
    results = run_iterative(tiny_model(len(tok)), tok, ["Q: hi? A:"], [char_sum], config, log=lambda line: None)
    assert results[0].examples == 0 and not results[0].final
    rows = json.loads((out / "metrics.json").read_text())  # json.loads accepts NaN; the text must not hold it
    assert "NaN" not in (out / "metrics.json").read_text()
    assert rows[0]["logp_chosen_before"] is None and rows[0]["final"] is False
    table = (out / "metrics.md").read_text().splitlines()
    assert table[2].startswith("| 1 |") and table[3].startswith("| final |")
    assert not (out / "final_model").exists()


def test_a_labeller_can_label_and_drop_completions(tmp_path, tok):
    calls = []

    def labeller(prompts, completions, round_index, **columns):
        calls.append(round_index)
        labels = [None if i % 3 == 0 else i % 2 == 0 for i in range(len(completions))]
        return Labels([0.0] * len(completions), {"users": 0.0}, labels, {"kept": 4})

    config = _config(tmp_path / "out", mode="binary", num_generations=3, save_final_model=False)
    results = run_iterative(tiny_model(len(tok)), tok, ["Q: hi? A:", "Q: bye? A:"], config=config,
                            labeller=labeller, log=lambda line: None)
    assert calls == [1, 2]
    assert results[0].examples == 4 and results[0].label_stats == {"kept": 4}


def test_iterative_command_saves_the_model(tmp_path, tok, capsys, monkeypatch):
    from cringe_kernels.iterative import main

    # --reward takes module:function; a module of its own keeps this
    # independent of how pytest imports the test files.
    (tmp_path / "toy_rewards.py").write_text(
        "def char_sum(prompts, completions, **kwargs):\n"
        "    assert kwargs['topic'] == ['a', 'a', 'b', 'b']\n"
        "    return [float(sum(map(ord, c)) % 11) for c in completions]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model_dir = tmp_path / "model"
    tiny_model(len(tok)).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Q: hi? A:", "topic": "a"}\n'
                       '{"prompt": [{"role": "user", "content": "bye?"}], "topic": "b"}\n\n')
    out = tmp_path / "out"
    code = main(["--model", str(model_dir), "--prompts", str(prompts), "--reward", "toy_rewards:char_sum",
                 "--output-dir", str(out), "--rounds", "1", "--num-generations", "2", "--max-new-tokens", "4",
                 "--min-gap", "-1", "--learning-rate", "1e-3", "--no-progress", "--save-every-round"])
    assert code == 0
    assert "| final |" in capsys.readouterr().out
    for folder in ("final_model", "round_1_model"):
        saved = transformers.AutoModelForCausalLM.from_pretrained(out / folder)
        assert saved.config.vocab_size == len(tok)
        assert transformers.AutoTokenizer.from_pretrained(out / folder).chat_template == tok.chat_template
