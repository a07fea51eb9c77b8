"""Quality metrics: KL, perplexity and top-1 agreement against hand-built distributions and an
independent float64 reference; the comparison of real quantizations; refusals."""

import math
import shutil

import mlx.core as mx
import numpy as np
import pytest

from mlx_slm.apps.quality import position_metrics, read_text, sample_text, score, windows
from mlx_slm.apps.quality_report import compare, measure_perplexity
from mlx_slm.apps.quantize import quantize_directory
from mlx_slm.cache import make_cache
from mlx_slm.errors import SlmError
from mlx_slm.loader import load_model
from mlx_slm.sizes import footprint
from mlx_slm.tokenizer import Tokenizer
from mlx_slm.weights import load_weights, read_config
from tests.conftest import LLAMA2_TOKENIZER
from tests.reference import forward
from tests.test_quant import make_model_dir, quantizable_config


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_position_metrics_on_hand_built_distributions():
    p = np.array([[0.5, 0.25, 0.25], [0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    q = np.array([[0.25, 0.5, 0.25], [0.7, 0.2, 0.1], [0.2, 0.3, 0.5]])
    targets = [0, 2, 1]
    # Logits are log-probabilities up to a per-row constant, which must not matter.
    base = np.log(p) + np.array([[3.0], [-1.0], [0.0]])
    quant = np.log(q) + np.array([[0.0], [5.0], [2.0]])
    m = position_metrics(mx.array(base, mx.float32), mx.array(targets), mx.array(quant,
                                                                                 mx.float32))
    np.testing.assert_allclose(np.array(m["kl"]), [0.25 * math.log(2), 0.0,
                                                   np.sum(p[2] * np.log(p[2] / q[2]))], atol=1e-6)
    np.testing.assert_allclose(np.array(m["nll_base"]), [math.log(2), math.log(10),
                                                         math.log(10)], atol=1e-6)
    np.testing.assert_allclose(np.array(m["nll_quant"]), -np.log(q[[0, 1, 2], targets]),
                               atol=1e-6)
    assert np.array(m["top1_agree"]).tolist() == [0.0, 1.0, 1.0]


def test_metrics_are_computed_in_float32_from_half_precision_logits():
    rng = np.random.default_rng(0)
    base, quant = rng.normal(size=(2, 6, 500)) * 4
    targets = rng.integers(0, 500, size=6)
    m = position_metrics(mx.array(base, mx.bfloat16), mx.array(targets),
                         mx.array(quant, mx.bfloat16))
    assert m["kl"].dtype == mx.float32
    b = np.array(mx.array(base, mx.bfloat16).astype(mx.float32), np.float64)
    q = np.array(mx.array(quant, mx.bfloat16).astype(mx.float32), np.float64)
    pb, pq = softmax(b), softmax(q)
    np.testing.assert_allclose(np.array(m["kl"]), np.sum(pb * np.log(pb / pq), -1), rtol=1e-4)


def test_windows_start_with_bos_and_predict_every_token_once():
    ids = list(range(10, 20))
    got = list(windows(ids, 4, bos_id=1))
    assert got == [([1, 10, 11, 12], [10, 11, 12, 13]), ([1, 14, 15, 16], [14, 15, 16, 17]),
                   ([1, 18], [18, 19])]
    with pytest.raises(SlmError, match="at least 2 tokens"):
        list(windows(ids, 1, bos_id=1))


class BigramModel:
    """A stand-in model whose next-token logits depend on the current token only."""

    def __init__(self, table, context=2048):
        self.table = mx.array(table, mx.float32)
        self.layers = [None]
        self.args = type("Args", (), {"max_context_length": context})

    def __call__(self, inputs, cache=None):
        return self.table[inputs]


def test_score_perplexity_and_kl_by_hand_on_bigram_models():
    rng = np.random.default_rng(1)
    table_a, table_b = rng.normal(size=(2, 8, 8))
    ids, bos = [3, 5, 2, 7, 7, 0, 4], 1
    result = score(BigramModel(table_a, context=3), ids, bos, BigramModel(table_b), chunk=2)
    # Windows of 3 tokens, each predicted from BOS and its own window only.
    previous = [bos, 3, 5, bos, 7, 7, bos]
    pa, pb = softmax(table_a[previous]), softmax(table_b[previous])
    nll = -np.log(pa[np.arange(7), ids])
    assert result["window"] == 3 and result["tokens"] == 7
    assert result["perplexity"] == pytest.approx(math.exp(nll.mean()), rel=1e-5)
    assert result["perplexity_quant"] == pytest.approx(
        math.exp(-np.log(pb[np.arange(7), ids]).mean()), rel=1e-5)
    assert result["kl_mean"] == pytest.approx(np.sum(pa * np.log(pa / pb), -1).mean(), rel=1e-5)
    agree = pa.argmax(-1) == pb.argmax(-1)
    assert result["top1_agreement"] == pytest.approx(agree.mean())


def test_uniform_model_has_perplexity_equal_to_its_vocabulary():
    result = score(BigramModel(np.zeros((50, 50))), list(range(2, 40)), 1)
    assert result["perplexity"] == pytest.approx(50, rel=1e-5)


def test_perplexity_matches_the_float64_reference_through_windows_and_chunks(tmp_path):
    config = quantizable_config(num_layers=2, vocab_size=600)
    model_dir = make_model_dir(tmp_path / "m", config, dtype="float32")
    model, _ = load_model(model_dir)
    ids = [(37 * i) % 590 + 3 for i in range(23)]
    result = score(model, ids, 1, window=10, chunk=4)
    weights = {k: np.array(v) for k, v in load_weights(model_dir).items()}
    nll = []
    for inputs, targets in windows(ids, 10, 1):
        logits = forward(weights, config, inputs)
        logp = np.log(softmax(logits))
        nll += (-logp[np.arange(len(targets)), targets]).tolist()
    assert result["perplexity"] == pytest.approx(math.exp(np.mean(nll)), rel=1e-4)


def test_chunked_scoring_equals_one_pass(tmp_path):
    config = quantizable_config(num_layers=2, vocab_size=600)
    model, _ = load_model(make_model_dir(tmp_path / "m", config, dtype="float32"))
    ids = [(11 * i) % 590 + 3 for i in range(40)]
    one = score(model, ids, 1, model, chunk=64)
    many = score(model, ids, 1, model, chunk=7)
    assert one["perplexity"] == pytest.approx(many["perplexity"], rel=1e-5)
    assert many["kl_mean"] == pytest.approx(0, abs=1e-6) and many["top1_agreement"] == 1.0
    assert make_cache(model)[0].offset == 0


@pytest.fixture(scope="module")
def float_dir(tmp_path_factory):
    """float16 with the real vocabulary (the sample text is tokenized with Llama-2's)."""
    return make_model_dir(tmp_path_factory.mktemp("quality") / "base",
                          quantizable_config(num_layers=3, model_dim=256), seed=4)


def test_kl_shrinks_with_more_bits(tmp_path, float_dir):
    kl, top1 = {}, {}
    for bits in (2, 4, 8):
        out = quantize_directory(float_dir, tmp_path / f"q{bits}", bits=bits).out_dir
        report = compare(float_dir, out, max_tokens=96)
        kl[bits], top1[bits] = report["kl_mean"], report["top1_agreement"]
    assert 0 < kl[8] < kl[4] < kl[2]
    assert top1[8] >= top1[4] >= top1[2]


def test_compare_reports_sizes_and_the_same_model_agrees_with_itself(float_dir):
    report = compare(float_dir, float_dir, max_tokens=40)
    assert report["kl_mean"] == pytest.approx(0, abs=1e-6)
    assert report["top1_agreement"] == 1.0
    assert report["perplexity"] == pytest.approx(report["perplexity_quant"])
    assert report["tokens"] == 40 and report["text"] == "built-in sample"
    base = report["base"]
    assert base["precision"] == "float16" and base["bits_per_weight"] == pytest.approx(16)
    assert base["float16_ratio"] == pytest.approx(1.0)


def test_footprint_of_a_quantized_directory(tmp_path, float_dir):
    out = quantize_directory(float_dir, tmp_path / "q", bits=4, group_size=32,
                             recipe="early-embed").out_dir
    info = footprint(out, read_config(out))
    headers_bytes = sum(v.nbytes for v in load_weights(out).values())
    assert info["weight_bytes"] == headers_bytes
    assert info["size_on_disk_bytes"] >= headers_bytes
    assert info["bits_per_weight"] == pytest.approx(8 * headers_bytes / info["parameters"])
    assert info["precision"] == "mixed 4/6-bit g32"


def test_perplexity_of_a_text_file(tmp_path, float_dir):
    text = tmp_path / "t.txt"
    text.write_text("The river carried sand to the sea, and the delta grew each year.")
    report = measure_perplexity(float_dir, text)
    ids = Tokenizer(LLAMA2_TOKENIZER).encode(text.read_text(), bos=False)
    assert report["tokens"] == len(ids) and report["text"] == str(text)
    assert 1 < report["perplexity"] < 40000


def test_sample_text_is_a_few_thousand_tokens():
    ids = Tokenizer(LLAMA2_TOKENIZER).encode(sample_text(), bos=False)
    assert 3000 <= len(ids) <= 6000
    assert read_text(None) == (sample_text(), "built-in sample")


def test_different_shapes_are_refused(tmp_path, float_dir):
    other = make_model_dir(tmp_path / "other", quantizable_config(num_layers=2, model_dim=256))
    with pytest.raises(SlmError, match=r"have different shapes \(num_transformer_layers 3 vs "
                                       r"2\); compare a quantized model with the model it was "
                                       r"made from\.$"):
        compare(float_dir, other)


def test_different_tokenizers_are_refused(tmp_path, float_dir):
    other = tmp_path / "other"
    shutil.copytree(float_dir, other)
    (other / "tokenizer.model").write_bytes(LLAMA2_TOKENIZER.read_bytes() + b"\0")
    with pytest.raises(SlmError, match=r"have different tokenizers \(tokenizer\.model "
                                       r"differs\)"):
        compare(float_dir, other)


def test_one_tokenizer_is_enough(tmp_path, float_dir):
    # A Hub checkpoint has no tokenizer.model; its quantization (or conversion) has one.
    hub = tmp_path / "hub"
    shutil.copytree(float_dir, hub)
    (hub / "tokenizer.model").unlink()
    report = compare(hub, float_dir, max_tokens=16)
    assert report["kl_mean"] == pytest.approx(0, abs=1e-6)
    bare = tmp_path / "bare"
    shutil.copytree(hub, bare)
    with pytest.raises(SlmError, match=r"^Neither .*hub nor .*bare has a tokenizer\.model: "
                                       r"scoring a text needs the model's tokenizer\.$"):
        compare(hub, bare)


@pytest.mark.parametrize(
    "content, message",
    [(None, r".*missing\.txt does not exist; --text takes a UTF-8 text file\."),
     ("  \n", r"Text file .*t\.txt is empty"),
     (b"\xff\xfe\x00bad", r".*t\.txt is not UTF-8 text; --text takes a UTF-8 text file\.")],
)
def test_bad_text_files_are_refused(tmp_path, content, message):
    path = tmp_path / ("missing.txt" if content is None else "t.txt")
    if isinstance(content, str):
        path.write_text(content)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(SlmError, match=message):
        read_text(path)


def test_the_report_states_what_int8_activations_cost(tmp_path, float_dir):
    from mlx_slm.apps.quality_report import format_quality_report
    from mlx_slm.cpu import kernels

    out = quantize_directory(float_dir, tmp_path / "q4", bits=4).out_dir
    with kernels.int8_activations(True):
        report = compare(float_dir, out, max_tokens=64)
    if kernels.quant_method(4) != "int8":  # no integer dot products here: nothing to state
        assert "kl_mean_float_activations" not in report
        return
    with kernels.int8_activations(False):
        exact = compare(float_dir, out, max_tokens=64)
    assert "kl_mean_float_activations" not in exact
    assert report["kl_mean_float_activations"] == pytest.approx(exact["kl_mean"], rel=1e-6)
    assert report["kl_mean"] != exact["kl_mean"]  # x was rounded
    assert "int8 activations (the CPU kernels' default) add" in format_quality_report(report)
