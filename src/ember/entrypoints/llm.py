"""The offline Python API: ``LLM(...).generate(...)`` and ``.chat(...)``, as in vLLM."""

from __future__ import annotations

from collections.abc import Iterator

from tqdm.auto import tqdm

from ember.engine.frozen_heap import frozen_heap
from ember.engine.llm_engine import EngineArgs, LLMEngine, StepOutput
from ember.engine.sequence import Sequence
from ember.errors import InvalidRequestError
from ember.outputs import CompletionOutput, RequestOutput
from ember.sampling_params import SamplingParams

# Used where neither the caller nor generation_config.json says otherwise.
EMBER_DEFAULT_TEMPERATURE, EMBER_DEFAULT_TOP_P, EMBER_DEFAULT_TOP_K = 0.7, 0.9, 40

Prompt = str | list[int]


class LLM:
    def __init__(
        self,
        model: str,
        dtype: str = "auto",
        device: str | None = None,
        load_format: str = "auto",
        max_model_len: int | None = None,
        seed: int = 0,
        gpu_memory_utilization: float = 0.9,
        max_num_seqs: int = 256,
        max_num_batched_tokens: int | None = None,
        block_size: int = 16,
        enable_prefix_caching: bool = True,
        progress: bool = True,
        enforce_eager: bool = False,
        async_scheduling: bool = True,
        fold_norms: bool = True,
    ):
        self.engine = LLMEngine(
            EngineArgs(
                model=model, dtype=dtype, device=device, load_format=load_format,
                max_model_len=max_model_len, seed=seed, gpu_memory_utilization=gpu_memory_utilization,
                max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                block_size=block_size, enable_prefix_caching=enable_prefix_caching, progress=progress,
                enforce_eager=enforce_eager, async_scheduling=async_scheduling, fold_norms=fold_norms,
            )
        )
        self.tokenizer = self.engine.tokenizer

    def get_tokenizer(self):
        return self.tokenizer

    def default_sampling_params(self, **overrides) -> SamplingParams:
        """generation_config.json's sampling defaults, else Ember's (0.7 / 0.9 / 40)."""
        g = self.engine.generation_defaults
        params = dict(
            temperature=EMBER_DEFAULT_TEMPERATURE if g.temperature is None else g.temperature,
            top_p=EMBER_DEFAULT_TOP_P if g.top_p is None else g.top_p,
            top_k=EMBER_DEFAULT_TOP_K if g.top_k is None else g.top_k,
        )
        if g.min_p is not None:
            params["min_p"] = g.min_p
        if g.repetition_penalty is not None:
            params["repetition_penalty"] = g.repetition_penalty
        params.update({k: v for k, v in overrides.items() if v is not None})
        return SamplingParams(**params)

    # ----- prompts ---------------------------------------------------------------------------
    def _normalize(self, prompts) -> list[Prompt]:
        if isinstance(prompts, str):
            return [prompts]
        if isinstance(prompts, list) and prompts and all(isinstance(t, int) for t in prompts):
            return [prompts]  # one prompt given as token ids
        if not isinstance(prompts, (list, tuple)) or not prompts:
            raise InvalidRequestError("prompts must be a string, a list of strings, or a list of token-id lists")
        for p in prompts:
            if not isinstance(p, str) and not (isinstance(p, list) and all(isinstance(t, int) for t in p)):
                raise InvalidRequestError("each prompt must be a string or a list of token ids")
        return list(prompts)

    def _params_list(self, params, n: int) -> list[SamplingParams]:
        if params is None:
            return [self.default_sampling_params()] * n
        if isinstance(params, SamplingParams):
            return [params] * n
        if len(params) != n:
            raise InvalidRequestError(f"got {len(params)} sampling params for {n} prompts")
        return list(params)

    # ----- generation ------------------------------------------------------------------------
    def generate(self, prompts, sampling_params=None, use_tqdm: bool = True) -> list[RequestOutput]:
        """Generate for every prompt, batched together; outputs come back in prompt order."""
        prompts = self._normalize(prompts)
        params = self._params_list(sampling_params, len(prompts))
        engine = self.engine
        seqs: list[Sequence] = []
        try:
            for i, (prompt, p) in enumerate(zip(prompts, params)):
                ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
                seqs.append(engine.add_request(ids, p, request_id=i, stream_text=False))  # text at the end
            bar = tqdm(total=len(seqs), desc="Generating", disable=not use_tqdm or len(seqs) < 2, leave=False)
            with bar, frozen_heap():  # no full GC pass over the process's objects inside a step
                while engine.has_unfinished():
                    bar.update(sum(o.finished for o in engine.step()))
        except BaseException:
            for s in seqs:
                engine.abort(s)
            raise
        outputs = [self._output(s, p) for s, p in zip(seqs, prompts)]
        for s in seqs:
            engine.abort(s)  # frees detokenizer state; blocks were freed on finish
        return outputs

    def _output(self, seq: Sequence, prompt: Prompt) -> RequestOutput:
        completion = CompletionOutput(
            index=0,
            text=self.engine.output_text(seq),
            token_ids=seq.output_token_ids,
            finish_reason=seq.finish_reason,
            stop_reason=seq.stop_reason,
            logprobs=seq.logprobs if seq.params.logprobs is not None else None,
        )
        return RequestOutput(
            request_id=seq.request_id,
            prompt=prompt if isinstance(prompt, str) else None,
            prompt_token_ids=seq.prompt_token_ids,
            outputs=[completion],
            finished=seq.is_finished,
        )

    def stream(self, prompt: Prompt, sampling_params: SamplingParams | None = None) -> Iterator[StepOutput]:
        """Yield each step's output for one prompt as it is generated (the CLI's path).

        Closing the generator early (Ctrl-C, break) aborts the request and frees its blocks.
        """
        params = sampling_params or self.default_sampling_params()
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        seq = self.engine.add_request(ids, params)
        try:
            while not seq.is_finished:
                for out in self.engine.step():
                    if out.seq is seq:
                        yield out
        finally:
            self.engine.abort(seq)

    def chat(
        self,
        messages,
        sampling_params=None,
        enable_thinking: bool | None = None,
        tools: list | None = None,
        add_generation_prompt: bool = True,
        chat_template_kwargs: dict | None = None,
        use_tqdm: bool = True,
    ) -> list[RequestOutput]:
        """Apply the model's chat template to one conversation (a list of messages) or a list
        of conversations, then generate."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        prompts = [
            self.tokenizer.encode(
                self.tokenizer.apply_chat_template(
                    conv, tools=tools, add_generation_prompt=add_generation_prompt,
                    enable_thinking=enable_thinking, **(chat_template_kwargs or {}),
                )
            )
            for conv in conversations
        ]
        return self.generate(prompts, sampling_params, use_tqdm=use_tqdm)
