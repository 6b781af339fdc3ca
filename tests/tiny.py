"""Tiny random models built in memory for the unit tests (no file, no hub).

``tiny_tokenizer()`` is a real byte-level BPE tokenizer (256 byte tokens + specials) with a chat template;
``tiny_llama(...)`` a seeded random LLaMA whose logits are peaked enough that greedy decoding has clear
winners (a larger init range than the default, so near-ties are rare).
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from refrag_rasd_core.models import LoadedModel

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIALS = ["<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(byte_chars))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    fast.add_special_tokens({"additional_special_tokens": SPECIALS[2:]})
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_llama(seed: int = 0, vocab_size: int = 262, hidden: int = 64, layers: int = 2,
               max_positions: int = 512, attn: str = "sdpa", init_range: float = 0.25) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=max_positions, initializer_range=init_range,
                      bos_token_id=256, eos_token_id=257, tie_word_embeddings=False)
    cfg._attn_implementation = attn
    model = LlamaForCausalLM(cfg).eval()
    model.requires_grad_(False)
    with torch.no_grad():  # EOS gets logit 0, below the greedy winner: long generations for the tests
        if vocab_size > 257:
            model.lm_head.weight[257].zero_()
    model.generation_config.eos_token_id = 257
    model.generation_config.pad_token_id = 257
    return model


def tiny_target(vocab: int = 96, hidden: int = 32, layers: int = 1, heads: int = 4, kv: int = 2,
                seed: int = 0) -> LlamaForCausalLM:
    """A bare tiny LLaMA with transformers' own initialisation (the draft-head tests' target)."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=256)
    return LlamaForCausalLM(cfg).eval()


def tiny_loaded(seed: int = 0, **kwargs: object) -> LoadedModel:
    tok = tiny_tokenizer()
    model = tiny_llama(seed, vocab_size=len(tok), **kwargs)
    return LoadedModel(model=model, tokenizer=tok, name=f"tiny-llama-{seed}", device=torch.device("cpu"),
                       dtype=torch.float32)


def tiny_chunk_encoder(decoder_tokenizer, k: int = 4, seed: int = 1, hidden: int = 32, pooling: str = "mean"):
    """A tiny random BERT chunk encoder (byte-level tokenizer, in memory) for ``decoder_tokenizer``'s chunks."""
    from transformers import BertConfig, BertModel

    from refrag_rasd_core.refrag import ChunkEncoder

    torch.manual_seed(seed)
    enc_tok = tiny_tokenizer()
    enc_tok.pad_token = "</s>"
    cfg = BertConfig(vocab_size=len(enc_tok), hidden_size=hidden, intermediate_size=2 * hidden,
                     num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=256,
                     pad_token_id=enc_tok.pad_token_id)
    model = BertModel(cfg, add_pooling_layer=False).eval()
    return ChunkEncoder(model, enc_tok, decoder_tokenizer, k=k, pooling=pooling, name=f"tiny-bert-{seed}")


def tiny_refrag(loaded: LoadedModel, encoder, seed: int = 2, policy: bool = True, auto: dict | None = None):
    """An untrained RefragModel (projector + policy) joining ``encoder`` to the tiny decoder; ``auto``: the
    operating point ``context="auto"`` resolves to (as a checkpoint's sidecar records it; none = plain RAG)."""
    from refrag_rasd_core.refrag import ChunkProjector, ExpansionPolicy, RefragModel

    torch.manual_seed(seed)
    H = loaded.model.config.hidden_size
    pol = ExpansionPolicy(encoder.dim, H, width=16, heads=2) if policy else None
    return RefragModel(ChunkProjector(encoder.dim, H, embed_norm=1.0), k=encoder.k, encoder=encoder.name,
                       encoder_dim=encoder.dim, pooling=encoder.pooling, policy=pol,
                       meta={"auto": auto} if auto else None).eval()


def tiny_tools_engine(max_positions: int = 2048):
    """An engine over the tiny model with a window for a tools prompt (byte tokens: ~900 of them), no drafter."""
    from refrag_rasd_core.engine import Engine

    return Engine(tiny_loaded(0, max_positions=max_positions), drafter=None, refrag=None)
