"""``refrag-rasd chat``: a terminal conversation over a collection. Each turn retrieves its own passages; the
history keeps every turn's passages, questions and answers, and the engine's prefix cache reuses what the
earlier turns read (the statistics line shows the cached positions and the time to the first token).

Example:
    $ refrag-rasd chat --collection mydocs
    you> How do I install it?
    ...
    [rasd] prompt 812 tokens (640 cached), first token 0.21 s, 18.3 tokens/s
    you> /reset
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from ..errors import CollectionNotFoundError
from .checks import at_least, check_model_args, check_store_args
from .registry import command, generation_args, generation_settings, model_args, open_store, store_args

HELP = "commands: /reset (forget the conversation), /quit (or an empty line at end of input)"


def _setup_chat(p: argparse.ArgumentParser) -> None:
    store_args(p)
    p.add_argument("-k", "--top-k-passages", dest="k", type=int, default=3, help="passages retrieved per turn")
    p.add_argument("--context", default=None, help="how passages enter the decoder (default auto)")
    p.add_argument("--history", default=None, help="earlier turns' passages: auto, text or compressed")
    p.add_argument("--system", default=None, help="a system message (kept the same every turn)")
    model_args(p)
    generation_args(p)


def chat_loop(llm: Any, retriever: Any, lines: TextIO, out: TextIO, err: TextIO, system: str | None = None) -> int:
    """Answer each line of ``lines`` as a turn of one conversation; returns the number of turns answered."""
    from langchain_core.messages import SystemMessage
    from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder

    from ..langchain import PassagePrompt

    template = ChatPromptTemplate.from_messages([MessagesPlaceholder("history"), ("human", "{question}")])
    prompt = PassagePrompt(template=template)
    head = [SystemMessage(system)] if system else []
    history: list[Any] = []
    turns = 0
    print(HELP, file=err)
    for line in lines:
        question = line.strip()
        if question in ("/quit", "/exit"):
            break
        if question == "/reset":
            history.clear()
            continue
        if not question:
            continue
        value = prompt.invoke({"history": head + history, "question": question,
                               "context": retriever.invoke(question)})
        answer = None
        for chunk in llm.stream(value):
            print(chunk.content, end="", file=out, flush=True)
            answer = chunk if answer is None else answer + chunk
        print(file=out)
        s = answer.response_metadata["stats"]
        print(f"[{s['method']}] prompt {s['prompt_tokens']} tokens ({s['cached_tokens']} cached), first token "
              f"{s['ttft_s']:.2f} s, {s['decode_tokens_per_s']:.1f} tokens/s", file=err)
        history += [value.to_messages()[-1], answer]
        turns += 1
    return turns


@command("chat", "a conversation over a collection in the terminal (retrieval per turn, history reused)", _setup_chat)
def cmd_chat(args: argparse.Namespace) -> int:
    from ..engines import get_engine
    from ..langchain import ChatRefragRasd

    settings = generation_settings(args)
    extra = {"history": args.history} if args.history else {}
    llm_check = ChatRefragRasd(engine_kwargs=extra, **settings)  # settings checked before the model loads
    at_least(args.k, "--top-k-passages", 1)
    check_store_args(args)
    check_model_args(args)
    if not open_store(args).exists():
        raise CollectionNotFoundError(f"no collection {args.collection!r} in this Chroma database: index "
                                      f"documents first (`refrag-rasd index PATH --collection {args.collection}`)")
    engine = get_engine(args.model, device=args.device, dtype=args.dtype)
    store = open_store(args, engine)
    llm = llm_check.model_copy(update={"engine": engine})
    chat_loop(llm, store.as_retriever(k=args.k), sys.stdin, sys.stdout, sys.stderr, system=args.system)
    return 0


__all__ = ["chat_loop", "cmd_chat"]
