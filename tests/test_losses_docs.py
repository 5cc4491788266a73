"""The example in docs/losses.md runs and computes what it claims."""

import pathlib
import re

import numpy as np

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "losses.md"


def test_docs_example_runs_and_matches_numpy():
    text = DOC.read_text()
    (code,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    scope: dict = {}
    exec(compile(code, str(DOC), "exec"), scope)  # noqa: S102 - our own documentation
    loss, metrics, grads = scope["loss"], scope["metrics"], scope["grads"]
    assert np.isfinite(float(loss)) and np.all(np.isfinite(np.asarray(grads)))
    # Independent check of the GRPO loss: group advantages, token ratio, seq-mean-token-mean.
    r = np.asarray(scope["rewards"]).reshape(-1, 4)
    adv = ((r - r.mean(1, keepdims=True)) / (r.std(1, ddof=1, keepdims=True) + 1e-6)).reshape(-1)
    x = np.asarray(scope["logits"], np.float64)
    lsm = x - x.max(-1, keepdims=True)
    lsm = lsm - np.log(np.exp(lsm).sum(-1, keepdims=True))
    logp = np.take_along_axis(lsm, np.asarray(scope["tokens"])[..., None], -1)[..., 0]
    ratio = np.exp(logp - np.asarray(scope["old_logp"]))
    a = adv[:, None]
    per = np.maximum(-a * ratio, -a * np.clip(ratio, 0.8, 1.2))
    m = np.asarray(scope["mask"], np.float64)
    expected = np.mean((per * m).sum(1) / m.sum(1))
    np.testing.assert_allclose(float(loss), expected, rtol=1e-4)
    assert set(metrics) >= {"clipfrac", "approx_kl"}
