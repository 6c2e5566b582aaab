import subprocess
import sys

import pytest
from helpers import PROJECT_ROOT

from machine_translation import evaluate
from machine_translation.evaluation.scoring import score
from machine_translation.evaluation.test_sets import builtin_test_set, file_test_set


def run_evaluate(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "machine_translation.evaluate", *arguments],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_shipped_test_sets():
    multi30k = builtin_test_set("multi30k")
    assert len(multi30k.sources) == 1000
    assert all(len(refs) == 1 for refs in multi30k.references)
    tatoeba = builtin_test_set("tatoeba")
    assert len(tatoeba.sources) == 699 == len(set(tatoeba.sources))
    assert sum(len(refs) for refs in tatoeba.references) == 1106


def test_multi_reference_scoring():
    hypotheses = ["Il fait beau aujourd'hui .", "Je suis fatigué ."]
    single = score(hypotheses, [["Il fait beau aujourd'hui ."], ["Je suis épuisé ."]])
    multi = score(
        hypotheses,
        [["Il fait beau aujourd'hui ."], ["Je suis épuisé .", "Je suis fatigué ."]],
    )
    assert multi.bleu == pytest.approx(100.0)
    assert single.bleu < multi.bleu
    assert "nrefs:var" in multi.bleu_signature or "nrefs:2" in multi.bleu_signature
    assert (
        score(["the CAT"], [["The cat"]]).bleu_lowercase
        >= score(["the CAT"], [["The cat"]]).bleu
    )


def test_misaligned_reference_file_is_a_clear_error(tmp_path):
    (tmp_path / "src.en").write_text("one\ntwo\nthree\n")
    (tmp_path / "ref.fr").write_text("un\ndeux\n")
    with pytest.raises(ValueError, match=r"ref\.fr"):
        file_test_set(tmp_path / "src.en", [tmp_path / "ref.fr"])


def test_evaluate_cli_prints_bleu_with_its_signature(smoke_run, tmp_path):
    checkpoint = smoke_run / "checkpoints" / "best.pt"
    result = run_evaluate(
        "--checkpoint",
        str(checkpoint),
        "--test",
        "multi30k",
        "--output-dir",
        str(tmp_path),
        "--beam",
        "1",
    )
    assert result.returncode == 0, result.stderr
    assert "multi30k (1000 sentences), greedy:" in result.stdout
    assert "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:" in result.stdout
    assert "case:lc" in result.stdout and "chrF" in result.stdout
    hypotheses = (tmp_path / "multi30k.beam1.fr").read_text().splitlines()
    assert len(hypotheses) == 1000


def test_evaluate_cli_with_files_and_errors(smoke_run, tmp_path):
    checkpoint = str(smoke_run / "checkpoints" / "best.pt")
    (tmp_path / "src.en").write_text("A dog runs.\nTwo men.\n")
    (tmp_path / "ref.fr").write_text("Un chien court.\nDeux hommes.\n")
    (tmp_path / "short.fr").write_text("Un chien court.\n")
    ok = run_evaluate(
        "--checkpoint",
        checkpoint,
        "--source",
        str(tmp_path / "src.en"),
        "--references",
        str(tmp_path / "ref.fr"),
        "--beam",
        "1",
        "3",
    )
    assert ok.returncode == 0, ok.stderr
    assert "src.en (2 sentences), greedy:" in ok.stdout
    assert "src.en (2 sentences), beam 3:" in ok.stdout
    bad = run_evaluate(
        "--checkpoint",
        checkpoint,
        "--source",
        str(tmp_path / "src.en"),
        "--references",
        str(tmp_path / "short.fr"),
    )
    assert bad.returncode == 2
    assert bad.stderr.startswith("error:") and "short.fr" in bad.stderr
    missing = run_evaluate("--checkpoint", str(tmp_path / "none.pt"))
    assert missing.returncode == 2
    assert "no checkpoint at" in missing.stderr and "Traceback" not in missing.stderr
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    broken = run_evaluate("--checkpoint", str(corrupt))
    assert broken.returncode == 2 and "not a readable checkpoint" in broken.stderr


def test_evaluate_keeps_blank_lines_blank_and_refuses_empty_input(smoke_run, tmp_path):
    checkpoint = str(smoke_run / "checkpoints" / "best.pt")
    (tmp_path / "src.en").write_text("A dog runs.\n\nTwo men.\n")
    (tmp_path / "ref.fr").write_text("Un chien court.\n\nDeux hommes.\n")
    files = ["--source", str(tmp_path / "src.en"), "--references"]
    output = ["--output-dir", str(tmp_path / "eval"), "--beam", "1"]
    ok = run_evaluate(
        "--checkpoint", checkpoint, *files, str(tmp_path / "ref.fr"), *output
    )
    assert ok.returncode == 0, ok.stderr
    hypotheses = (tmp_path / "eval" / "src.en.beam1.fr").read_text().split("\n")
    assert hypotheses[1] == "" and hypotheses[0] and hypotheses[2]
    (tmp_path / "empty.en").write_text("")
    (tmp_path / "empty.fr").write_text("")
    empty = run_evaluate(
        "--checkpoint",
        checkpoint,
        "--source",
        str(tmp_path / "empty.en"),
        "--references",
        str(tmp_path / "empty.fr"),
    )
    assert empty.returncode == 2 and "no sentences" in empty.stderr
    assert empty.stderr.count("\n") == 1
    zero = run_evaluate("--checkpoint", checkpoint, "--beam", "0")
    assert zero.returncode == 2 and "--beam 0" in zero.stderr


def test_evaluate_takes_the_named_run_and_says_which(smoke_run, tmp_path, capsys):
    runs = smoke_run.parent.parent  # <runs>/smoke/<timestamp>
    (tmp_path / "src.en").write_text("A dog runs.\n")
    (tmp_path / "ref.fr").write_text("Un chien court.\n")
    files = ["--source", f"{tmp_path}/src.en", "--references", f"{tmp_path}/ref.fr"]
    files += ["--beam", "1", "--output-dir", str(tmp_path)]
    assert evaluate.main(["--runs-dir", str(runs), "--run-name", "smoke", *files]) == 0
    best = runs / "smoke" / smoke_run.name / "checkpoints" / "best.pt"
    assert f"using {best} (latest 'smoke' run" in capsys.readouterr().err
    # Without --run-name only en-fr runs count: the smoke run is not taken silently.
    assert evaluate.main(["--runs-dir", str(runs), *files]) == 2
    assert f"no trained model found under {runs / 'en-fr'}" in capsys.readouterr().err


def test_evaluate_alpha_is_the_length_penalty_of_beam_search(smoke_run, tmp_path):
    """A length penalty of 0 ranks beams by their summed log-probability, which
    favours short outputs; 2 favours long ones. A negative one is refused."""
    checkpoint = str(smoke_run / "checkpoints" / "best.pt")
    captions = builtin_test_set("multi30k")
    references = [first for first, *_ in captions.references[:40]]
    (tmp_path / "src.en").write_text("\n".join(captions.sources[:40]) + "\n")
    (tmp_path / "ref.fr").write_text("\n".join(references) + "\n")
    files = ["--source", f"{tmp_path}/src.en", "--references", f"{tmp_path}/ref.fr"]
    words = {}
    for alpha in ("0", "2"):
        output = tmp_path / f"alpha{alpha}"
        arguments = ["--checkpoint", checkpoint, *files, "--beam", "4", "--alpha"]
        assert evaluate.main([*arguments, alpha, "--output-dir", str(output)]) == 0
        words[alpha] = len((output / "src.en.beam4.fr").read_text().split())
    assert words["0"] < words["2"]
    assert evaluate.main([*arguments, "-1"]) == 2
