"""The translate command line, through a subprocess as a user runs it."""

import pytest
from helpers import run_translate

from machine_translation.config.schema import DecodingConfig
from machine_translation.inference.sampling import Sampling
from machine_translation.inference.translator import Translator


@pytest.fixture(scope="module")
def checkpoint(smoke_run):
    return str(smoke_run / "checkpoints" / "best.pt")


def test_one_and_several_arguments(checkpoint):
    one = run_translate("--checkpoint", checkpoint, "A dog runs.")
    assert one.returncode == 0, one.stderr
    assert len(one.stdout.splitlines()) == 1
    several = run_translate("--checkpoint", checkpoint, "A dog.", "Two men.", "Hello.")
    assert several.returncode == 0, several.stderr
    assert len(several.stdout.splitlines()) == 3


def test_stdin_keeps_line_count_and_order_with_empty_lines(checkpoint):
    sentences = ["A dog runs.", "", "Two men sit on a bench.", "A woman smiles."]
    lines = sentences * 50  # 200 lines: several chunks of 4 x batch size
    result = run_translate(
        "--checkpoint",
        checkpoint,
        "--beam",
        "1",
        "--batch-size",
        "16",
        stdin="\n".join(lines) + "\n",
    )
    assert result.returncode == 0, result.stderr
    outputs = result.stdout.split("\n")[:-1]
    assert len(outputs) == 200
    assert all(outputs[i] == "" for i in range(1, 200, 4))  # empty in, empty out
    for i in range(4):  # the same input always lands on the same output
        assert len(set(outputs[i::4])) == 1


def test_odd_input_does_not_crash_and_keeps_lines(checkpoint):
    odd = [
        "Emoji 🐶🚲 and symbols ∑ ≠ ∞.",
        "Control \x07 bell \x0b vtab \x0c formfeed.",
        "Right to left: שלום עולם مرحبا بالعالم.",
        "Carriage\rreturn inside a line.",
        "Zero\u200bwidth and combining e\u0301.",
    ]
    data = ("\n".join(odd) + "\n").encode() + b"Invalid \xff\xfe bytes.\n"
    result = run_translate("--checkpoint", checkpoint, stdin=data)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.decode().split("\n")[:-1]) == 6


def test_very_long_input_is_truncated_with_a_warning(checkpoint):
    long_sentence = " ".join(["the black dog runs on the green grass"] * 80)
    result = run_translate("--checkpoint", checkpoint, "--beam", "1", long_sentence)
    assert result.returncode == 0, result.stderr
    assert "truncated" in result.stderr
    assert len(result.stdout.splitlines()) == 1


def test_nbest_lines_carry_sorted_scores(checkpoint):
    result = run_translate(
        "--checkpoint", checkpoint, "--beam", "4", "--nbest", "3", "A dog.", "A cat."
    )
    assert result.returncode == 0, result.stderr
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert [row[0] for row in rows] == ["0", "0", "0", "1", "1", "1"]
    for first in (0, 3):
        scores = [float(row[1]) for row in rows[first : first + 3]]
        assert scores == sorted(scores, reverse=True)


def test_missing_and_corrupt_checkpoints(tmp_path):
    missing = run_translate("--checkpoint", str(tmp_path / "none.pt"), "Hello.")
    assert missing.returncode == 2
    assert missing.stderr.count("\n") == 1 and "no checkpoint at" in missing.stderr
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00" * 100)
    broken = run_translate("--checkpoint", str(corrupt), "Hello.")
    assert broken.returncode == 2 and "not a readable checkpoint" in broken.stderr
    no_runs = run_translate("--runs-dir", str(tmp_path / "empty"), "Hello.")
    assert no_runs.returncode == 2 and "no trained model found" in no_runs.stderr
    assert "Traceback" not in missing.stderr + broken.stderr + no_runs.stderr


def test_translator_api(checkpoint):
    translator = Translator(
        checkpoint, device="cpu", decoding=DecodingConfig(beam_size=3), nbest=2
    )
    results = translator.translate(["A dog runs.", ""])
    assert len(results[0]) == 2 and results[1][0].text == ""
    with pytest.raises(ValueError, match="nbest"):
        Translator(checkpoint, decoding=DecodingConfig(beam_size=2), nbest=3)


@pytest.mark.parametrize("beam_size", [1, 3])
def test_parallel_workers_give_the_same_translations_in_order(checkpoint, beam_size):
    sentences = [
        "A dog runs.",
        "Two men are sitting on a bench in the park.",
        "A woman smiles.",
        "Children play football on a sunny beach near the sea.",
        "A man rides a bicycle.",
    ] * 7  # 35 sentences: 9 batches of 4, decoded two at a time
    decoding = DecodingConfig(beam_size=beam_size, batch_size=4)
    one = Translator(checkpoint, device="cpu", decoding=decoding)
    two = Translator(checkpoint, device="cpu", decoding=decoding, workers=2)
    assert two.translate(sentences) == one.translate(sentences)
    with pytest.raises(ValueError, match="1 for sampling"):
        Translator(
            checkpoint,
            decoding=DecodingConfig(beam_size=1),
            sampling=Sampling(),
            workers=2,
        )


def test_workers_option_on_stdin(checkpoint):
    lines = ["A dog runs.", "", "Two men sit on a bench."] * 30
    arguments = ["--checkpoint", checkpoint, "--beam", "1", "--batch-size", "8"]
    stdin = "\n".join(lines) + "\n"
    alone = run_translate(*arguments, stdin=stdin)
    parallel = run_translate(*arguments, "--workers", "2", stdin=stdin)
    assert parallel.returncode == 0, parallel.stderr
    assert parallel.stdout == alone.stdout
    assert len(parallel.stdout.split("\n")[:-1]) == 90
    zero = run_translate(*arguments, "--workers", "0", "A dog.")
    assert zero.returncode == 2 and "workers=0" in zero.stderr


def test_sampling_is_reproducible_with_a_seed(checkpoint):
    sentences = ["A dog runs in the park.", "Two men are sitting on a bench."] * 4
    arguments = ["--checkpoint", checkpoint, "--sample", "--temperature", "1.5"]
    first = run_translate(*arguments, "--seed", "3", *sentences)
    again = run_translate(*arguments, "--seed", "3", *sentences)
    other = run_translate(*arguments, "--seed", "4", *sentences)
    assert first.returncode == 0, first.stderr
    assert len(first.stdout.split("\n")[:-1]) == 8
    assert first.stdout == again.stdout != other.stdout
    greedy = run_translate("--checkpoint", checkpoint, "--beam", "1", *sentences)
    cold = run_translate(*arguments[:3], "--sample", "--temperature", "0", *sentences)
    assert cold.stdout == greedy.stdout


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--top-k", "5"], "--top-k only apply with --sample"),
        (["--sample", "--beam", "4"], "drop --beam and --nbest"),
        (["--sample", "--top-p", "1.5"], "top_p=1.5"),
    ],
)
def test_bad_sampling_options_are_one_line_errors(checkpoint, arguments, message):
    result = run_translate("--checkpoint", checkpoint, *arguments, "A dog.")
    assert result.returncode == 2
    assert message in result.stderr and result.stderr.count("\n") == 1


def test_run_name_picks_the_run_and_says_which(smoke_run):
    runs = smoke_run.parent.parent  # <runs>/smoke/<timestamp>
    named = run_translate("--runs-dir", str(runs), "--run-name", "smoke", "A dog.")
    assert named.returncode == 0, named.stderr
    assert len(named.stdout.splitlines()) == 1
    best = runs / "smoke" / smoke_run.name / "checkpoints" / "best.pt"
    assert named.stderr.startswith(f"using {best} (latest 'smoke' run")
    assert named.stderr.count("\n") == 1
