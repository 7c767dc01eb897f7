"""The ``cyrnn`` command, run for real in subprocesses (``python -m cyrnn``), with tiny
training budgets and the model cache in a temporary folder."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import cyrnn
from cyrnn import cli
from cyrnn.language_model import is_poem

PACKAGE_ROOT = str(Path(cyrnn.__file__).resolve().parent.parent)
TINY = ["--epochs", "1", "--hidden", "16", "--embedding", "8"]


@pytest.fixture
def run(tmp_path):
    """Run ``python -m cyrnn ARGS`` against the cyrnn under test; returns the result."""
    cache = tmp_path / "cache"

    def _run(*args, cwd=tmp_path, timeout=300):
        env = dict(os.environ, CYRNN_CACHE_DIR=str(cache), PYTHONIOENCODING="utf-8",
                   PYTHONPATH=PACKAGE_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   OMP_NUM_THREADS="1")
        return subprocess.run([sys.executable, "-m", "cyrnn", *map(str, args)], cwd=cwd,
                              env=env, capture_output=True, text=True, encoding="utf-8",
                              timeout=timeout)

    _run.cache = cache
    return _run


def one_line_error(result, code=1):
    assert result.returncode == code, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "error" in lines[0], result.stderr
    return lines[0]


def in_process(capsys, *args):
    """``cli.main(args)`` in this process (for the cheap checks): (status, out, err)."""
    try:
        status = cli.main([str(a) for a in args])
    except SystemExit as exc:  # argparse: --help, usage errors
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


def test_help_everywhere(run, capsys):
    result = run("--help")
    assert result.returncode == 0 and "generate" in result.stdout and "train" in result.stdout
    result = run("generate", "--help")
    assert result.returncode == 0 and "--head" in result.stdout and "--backend" in result.stdout
    assert run("--version").stdout.strip() == f"cyrnn {cyrnn.__version__}"
    for command in ("train", "sample", "info"):
        status, out, _ = in_process(capsys, command, "--help")
        assert status == 0 and "usage: cyrnn " + command in out


def test_generate_dinos_trains_then_reuses_the_cache(run):
    args = ["generate", "dinos", "-n", "4", "--seed", "3", "--max-samples", "300", *TINY]
    first = run(*args)
    assert first.returncode == 0, first.stderr
    names = first.stdout.splitlines()
    assert len(names) == 4 and all(n.strip() == n for n in names)
    assert "training" in first.stderr and "batch" in first.stderr  # message + progress bar
    cached = list(run.cache.glob("dinos-*.cyrnn"))
    assert len(cached) == 1
    second = run(*args)
    assert second.returncode == 0 and second.stdout == first.stdout
    assert "cached model" in second.stderr and "batch" not in second.stderr
    # other settings, other cache entry; --quiet silences stderr
    third = run("generate", "dinos", "-n", "2", "--prefix", "Tyr", "--max-samples", "300",
                "--quiet", *TINY[:2], "--hidden", "8")
    assert third.returncode == 0 and third.stderr == ""
    assert [n[:3] for n in third.stdout.splitlines()] == ["Tyr", "Tyr"]
    assert len(list(run.cache.glob("dinos-*.cyrnn"))) == 2
    # a corrupt cache file is ignored and rebuilt
    cached[0].write_bytes(b"garbage")
    fourth = run(*args)
    assert fourth.returncode == 0, fourth.stderr
    assert "ignoring" in fourth.stderr and fourth.stdout == first.stdout
    assert cached[0].read_bytes()[:2] == b"PK"


def test_generate_tang_forms_and_acrostic(run):
    tiny = ["--max-samples", "300", *TINY, "--no-cache", "-q"]
    result = run("generate", "tang", "-n", "3", "--head", "春风明月", "--seed", "0", *tiny)
    assert result.returncode == 0, result.stderr
    poems = result.stdout.splitlines()
    assert len(poems) == 3 and all(is_poem(p, "quatrain", head="春风明月") for p in poems)
    assert not run.cache.exists()  # --no-cache
    result = run("generate", "tang", "-n", "2", "--form", "regulated", *tiny)
    assert result.returncode == 0, result.stderr
    assert all(is_poem(p, "regulated") for p in result.stdout.splitlines())
    line = one_line_error(run("generate", "tang", "--head", "春风", *tiny))
    assert "one character per line" in line
    result = run("generate", "tang", "-n", "2", "--start", "春", "--seed", "0", *tiny)
    assert result.returncode == 0, result.stderr
    assert all(is_poem(p) and p.startswith("春") for p in result.stdout.splitlines())


def test_train_sample_info(run, tmp_path, capsys):
    corpus = tmp_path / "names.txt"
    corpus.write_text("Ada\nAlan\n\nGrace\nEdsger\r\nBarbara\nDonald\nJohn\nBarbara\n",
                      encoding="utf-8")
    model = tmp_path / "names.cyrnn"
    result = run("train", corpus, "--cell", "gru", "--hidden", "16", "--epochs", "3",
                 "--out", model, "--seed", "1")
    assert result.returncode == 0, result.stderr
    assert model.exists() and "saved to" in result.stderr
    result = run("sample", model, "-n", "5", "--temperature", "0.7", "--top-k", "3",
                 "--prefix", "Ba", "--seed", "2")
    assert result.returncode == 0, result.stderr
    samples = result.stdout.splitlines()
    assert len(samples) == 5 and all(s.startswith("Ba") for s in samples)

    # the rest in process (each subprocess imports scikit-learn: seconds)
    status, out, _ = in_process(capsys, "info", model)
    assert status == 0
    assert "cell: gru" in out and "hidden_size: 16" in out and "epochs: 3" in out

    # a long text, a Chinese corpus, poems from a saved model
    text = tmp_path / "text.txt"
    text.write_text("to be or not to be, that is the question. " * 30, encoding="utf-8")
    status, out, err = in_process(capsys, "train", text, "--text", "--bptt", "20", "--epochs",
                                  "1", "--hidden", "8", "--out", tmp_path / "text.cyrnn", "-q")
    assert status == 0 and err == ""
    status, out, _ = in_process(capsys, "sample", tmp_path / "text.cyrnn", "-n", "2",
                                "--max-length", "15", "--prefix", "to be")
    assert [len(s) for s in out.splitlines()] == [20, 20]
    poems = tmp_path / "poems.txt"
    poems.write_text("床前明月光，疑是地上霜。举头望明月，低头思故乡。\n"
                     "春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。\n", encoding="utf-8")
    assert in_process(capsys, "train", poems, "--epochs", "2", "--hidden", "8", "--out",
                      tmp_path / "p.cyrnn", "-q")[0] == 0
    status, out, err = in_process(capsys, "sample", tmp_path / "p.cyrnn", "--form", "quatrain",
                                  "--head", "春夜明花", "-n", "2")
    assert status == 0, err
    poems_out = out.splitlines()
    assert len(poems_out) == 2 and all(is_poem(p, head="春夜明花") for p in poems_out)


def test_errors_are_one_line(run, tmp_path, capsys):
    # through the real entry point (python -m cyrnn): a run-time error and a usage error
    line = one_line_error(run("train", tmp_path / "missing.txt"))
    assert "no such file" in line
    corpus = tmp_path / "c.txt"
    corpus.write_text("abc\nabd\n", encoding="utf-8")
    assert "invalid choice" in one_line_error(run("train", corpus, "--cell", "transformer"), 2)

    # the other error paths in process (cheaper: each subprocess imports scikit-learn)
    def error(*args, code=1):
        status, out, err = in_process(capsys, *args)
        assert status == code and out == "" and len(err.strip().splitlines()) == 1, err
        assert "Traceback" not in err and "error" in err, err
        return err

    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    assert "empty" in error("train", empty)
    garbage = tmp_path / "garbage.cyrnn"
    garbage.write_bytes(b"not a model at all")
    assert "cannot load" in error("sample", garbage)
    assert "no such file" in error("info", tmp_path / "nope.cyrnn")
    model = tmp_path / "m.cyrnn"
    assert in_process(capsys, "train", corpus, "--epochs", "1", "--hidden", "4", "--out", model,
                      "-q")[0] == 0
    assert "unknown characters" in error("sample", model, "--prefix", "xyz")

    assert "temperature" in error("sample", model, "--temperature", "0", code=2)
    # the language model's lower bound is a usage error too (it exited with 1)
    assert "must be >= 0.0001" in error("sample", model, "--temperature", "1e-5", code=2)
    from cyrnn import cli
    from cyrnn.language_model import MIN_TEMPERATURE
    assert cli._MIN_TEMPERATURE == MIN_TEMPERATURE
    assert "invalid choice" in error("frobnicate", code=2)
    assert "cannot load" in error("info", garbage)
    assert "poems" in error("sample", model, "--form", "quatrain")
    assert "--form" in error("sample", model, "--head", "abab")
    assert "--prefix" in error("generate", "tang", "--prefix", "春")
    assert "--head" in error("generate", "dinos", "--head", "ab")
    assert "does not exist" in error("train", corpus, "--out",
                                     tmp_path / "no" / "such" / "dir" / "m.cyrnn")
    status, out, err = in_process(capsys, "info", model)
    assert status == 0 and "vocab_size: 7" in out
    # options that do not apply are refused, not ignored; checks before training
    assert "--form is for" in error("generate", "dinos", "--form", "regulated")
    assert "--max-vocab is for" in error("generate", "dinos", "--max-vocab", "30")
    assert "--max-length" in error("sample", model, "--form", "quatrain", "--max-length", "3")
    one = tmp_path / "one.txt"
    one.write_text("a", encoding="utf-8")
    assert "too short" in error("train", one, "--text")
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "fifo.cyrnn")
        assert "not a regular file" in error("train", corpus, "--out", tmp_path / "fifo.cyrnn")
    text = tmp_path / "crlf.txt"
    text.write_bytes(b"a\tb\r\nba\r\n")
    assert run("train", text, "--text", "--epochs", "1", "--hidden", "4", "--out", model,
               "-q").returncode == 0
    status, out, err = in_process(capsys, "info", model)
    line = [row for row in out.splitlines() if row.startswith("characters:")]
    # escaped, one line; "\r\n" read as one newline (it was "\n\r" in the vocabulary)
    assert status == 0 and line == ["characters: \\t\\nab"]


def test_installed_console_script(tmp_path):
    exe = shutil.which("cyrnn")
    if exe is None:
        pytest.skip("the cyrnn console script is not installed")
    result = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "generate" in result.stdout
    result = subprocess.run([exe, "info", str(tmp_path / "missing.cyrnn")], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr


# ---------------------------------------------------------------------------- issue 15
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.cyrnn"
    from cyrnn.language_model import CharLanguageModel
    CharLanguageModel(hidden_size=8, embedding_dim=4, max_epochs=1,
                      random_state=0).fit(["ada", "alan", "grace"]).save(path)
    return path


@pytest.mark.parametrize("option,value", [("--hidden", "99999999999999999999"),
                                          ("--embedding", "1" * 30), ("--seed", "-1")])
def test_huge_or_negative_numbers_are_usage_errors(capsys, tmp_path, option, value):
    corpus = tmp_path / "names.txt"
    corpus.write_text("ada\nalan\n")
    status, out, err = in_process(capsys, "train", corpus, option, value)
    assert status == 2 and option in err and "Traceback" not in err


def test_interrupt_while_starting_is_not_a_traceback(capsys, monkeypatch):
    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_build_parser", interrupted)
    try:
        status, out, err = in_process(capsys, "info", "x.cyrnn")
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped main(): the user sees a traceback")
    assert status == 130 and err.strip() == "cyrnn: interrupted"


def test_the_command_starts_without_importing_numpy():
    """``cyrnn`` handles Ctrl-C from main() on; importing it must cost next to nothing
    (before, ``import cyrnn`` loaded numpy and scipy: 0.3 s of a traceback window)."""
    code = "import sys, cyrnn.cli; print(sorted(m for m in ('numpy', 'scipy') if m in sys.modules))"
    env = dict(os.environ, PYTHONPATH=PACKAGE_ROOT)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_closed_pipe_ends_quietly(tiny_model, tmp_path):
    env = dict(os.environ, PYTHONPATH=PACKAGE_ROOT, CYRNN_CACHE_DIR=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-m", "cyrnn", "sample", str(tiny_model), "-n",
                             "2000"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # like 'head -1' having read its line and left
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert proc.returncode == 141 and err == "", err


def test_cache_follows_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.delenv("CYRNN_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cli.cache_dir() == tmp_path / "xdg" / "cyrnn"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")  # the spec: absolute only
    assert cli.cache_dir() == Path.home() / ".cache" / "cyrnn"
    monkeypatch.setenv("CYRNN_CACHE_DIR", str(tmp_path / "own"))
    assert cli.cache_dir() == tmp_path / "own"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifo_corpus_or_model_is_an_error_not_a_hang(run, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for args in (("train", fifo, "-o", tmp_path / "m.cyrnn"), ("sample", fifo),
                 ("info", fifo)):
        line = one_line_error(run(*args, timeout=60))
        assert "not a regular file" in line


def test_options_are_checked_before_training(capsys, monkeypatch):
    """A bad --head, a --prefix outside the corpus or --peephole with a GRU failed only
    after training (a minute for the Tang preset): now before fit runs."""
    from cyrnn.language_model import CharLanguageModel

    def no_training(self, *args, **kwargs):
        raise AssertionError("fit ran")

    monkeypatch.setattr(CharLanguageModel, "fit", no_training)
    for args, message in ((["tang", "--head", "ABCD"], "CJK"),
                          (["tang", "--head", "春"], "one character per line"),
                          (["dinos", "--prefix", "123"], "corpus lacks: '123'"),
                          (["dinos", "--cell", "gru", "--peephole"], "peephole"),
                          (["tang", "--start", "ab"], "CJK"),
                          (["tang", "--start", "春", "--head", "春夏秋冬"], "not both"),
                          (["dinos", "--start", "春"], "--start is for")):
        status, out, err = in_process(capsys, "generate", *args, "--no-cache", "-q",
                                      "--max-samples", "50")
        assert status == 1 and out == "" and message in err, err


def test_samples_differ_between_runs_without_a_seed(tiny_model, capsys):
    """--seed's help promises different samples every run without it; the model's own
    generator (seeded by its training seed) gave the same ones every time."""
    runs = [in_process(capsys, "sample", tiny_model, "-n", "20", "--temperature", "2")
            for _ in range(2)]
    assert all(status == 0 for status, _, _ in runs)
    assert runs[0][1] != runs[1][1]
    seeded = [in_process(capsys, "sample", tiny_model, "-n", "20", "--seed", "4")[1]
              for _ in range(2)]
    assert seeded[0] == seeded[1]


def test_an_unavailable_backend_is_not_a_bad_model_file(tiny_model, capsys, monkeypatch,
                                                        tmp_path):
    """--backend names a backend this machine cannot run: that error, not "cannot load
    model", and a cached model is not taken for a broken one and trained again."""
    from cyrnn import backends

    def unavailable(name="auto"):
        if name == "numba":
            raise ValueError("backend 'numba' is not available here: (a test)")
        return get_backend(name)

    get_backend = backends.get_backend
    monkeypatch.setattr(backends, "get_backend", unavailable)
    status, out, err = in_process(capsys, "sample", tiny_model, "--backend", "numba")
    assert status == 1 and out == "" and "not available" in err and "load" not in err, err
    monkeypatch.setenv("CYRNN_CACHE_DIR", str(tmp_path))
    args = ["generate", "dinos", "--max-samples", "50", *TINY]
    assert in_process(capsys, *args, "-q")[0] == 0  # trains and caches (auto)
    status, out, err = in_process(capsys, *args, "--backend", "numba")
    assert status == 1 and "not available" in err, err
    assert "ignoring" not in err and "training" not in err, err
