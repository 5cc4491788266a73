"""Peer GRPO steps timed in the same process as ours (`grpo_step --vs-trl`).

`trl_grpo_step_time` runs TRL's `GRPOTrainer` (PyTorch, CPU, float32) on a random-weight
`transformers.Qwen3ForCausalLM` with the shape of one of our `ModelConfig`s, the same batch
(prompts x group completions), the same prompt and generation lengths, GRPO with the k3 KL to
a reference model (`beta` 0.04, as ours) and one update per generation, and returns the median
wall time of an optimizer step (the first step, warm-up, is excluded). Nothing is downloaded:
the model is saved to and loaded from a temporary directory (TRL builds its reference model
from the policy's path), and the tokenizer is a word-level `PreTrainedTokenizerFast` built in
code whose ids `3..V-1` are the words `w3..w{V-1}`.

`lengths="uniform"` forces the full length (`min_new_tokens` = `new_tokens`), as our random
policy samples EOS with probability ~1/V per token; `"varied"` gives the model our model's edit
(`bench.workload`), so EOS fires with the same probability per token on both. TRL's default `gradient_checkpointing=True` is turned off by
default (our update does not recompute activations, and at this size memory is no concern;
recomputing would only slow the peer down).

`trl_grpo_step_time_isolated` (what `grpo_step --vs-trl` calls) runs it in a child process:
in the benchmark's own process, after JAX has run, torch's OpenMP threads compete with JAX's
CPU thread pool (measured at load ~8, batch 32 x 32 new tokens, 2 threads: 9.0 s in a fresh
process, 33 s after JAX ran in the same process). OpenMP's default spin-waiting is kept: it is
what a TRL user gets and is fastest on a quiet machine (full step 10.0 s vs 21.7 s with
`OMP_WAIT_POLICY=PASSIVE`), but it collapses when the 2 vCPUs are oversubscribed, so the
comparison is only meaningful at low load (`omp_wait_policy` sets the policy).

Tunix has no runner: `google-tunix` 0.1.7 would replace the installed transformers 5.24
(and huggingface_hub, tokenizers, safetensors) with older versions, so it is not installed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

from jaxrl_lrm.bench import workload
from jaxrl_lrm.models.config import ModelConfig, preset

SPECIAL_TOKENS = ("<pad>", "<eos>", "<unk>")  # ids 0, 1, 2


def word_tokenizer(vocab_size: int):
    """A word-level `PreTrainedTokenizerFast` with `vocab_size` ids: `<pad>` 0, `<eos>` 1,
    `<unk>` 2, then the words `w3 .. w{vocab_size-1}` (split on whitespace, no BOS added)."""
    if not isinstance(vocab_size, int) or vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size={vocab_size!r}: expected an int > {len(SPECIAL_TOKENS)}")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    vocab.update({f"w{i}": i for i in range(len(SPECIAL_TOKENS), vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )


def hf_qwen3_config(config: ModelConfig):
    """The `transformers.Qwen3Config` of a Qwen3-layout `ModelConfig` (pad 0, EOS 1)."""
    if config.arch != "qwen3" or not config.qk_norm or config.qkv_bias:
        raise ValueError(
            f"arch={config.arch!r}, qk_norm={config.qk_norm!r}, "
            f"qkv_bias={config.qkv_bias!r}: expected the Qwen3 layout "
            "('qwen3', qk_norm True, qkv_bias False)"
        )
    if config.rope_scaling is not None:
        raise ValueError(f"rope_scaling={config.rope_scaling!r}: expected None (plain RoPE)")
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=config.vocab_size,
        hidden_size=config.d_model,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_kv_heads,
        head_dim=config.head_dim,
        intermediate_size=config.mlp_dim,
        rope_theta=config.rope_theta,
        rms_norm_eps=config.norm_eps,
        tie_word_embeddings=config.tie_embeddings,
        max_position_embeddings=config.max_seq_len,
        attention_dropout=0.0,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
    )


class _Clock:
    """Wraps `obj.name` so each call's wall time is appended to `self.times` (and its result,
    when `keep` is given, passed through `keep` into `self.kept`)."""

    def __init__(self, obj, name: str, keep=None):
        self.times: list[float] = []
        self.kept: list = []
        inner = getattr(obj, name)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            out = inner(*args, **kwargs)
            self.times.append(time.perf_counter() - t0)
            if keep is not None:
                self.kept.append(keep(out))
            return out

        setattr(obj, name, timed)


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def _check_sizes(*, group: int, beta: float, lengths: str = "uniform", **sizes) -> None:
    if lengths not in workload.LENGTHS:
        raise ValueError(f"lengths={lengths!r}: expected one of {workload.LENGTHS}")
    for name, value in (("group", group), *sizes.items()):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r}: expected a positive integer")
    if group < 2:
        raise ValueError(f"group={group!r}: expected >= 2 (GRPO needs a group to compare)")
    if beta < 0:
        raise ValueError(f"beta={beta!r}: expected >= 0")


def _summary(step, gen, score, *, threads: int, trl, torch, gradient_checkpointing) -> dict:
    step_s = _median(step.times[1:])
    score_s = _median(score.times[1:])
    return {
        "step_s": step_s,
        "step_times_s": step.times[1:],
        "warmup_s": step.times[0],
        "generate_s": _median(gen.times[1:]),
        "score_s": score_s,
        "update_s": step_s - score_s,
        "mean_completion_len": _median(score.kept[1:]),
        "threads": threads,
        "trl_version": trl.__version__,
        "torch_version": torch.__version__,
        "gradient_checkpointing": gradient_checkpointing,
    }


def _trl_trainer(
    trl,
    torch,
    model_dir,
    tmp,
    reward,
    data,
    tokenizer,
    step,
    *,
    prompts,
    group,
    new_tokens,
    beta,
    lr,
    repeats,
    seed,
    gradient_checkpointing,
    lengths,
):
    """TRL's `GRPOTrainer` on the saved random model (completion length forced for `uniform`,
    free for `varied`), CPU, fp32."""
    args = trl.GRPOConfig(
        output_dir=os.path.join(tmp, "out"),
        per_device_train_batch_size=prompts * group,
        gradient_accumulation_steps=1,
        num_generations=group,
        max_completion_length=new_tokens,
        generation_kwargs={"min_new_tokens": new_tokens} if lengths == "uniform" else {},
        temperature=1.0,
        beta=beta,
        num_iterations=1,
        learning_rate=lr,
        gradient_checkpointing=gradient_checkpointing,
        use_cpu=True,
        bf16=False,
        fp16=False,
        report_to=[],
        logging_strategy="no",
        save_strategy="no",
        max_steps=repeats + 1,
        seed=seed,
        disable_tqdm=True,
        dataloader_pin_memory=False,
        model_init_kwargs={"dtype": torch.float32},
    )
    return trl.GRPOTrainer(
        model=model_dir,
        reward_funcs=reward,
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
        callbacks=[step.callback()],
    )


def trl_grpo_step_time(
    *,
    model_config: ModelConfig | None = None,
    prompts: int = 4,
    group: int = 8,
    new_tokens: int = 128,
    prompt_len: int = 16,
    repeats: int = 3,
    beta: float = 0.04,
    lr: float = 1e-6,
    gradient_checkpointing: bool = False,
    threads: int | None = None,
    seed: int = 0,
    lengths: str = "uniform",
) -> dict:
    """Times TRL's GRPO step on a random-weight Qwen3 model of `model_config`'s shape.

    Args:
        model_config: the shape (default: the `bench-cpu` preset, vocab 8192).
        prompts: prompts per step.
        group: completions per prompt (`num_generations`).
        new_tokens: the longest completion (every one with `lengths="uniform"`).
        prompt_len: tokens per prompt (random words, no padding).
        repeats: timed optimizer steps; one more warm-up step runs first.
        beta: KL coefficient (k3 to a reference model when > 0).
        lr: AdamW learning rate.
        gradient_checkpointing: TRL's activation recomputation (its default is on).
        threads: torch intra-op threads (default: every CPU of the machine).
        seed: seeds the weights, the prompts and the sampling.
        lengths: "uniform" (`min_new_tokens` = `new_tokens`) or "varied" (the EOS edit of
            `bench.workload`).

    Returns:
        `{"step_s": median step time excluding warm-up, "step_times_s", "warmup_s",
        "generate_s": median time of TRL's `_generate` (sampling + decoding),
        "score_s": median time of `_generate_and_score_completions` (generation, rewards,
        reference log-probs, advantages), "update_s": step_s - score_s, "mean_completion_len",
        "threads", "trl_version", "torch_version", "gradient_checkpointing"}`.
    """
    sizes = dict(prompts=prompts, new_tokens=new_tokens, prompt_len=prompt_len, repeats=repeats)
    _check_sizes(group=group, beta=beta, lengths=lengths, **sizes)
    model_config = model_config or preset("bench-cpu", vocab_size=8192)
    import torch
    import trl

    old_threads = torch.get_num_threads()
    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    opts = dict(
        prompts=prompts,
        group=group,
        new_tokens=new_tokens,
        beta=beta,
        lr=lr,
        repeats=repeats,
        seed=seed,
        gradient_checkpointing=gradient_checkpointing,
        lengths=lengths,
    )
    try:
        torch.manual_seed(seed)
        step, gen, score = _train_timed(model_config, prompt_len, opts)
    finally:
        torch.set_num_threads(old_threads)
    if len(step.times) != repeats + 1:
        raise RuntimeError(f"TRL ran {len(step.times)} steps, expected {repeats + 1}")
    return _summary(
        step,
        gen,
        score,
        threads=threads,
        trl=trl,
        torch=torch,
        gradient_checkpointing=gradient_checkpointing,
    )


def _train_timed(model_config: ModelConfig, prompt_len: int, opts: dict):
    """Saves a random Qwen3 of `model_config`'s shape, builds TRL's trainer on random-word
    prompts and trains `repeats + 1` steps; `(step timer, generate clock, score clock)`."""
    import datasets
    import numpy as np
    import torch
    import transformers
    import trl

    V = model_config.vocab_size
    tokenizer = word_tokenizer(V)
    rng = np.random.default_rng(opts["seed"])
    words = rng.integers(
        len(SPECIAL_TOKENS), V, size=(opts["prompts"] * (opts["repeats"] + 1), prompt_len)
    )
    data = datasets.Dataset.from_dict({"prompt": [" ".join(f"w{i}" for i in row) for row in words]})

    def reward(prompts, completions, **kwargs):  # cheap, varied within a group
        return [float(c.count("w1") + len(c) % 5) for c in completions]

    with tempfile.TemporaryDirectory() as tmp, _quiet():
        model_dir = os.path.join(tmp, "policy")
        model = transformers.Qwen3ForCausalLM(hf_qwen3_config(model_config)).to(torch.float32)
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        if opts["lengths"] == "varied":
            eos = tokenizer.eos_token_id
            workload.bias_eos_torch(model, eos, workload.hazard_for(opts["new_tokens"]))
        model.save_pretrained(model_dir)
        step = _StepTimer()
        trainer = _trl_trainer(trl, torch, model_dir, tmp, reward, data, tokenizer, step, **opts)
        for cb in (transformers.PrinterCallback, transformers.ProgressCallback):
            trainer.remove_callback(cb)
        gen = _Clock(trainer, "_generate")
        score = _Clock(
            trainer,
            "_generate_and_score_completions",
            keep=lambda out: float(out["completion_mask"].sum(1).float().mean()),
        )
        trainer.train()
    return step, gen, score


def trl_grpo_step_time_isolated(
    *,
    model_config: ModelConfig | None = None,
    omp_wait_policy: str | None = None,
    timeout_s: float = 3600.0,
    **kwargs,
) -> dict:
    """`trl_grpo_step_time` in a child process (same interpreter and package), with
    `OMP_WAIT_POLICY` set when `omp_wait_policy` is given ("ACTIVE" or "PASSIVE"); same
    arguments and result. Raises RuntimeError if the child fails."""
    if omp_wait_policy not in (None, "ACTIVE", "PASSIVE"):
        raise ValueError(
            f"omp_wait_policy={omp_wait_policy!r}: expected None, 'ACTIVE' or 'PASSIVE'"
        )
    spec = dict(kwargs)
    if model_config is not None:
        spec["model_config"] = dataclasses.asdict(model_config)
    root = str(pathlib.Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    if omp_wait_policy is not None:
        env["OMP_WAIT_POLICY"] = omp_wait_policy
    proc = subprocess.run(
        [sys.executable, "-m", "jaxrl_lrm.bench.peers", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout_s,
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"TRL peer process failed (exit {proc.returncode}): {proc.stderr[-2000:]}"
        )
    return json.loads(lines[-1])


def _main(argv: list[str]) -> None:
    spec = json.loads(argv[0])
    if "model_config" in spec:
        c = spec["model_config"]
        if c.get("rope_scaling") is not None:
            c["rope_scaling"] = tuple(c["rope_scaling"])
        spec["model_config"] = ModelConfig(**c)
    print(json.dumps(trl_grpo_step_time(**spec)))


class _StepTimer:
    """Wall time of each optimizer step, from `on_step_begin` to `on_step_end`."""

    def __init__(self):
        self.times: list[float] = []
        self._t0 = 0.0

    def callback(self):
        from transformers import TrainerCallback

        timer = self

        class StepCallback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                timer._t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                timer.times.append(time.perf_counter() - timer._t0)

        return StepCallback()


@contextlib.contextmanager
def _quiet():
    """Silences transformers' info logging, progress bars and deprecation warnings."""
    import warnings

    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


if __name__ == "__main__":
    _main(sys.argv[1:])
