"""The translate command line, through a subprocess as a user runs it."""

import os
import pty
import select
import shlex
import subprocess
import sys
import time

import pytest
from helpers import PROJECT_ROOT, run_translate

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


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--batch-size", "0"], "decoding.batch_size=0: must be at least 1"),
        (["--batch-size", "-1"], "decoding.batch_size=-1: must be at least 1"),
        (["--device", "foo"], "device='foo' is not a device"),
        (["--nbest", "0"], "nbest"),
        (["--workers", "0"], "workers=0"),
    ],
)
def test_bad_options_are_one_line_errors_and_lose_no_line(checkpoint, options, message):
    for stdin in ("A dog.\nA cat.\nTwo men.\n", None):
        arguments = [] if stdin else ["A dog."]
        result = run_translate(
            "--checkpoint", checkpoint, *options, *arguments, stdin=stdin or ""
        )
        assert result.returncode == 2, result.stdout
        assert message in result.stderr and result.stderr.count("\n") == 1


def test_nbest_gives_as_many_lines_for_a_blank_input(checkpoint):
    arguments = ["--checkpoint", checkpoint, "--beam", "3", "--nbest", "3"]
    result = run_translate(*arguments, stdin="A dog.\n\nA cat.\n")
    assert result.returncode == 0, result.stderr
    indices = [line.split("\t")[0] for line in result.stdout.splitlines()]
    assert indices == ["0"] * 3 + ["1"] * 3 + ["2"] * 3


def test_warnings_number_lines_across_the_whole_input(checkpoint):
    lines = ["A dog."] * 300
    lines[289] = " ".join(["the black dog runs on the green grass"] * 80)
    arguments = ["--checkpoint", checkpoint, "--beam", "1", "--batch-size", "8"]
    result = run_translate(*arguments, stdin="\n".join(lines) + "\n")
    assert result.returncode == 0, result.stderr
    assert "sentence 290 has" in result.stderr
    assert len(result.stdout.splitlines()) == 300


def test_a_reader_that_leaves_early_ends_the_filter_quietly(checkpoint):
    lines = "".join(f"A dog number {i}.\n" for i in range(300))
    command = [sys.executable, "-m", "machine_translation.translate"]
    result = subprocess.run(
        f"{shlex.join([*command, '--checkpoint', checkpoint, '--beam', '1'])}"
        " | head -n 1",
        shell=True,
        input=lines,
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        timeout=300,
        executable="/bin/bash",
    )
    assert len(result.stdout.splitlines()) == 1
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr


def test_translate_answers_each_line_as_a_co_process(checkpoint):
    """One line written (stdin kept open), one translation back at once."""
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "machine_translation.translate"),
            *("--checkpoint", checkpoint, "--beam", "1"),
        ],
        cwd=PROJECT_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for sentence in ("A dog runs.", "Two men sit on a bench."):
            process.stdin.write(sentence + "\n")
            process.stdin.flush()
            ready, _, _ = select.select([process.stdout], [], [], 120)
            assert ready, "no translation within 120 s of writing the line"
            assert process.stdout.readline().strip()
        process.stdin.close()
        assert process.wait(timeout=60) == 0
        assert process.stdout.read() == ""  # nothing held back
    finally:
        process.kill()
        process.wait()


def test_the_interactive_prompt_at_a_terminal(checkpoint):
    """At a terminal (a pseudo-terminal here) translate prompts, answers, and quits
    on Ctrl+D."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "machine_translation.translate"),
            *("--checkpoint", checkpoint, "--beam", "1"),
        ],
        cwd=PROJECT_ROOT,
        stdin=terminal,  # Python writes input()'s prompt to standard error
        stdout=terminal,
        stderr=terminal,
    )
    os.close(terminal)

    def read_until(text: str) -> str:
        seen, deadline = "", time.monotonic() + 120
        while text not in seen and time.monotonic() < deadline:
            if select.select([controller], [], [], 1)[0]:
                seen += os.read(controller, 4096).decode(errors="replace")
        return seen

    try:
        assert "en> " in read_until("en> ")
        os.write(controller, b"A dog runs.\n")
        answer = read_until("en> ")
        assert "fr> " in answer
        os.write(controller, b"\x04")  # Ctrl+D
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
        process.wait()
        os.close(controller)
