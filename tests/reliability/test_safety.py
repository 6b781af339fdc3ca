"""Safety (issue 9, part 5): no network unless a user names a hub id, safetensors only (never pickle),
``trust_remote_code`` off unless the user asks, user text never reaches a shell or ``eval``.

The network tests replace ``socket.socket`` / ``socket.create_connection`` / ``getaddrinfo`` with functions
that raise, then load models from local folders (the way a user's saved model or the offline defaults load),
generate, and encode chunks. The static tests read the packages' source with :mod:`ast` (not grep, so
docstrings and ``model.eval()`` do not count).
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from refrag_rasd_core.errors import CheckpointError, ModelLoadError, RefragRasdError
from tiny import tiny_llama, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = [ROOT / "core" / "refrag_rasd_core", ROOT / "refrag_rasd_integrations"]


class NetworkUsed(AssertionError):
    pass


@pytest.fixture
def no_network(monkeypatch):
    """Every way to open a connection raises :class:`NetworkUsed` (AF_UNIX socketpairs stay allowed)."""
    real_socket = socket.socket

    def guarded_socket(family=socket.AF_INET, *args, **kwargs):
        if family in (socket.AF_INET, socket.AF_INET6):
            raise NetworkUsed(f"a network socket was opened (family {family})")
        return real_socket(family, *args, **kwargs)

    def refuse(*args, **kwargs):
        raise NetworkUsed(f"network access attempted: {args[:1]}")

    monkeypatch.setattr(socket, "socket", guarded_socket)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "gethostbyname", refuse)
    yield


def test_the_guard_works(no_network):
    import urllib.request

    with pytest.raises(NetworkUsed):
        socket.create_connection(("127.0.0.1", 9))
    with pytest.raises((NetworkUsed, OSError)):
        urllib.request.urlopen("http://127.0.0.1:9/", timeout=1)


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    """The tiny target and a tiny BERT encoder saved as ordinary Hugging Face folders (safetensors)."""
    from transformers import BertConfig, BertModel

    root = tmp_path_factory.mktemp("models")
    tok = tiny_tokenizer()
    model = tiny_llama(0, vocab_size=len(tok), max_positions=256)
    model.save_pretrained(root / "target")
    tok.save_pretrained(root / "target")
    enc_tok = tiny_tokenizer()
    enc_tok.pad_token = "</s>"
    torch.manual_seed(1)
    bert = BertModel(BertConfig(vocab_size=len(enc_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                num_attention_heads=2, max_position_embeddings=256,
                                pad_token_id=enc_tok.pad_token_id), add_pooling_layer=False)
    bert.save_pretrained(root / "encoder")
    enc_tok.save_pretrained(root / "encoder")
    return root


@pytest.mark.parametrize("offline_env", [True, False], ids=["HF_HUB_OFFLINE=1", "HF_HUB_OFFLINE-unset"])
def test_local_models_load_and_run_with_sockets_disabled(saved_tiny, no_network, monkeypatch, offline_env):
    """Loading a local folder must not touch the network even when the environment allows the hub."""
    from refrag_rasd_core.engine import Engine
    from refrag_rasd_core.models import load_target
    from refrag_rasd_core.refrag import ChunkEncoder
    from tiny import tiny_refrag

    if not offline_env:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    target = load_target(saved_tiny / "target", device="cpu")
    enc = ChunkEncoder.load(str(saved_tiny / "encoder"), tokenizer=target.tokenizer, k=4)
    vecs = enc.encode_passages([target.tokenizer("hello world, hello chunks", add_special_tokens=False)["input_ids"]])
    assert vecs[0].shape[1] == 32 and np.isfinite(vecs[0]).all()
    engine = Engine(target, drafter=None, refrag=tiny_refrag(target, enc), refrag_encoder=enc)
    for method, context in [("vanilla", "none"), ("rasd", "text"), ("rest", "compressed")]:
        out = engine.generate("Hello?", passages=["hello world " * 4], method=method, context=context,
                              max_new_tokens=5)
        assert out.stats.new_tokens == 5


def test_a_hub_id_while_offline_fails_fast_without_network(no_network):
    from refrag_rasd_core.errors import ModelNotFoundError
    from refrag_rasd_core.models import load_encoder, load_target
    from refrag_rasd_core.refrag import ChunkEncoder

    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE"):
        load_target("some-org/some-model", device="cpu")
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE"):
        load_encoder("some-org/some-encoder")
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE"):
        ChunkEncoder.load("some-org/some-encoder", tokenizer=tiny_tokenizer())


@pytest.mark.integration
def test_default_models_load_and_run_with_sockets_disabled(no_network):
    from refrag_rasd_core.engine import Engine
    from refrag_rasd_core.models import load_encoder

    torch.set_num_threads(2)
    engine = Engine.load(device="cpu")
    out = engine.generate([{"role": "user", "content": "Name a colour."}], max_new_tokens=4, method="rasd",
                          passages=["Red, green and blue are colours."])
    assert out.stats.new_tokens == 4
    emb = load_encoder()
    assert emb.encode(["offline"]).shape == (1, 384)
    if engine.refrag is not None:
        out = engine.generate("Which colours?", passages=["Red, green and blue are colours."],
                              context="compressed", max_new_tokens=3)
        assert out.stats.new_tokens == 3


# ---- safetensors only ----------------------------------------------------------------------------------------
@pytest.fixture
def no_unpickling(monkeypatch):
    """Unpickling anything raises (torch.load is built on pickle.Unpickler)."""
    import pickle

    class Refuse(pickle.Unpickler):
        def __init__(self, *a, **k):
            raise AssertionError("something was unpickled")

    def refuse(*a, **k):
        raise AssertionError("something was unpickled")

    monkeypatch.setattr(pickle, "Unpickler", Refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    yield


def test_a_pickle_only_model_folder_is_refused(tmp_path, no_unpickling):
    from refrag_rasd_core.models import load_target

    tok = tiny_tokenizer()
    model = tiny_llama(0, vocab_size=len(tok), max_positions=64)
    folder = tmp_path / "pickled"
    folder.mkdir()
    model.config.save_pretrained(folder)
    tok.save_pretrained(folder)
    import pickle

    with open(folder / "pytorch_model.bin", "wb") as fh:  # what an untrusted pickle checkpoint looks like
        pickle.dump({"not": "a real state dict"}, fh)
    with pytest.raises(ModelLoadError, match="safetensors only.*convert"):
        load_target(folder, device="cpu")


def test_a_pickled_eagle_checkpoint_is_refused(tmp_path, no_unpickling):
    from refrag_rasd_core.eagle import load_draft_head

    folder = tmp_path / "eagle"
    folder.mkdir()
    (folder / "config.json").write_text('{"hidden_size": 64, "num_attention_heads": 4}')
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(CheckpointError, match="safetensors only"):
        load_draft_head(folder, tiny_llama(0, vocab_size=262))


def test_an_object_array_datastore_is_refused(tmp_path, no_unpickling):
    from refrag_rasd_core.rasd import RestDatastore

    for name in ("suffix_array.npy", "reversed_tokens.npy"):  # format 2's arrays, read whole or memory-mapped
        RestDatastore.build([[1, 2, 3]]).save(tmp_path / "ds")
        np.save(tmp_path / "ds" / name, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
        for mmap in (False, True):
            with pytest.raises(CheckpointError):
                RestDatastore.load(tmp_path / "ds", mmap=mmap)


# ---- static checks over the packages' source -----------------------------------------------------------------
def _sources():
    files = [f for pkg in PACKAGES for f in sorted(pkg.rglob("*.py"))]
    assert len(files) > 20
    for f in files:
        yield f, ast.parse(f.read_text(), filename=str(f))


def _call_name(node: ast.Call) -> str:
    f = node.func
    parts = []
    while isinstance(f, ast.Attribute):
        parts.append(f.attr)
        f = f.value
    parts.append(f.id if isinstance(f, ast.Name) else "<expr>")  # model.to(d).eval() is <expr>.eval
    return ".".join(reversed(parts))


FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__", "os.system", "os.popen", "torch.load", "pickle.load",
                   "pickle.loads", "marshal.loads", "shelve.open", "yaml.load", "os.execv", "os.execvp"}


REVIEWED_SUBPROCESS = {
    # ChromaServer.start: Chroma's own `chroma` binary with an argument list (no shell); the arguments are a
    # folder path, a host name and an int port, each its own argv entry.
    "refrag_rasd_integrations/store/server.py",
    # The code suite's --execute (pass@1): the benchmark's own task file (prompt + the model's completion + its
    # tests) written to a temporary file and run as `python -I FILE` (argument list, no shell, sockets disabled,
    # a bare environment, a time limit): running that code is what the option is for.
    "refrag_rasd_integrations/cli/bench/code.py",
    # The long suite's scaling run: the package's own `summarize` command on a temporary file the benchmark wrote
    # (argument list, no shell), to measure a user's peak memory in a fresh process.
    "refrag_rasd_integrations/cli/bench/long_scaling.py",
}


def _reviewed(f: Path, node: ast.Call) -> bool:
    """A reviewed subprocess call: its file is listed above and it passes a literal argument list."""
    return str(f.relative_to(ROOT)) in REVIEWED_SUBPROCESS and bool(node.args) and isinstance(node.args[0], ast.List)


def test_no_pickle_eval_exec_or_shell_calls():
    bad = []
    for f, tree in _sources():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = _call_name(node)
            where = f"{f.relative_to(ROOT)}:{node.lineno} {name}"
            if name in FORBIDDEN_CALLS:
                bad.append(where)
            for kw in node.keywords:
                if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                    bad.append(where + " shell=...")
                if kw.arg in {"allow_pickle", "weights_only"} and isinstance(kw.value, ast.Constant) and \
                        kw.value.value is (kw.arg == "allow_pickle"):
                    bad.append(f"{where} {kw.arg}={kw.value.value}")
            if (name.startswith("subprocess.") or name in {"Popen", "check_output", "run"} and
                    "subprocess" in ast.unparse(node.func)) and not _reviewed(f, node):
                bad.append(where + " (subprocess: review that no user text reaches it)")
    assert not bad, "\n".join(bad)


def test_trust_remote_code_only_from_a_user_flag():
    """Every ``trust_remote_code=`` (keyword or dict key) forwards the caller's flag or says False; every
    public function that takes the flag defaults it to False."""
    bad, seen = [], 0
    for f, tree in _sources():
        for node in ast.walk(tree):
            values = []
            if isinstance(node, ast.Call):
                values += [kw.value for kw in node.keywords if kw.arg == "trust_remote_code"]
            if isinstance(node, ast.Dict):
                values += [v for k, v in zip(node.keys, node.values, strict=True)
                           if isinstance(k, ast.Constant) and k.value == "trust_remote_code"]
            for v in values:
                seen += 1
                ok = (isinstance(v, ast.Constant) and v.value is False) or \
                    (isinstance(v, ast.Name) and v.id == "trust_remote_code")
                if not ok:
                    bad.append(f"{f.relative_to(ROOT)}:{node.lineno} trust_remote_code={ast.unparse(v)}")
    assert not bad, "\n".join(bad)
    assert seen >= 1
    from refrag_rasd_core import models

    for name, fn in inspect.getmembers(models, inspect.isfunction):
        p = inspect.signature(fn).parameters.get("trust_remote_code")
        if p is not None:
            assert p.default is False, f"models.{name} defaults trust_remote_code to {p.default!r}"


def test_user_text_is_data_not_code(tmp_path, monkeypatch):
    """Shell and Python injection strings in the prompt and passages are just tokens: nothing runs."""
    from refrag_rasd_core.engine import Engine
    from tiny import tiny_loaded

    marker = tmp_path / "pwned"
    nasty = [f"$(touch {marker})", f"`touch {marker}`", f"; touch {marker} #",
             f"__import__('os').system('touch {marker}')", "{{ cycler.__init__.__globals__.os.popen('id') }}",
             "{% for x in ().__class__.__base__.__subclasses__() %}{{ x }}{% endfor %}"]
    engine = Engine(tiny_loaded(0, max_positions=256), drafter=None)
    monkeypatch.chdir(tmp_path)
    for text in nasty:
        for prompt in (text, [{"role": "user", "content": text}]):
            with contextlib.suppress(RefragRasdError):  # a typed refusal is fine; running the text is not
                engine.generate(prompt, passages=[text], method="rasd", context="text", max_new_tokens=3)
    assert not marker.exists()
