"""The ``cyrnn`` command: train character language models and make them write.

::

    cyrnn generate dinos -n 10                  # invent dinosaur names
    cyrnn generate tang -n 4 --head 春夏秋冬     # acrostic Tang quatrains
    cyrnn generate tang -n 2 --start 春          # quatrains that begin with 春
    cyrnn train names.txt --cell gru --hidden 128 --epochs 30 --out names.cyrnn
    cyrnn sample names.cyrnn -n 5 --temperature 0.7 --prefix Ma
    cyrnn info names.cyrnn

``generate`` trains on a corpus bundled with cyrnn (with a progress bar), or
reuses a model it trained before with the same settings: models are cached in
``$CYRNN_CACHE_DIR`` (default ``$XDG_CACHE_HOME/cyrnn``, else ``~/.cache/cyrnn``),
keyed by corpus, settings and
cyrnn version; an unreadable cache file is ignored and rebuilt. The default
settings (``cyrnn.generation.PRESETS``) train in about 10 s (dinosaur names)
and about a minute (Tang poems) on 2 cores. ``sample`` and a ``generate`` that finds
its cached model load it with :func:`cyrnn.scoring.load` and write with the scorer
(the same code and draws as ``CharLanguageModel.sample``), and so does ``info``:
they start without importing scikit-learn, which only training (``train``, a first
``generate``) imports.

Samples go to stdout, one name or one poem per line; progress and messages go to
stderr. Errors are one line on stderr and a non-zero exit status (1; 2 for
command-line mistakes, such as numbers out of range; 130 after Ctrl-C). When the
reader of stdout goes away (``cyrnn sample m | head -1``) the command stops quietly
with status 141, as a Unix tool ended by SIGPIPE.

Threads: ``--threads 1`` (the default) runs BLAS and OpenMP single-threaded. These
models multiply small matrices, where extra threads cost more than they save, and
on a machine with few cores numpy's and scipy's BLAS thread pools (and OpenMP's)
take turns and wait on each other: measured on 2 cores, one thread trained 1.5 to
6 times faster. ``--threads 0`` leaves the libraries' own defaults.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from contextlib import nullcontext
from pathlib import Path

from .cells import FAMILIES

__all__ = ["main", "cache_dir"]

PROG = "cyrnn"
CELLS = FAMILIES  # the cell table's families
FORMS = ("quatrain", "regulated")


class CLIError(Exception):
    """An error reported as one line on stderr (exit status 1)."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# The largest value of every integer option: far beyond any sensible setting, and
# small enough that nothing downstream overflows (a usage error instead).
_INT_MAX = 1_000_000


def _bounded_int(minimum, maximum=_INT_MAX):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        if value > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum:,}, got {text}")
        return value
    return parse


_positive_int = _bounded_int(1)
_count = _bounded_int(0)
_seed = _bounded_int(0, 2**63 - 1)


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


# CharLanguageModel's lowest temperature (generation.MIN_TEMPERATURE; the CLI
# starts without importing it, so that --help stays fast: tests/test_cli.py checks both)
_MIN_TEMPERATURE = 1e-4


def _temperature(text):
    value = _positive_float(text)
    if value < _MIN_TEMPERATURE:
        raise argparse.ArgumentTypeError(f"must be >= {_MIN_TEMPERATURE:g}, got {text} "
                                         "(use --top-k 1 for greedy sampling)")
    return value


def _backend_name(text):
    from .backends import BACKENDS
    if text != "auto" and text not in BACKENDS:
        raise argparse.ArgumentTypeError(
            f"unknown backend {text!r} (choose from auto, {', '.join(BACKENDS)})")
    return text


def _build_parser():
    from .backends import BACKENDS  # (names only: importing it loads no backend)
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("execution")
    g.add_argument("--backend", type=_backend_name, default="auto",
                   help="kernel backend: auto (default: the fastest available), "
                        + ", ".join(BACKENDS))
    g.add_argument("--threads", type=_count, default=1,
                   help="BLAS/OpenMP threads (default 1, fastest for these small models; "
                        "0 = the libraries' defaults)")
    g.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bar or messages on stderr")

    sampling = argparse.ArgumentParser(add_help=False)
    s = sampling.add_argument_group("sampling")
    s.add_argument("-n", type=_count, default=5, help="how many samples (default 5)")
    s.add_argument("--temperature", type=_temperature, default=None,
                   help="below 1: safer, above 1: wilder (default 0.8 for generate, 1 for sample)")
    s.add_argument("--top-k", type=_positive_int, default=None,
                   help="sample among the K most likely characters only (1 = greedy)")
    s.add_argument("--seed", type=_seed, default=None,
                   help="seed of the sampling (default: different samples every run)")

    model = argparse.ArgumentParser(add_help=False)
    m = model.add_argument_group("model and training")
    m.add_argument("--cell", choices=CELLS, default=None, help="recurrent cell")
    m.add_argument("--peephole", action="store_true", default=None,
                   help="LSTM with peephole connections")
    m.add_argument("--hidden", type=_positive_int, default=None, help="hidden units")
    m.add_argument("--layers", type=_positive_int, default=None, help="stacked layers")
    m.add_argument("--embedding", type=_count, default=None,
                   help="character embedding size (0: one-hot input)")
    m.add_argument("--epochs", type=_count, default=None, help="training epochs")
    m.add_argument("--batch-size", type=_positive_int, default=None)
    m.add_argument("--learning-rate", type=_positive_float, default=None)

    parser = _Parser(prog=PROG, description="Character-level language models with cyrnn: "
                     "invent dinosaur names, write Tang poems, learn your own corpus.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("generate", parents=[sampling, model, common],
                       help="train on a bundled corpus (or reuse the cached model) and sample",
                       description="Train a model on a bundled corpus (cached after the first "
                       "run) and print samples: dinosaur names or Tang poems.")
    p.add_argument("corpus", choices=("dinos", "tang"),
                   help="dinos: 1,543 dinosaur names; tang: five-character Tang poems")
    p.add_argument("--form", choices=FORMS, default=None,
                   help="tang: 4 lines (quatrain, default) or 8 lines (regulated)")
    p.add_argument("--head", default=None,
                   help="tang: acrostic, the first character of every line (e.g. 春夏秋冬)")
    p.add_argument("--start", default=None,
                   help="tang: the poem's first characters (1 to 5, e.g. 春)")
    p.add_argument("--prefix", default="", help="dinos: every name starts with it")
    p.add_argument("--max-samples", type=_positive_int, default=None,
                   help="train on at most this many sequences of the corpus")
    p.add_argument("--max-vocab", type=_positive_int, default=None,
                   help="tang: keep only poems written with the N most frequent characters")
    p.add_argument("--train-seed", type=_seed, default=0,
                   help="seed of the training (default 0)")
    p.add_argument("--no-cache", action="store_true",
                   help="train afresh and do not read or write the model cache")
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("train", parents=[model, common], help="train a model on a text file",
                       description="Train a character language model on CORPUS (UTF-8, one "
                       "sequence per line, empty lines skipped) and save it.")
    p.add_argument("corpus", metavar="CORPUS", help="text file, one sequence per line")
    p.add_argument("--out", "-o", default="model.cyrnn",
                   help="where to save the model (default model.cyrnn)")
    p.add_argument("--text", action="store_true",
                   help="learn the file as one long text (truncated BPTT) instead of lines")
    p.add_argument("--bptt", type=_positive_int, default=100,
                   help="--text: chunk length of truncated BPTT (default 100)")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the training (default 0)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("sample", parents=[sampling, common], help="sample from a saved model",
                       description="Print samples from a model saved by 'cyrnn train'.")
    p.add_argument("model", metavar="MODEL", help="a .cyrnn file")
    p.add_argument("--prefix", default="", help="every sample starts with it")
    p.add_argument("--max-length", type=_positive_int, default=None,
                   help="most characters generated after the prefix")
    p.add_argument("--form", choices=FORMS, default=None,
                   help="write five-character poems of this form (model trained on poems)")
    p.add_argument("--head", default=None, help="with --form: acrostic first characters")
    p.add_argument("--start", default=None,
                   help="with --form: the poem's first characters (1 to 5)")
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser("info", help="describe a saved model",
                       description="Print what a saved model is and how it was trained.")
    p.add_argument("model", metavar="MODEL", help="a .cyrnn file")
    p.set_defaults(func=_cmd_info)
    return parser


def _version():
    from . import __version__
    return __version__


# ---------------------------------------------------------------------------- helpers
def cache_dir():
    """Where ``cyrnn generate`` keeps trained models: ``$CYRNN_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/cyrnn`` (an absolute ``XDG_CACHE_HOME``, as the XDG base
    directory specification asks), else ``~/.cache/cyrnn``."""
    env = os.environ.get("CYRNN_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "cyrnn"
    return Path.home() / ".cache" / "cyrnn"


def _say(args, message):
    if not args.quiet:
        print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _threads(args):
    if not args.threads:
        return nullcontext()
    from threadpoolctl import threadpool_limits
    return threadpool_limits(limits=args.threads)


def _a(word):
    """The indefinite article of an upper-case abbreviation: 'an LSTM', 'a GRU'."""
    return "an" if word[:1] in "AEFHILMNORSX" else "a"


def _sampling_seed(args):
    """``--seed``, or fresh entropy when it is not given (different samples every run,
    as the option's help says; the model's own generator would repeat them)."""
    if args.seed is not None:
        return args.seed
    import numpy as np
    return np.random.default_rng()


def _settings(args, preset):
    """Model settings: the preset, overridden by the command-line options given."""
    s = dict(preset)
    for key, opt in (("cell", "cell"), ("hidden_size", "hidden"), ("num_layers", "layers"),
                     ("max_epochs", "epochs"), ("batch_size", "batch_size"),
                     ("learning_rate", "learning_rate")):
        value = getattr(args, opt)
        if value is not None:
            s[key] = value
    if args.embedding is not None:
        s["embedding_dim"] = args.embedding or None
    if args.peephole:
        s["peephole"] = True
    return s


def _load_model(path, backend="auto"):
    """The language model in ``path`` as a :class:`cyrnn.scoring.LanguageModelScorer`:
    writing text and describing the model need no scikit-learn, whose import takes
    seconds on a busy machine."""
    p = Path(path)
    path = str(path)  # shown as the user wrote it, not as a PosixPath repr
    if not p.exists():
        raise CLIError(f"cannot read model {path!r}: no such file")
    if p.is_dir():
        raise CLIError(f"cannot read model {path!r}: it is a directory")
    from . import scoring
    from .backends import get_backend
    get_backend(backend)  # an unavailable backend is its own error, not a bad file's
    try:
        obj = scoring.load(p, backend=backend)
    except ValueError as exc:
        raise CLIError(f"cannot load model {path!r}: {exc}") from None
    except OSError as exc:
        raise CLIError(f"cannot read model {path!r}: {exc.strerror or exc}") from None
    if not isinstance(obj, scoring.LanguageModelScorer):
        raise CLIError(f"{path!r} holds a {obj.kind.removeprefix('cyrnn.')}, not a "
                       "CharLanguageModel")
    return obj


def _print_lines(lines):
    out = sys.stdout
    for line in lines:
        out.write(line + "\n")
    out.flush()


# ---------------------------------------------------------------------------- commands
def _cmd_generate(args):
    from .generation import PRESETS, check_poem_head, check_poem_start

    corpus = args.corpus
    if corpus == "dinos" and (args.head is not None):
        raise CLIError("--head is for 'generate tang' (acrostic poems)")
    if corpus == "dinos" and (args.start is not None):
        raise CLIError("--start is for 'generate tang' (poems); use --prefix for names")
    if corpus == "dinos" and args.form is not None:
        raise CLIError("--form is for 'generate tang' (poems)")
    if corpus == "dinos" and args.max_vocab is not None:
        raise CLIError("--max-vocab is for 'generate tang' (the poems' characters)")
    if corpus == "tang" and args.prefix:
        raise CLIError("--prefix is for 'generate dinos'; use --start or --head (acrostic) "
                       "for poems")
    preset = dict(PRESETS[corpus])
    max_samples = args.max_samples or preset.pop("max_samples", None)
    max_vocab = args.max_vocab or preset.pop("max_vocab", None)
    preset.pop("max_samples", None)
    preset.pop("max_vocab", None)
    settings = _settings(args, preset)
    if args.head is not None:
        check_poem_head(args.head, args.form or "quatrain")
    if args.start is not None:
        if args.head is not None:
            raise CLIError("give --head (an acrostic) or --start, not both")
        check_poem_start(args.start)
    key = {"corpus": corpus, "settings": settings, "max_samples": max_samples,
           "max_vocab": max_vocab, "train_seed": args.train_seed, "cyrnn": _version()}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / f"{corpus}-{digest}.cyrnn"

    lm = None
    if not args.no_cache and path.exists():  # (a scorer: no scikit-learn to import)
        try:
            lm = _load_model(path, args.backend)
            _say(args, f"using the cached model {path}")
        except CLIError as exc:
            _say(args, f"ignoring the unusable cache file ({exc}); training again")
            lm = None
    if lm is None:
        from .language_model import CharLanguageModel, prepare_corpus
        # the options training cannot change, checked before it runs (a minute for tang)
        CharLanguageModel(**settings, backend=args.backend,
                          random_state=args.train_seed)._check_params()
        texts = prepare_corpus(corpus, max_samples, max_vocab, random_state=args.train_seed)
        if not texts:
            raise CLIError(f"no poem of the corpus is written with the {max_vocab} most "
                           "frequent characters alone; raise --max-vocab")
        option, wanted = (("--start", args.start) if args.start else ("--head", args.head)) \
            if corpus == "tang" else ("--prefix", args.prefix)
        unknown = sorted(set(wanted or "") - set("".join(texts)))
        if unknown:  # the vocabulary is the corpus's characters: known before training
            raise CLIError(f"{option} has characters the training corpus lacks: "
                           f"{''.join(unknown)!r}")
        what = "dinosaur names" if corpus == "dinos" else "Tang poems"
        cell = settings.get("cell", "lstm").upper() + (" (peephole)" if settings.get("peephole")
                                                        else "")
        _say(args, f"training {_a(cell)} {cell} model on {len(texts):,} {what} "
                   f"({settings.get('max_epochs')} epochs)"
                   + ("" if args.no_cache else "; cached afterwards"))
        lm = CharLanguageModel(**settings, backend=args.backend, random_state=args.train_seed,
                               verbose=not args.quiet)
        with _threads(args):
            lm.fit(texts)
        _say(args, f"trained in {lm.train_time_:.1f} s (final loss "
                   f"{lm.loss_curve_[-1]:.3f} nats/char)" if lm.loss_curve_ else
                   "trained (0 epochs)")
        if not args.no_cache:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                lm.save(path)
            except (OSError, ValueError) as exc:  # ValueError: not a regular file
                _say(args, f"could not write the cache file {path}: {exc}")
    temperature = 0.8 if args.temperature is None else args.temperature
    with _threads(args):
        if corpus == "tang":
            out = lm.sample_poem(args.n, form=args.form or "quatrain", head=args.head,
                                 temperature=temperature, top_k=args.top_k,
                                 random_state=_sampling_seed(args), start=args.start)
        else:
            out = lm.sample(args.n, temperature=temperature, top_k=args.top_k,
                            prefix=args.prefix, random_state=_sampling_seed(args))
    _print_lines(out)
    return 0


def _read_corpus(path, whole):
    p = Path(path)
    if not p.exists():
        raise CLIError(f"cannot read corpus {path!r}: no such file")
    if p.is_dir():
        raise CLIError(f"cannot read corpus {path!r}: it is a directory")
    from .persistence import _read_bytes
    try:  # a regular file only (a FIFO would block, a device never end), up to its size
        text = _read_bytes(p).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CLIError(f"cannot read corpus {path!r}: not UTF-8 text ({exc.reason} at byte "
                       f"{exc.start})") from None
    except ValueError:
        raise CLIError(f"cannot read corpus {path!r}: not a regular file (a device, FIFO "
                       "or socket)") from None
    except OSError as exc:
        raise CLIError(f"cannot read corpus {path!r}: {exc.strerror or exc}") from None
    # universal newlines, as Python's text files read them: a Windows file's "\r\n"
    # (or an old Mac's "\r") is one "\n", not a character of the vocabulary
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    if whole:
        if not text.strip():
            raise CLIError(f"corpus {path!r} is empty")
        if len(text) < 2:
            raise CLIError(f"corpus {path!r} is too short: --text needs at least 2 "
                           "characters (one to predict from, one to predict)")
        return text
    lines = [line for line in text.split("\n") if line.strip()]
    if not lines:
        raise CLIError(f"corpus {path!r} is empty (no non-blank line)")
    return lines


def _cmd_train(args):
    from .language_model import CharLanguageModel

    data = _read_corpus(args.corpus, args.text)
    out = Path(args.out)
    if out.is_dir():
        raise CLIError(f"cannot write {args.out!r}: it is a directory")
    if not out.absolute().parent.is_dir():
        raise CLIError(f"cannot write {args.out!r}: folder {str(out.parent)!r} does not exist")
    if out.exists() and not out.resolve().is_file():  # before training, not after
        raise CLIError(f"cannot write {args.out!r}: it exists and is not a regular file")
    settings = _settings(args, {})
    lm = CharLanguageModel(**settings, bptt=args.bptt, backend=args.backend,
                           random_state=args.seed, verbose=not args.quiet)
    lm._check_params()  # before the message below and the training
    what = (f"a text of {len(data):,} characters" if args.text
            else f"{len(data):,} sequences")
    _say(args, f"training {_a(lm.cell.upper())} {lm.cell.upper()} model (hidden "
               f"{lm.hidden_size}, "
               f"{lm.max_epochs} epochs) on {what}")
    with _threads(args):
        lm.fit(data)
    try:
        lm.save(out)
    except OSError as exc:
        raise CLIError(f"cannot write {args.out!r}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    loss = f", final loss {lm.loss_curve_[-1]:.3f} nats/char" if lm.loss_curve_ else ""
    _say(args, f"trained in {lm.train_time_:.1f} s{loss}; saved to {out}")
    return 0


def _cmd_sample(args):
    lm = _load_model(args.model, args.backend)
    temperature = 1.0 if args.temperature is None else args.temperature
    with _threads(args):
        if args.form is not None:
            if args.prefix:
                raise CLIError("--prefix does not apply to poems (--form); use --head")
            if args.max_length is not None:
                raise CLIError("--max-length does not apply to poems (--form): their length "
                               "is the form's")
            out = lm.sample_poem(args.n, form=args.form, head=args.head,
                                 temperature=temperature, top_k=args.top_k,
                                 random_state=_sampling_seed(args), start=args.start)
        else:
            if args.head is not None or args.start is not None:
                raise CLIError(f"{'--head' if args.head is not None else '--start'} needs "
                               "--form quatrain or --form regulated")
            out = lm.sample(args.n, temperature=temperature, top_k=args.top_k,
                            prefix=args.prefix, max_length=args.max_length,
                            random_state=_sampling_seed(args))
    _print_lines(out)
    return 0


def _cmd_info(args):
    lm = _load_model(args.model)
    info = lm.info()
    chars = "".join(lm.chars_)
    shown = chars if len(chars) <= 60 else chars[:60] + "..."
    # one line per field: control characters (a text's line breaks) escaped
    shown = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
                    for ch in shown)
    rows = [("file", args.model), ("kind", "CharLanguageModel"),
            *((k, v) for k, v in info.items()), ("characters", shown)]
    _print_lines(f"{k}: {v}" for k, v in rows)
    return 0


# ---------------------------------------------------------------------------- entry point
def _one_line(exc):
    return " ".join(str(exc).split())


def _silence_stdout():
    """After a closed pipe: point stdout at /dev/null so that the interpreter's final
    flush does not report the broken pipe again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real file descriptor (tests)
        pass


def main(argv=None):
    """Run the ``cyrnn`` command; returns the exit status."""
    stdout = sys.stdout
    if hasattr(stdout, "reconfigure") and (stdout.encoding or "").lower().replace("-", "") \
            != "utf8":
        try:  # e.g. an ASCII locale: escape characters it cannot show instead of failing
            stdout.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError):
            pass
    try:  # Ctrl-C while starting (parsing, importing) is an interruption too
        parser = _build_parser()
        args = parser.parse_args(argv)
        return args.func(args)
    except BrokenPipeError:  # e.g. 'cyrnn sample m | head -1': stop quietly, as Unix tools do
        _silence_stdout()
        return 128 + 13  # the status of a process ended by SIGPIPE
    except (CLIError, ValueError, TypeError, OSError, RuntimeError, OverflowError) as exc:
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except MemoryError as exc:
        print(f"{PROG}: error: not enough memory ({_one_line(exc) or 'MemoryError'}); use a "
              "smaller model or fewer samples", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # never a traceback for users
        print(f"{PROG}: internal error: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
