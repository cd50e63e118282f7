"""The compiler under fuzzing: Hypothesis strategies for `.dls` specs and the case runner.

Two sources of specs:
  * `generated_specs()` — random plausible specs drawn from the grammar: a model with
    parameters and inputs (static, symbolic and absurd sizes), chains of every layer with
    drawn arguments, the graph forms (residual, concat, dense, repeat, `* n`), blocks that
    call each other, and a train section;
  * `mutated_specs()` — the examples (examples/*.dls) and the docs' spec snippets with one
    to three mutations: a number replaced by an interesting one (0, -1, huge, a 5,000-digit
    literal, 1e400), a line dropped or duplicated, a token swapped, text cut off, a layer
    renamed.

`run_case(text)` compiles the spec in-process and renders every `--emit` view under a CPU
time limit.  The only acceptable outcomes are a result or a located `UserError`; anything
else (an internal exception, an unlocated error, a hang past the limit) is a `Failure`.
tests/spec/test_fuzz.py runs a fixed number of cases in CI; scripts/fuzz.py runs many more.
"""
from __future__ import annotations

import hashlib
import re
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
REGRESSIONS = Path(__file__).resolve().parent / "fuzz_regressions"
VIEWS = ("summary", "ir", "ir-train", "params", "dot", "plan", "triton", "onnx")
# Views that run the whole training pipeline or make weights are skipped for models that are
# legitimately big: their cost is real work, not a hang (the limits bound it from above).
HEAVY_VIEWS = {"ir-train", "plan", "triton", "onnx"}
HEAVY_NODES = 300
HEAVY_PARAMS = 2_000_000


class Hang(BaseException):
    """The case ran past its CPU time limit (a BaseException: no `except Exception` in the
    code under test may swallow it)."""


@dataclass
class Failure(Exception):
    kind: str            # "crash" | "hang" | "unlocated"
    where: str           # "compile" or the view
    detail: str

    def __str__(self) -> str:
        return f"{self.kind} in {self.where}: {self.detail}"


# -- the corpus ------------------------------------------------------------------------------

def _doc_specs() -> list[str]:
    out = []
    for doc in ("language.md", "architecture.md"):
        path = ROOT / "docs" / doc
        if not path.exists():
            continue
        for m in re.finditer(r"^```(dls(?:-fragment)?|dls-error)([^\n]*)\n(.*?)^```$",
                             path.read_text(), re.S | re.M):
            kind, arg, body = m.group(1), m.group(2).strip(), m.group(3)
            if kind == "dls-fragment":
                body = (f"model Fragment {{\n    input x: {arg or 'f32[3, 32, 32]'}\n"
                        + "".join(f"    {line}\n" for line in body.splitlines()) + "}\n")
            out.append(body)
    return out


_CORPUS: list[str] = []


def corpus() -> list[str]:
    """Read once per process: Hypothesis needs the same corpus for every draw."""
    if not _CORPUS:
        examples = sorted((ROOT / "examples").glob("*.dls"))
        _CORPUS.extend([p.read_text() for p in examples] + _doc_specs())
    return _CORPUS


# -- generated specs ------------------------------------------------------------------------

HUGE = [10**9, 2**31, 2**32, 2**63, 4294967296, 10**18, 10**300]
small_int = st.integers(0, 9) | st.integers(1, 64)
any_int = small_int | st.sampled_from([0, -1, -3, 1, 2, 3, 7] + HUGE)
float_lit = st.sampled_from(["0.0", "0.1", "0.5", "0.99", "1.0", "2", "1e-3", "1e309",
                             "1e400", "-0.5", "3.5e38"])
NAMES = ["c", "k", "n", "width", "H", "W", "in.c", "in.h", "in.w", "in.rank"]


@st.composite
def number(draw) -> str:
    kind = draw(st.integers(0, 9))
    if kind < 6:
        return str(draw(any_int))
    if kind < 8:
        return draw(float_lit)
    if kind == 8:
        return draw(st.sampled_from(NAMES))
    a, b = str(draw(any_int)), draw(st.sampled_from(NAMES + ["2", "10"]))
    return f"{a} {draw(st.sampled_from(['*', '+', '-', '//', '/', '%']))} {b}"


LAYER_ARGS = {
    "linear": ["{n}", "{n}, bias=false", "out={n}"],
    "conv": ["{n}, {n}", "{n}, {n}, stride={n}, padding={n}", "{n}, 3, padding=\"same\"",
             "{n}, [{n}, {n}]", "{n}, 3, groups={n}", "{n}, 3, dilation={n}", "{n}, 3, bias=false"],
    "maxpool": ["{n}", "{n}, stride={n}", "{n}, stride={n}, padding={n}, ceil=true",
                "[{n}, {n}]"],
    "avgpool": ["{n}", "{n}, stride={n}, padding={n}, ceil=true",
                "{n}, ceil=true, count_include_pad=false"],
    "upsample": ["{n}", "scale={n}"],
    "dropout": ["", "{n}", "p={n}"],
    "bn": ["", "eps={n}", "momentum={n}"],
    "lrn": ["{n}", "size={n}, alpha={n}"],
    "leaky_relu": ["", "{n}"],
    "concat": ["in, in", "in, in, axis={n}", "x, x, axis={n}"],
    "add": ["in, in", "x, in"],
}
BARE = ["relu", "sigmoid", "tanh", "softmax", "flatten", "identity", "global_avgpool", "bn",
        "dropout", "in", "x"]


@st.composite
def layer_call(draw, depth: int = 0) -> str:
    name = draw(st.sampled_from(sorted(LAYER_ARGS) + BARE + ["Block0", "Block1"]))
    if name in BARE and draw(st.booleans()):
        return name
    if name.startswith("Block"):
        return f"{name}({draw(number())})" if draw(st.booleans()) else name
    template = draw(st.sampled_from(LAYER_ARGS.get(name, [""])))
    args = re.sub(r"\{n\}", lambda _: draw(number()), template)
    return f"{name}({args})"


@st.composite
def step(draw, depth: int = 0) -> str:
    kind = draw(st.integers(0, 12)) if depth < 3 else 0
    if kind <= 6:
        return draw(layer_call())
    if kind == 7:
        return f"({draw(layer_call())}) * {draw(number())}"
    if kind == 8:
        return f"{draw(st.sampled_from(['repeat', 'dense']))}({draw(number())}) " \
               f"{{ {draw(chain(depth + 1))} }}"
    if kind == 9:
        short = f" shortcut {{ {draw(chain(depth + 1))} }}" if draw(st.booleans()) else ""
        return f"residual {{ {draw(chain(depth + 1))} }}{short}"
    if kind == 10:
        branches = " ".join(f"branch {{ {draw(chain(depth + 1))} }}"
                            for _ in range(draw(st.integers(1, 3))))
        return f"concat {{ {branches} }}"
    if kind == 11:
        return f"{draw(layer_call())} if {draw(number())} > 1 else {draw(layer_call())}"
    return f"{draw(layer_call())} * {draw(number())}"


@st.composite
def chain(draw, depth: int = 0) -> str:
    return " -> ".join(draw(st.lists(step(depth), min_size=1, max_size=4)))


@st.composite
def dims(draw) -> str:
    parts = draw(st.lists(st.one_of(st.sampled_from(["H", "W", "C", "N", "0"]),
                                    any_int.map(str)), min_size=1, max_size=3))
    return ", ".join(parts)


TRAIN = ["loss cross_entropy(label_smoothing={f})", "loss mse", "optimizer adam(lr={f})",
         "optimizer sgd(lr={f}, momentum={f})", "batch {n}", "epochs {n}", "seed {n}",
         "schedule cosine(warmup={n})", "penalty l2({f})", "precision bf16",
         "early_stopping(patience={n})", "data digits(val={f}, test={f})", "batch full",
         "augment crop(padding={n}) -> flip", "augment noise(std={f}) -> mixup({f})",
         "weight_noise {f}", "shuffle false", "drop_last"]


@st.composite
def generated_spec(draw) -> str:
    lines = []
    for i in range(draw(st.integers(0, 2))):           # Block1 may call Block0 twice
        prev = f"Block{i - 1} -> Block{i - 1}" if i else draw(chain(1))
        lines.append(f"block Block{i}(c=8, k=3) {{\n    {prev if draw(st.booleans()) else draw(chain(1))}\n}}")
    lines.append(f"model M(width={draw(number())}, n=4) {{")
    lines.append(f"    input x: f32[{draw(dims())}]")
    for _ in range(draw(st.integers(1, 6))):
        stmt = draw(chain())
        if draw(st.integers(0, 5)) == 0:
            stmt = f"y = {stmt}"
        lines.append(f"    {stmt}")
    if draw(st.booleans()):
        lines.append(f"    linear({draw(number())})")
    lines.append("}")
    if draw(st.booleans()):
        settings = draw(st.lists(st.sampled_from(TRAIN), max_size=4, unique=True))
        body = [re.sub(r"\{(n|f)\}", lambda m: draw(number() if m.group(1) == "n"
                                                        else float_lit), s) for s in settings]
        lines.append("train {\n" + "".join(f"    {b}\n" for b in body) + "}")
    return "\n".join(lines) + "\n"


# -- mutated specs ---------------------------------------------------------------------------

INTERESTING = ["0", "-1", "1", "3", "1000000000", "4294967296", "9223372036854775808",
               "1" + "0" * 300, "7" * 5000, "1e400", "1e309", "0.0", "2.5", '"x"', "true", "H",
               "in.c", "N"]
TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9][0-9_.eE]*|->|\S")


@st.composite
def mutated_spec(draw) -> str:
    texts = corpus()
    text = texts[draw(st.integers(0, len(texts) - 1))]
    for _ in range(draw(st.integers(1, 3))):
        text = draw(_mutation(text))
    return text


@st.composite
def _mutation(draw, text: str) -> str:
    lines = text.splitlines()
    kind = draw(st.integers(0, 7))
    toks = list(TOKEN.finditer(text))
    if kind == 0 and toks:                             # a number or name -> an interesting one
        nums = [m for m in toks if m.group(0)[0].isdigit()] or toks
        m = nums[draw(st.integers(0, len(nums) - 1))]
        return text[:m.start()] + draw(st.sampled_from(INTERESTING)) + text[m.end():]
    if kind == 1 and lines:                            # drop a line
        i = draw(st.integers(0, len(lines) - 1))
        return "\n".join(lines[:i] + lines[i + 1:]) + "\n"
    if kind == 2 and lines:                            # duplicate a line, perhaps many times
        i = draw(st.integers(0, len(lines) - 1))
        k = draw(st.sampled_from([1, 2, 50]))
        return "\n".join(lines[:i + 1] + [lines[i]] * k + lines[i + 1:]) + "\n"
    if kind == 3 and toks:                             # a token -> another token of the text
        m = toks[draw(st.integers(0, len(toks) - 1))]
        other = toks[draw(st.integers(0, len(toks) - 1))].group(0)
        return text[:m.start()] + other + text[m.end():]
    if kind == 4:                                      # cut off
        return text[:draw(st.integers(0, len(text)))]
    if kind == 5 and toks:                             # a layer -> another layer or form
        m = toks[draw(st.integers(0, len(toks) - 1))]
        return text[:m.start()] + draw(layer_call()) + text[m.end():]
    if kind == 6 and lines:                            # a generated step inserted
        i = draw(st.integers(0, len(lines) - 1))
        return "\n".join(lines[:i] + ["    " + draw(chain())] + lines[i:]) + "\n"
    pos = draw(st.integers(0, len(text)))              # a stray character
    return text[:pos] + draw(st.sampled_from(list("(){}[],=->*\"#\\\n.") + ["\t", "\x00"])) \
        + text[pos:]


def specs() -> st.SearchStrategy[str]:
    return st.one_of(generated_spec(), mutated_spec())


# -- running one case ------------------------------------------------------------------------

class _CpuLimit:
    """Raise `Hang` in the main thread after `seconds` of process CPU time."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def _fire(self, signum, frame):
        raise Hang(f"over {self.seconds:g} s of CPU time")

    def __enter__(self):
        self.old = signal.signal(signal.SIGPROF, self._fire)
        signal.setitimer(signal.ITIMER_PROF, self.seconds)
        return self

    def __exit__(self, *exc):
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, self.old)
        return False


def _workdir() -> Path:
    """A folder with the example block libraries beside the spec, so imports resolve."""
    d = Path(tempfile.mkdtemp(prefix="dlc-fuzz-"))
    (d / "blocks").mkdir()
    for lib in (ROOT / "examples" / "blocks").glob("*.dls"):
        (d / "blocks" / lib.name).write_text(lib.read_text())
    return d


_WORKDIR: Path | None = None


def _views_for(spec) -> tuple[str, ...]:
    g = spec.graph
    heavy = len(g.nodes) > HEAVY_NODES or spec.num_params() > HEAVY_PARAMS
    return tuple(v for v in VIEWS if not (heavy and v in HEAVY_VIEWS))


def run_case(text: str, limit: float = 5.0, views: tuple[str, ...] | None = None) -> str:
    """'ok' or 'error' (a located UserError); raises `Failure` for anything else."""
    from dlc.api import compile_spec
    from dlc.spec.diagnostics import UserError
    global _WORKDIR
    if _WORKDIR is None:
        _WORKDIR = _workdir()
    path = _WORKDIR / "case.dls"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    where = "compile"
    try:
        with _CpuLimit(limit):
            spec = compile_spec(path)
            for where in (views or _views_for(spec)):
                out = spec.emit(where, 4)
                if where != "onnx":
                    assert isinstance(out, str)
        return "ok"
    except UserError as e:
        if e.span is None:
            raise Failure("unlocated", where, e.message) from None
        e.render()                                   # rendering must not fail either
        return "error"
    except Hang as e:
        raise Failure("hang", where, str(e)) from None
    except RecursionError:
        raise Failure("crash", where, "RecursionError") from None
    except Exception as e:                           # noqa: BLE001 — this is what we look for
        raise Failure("crash", where, f"{type(e).__name__}: {str(e)[:300]}") from None


def save_regression(text: str, failure: Failure) -> Path:
    """Keep a failing spec under tests/spec/fuzz_regressions/ (test_fuzz.py replays them)."""
    REGRESSIONS.mkdir(exist_ok=True)
    name = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    path = REGRESSIONS / f"{failure.kind}_{name}.dls"
    if not path.exists():
        header = "".join(f"# fuzz: {line}\n" for line in str(failure).splitlines()[:3])
        path.write_text(header + text, encoding="utf-8", errors="surrogatepass")
    return path


def timed(fn, *args):
    t0 = time.process_time()
    out = fn(*args)
    return out, time.process_time() - t0


def fuzz(cases: int, *, seed: int | None = None, limit: float = 5.0, save: bool = True,
         report=None) -> dict:
    """Run `cases` specs, keep going past failures; counts per outcome and the failures."""
    from hypothesis import HealthCheck, given, settings

    stats = {"cases": 0, "ok": 0, "error": 0, "crash": 0, "hang": 0, "unlocated": 0,
             "slow": 0, "failures": []}

    @settings(max_examples=cases, database=None, deadline=None, derandomize=seed is None,
              suppress_health_check=list(HealthCheck))
    @given(specs())
    def one(text):
        stats["cases"] += 1
        try:
            outcome, cpu = timed(run_case, text, limit)
            stats[outcome] += 1
            stats["slow"] += cpu > 1.0
        except Failure as f:
            stats[f.kind] += 1
            path = save_regression(text, f) if save else None
            stats["failures"].append((str(f), str(path)))
            if report:
                report(f"{f}  -> {path}")
        if report and stats["cases"] % 250 == 0:
            report(" ".join(f"{k}={v}" for k, v in stats.items() if k != "failures"))

    if seed is not None:
        from hypothesis import seed as hseed
        one = hseed(seed)(one)
    one()
    return stats
