"""LLM: the offline facade. `LLM().generate(prompts, SamplingParams(...))` in a plain script."""

from __future__ import annotations

import itertools
from typing import Sequence as Seq

from ..config import EngineConfig
from ..outputs import RequestOutput
from ..sampling_params import SamplingParams
from ..tools.grammar import check_tool_choice, check_tools, tool_constraint, with_tool_grammar
from .llm_engine import LLMEngine

Prompt = str | list[int]
Message = dict[str, object]


class LLM:
    def __init__(self, model: str | None = None, **engine_options) -> None:
        """`model`: a HF directory or a GGUF file; None loads the embedded default model.

        Other keyword arguments are EngineConfig fields (dtype, device, max_model_len, ...).
        """
        self.engine = LLMEngine(EngineConfig(model=model, **engine_options))
        self._ids = itertools.count()

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def generate(
        self,
        prompts: Prompt | Seq[Prompt],
        sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
    ) -> list[RequestOutput]:
        """Run every prompt to completion (batched) and return the outputs in prompt order."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]  # one prompt: text or token ids
        prompts = list(prompts)
        if sampling_params is None:
            sampling_params = SamplingParams()
        params = (
            list(sampling_params) if isinstance(sampling_params, (list, tuple)) else [sampling_params] * len(prompts)
        )
        if len(params) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(params)} sampling params")
        return self._run([(p, sp) for p, sp in zip(prompts, params)])

    def embed(self, prompts: Prompt | Seq[Prompt], pooling: str = "last") -> list[list[float]]:
        """L2-normalized embeddings of each prompt (text or token ids): the final-norm hidden state of the
        last token ("last") or the mean over the prompt ("mean"), computed in batches like generation."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        engine, ids = self.engine, [f"embed-{next(self._ids)}" for _ in prompts]
        for request_id, prompt in zip(ids, prompts):
            _, tokens = engine.encode_prompt(prompt)
            params = SamplingParams(max_tokens=1)
            engine.check_request(tokens, params)
            engine.add_checked_request(request_id, tokens, params, pooling=pooling)
        vectors: dict[str, list[float]] = {}
        while engine.has_unfinished_requests():
            for out in engine.step():
                if out.finished and out.embedding is not None:
                    vectors[out.request_id] = out.embedding
        return [vectors[i] for i in ids]

    def chat(
        self,
        messages: list[Message] | list[list[Message]],
        sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
        chat_template: str | None = None,
        add_generation_prompt: bool = True,
        tools: list[dict] | None = None,
        tool_choice: str | dict | None = "auto",
    ) -> list[RequestOutput]:
        """Apply the chat template to one conversation or a list of them, then generate.

        `tools` (OpenAI function tools) go into the prompt unless tool_choice is "none"; "auto", "required"
        and a named tool constrain the output with the tool-call grammar (for "auto", only if the params
        carry no constraint of their own). The calls: `content, calls = model.tools.parse_tool_calls(
        out.outputs[0].text)` (`calls`: ToolCall(name, arguments JSON text, id)).
        """
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        checked = check_tools(tools) if tools is not None else None
        choice = check_tool_choice(tool_choice, checked)
        shown = checked if choice != "none" else None
        texts = [self.engine.render_chat(c, add_generation_prompt, chat_template, shown, choice) for c in conversations]
        # The template already holds any BOS text: tokenize without adding special tokens again.
        prompts = [self.engine.encode_prompt(t, add_special_tokens=False)[1] for t in texts]
        if shown:
            sampling_params = with_tool_grammar(sampling_params, tool_constraint(shown, choice), choice)
        return self.generate(prompts, sampling_params)

    def _run(self, items: list[tuple[Prompt, SamplingParams]]) -> list[RequestOutput]:
        ids = []
        try:
            for prompt, params in items:
                request_id = f"offline-{next(self._ids)}"
                self.engine.add_request(request_id, prompt, params)
                ids.append(request_id)
            final: dict[str, RequestOutput] = {}
            while self.engine.has_unfinished_requests():
                for out in self.engine.step():
                    if out.finished:
                        final[out.request_id] = out
        finally:
            for request_id in ids:  # on an error part-way, leave nothing queued
                self.engine.abort_request(request_id)
        return [final[i] for i in ids]
