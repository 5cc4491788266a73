"""PEFT adapter directories (`models.peft`) against a fixture the `peft` library made
(tests/fixtures/make_peft_fixture.py): the imported adapter on the imported base gives PEFT's
logits, factored and merged; our export writes PEFT's tensors back bit for bit; what we cannot
read the same way PEFT does is refused. Torch is not needed; where peft is importable, our
export is also loaded with `PeftModel.from_pretrained`."""

import json
import pathlib
import shutil

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from jaxrl_lrm import models
from jaxrl_lrm.models import lora, peft, transformer

FIXTURES = pathlib.Path(__file__).parent.parent / "fixtures"
ADAPTER = FIXTURES / "peft_qwen3"


@pytest.fixture(scope="module")
def base():
    return models.load_pretrained(FIXTURES / "qwen3")


def _forward(params, config, tokens):
    return np.asarray(jax.jit(lambda p: transformer.forward(p, config, tokens)[0])(params))


def test_peft_adapter_gives_peft_logits(base):
    adapters, spec = peft.load_adapter(ADAPTER, base.config)
    assert (spec.rank, spec.alpha, spec.targets) == (4, 8.0, lora.TARGETS)
    want = np.load(ADAPTER / "expected.npz")
    plain = _forward(base.params, base.config, want["tokens"])
    assert np.abs(plain - want["logits"]).max() > 1.0  # the adapter matters
    got = _forward(lora.apply(base.params, adapters, spec.scale), base.config, want["tokens"])
    np.testing.assert_allclose(got, want["logits"], atol=1e-4, rtol=0)
    merged = _forward(lora.merge(base.params, adapters, spec.scale), base.config, want["tokens"])
    np.testing.assert_allclose(merged, want["merged_logits"], atol=1e-4, rtol=0)


def test_export_writes_peft_tensors_back_exactly(base, tmp_path):
    adapters, spec = peft.load_adapter(ADAPTER, base.config)
    peft.save_adapter(adapters, spec, base.config, tmp_path, base_model="tests/fixtures/qwen3")
    ours, theirs = load_file(tmp_path / peft.WEIGHTS_FILE), load_file(ADAPTER / peft.WEIGHTS_FILE)
    assert sorted(ours) == sorted(theirs)
    for k in theirs:
        np.testing.assert_array_equal(ours[k], theirs[k], err_msg=k)
    again, spec2 = peft.load_adapter(tmp_path, base.config, expect=spec)
    assert spec2 == spec
    jax.tree.map(np.testing.assert_array_equal, again, adapters)


def _edited(tmp_path, **changes):
    out = tmp_path / "adapter"
    shutil.copytree(ADAPTER, out)
    meta = json.loads((out / peft.CONFIG_FILE).read_text())
    (out / peft.CONFIG_FILE).write_text(json.dumps({**meta, **changes}))
    return out


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"use_dora": True}, "use_dora=True"),
        ({"use_rslora": True}, "use_rslora=True"),
        ({"target_modules": ["q_proj", "embed_tokens"]}, "target_modules="),
        ({"rank_pattern": {"q_proj": 8}}, "rank_pattern="),
        ({"peft_type": "IA3"}, "peft_type='IA3'"),
    ],
)
def test_what_peft_computes_differently_is_refused(base, tmp_path, changes, match):
    with pytest.raises(ValueError, match=match):
        peft.load_adapter(_edited(tmp_path, **changes), base.config)


def test_a_mismatched_adapter_is_refused(base, tmp_path):
    with pytest.raises(ValueError, match="rank=4, alpha=8.0.*model.lora sets rank=8"):
        peft.load_adapter(ADAPTER, base.config, expect=lora.LoraConfig(rank=8, alpha=8.0))
    small = models.load_pretrained(FIXTURES / "llama").config  # head_dim 16, not 32
    with pytest.raises(ValueError, match=r"q_proj.lora_B.weight is \(128, 4\); expected shape"):
        peft.load_adapter(_edited(tmp_path, target_modules=["q_proj"]), small)
    assert peft.read_config(_edited(tmp_path / "all", target_modules="all-linear")).targets == (
        lora.TARGETS
    )


def test_peft_loads_our_export(base, tmp_path):
    """With torch and peft installed: PEFT itself loads what we write, with the same logits."""
    torch = pytest.importorskip("torch")
    peft_lib = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    spec = lora.LoraConfig(rank=2, alpha=5.0, targets=("wq", "wo", "w_down"))
    adapters = lora.init_adapters(base.config, spec, jax.random.key(0))
    for t in spec.targets:  # a trained-looking B
        b = adapters["layers"][t]["lora_b"]
        adapters["layers"][t]["lora_b"] = 0.5 * jax.random.normal(jax.random.key(1), b.shape)
    peft.save_adapter(adapters, spec, base.config, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(FIXTURES / "qwen3", dtype=torch.float32)
    model = peft_lib.PeftModel.from_pretrained(hf, str(tmp_path)).eval()
    tokens = np.asarray(np.load(ADAPTER / "expected.npz")["tokens"])
    with torch.no_grad():
        want = model(torch.as_tensor(tokens)).logits.numpy()
    got = _forward(lora.apply(base.params, adapters, spec.scale), base.config, tokens)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
