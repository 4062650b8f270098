"""LLMEngine: add / abort / step over the scheduler, the runner and the output processor. Single-threaded.

`step()` runs one forward pass over whatever the scheduler picked, lets `Scheduler.update` append the
sampled tokens and finish sequences on token-level criteria, and lets the output processor turn the
tokens into text (stop strings, logprobs, deltas); it returns a RequestOutput for every request that
produced something (or finished) in that step.
"""

from __future__ import annotations

import itertools
import logging
import random

from ..config import EngineConfig
from ..errors import InvalidParamError, StepFailedError
from ..layers.cpu_decoder import CpuDecoder
from ..outputs import RequestOutput
from ..sampling_params import SamplingParams
from ..structured.compiler import CompiledGrammar, GrammarCompiler
from ..tools.prompt import prepare_chat
from .block_manager import BlockManager
from .builder import build
from .output_processor import OutputProcessor
from .pooling import POOLING_TYPES, Pooler
from .request import Request
from .runner import ModelRunner
from .scheduler import Scheduler
from .sequence import Sequence
from .stats import EngineStats
from .validation import check_request, check_token_ids

log = logging.getLogger("kvserve.engine")


class LLMEngine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        built = build(config)
        ckpt = built.checkpoint
        self.runtime = built.runtime
        self.model_config = ckpt.config
        self.tokenizer = ckpt.tokenizer
        self.chat_template = config.chat_template or self.tokenizer.chat_template
        backend = config.attention_backend if config.attention_backend != "auto" else "sdpa"
        # auto: the fused CPU decoder where the model qualifies (block kernels, fp32, CPU), else SDPA
        fused = CpuDecoder.build(built.model) if config.attention_backend == "auto" else None
        rt = self.runtime
        self.runner = ModelRunner(
            built.model, built.kv_caches, config.block_size, rt.vocab_size, rt.device, backend, forward=fused
        )
        self.block_manager = BlockManager(rt.num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(
            self.block_manager, config.max_num_seqs, config.max_num_batched_tokens, rt.max_model_len
        )
        self.outputs = OutputProcessor(self.tokenizer, self.scheduler)
        self.grammars = GrammarCompiler(self.tokenizer.backend.to_str, rt.vocab_size, rt.eos_token_ids)
        self._seq_ids = itertools.count()
        self._rng = random.Random()
        self.num_prompt_tokens_total = 0
        self.pooler = Pooler()

    @property
    def served_name(self) -> str:
        return self.runtime.served_name

    @property
    def model_path(self) -> str:
        return self.runtime.model_path

    @property
    def requests(self) -> dict[str, Request]:
        """The requests in flight, by id."""
        return self.outputs.requests

    # ---- requests -------------------------------------------------------------------------------

    def encode_prompt(
        self, prompt: str | list[int], add_special_tokens: bool = True, param: str = "prompt"
    ) -> tuple[str | None, list[int]]:
        """(text or None, token ids) of a text prompt or a token-id prompt (InvalidParamError on bad ids).

        Thread-safe: it reads only the tokenizer and the runtime facts.
        """
        if isinstance(prompt, str):
            return prompt, self.tokenizer.encode(prompt, add_special_tokens=add_special_tokens)
        return None, check_token_ids(prompt, self.runtime.vocab_size, param)

    def check_request(
        self, ids: list[int], params: SamplingParams, param: str = "prompt", reserve_max_tokens: bool = False
    ) -> None:
        """InvalidParamError if the request cannot run (thread-safe; see validation.check_request)."""
        check_request(ids, params, self.runtime, param, reserve_max_tokens)

    def compile_constraint(self, params: SamplingParams) -> CompiledGrammar | None:
        """The request's structured-output constraint, compiled (cached); None without one.
        InvalidParamError naming the request field if it is over the limits or invalid. Thread-safe."""
        if params.structured_outputs is None:
            return None
        return self.grammars.compile(params.structured_outputs)

    def render_chat(
        self,
        messages: list[dict],
        add_generation_prompt: bool = True,
        chat_template: str | None = None,
        tools: list[dict] | None = None,
        tool_choice: str | dict | None = "auto",
    ) -> str:
        """The chat template applied to `messages` (ValueError if the model has none); `tools` and tool
        history go to the template, or into the messages when it cannot render them (model.tools.prompt)."""
        template = chat_template or self.chat_template
        messages, context = prepare_chat(messages, tools, template, tool_choice)
        return self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, chat_template=template, **context
        )

    def add_request(
        self, request_id: str, prompt: str | list[int], params: SamplingParams, prompt_text: str | None = None
    ) -> None:
        """Check and queue a request. `prompt` is text (tokenized here) or token ids; InvalidParamError if it
        is invalid."""
        text, ids = self.encode_prompt(prompt)
        self.check_request(ids, params)
        grammar = self.compile_constraint(params)
        self.add_checked_request(request_id, ids, params, text if text is not None else prompt_text, grammar)

    def add_checked_request(
        self,
        request_id: str,
        ids: list[int],
        params: SamplingParams,
        prompt_text: str | None = None,
        grammar: CompiledGrammar | None = None,
        pooling: str | None = None,
    ) -> None:
        """Queue a request that `check_request` accepted, with its compiled constraint if it has one.
        With `pooling` ("last" | "mean") it is an embedding request: its output carries `embedding`."""
        if pooling is not None and (pooling not in POOLING_TYPES or params.n != 1 or grammar is not None):
            raise InvalidParamError(f"pooling must be one of {', '.join(POOLING_TYPES)} with n=1", "pooling")
        if request_id in self.outputs.requests:
            raise InvalidParamError(f"request id {request_id!r} is already in use", "request_id")
        choices = []
        for index in range(params.n):
            if params.seed is not None:
                seed = (params.seed * 1_000_003 + index) & 0x7FFF_FFFF_FFFF_FFFF
            else:
                seed = self._rng.getrandbits(63)
            seq = Sequence(next(self._seq_ids), request_id, index, ids, params, seed, list(self.runtime.eos_token_ids))
            if grammar is not None:
                seq.grammar = grammar.new_choice()  # per choice: n > 1 and preemption keep their own state
            seq.pooling = pooling
            choices.append(self.outputs.new_choice(seq, params))
        self.outputs.add(Request(request_id, prompt_text, ids, params, choices))
        for choice in choices:
            self.scheduler.add(choice.seq)
        self.num_prompt_tokens_total += len(ids)

    def abort_request(self, request_id: str) -> RequestOutput | None:
        """Finish a request in whatever state it is; its blocks return to the pool."""
        request = self.outputs.pop(request_id)
        if request is None:
            return None
        for seq in request.seqs:
            self.scheduler.finish(seq, "abort")
            self.pooler.drop(seq)
        return request.make_output()

    def has_unfinished_requests(self) -> bool:
        return bool(self.outputs.requests)

    # ---- the step -------------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        sched = self.scheduler.schedule()
        if not sched.scheduled:
            return []
        starts = {id(s): s.seq.num_computed_tokens for s in sched.scheduled}  # chunk starts, for the pooler
        try:
            result = self.runner.execute(sched.scheduled)
        except Exception as exc:  # the forward pass failed: abort this step's requests, keep the engine
            failed = sorted({s.seq.request_id for s in sched.scheduled})
            for request_id in failed:
                self.abort_request(request_id)
            log.exception("engine step failed; aborted %d request(s): %s", len(failed), ", ".join(failed))
            raise StepFailedError(failed, exc) from exc
        sampled = self.scheduler.update(sched.scheduled, result.sampled, result.token_ids, result.logprobs)
        outputs = self.outputs.process(sampled)
        for s, rows in result.pooled:  # embedding requests: fold the chunk in; finished ones answer now
            vector = self.pooler.add(s.seq, starts[id(s)], rows)
            if vector is not None:
                self.scheduler.finish(s.seq, "stop")
                outputs.append(self.outputs.embedded(s.seq, vector))
        return outputs

    def stats(self) -> EngineStats:
        bm = self.block_manager
        return EngineStats(
            num_running=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting),
            kv_usage=bm.usage,
            num_free_blocks=bm.num_free_blocks,
            num_blocks=bm.num_blocks,
            prefix_queries=bm.prefix_queries,
            prefix_hits=bm.prefix_hits,
            num_preemptions=self.scheduler.num_preemptions_total,
            prompt_tokens_total=self.num_prompt_tokens_total,
            generation_tokens_total=self.scheduler.num_generation_tokens_total,
        )

    @property
    def num_generation_tokens_total(self) -> int:
        return self.scheduler.num_generation_tokens_total
