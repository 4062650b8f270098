"""LLMEngine: add / abort / step over the scheduler, runner and detokenizers. Single-threaded.

`step()` runs one forward pass over whatever the scheduler picked and returns a RequestOutput for
every request that produced something (or finished) in that step.
"""
from __future__ import annotations

import itertools
import logging
import random
import time
from dataclasses import dataclass

import torch

from ..config import EngineConfig
from ..detokenizer import IncrementalDetokenizer
from ..layers.cpu_linear import accelerate_cpu_linears
from ..layers.fp16_weights import use_fp16_weights
from ..loader import load_checkpoint
from ..models.materialize import materialize
from ..models.registry import model_class
from ..outputs import Logprob, RequestOutput, TokenLogprobs
from ..sampling_params import SamplingParams
from .block_manager import BlockManager
from .request import Request
from .runner import ModelRunner
from .runtime import (
    RuntimeInfo,
    kv_budget_bytes,
    kv_bytes_per_token,
    num_threads_default,
    release_free_heap_memory,
    resolve_device,
    resolve_dtype,
)
from .scheduler import Scheduler
from .sequence import Sequence

log = logging.getLogger("kvserve.engine")


@dataclass
class EngineStats:
    num_running: int
    num_waiting: int
    kv_usage: float
    num_free_blocks: int
    num_blocks: int
    prefix_queries: int
    prefix_hits: int
    num_preemptions: int


class LLMEngine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        t0 = time.monotonic()
        ckpt = load_checkpoint(config.model)
        self.model_path = ckpt.path
        self.served_name = ckpt.default_name
        self.model_config = ckpt.config
        self.tokenizer = ckpt.tokenizer
        self.chat_template = config.chat_template or self.tokenizer.chat_template
        device = resolve_device(config.device)
        dtype = resolve_dtype(config.dtype, device)
        if config.quantization == "fp16" and (device.type != "cpu" or dtype != torch.float32):
            raise ValueError(
                "quantization 'fp16' (float16 weights, float32 math) runs on the CPU in float32: "
                f"use device cpu and dtype float32 or auto, not {device.type} / {str(dtype).removeprefix('torch.')}"
            )
        if device.type == "cpu":
            torch.set_num_threads(config.num_threads or num_threads_default())
        model = self._build_model(ckpt, device, dtype, config.quantization)
        release_free_heap_memory()

        cfg = ckpt.config
        max_len = min(config.max_model_len or cfg.max_position_embeddings, cfg.max_position_embeddings)
        if config.max_model_len and config.max_model_len > cfg.max_position_embeddings:
            raise ValueError(
                f"max_model_len {config.max_model_len} exceeds the model's limit of {cfg.max_position_embeddings} tokens"
            )
        per_token = kv_bytes_per_token(cfg, dtype)
        num_blocks = kv_budget_bytes(config, device) // (per_token * config.block_size)
        blocks_per_seq = -(-max_len // config.block_size)
        if num_blocks < blocks_per_seq:
            raise ValueError(
                f"the KV cache budget holds {num_blocks * config.block_size} tokens, less than one sequence of "
                f"max_model_len={max_len}; raise kv_cache_memory or lower max_model_len"
            )
        kv_caches = [
            torch.zeros(2, num_blocks, config.block_size, cfg.num_key_value_heads, cfg.head_dim, dtype=dtype, device=device)
            for _ in range(cfg.num_hidden_layers)
        ]
        self.runtime = RuntimeInfo(
            device=device,
            dtype=dtype,
            num_blocks=num_blocks,
            block_size=config.block_size,
            max_model_len=max_len,
            vocab_size=cfg.vocab_size,
            eos_token_ids=tuple(ckpt.eos_token_ids),
        )
        backend = config.attention_backend if config.attention_backend != "auto" else "sdpa"
        self.runner = ModelRunner(model, kv_caches, config.block_size, cfg.vocab_size, device, backend)
        self.block_manager = BlockManager(num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, config.max_num_seqs, config.max_num_batched_tokens)
        self.requests: dict[str, Request] = {}
        self._seq_ids = itertools.count()
        self._rng = random.Random()
        self.num_prompt_tokens_total = 0
        self.num_generation_tokens_total = 0
        log.info(
            "loaded %s (%s) on %s in %s%s: %d KV blocks of %d tokens, max_model_len %d, %.1fs",
            self.served_name, cfg.architecture, device, str(dtype).removeprefix("torch."),
            " with float16 weights" if config.quantization == "fp16" else "",
            num_blocks, config.block_size, max_len, time.monotonic() - t0,
        )

    @staticmethod
    def _build_model(ckpt, device: torch.device, dtype: torch.dtype, quantization: str | None) -> torch.nn.Module:
        with torch.device("meta"):
            model = model_class(ckpt.config)(ckpt.config)
        model = materialize(model, device, dtype)  # the rotary buffer was computed on the CPU, not meta
        model.load_weights(ckpt.weights())
        if quantization == "fp16":
            use_fp16_weights(model)
        elif device.type == "cpu" and dtype == torch.float32:
            accelerate_cpu_linears(model)
        return model.eval()

    # ---- requests -------------------------------------------------------------------------------

    def encode_prompt(self, prompt: str | list[int], add_special_tokens: bool = True) -> tuple[str | None, list[int]]:
        """Tokenize a text prompt or check a token-id prompt; ValueError on a bad prompt.

        Thread-safe: it reads only the tokenizer and the runtime facts.
        """
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt, add_special_tokens=add_special_tokens)
            text: str | None = prompt
        else:
            ids = list(prompt)
            text = None
            vocab = self.runtime.vocab_size
            for tok in ids:
                if isinstance(tok, bool) or not isinstance(tok, int) or not 0 <= tok < vocab:
                    raise ValueError(f"prompt token id {tok!r} is outside the vocabulary (0..{vocab - 1})")
        if not ids:
            raise ValueError("the prompt is empty")
        if len(ids) >= self.runtime.max_model_len:
            raise ValueError(
                f"the prompt has {len(ids)} tokens, but the context limit is {self.runtime.max_model_len} tokens "
                "(prompt plus at least one generated token)"
            )
        return text, ids

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True, chat_template: str | None = None) -> str:
        """The chat template applied to `messages` (ValueError if the model has none)."""
        return self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, chat_template=chat_template or self.chat_template
        )

    def add_request(
        self, request_id: str, prompt: str | list[int], params: SamplingParams, prompt_text: str | None = None
    ) -> None:
        """Queue a request. `prompt` is text (tokenized here) or token ids; ValueError if it is invalid."""
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        params.check_token_ids(self.runtime.vocab_size)
        text, ids = self.encode_prompt(prompt)
        text = text if text is not None else prompt_text
        seqs = []
        for index in range(params.n):
            if params.seed is not None:
                seed = (params.seed * 1_000_003 + index) & 0x7FFF_FFFF_FFFF_FFFF
            else:
                seed = self._rng.getrandbits(63)
            detok = IncrementalDetokenizer(
                self.tokenizer, ids, params.skip_special_tokens, params.stop_list, params.include_stop_str_in_output
            )
            seq = Sequence(next(self._seq_ids), request_id, index, ids, params, seed, list(self.runtime.eos_token_ids), detok)
            seqs.append(seq)
        request = Request(request_id, text, ids, params, seqs)
        self.requests[request_id] = request
        for seq in seqs:
            self.scheduler.add(seq)
        self.num_prompt_tokens_total += len(ids)

    def abort_request(self, request_id: str) -> RequestOutput | None:
        """Finish a request in whatever state it is; its blocks return to the pool."""
        request = self.requests.pop(request_id, None)
        if request is None:
            return None
        for seq in request.seqs:
            self.scheduler.finish(seq, "abort")
        return request.make_output()

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    # ---- the step -------------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        sched = self.scheduler.schedule()
        if not sched.scheduled:
            return []
        result = self.runner.execute(sched.scheduled)
        for s in sched.scheduled:
            s.seq.num_computed_tokens += s.num_new_tokens
            self.block_manager.commit_full_blocks(s.seq)
        touched: dict[str, Request] = {}
        now = time.monotonic()
        for i, s in enumerate(result.sampled):
            seq = s.seq
            lp = result.logprobs[i] if result.logprobs else None
            self._append_token(seq, result.token_ids[i], lp)
            if seq.first_token_time is None:
                seq.first_token_time = now
            touched[seq.request_id] = self.requests[seq.request_id]
        self.num_generation_tokens_total += len(result.sampled)
        outputs = []
        for request in touched.values():
            outputs.append(request.make_output())
            if request.finished:
                del self.requests[request.request_id]
        return outputs

    def _append_token(self, seq: Sequence, token: int, lp: tuple[float, list[int], list[float]] | None) -> None:
        params = seq.params
        seq.token_ids.append(token)
        seq.pending_token_ids.append(token)
        if lp is not None and seq.logprobs is not None:
            entry = self._make_logprobs(token, lp)
            seq.logprobs.append(entry)
            seq.pending_logprobs.append(entry)
        is_eos = token in seq.eos_token_ids and not params.ignore_eos
        is_stop_token = params.stop_token_ids is not None and token in params.stop_token_ids
        if is_eos or is_stop_token:
            self._finish(seq, "stop", None if is_eos else token)
            return
        new_text, stop_str = seq.detokenizer.add_tokens([token])
        seq.pending_text += new_text
        if stop_str is not None:
            self._finish(seq, "stop", stop_str)
        elif params.max_tokens is not None and seq.num_output_tokens >= params.max_tokens:
            self._finish(seq, "length")
        elif len(seq.token_ids) >= self.runtime.max_model_len:
            self._finish(seq, "length")

    def _finish(self, seq: Sequence, reason: str, stop_reason: str | int | None = None) -> None:
        if not isinstance(stop_reason, str):
            seq.pending_text += seq.detokenizer.finish()
            if seq.detokenizer.stopped and stop_reason is None:  # the released tail held a stop string
                reason, stop_reason = "stop", seq.detokenizer.stop_reason
        self.scheduler.finish(seq, reason, stop_reason)

    def _make_logprobs(self, token: int, lp: tuple[float, list[int], list[float]]) -> TokenLogprobs:
        decode = self.tokenizer.decode
        sampled_lp, top_ids, top_lps = lp
        return TokenLogprobs(
            sampled=Logprob(token, sampled_lp, decode([token], skip_special_tokens=False)),
            top=[Logprob(t, v, decode([t], skip_special_tokens=False)) for t, v in zip(top_ids, top_lps)],
        )

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
        )
