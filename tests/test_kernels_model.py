"""A tiny model end to end with the native kernels on and off (MLX_SLM_KERNELS=off): the
same greedy tokens, and logits within the float32 accumulation-order / output-rounding
tolerance stated per format below."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mlx_slm.cpu import kernels

pytestmark = pytest.mark.skipif(not kernels.available(), reason=f"kernels: {kernels.status()}")

# |logits(on) - logits(off)| <= tolerance * max|logits(off)|: bfloat16 rounds each product's
# output, the others differ only in the order of float32 sums.
FORMATS = {"float32": 1e-5, "bfloat16": 2e-2, "q8": 1e-4, "q4": 1e-4, "q4-bfloat16": 2e-2}

RUN = """
import json, sys
import mlx.core as mx
import mlx_slm.quant as quant
from mlx_slm.cpu import kernels, layers
from mlx_slm.generation import generate_tokens
from mlx_slm.loader import load_model

PROMPT = [1, 450, 7483, 310, 8046, 338, 29871, 13, 31999, 42, 7, 450, 99, 5]
out = {"status": kernels.status()}
for fmt in sys.argv[2:]:
    bits, _, scales = fmt.partition("-")
    dtype = (scales or None) if fmt.startswith("q") else fmt
    model, _ = load_model(sys.argv[1], dtype, prepare=False)
    if fmt.startswith("q"):
        quant.apply(model, {"bits": int(bits[1:]), "group_size": 32})
    layers.prepare(model, "cpu")
    tokens = list(generate_tokens(model, PROMPT, max_tokens=6))
    logits = model(mx.array([PROMPT + tokens]))[0].astype(mx.float32)
    out[fmt] = {"tokens": tokens, "logits": logits.tolist()}
print(json.dumps(out))
"""


def run(checkpoint, env):
    done = subprocess.run([sys.executable, "-c", RUN, str(checkpoint), *FORMATS],
                          env={**os.environ, **env}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_kernels_on_and_off_agree_end_to_end(hub_checkpoint):
    on = run(hub_checkpoint, {"MLX_SLM_KERNELS": "float"})  # float activations: exact
    off = run(hub_checkpoint, {"MLX_SLM_KERNELS": "off"})
    assert on["status"].startswith("native") and off["status"].startswith("mlx")
    for fmt, tolerance in FORMATS.items():
        assert on[fmt]["tokens"] == off[fmt]["tokens"], fmt
        got, want = np.array(on[fmt]["logits"]), np.array(off[fmt]["logits"])
        assert np.abs(got - want).max() <= tolerance * np.abs(want).max(), fmt
    # The default: int8 activations where the CPU has integer dot products, within the
    # rounding of x to 1/254 of each block's largest value.
    default = run(hub_checkpoint, {"MLX_SLM_KERNELS": "on"})
    for fmt in FORMATS:
        got, want = np.array(default[fmt]["logits"]), np.array(off[fmt]["logits"])
        assert np.abs(got - want).max() <= max(FORMATS[fmt], 0.02) * np.abs(want).max(), fmt


VERIFY = """
import json, sys
import mlx_slm
import mlx.core as mx
import mlx_slm.quant as quant
from mlx_slm.cache import make_cache
from mlx_slm.cpu import layers
from mlx_slm.loader import load_model

PROMPT, BLOCK = [1, 450, 7483, 310, 8046, 338, 29871, 13], [31999, 42, 7, 450, 99, 5]
out = {}
for fmt in sys.argv[2:]:
    bits, _, scales = fmt.partition("-")
    dtype = (scales or None) if fmt.startswith("q") else fmt
    model, _ = load_model(sys.argv[1], dtype, prepare=False)
    if fmt.startswith("q"):
        quant.apply(model, {"bits": int(bits[1:]), "group_size": 32})
    layers.prepare(model, "cpu")
    one_by_one, block = make_cache(model), make_cache(model)
    model(mx.array([PROMPT]), cache=one_by_one)
    model(mx.array([PROMPT]), cache=block)
    steps = [model(mx.array([[t]]), cache=one_by_one)[0, -1] for t in BLOCK]
    together = model(mx.array([BLOCK]), cache=block)[0]
    out[fmt] = all(mx.array_equal(s, together[i]).item() for i, s in enumerate(steps))
print(json.dumps(out))
"""


def test_a_block_of_positions_equals_decoding_them_one_by_one(hub_checkpoint):
    """Speculative verification runs a block of positions through the model at once; with
    the kernels its logits are bit-identical to decoding the positions one at a time, at
    every precision, so speculative greedy decoding equals plain greedy decoding."""
    done = subprocess.run([sys.executable, "-c", VERIFY, str(hub_checkpoint), *FORMATS],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == dict.fromkeys(FORMATS, True)
