"""Sharding rules on a 2x2x2 mesh of 8 CPU devices: parameter specs checked by hand against
RULES, sharded forward equal to single device, mesh construction and batch placement."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxrl_lrm import models, sharding
from jaxrl_lrm.models import transformer

# n_heads=3 and n_kv_heads=1 do not divide by tensor=2, vocab 257 neither: those dims fall back
# to replicated; embed 64 and mlp 128 divide and are sharded.
ODD = models.ModelConfig(
    arch="qwen3",
    vocab_size=257,
    d_model=64,
    n_layers=2,
    n_heads=3,
    n_kv_heads=1,
    head_dim=16,
    mlp_dim=128,
    qk_norm=True,
    max_seq_len=64,
)


@pytest.fixture(scope="module")
def mesh():
    return sharding.make_mesh(data=2, fsdp=2, tensor=2)


def test_param_specs_follow_rules(mesh):
    # By hand from RULES: embed->fsdp, heads/kv_heads/mlp/vocab->tensor, layers/norm/head_dim->().
    tiny = models.init("tiny", 0, mesh=mesh)  # n_heads 4, n_kv_heads 2, vocab 256: all divide
    specs = jax.tree.map(lambda x: x.sharding.spec, tiny.params)
    assert specs["embed"] == P("tensor", "fsdp")
    assert specs["lm_head"] == P("fsdp", "tensor")
    assert specs["final_norm"] == P(None)
    assert specs["layers"]["wq"] == P(None, "fsdp", "tensor", None)
    assert specs["layers"]["wk"] == P(None, "fsdp", "tensor", None)
    assert specs["layers"]["wo"] == P(None, "tensor", None, "fsdp")
    assert specs["layers"]["w_down"] == P(None, "tensor", "fsdp")
    assert specs["layers"]["q_norm"] == P(None, None)

    odd = models.init(ODD, 0, mesh=mesh)
    specs = jax.tree.map(lambda x: x.sharding.spec, odd.params)
    assert specs["embed"] == P(None, "fsdp")  # vocab 257 % 2 != 0
    assert specs["layers"]["wq"] == P(None, "fsdp", None, None)  # 3 heads
    assert specs["layers"]["wk"] == P(None, "fsdp", None, None)  # 1 kv head
    assert specs["layers"]["w_gate"] == P(None, "fsdp", "tensor")
    # The placed shards really have the shapes the specs imply.
    wg = odd.params["layers"]["w_gate"]
    assert {s.data.shape for s in wg.addressable_shards} == {(2, 32, 64)}
    assert {s.data.shape for s in odd.params["embed"].addressable_shards} == {(257, 32)}


def test_param_shardings_come_from_axis_trees(mesh):
    # sharding maps the trees a model names (`models.param_axes`, `models.param_shapes`).
    config = models.preset("tiny")
    want = sharding.tree_shardings(
        models.param_axes(config, value_head=True),
        models.param_shapes(config, value_head=True),
        mesh,
    )
    got = sharding.param_shardings(config, mesh, value_head=True)
    assert jax.tree.map(lambda s: s.spec, got) == jax.tree.map(lambda s: s.spec, want)


def test_sharding_imports_no_model_code():
    # One direction only: models place parameters through sharding, sharding never imports them.
    code = (
        "import sys, jaxrl_lrm.sharding; "
        "print(sorted(m for m in sys.modules if m.startswith('jaxrl_lrm.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['jaxrl_lrm.sharding']"


def test_logical_to_spec_drops_used_and_nondividing_axes(mesh):
    assert sharding.logical_to_spec(("batch", None)) == P(("data", "fsdp"), None)
    assert sharding.logical_to_spec(("batch",), (6,), mesh) == P("data")  # 6 % 4 != 0
    assert sharding.logical_to_spec(("batch",), (3,), mesh) == P(None)
    assert sharding.logical_to_spec(("mlp", "heads"), (4, 4), mesh) == P("tensor", None)
    with pytest.raises(ValueError, match="'nonsense'"):
        sharding.logical_to_spec(("nonsense",))


def test_cache_sharding(mesh):
    spec = sharding.cache_sharding((2, 8, 16, 2, 16), mesh).spec
    assert spec == P(None, ("data", "fsdp"), None, "tensor", None)
    assert sharding.cache_sharding((2, 2, 16, 1, 16), mesh).spec == P(
        None, "data", None, None, None
    )


@pytest.mark.parametrize("config", ["tiny", ODD])
def test_sharded_forward_equals_single_device(mesh, config):
    single = models.init(config, 1)
    sharded = sharding.shard_model(single, mesh)
    tokens = np.random.default_rng(0).integers(0, single.config.vocab_size, (8, 12))
    ref = np.asarray(models.logits(single, tokens))
    batch = sharding.shard_batch({"tokens": jnp.asarray(tokens, jnp.int32)}, mesh)
    out = jax.jit(lambda p, t: transformer.forward(p, single.config, t)[0])(
        sharded.params, batch["tokens"]
    )
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5, rtol=1e-5)


def test_make_mesh_sizes():
    assert dict(sharding.make_mesh(data=2, fsdp=-1).shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    assert dict(sharding.make_mesh(data=-1, fsdp=2, tensor=2).shape) == {
        "data": 2,
        "fsdp": 2,
        "tensor": 2,
    }
    with pytest.raises(ValueError, match="cannot be split"):
        sharding.make_mesh(data=3, fsdp=-1)
    with pytest.raises(ValueError, match="mesh.data=0"):
        sharding.make_mesh(data=0)
    with pytest.raises(ValueError, match="mesh.tensor=-2"):
        sharding.make_mesh(tensor=-2)
    with pytest.raises(ValueError, match="all -1"):
        sharding.make_mesh(data=-1, fsdp=-1)
    # A fully fixed mesh smaller than the machine takes the first devices...
    small = sharding.make_mesh(data=2, fsdp=2, tensor=1)
    assert small.devices.size == 4
    assert list(small.devices.flat) == jax.devices()[:4]
    # ...and one larger than the machine is refused.
    with pytest.raises(ValueError, match="needs 16 devices, have 8"):
        sharding.make_mesh(data=4, fsdp=4, tensor=1)


def test_shard_batch(mesh):
    tokens = np.arange(8 * 5).reshape(8, 5)
    odd = np.arange(6 * 2).reshape(6, 2)
    out = sharding.shard_batch({"tokens": tokens, "odd": odd, "scale": 3.0}, mesh)
    assert out["tokens"].sharding.spec == P(("data", "fsdp"), None)
    assert {s.data.shape for s in out["tokens"].addressable_shards} == {(2, 5)}
    assert out["odd"].sharding.spec == P("data", None)
    assert out["scale"].sharding.spec == P()
    np.testing.assert_array_equal(np.asarray(out["tokens"]), tokens)
    np.testing.assert_array_equal(np.asarray(out["odd"]), odd)
    assert float(out["scale"]) == 3.0
