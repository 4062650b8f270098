"""The output side of a step: sampled tokens -> text, stop strings, logprobs, RequestOutputs.

The scheduler's `update` has already appended each sampled token and finished the sequences that hit
EOS, a stop token id, max_tokens or the context limit (freeing their blocks). Here each choice's
detokenizer turns the token into text; a stop string found in it finishes the choice with
finish_reason "stop" (through `Scheduler.finish`, so the blocks are freed in the same step). A choice
that ended for any other reason flushes the text its detokenizer held back; if that tail completes a
stop string, the reason becomes "stop" too.
"""

from __future__ import annotations

from ..detokenizer import Decoder, IncrementalDetokenizer
from ..outputs import Logprob, RequestOutput, TokenLogprobs
from ..sampling_params import SamplingParams
from .request import ChoiceState, Request
from .scheduler import SampledToken, Scheduler, TokenLogprobData
from .sequence import Sequence


class OutputProcessor:
    def __init__(self, tokenizer: Decoder, scheduler: Scheduler) -> None:
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self.requests: dict[str, Request] = {}

    def new_choice(self, seq: Sequence, params: SamplingParams) -> ChoiceState:
        detok = IncrementalDetokenizer(
            self.tokenizer,
            seq.prompt_token_ids,
            params.skip_special_tokens,
            params.stop_list,
            params.include_stop_str_in_output,
        )
        return ChoiceState(seq, detok, [] if params.logprobs is not None else None)

    def add(self, request: Request) -> None:
        self.requests[request.request_id] = request

    def pop(self, request_id: str) -> Request | None:
        return self.requests.pop(request_id, None)

    def process(self, sampled: list[SampledToken]) -> list[RequestOutput]:
        """Outputs for every request that got a token this step; finished requests are forgotten."""
        touched: dict[str, Request] = {}
        for seq, token, lp, is_text in sampled:
            request = touched[seq.request_id] = self.requests[seq.request_id]
            self._add_token(request.choices[seq.index], token, lp, is_text)
        outputs = []
        for request in touched.values():
            outputs.append(request.make_output())
            if request.finished:
                del self.requests[request.request_id]
        return outputs

    def embedded(self, seq: Sequence, vector: list[float]) -> RequestOutput:
        """The final output of an embedding request (its sequence already finished)."""
        request = self.requests.pop(seq.request_id)
        output = request.make_output()
        output.embedding = vector
        return output

    def _add_token(self, choice: ChoiceState, token: int, lp: TokenLogprobData | None, is_text: bool) -> None:
        seq = choice.seq
        choice.new_token_ids.append(token)
        if lp is not None and choice.logprobs is not None:
            entry = self._make_logprobs(token, lp)
            choice.logprobs.append(entry)
            choice.new_logprobs.append(entry)
        if is_text:  # an EOS or stop token id that ended the sequence is not part of the text
            new_text, stop_str = choice.detokenizer.add_tokens([token])
            choice.new_text += new_text
            if stop_str is not None:
                if seq.is_finished:  # it also reached max_tokens: the stop string wins
                    seq.finish_reason, seq.stop_reason = "stop", stop_str
                else:
                    self.scheduler.finish(seq, "stop", stop_str)
                return
        if seq.is_finished:
            choice.new_text += choice.detokenizer.finish()
            if choice.detokenizer.stopped and seq.stop_reason is None:  # the released tail held a stop string
                seq.finish_reason, seq.stop_reason = "stop", choice.detokenizer.stop_reason

    def _make_logprobs(self, token: int, lp: TokenLogprobData) -> TokenLogprobs:
        decode = self.tokenizer.decode
        sampled_lp, top_ids, top_lps = lp
        return TokenLogprobs(
            sampled=Logprob(token, sampled_lp, decode([token], skip_special_tokens=False)),
            top=[Logprob(t, v, decode([t], skip_special_tokens=False)) for t, v in zip(top_ids, top_lps)],
        )
