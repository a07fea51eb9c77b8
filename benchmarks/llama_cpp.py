"""mlx-slm against llama.cpp: decode and prompt tok/s on the same synthetic OpenELM weights.

Cell by cell in one run (a size at a precision): `mlx-slm bench` (our own benchmark, in a
subprocess), then llama.cpp's `llama-bench` on a GGUF of the same seeded weights. float32,
float16 and bfloat16 map to f32, f16 and bf16; 8bit and 4bit map to q8_0 and q4_0, made with
`llama-quantize --pure` so every matrix (the tied embedding included) has that type and
stores as many bits per weight as our group-64 formats (8.5 and 4.5). The GGUFs come from a
small converter here (llama.cpp's convert_hf_to_gguf.py needs torch) and are cached.
Writes benchmarks/results/llama_cpp-<date>.{json,md} and prints the table.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
TOKENIZER = Path(__file__).parent.parent / "tests" / "data" / "llama2-tokenizer.model"
DEFAULT_CACHE = Path("~/.cache/mlx-slm/bench-gguf")
# Our precision names -> llama.cpp's type names (llama-quantize's and llama-bench's).
GGUF_TYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "8bit": "Q8_0",
              "4bit": "Q4_0"}
TOOLS = ("llama-bench", "llama-quantize")
CHECK_TOOL = "llama-debug"  # optional: saves the last position's logits for the check
CHECK_PROMPT = "The capital of California is"
BUILD_HINT = ("llama.cpp not found: build it as benchmarks/README.md shows, then pass "
              "--llama-cpp DIR (the folder holding llama-bench) or set LLAMA_CPP_DIR.")
RMS_EPS = 1e-6  # OpenELM's, fixed in Apple's modeling code rather than its config


def gguf_tensors(config: dict, weights: dict):
    """(GGUF name, float32 numpy array) for each tensor llama.cpp's OpenELM loader reads.

    `weights` are the Hub's tensors (mx arrays); proj_1 holds [gate; up] and is split.
    """
    import mlx.core as mx
    import numpy as np
    from gguf import MODEL_TENSOR, TENSOR_NAMES

    from mlx_slm.model import ModelArgs

    def name(tensor, layer=None):
        return TENSOR_NAMES[tensor].format(bid=layer) + ".weight"

    def array(hub_name):
        return np.array(weights[hub_name].astype(mx.float32))

    per_layer = {
        "attn_norm.weight": MODEL_TENSOR.ATTN_NORM,
        "attn.qkv_proj.weight": MODEL_TENSOR.ATTN_QKV,
        "attn.q_norm.weight": MODEL_TENSOR.ATTN_Q_NORM,
        "attn.k_norm.weight": MODEL_TENSOR.ATTN_K_NORM,
        "attn.out_proj.weight": MODEL_TENSOR.ATTN_OUT,
        "ffn_norm.weight": MODEL_TENSOR.FFN_NORM,
        "ffn.proj_2.weight": MODEL_TENSOR.FFN_DOWN,
    }
    args = ModelArgs.from_config(config)
    # The output projection is the embedding (tied); llama.cpp reads it from token_embd.
    yield name(MODEL_TENSOR.TOKEN_EMBD), array("transformer.token_embeddings.weight")
    for i in range(args.num_transformer_layers):
        prefix = f"transformer.layers.{i}."
        for hub_name, tensor in per_layer.items():
            yield name(tensor, i), array(prefix + hub_name)
        proj_1, f = array(prefix + "ffn.proj_1.weight"), args.ffn_dim(i)
        yield name(MODEL_TENSOR.FFN_GATE, i), proj_1[:f]
        yield name(MODEL_TENSOR.FFN_UP, i), proj_1[f:]
    yield name(MODEL_TENSOR.OUTPUT_NORM), array("transformer.norm.weight")


def add_openelm_params(writer, config: dict) -> None:
    """The hyperparameters llama.cpp's OpenELM loader reads, per-layer lists included."""
    from mlx_slm.model import ModelArgs

    args = ModelArgs.from_config(config)
    layers = range(args.num_transformer_layers)
    writer.add_block_count(args.num_transformer_layers)
    writer.add_context_length(config["max_context_length"])
    writer.add_embedding_length(args.model_dim)
    writer.add_feed_forward_length([args.ffn_dim(i) for i in layers])
    writer.add_head_count(list(args.num_query_heads))
    writer.add_head_count_kv(list(args.num_kv_heads))
    writer.add_rope_freq_base(config["rope_freq_constant"])
    writer.add_layer_norm_rms_eps(RMS_EPS)
    writer.add_rope_dimension_count(args.head_dim)
    writer.add_key_length(args.head_dim)
    writer.add_value_length(args.head_dim)


def add_sentencepiece_vocab(writer, tokenizer_model: Path) -> None:
    """The SentencePiece vocabulary as llama.cpp's 'llama' tokenizer: pieces, scores, types."""
    import sentencepiece as spm
    from gguf import TokenType

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_model))
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        tokens.append(sp.id_to_piece(i).encode("utf-8"))
        scores.append(sp.get_score(i))
        types.append(TokenType.UNKNOWN if sp.is_unknown(i) else TokenType.CONTROL
                     if sp.is_control(i) else TokenType.UNUSED if sp.is_unused(i)
                     else TokenType.BYTE if sp.is_byte(i) else TokenType.NORMAL)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(sp.bos_id())
    writer.add_eos_token_id(sp.eos_id())
    writer.add_unk_token_id(sp.unk_id())
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)


def write_gguf(out_path: Path, config: dict, weights: dict, tokenizer_model: Path) -> Path:
    """An f32 OpenELM GGUF from Hub-named weights, with the Llama-2 vocabulary."""
    from gguf import GGUFWriter, LlamaFileType

    writer = GGUFWriter(str(out_path), "openelm")
    add_openelm_params(writer, config)
    writer.add_file_type(LlamaFileType.ALL_F32)
    add_sentencepiece_vocab(writer, tokenizer_model)
    for name, data in gguf_tensors(config, weights):
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_path


def find_tools(directory: str | None) -> dict[str, Path] | None:
    """Paths of llama-bench and llama-quantize in DIR, DIR/bin or DIR/build/bin, or None."""
    if not directory:
        return None
    root = Path(directory).expanduser()
    for folder in (root, root / "bin", root / "build" / "bin"):
        paths = {tool: folder / tool for tool in TOOLS}
        if all(p.is_file() and os.access(p, os.X_OK) for p in paths.values()):
            if (folder / CHECK_TOOL).is_file():
                paths[CHECK_TOOL] = folder / CHECK_TOOL
            return paths
    return None


def check_logits(tool: Path, model: Path, size: str, seed: int, threads: int) -> dict:
    """Do llama.cpp and mlx-slm compute the same model? The float32 logits at the last
    position of CHECK_PROMPT from both, on the same weights, compared."""
    import mlx.core as mx
    import numpy as np

    from mlx_slm.bench.precisions import model_at, precision
    from mlx_slm.synthetic import published_config, random_weights
    from mlx_slm.tokenizer import Tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([str(tool), "-m", str(model), "-p", CHECK_PROMPT, "-t", str(threads),
                        "--save-logits", "--logits-output-dir", tmp],
                       check=True, capture_output=True)
        theirs = np.fromfile(Path(tmp) / f"llamacpp-{model.stem}.bin", np.float32)
        their_ids = np.fromfile(Path(tmp) / f"llamacpp-{model.stem}-tokens.bin", np.int32)
    ids = Tokenizer(TOKENIZER).encode(CHECK_PROMPT)
    config = published_config(size)
    ours_model, _ = model_at(config, random_weights(config, seed),
                             precision("float32", config), size)
    ours = np.array(ours_model(mx.array([ids]))[0, -1])
    del ours_model
    mx.clear_cache()
    return {
        "prompt": CHECK_PROMPT,
        "token_ids_equal": their_ids.tolist() == ids,
        "max_abs_diff": float(np.abs(ours - theirs).max()),
        "logit_range": [float(ours.min()), float(ours.max())],
        "argmax_equal": int(ours.argmax()) == int(theirs.argmax()),
        "top10_equal": np.argsort(-ours)[:10].tolist() == np.argsort(-theirs)[:10].tolist(),
    }


def gguf_at(size: str, precision: str, seed: int, cache: Path, tools: dict) -> Path:
    """The cached GGUF of a synthetic size at a precision, made on first use."""
    name = f"openelm-{size}-seed{seed}"
    f32 = cache / f"{name}-F32.gguf"
    if not f32.exists():
        from mlx_slm.synthetic import published_config, write_hub_checkpoint
        from mlx_slm.weights import load_weights, read_config

        print(f"[gguf] converting synthetic {size} (seed {seed})", file=sys.stderr)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            hub = write_hub_checkpoint(Path(tmp) / "hub", published_config(size), seed=seed)
            write_gguf(Path(tmp) / f32.name, read_config(hub), load_weights(hub), TOKENIZER)
            os.replace(Path(tmp) / f32.name, f32)
    kind = GGUF_TYPES[precision]
    out = cache / f"{name}-{kind}.gguf"
    if not out.exists():
        print(f"[gguf] llama-quantize --pure {kind}", file=sys.stderr)
        partial = out.with_suffix(".partial")
        subprocess.run([str(tools["llama-quantize"]), "--pure", str(f32), str(partial), kind],
                       check=True, capture_output=True)
        os.replace(partial, out)
    return out


def run_llama_bench(tool: Path, model: Path, prompt: int, gen: int, reps: int,
                    threads: int) -> dict:
    """llama-bench's prompt and decode tok/s (medians of the repetitions) and build."""
    done = subprocess.run([str(tool), "-m", str(model), "-p", str(prompt), "-n", str(gen),
                           "-t", str(threads), "-r", str(reps), "-o", "json"],
                          capture_output=True, text=True, check=True)
    tests = json.loads(done.stdout)
    prompt_test = next(t for t in tests if t["n_prompt"] and not t["n_gen"])
    gen_test = next(t for t in tests if t["n_gen"] and not t["n_prompt"])
    first = tests[0]
    return {
        "prompt_tps": statistics.median(prompt_test["samples_ts"]),
        "gen_tps": statistics.median(gen_test["samples_ts"]),
        "gen_tps_samples": gen_test["samples_ts"],
        "prompt_tps_samples": prompt_test["samples_ts"],
        "type": first["model_type"],
        "model_bytes": first["model_size"],
        "parameters": first["model_n_params"],
        "bits_per_weight": 8 * first["model_size"] / first["model_n_params"],
        "build": f"{first['build_commit']} ({first['build_number']})",
        "cpu_info": first["cpu_info"],
        "threads": first["n_threads"],
    }


def run_ours(size: str, precision: str, prompt: int, gen: int, reps: int, seed: int) -> dict:
    """One `mlx-slm bench` row for the cell, run in its own process."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        subprocess.run([sys.executable, "-m", "mlx_slm", "bench", "-s", size, "-P", precision,
                        "-p", str(prompt), "-n", str(gen), "-r", str(reps), "--seed", str(seed),
                        "--json", str(out)], check=True, stdout=subprocess.DEVNULL)
        row = json.loads(out.read_text())["rows"][0]
    if row["status"] != "ok":
        raise RuntimeError(f"mlx-slm bench {size} {precision}: {row['status']}: {row['reason']}")
    return row


def ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}x" if theirs else "-"


def markdown(result: dict) -> str:
    """The side-by-side table with what produced it."""
    m, settings = result["machine"], result["settings"]
    lines = [
        f"# mlx-slm vs llama.cpp, {m['date'][:10]}",
        "",
        f"Backend {m['backend']} (BLAS {m['blas']}), CPU {m['cpu']} ({m['cores']} cores), "
        f"MLX {m['mlx_version']}, mlx-slm {m['mlx_slm_version']}; llama.cpp "
        f"{result['llama_cpp_build']} ({result['llama_cpp_cpu']}, {settings['threads']} "
        f"threads). Synthetic OpenELM weights (seed {settings['seed']}) at the published "
        f"shapes; prompt {settings['prompt_tokens']} tokens, {settings['gen_tokens']} "
        f"generated, median of {settings['reps']}. {m['date']}.",
        "",
        "| size | precision | llama.cpp type | bits/weight ours / theirs | decode tok/s ours "
        "| llama.cpp | ratio | prompt tok/s ours | llama.cpp | ratio | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in result["cells"]:
        ours, theirs = c["mlx_slm"], c["llama_cpp"]
        lines.append(
            f"| {c['size']} | {c['precision']} | {theirs['type']} "
            f"| {ours['bits_per_weight']:.2f} / {theirs['bits_per_weight']:.2f} "
            f"| {ours['gen_tps']:.1f} | {theirs['gen_tps']:.1f} "
            f"| {ratio(ours['gen_tps'], theirs['gen_tps'])} "
            f"| {ours['prompt_tps']:.0f} | {theirs['prompt_tps']:.0f} "
            f"| {ratio(ours['prompt_tps'], theirs['prompt_tps'])} "
            f"| {c['load_average'][0]:.1f}-{c['load_average'][1]:.1f} |")
    busiest = max((max(c["load_average"]) for c in result["cells"]), default=0)
    if busiest > m["cores"]:
        lines += ["", f"**Measured under contention** (load average up to {busiest:.1f} on "
                  f"{m['cores']} cores): other jobs shared the CPU, so these figures are not "
                  "the engines' speeds; rerun on an idle machine."]
    lines += ["", "Ratio: mlx-slm / llama.cpp (above 1 means we are faster). llama-bench times "
              "decode from an empty context; ours after the prompt. Load avg: the 1-minute load "
              "average before and after the cell (above the core count, other work competed)."]
    for size, check in result["logits_check"].items():
        lines += ["", f"Same model? {size} float32, last-position logits of {check['prompt']!r}: "
                  f"token ids equal {check['token_ids_equal']}, argmax equal "
                  f"{check['argmax_equal']}, top-10 equal {check['top10_equal']}, max |diff| "
                  f"{check['max_abs_diff']:.2e} (logits span {check['logit_range'][0]:.2f} to "
                  f"{check['logit_range'][1]:.2f})."]
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Decode and prompt tok/s of mlx-slm and llama.cpp on the same synthetic "
                    "OpenELM weights, side by side (see benchmarks/README.md).")
    parser.add_argument("--llama-cpp", metavar="DIR", default=os.environ.get("LLAMA_CPP_DIR"),
                        help="llama.cpp build folder holding llama-bench and llama-quantize "
                             "(or bin/, build/bin/ under it). Default: $LLAMA_CPP_DIR.")
    parser.add_argument("--sizes", nargs="+", default=["270M", "1.1B"], metavar="SIZE",
                        help="Published shapes: 270M, 450M, 1.1B, 3B (default 270M 1.1B).")
    parser.add_argument("--precisions", nargs="+", default=["float32", "bfloat16", "8bit", "4bit"],
                        choices=list(GGUF_TYPES), metavar="NAME",
                        help=f"Any of {', '.join(GGUF_TYPES)} (default float32 bfloat16 "
                             "8bit 4bit).")
    parser.add_argument("--prompt-tokens", type=int, default=128, metavar="N")
    parser.add_argument("--gen-tokens", type=int, default=64, metavar="N")
    parser.add_argument("--reps", type=int, default=3, metavar="N",
                        help="Timed runs per cell and engine; the table shows medians.")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), metavar="N",
                        help="llama.cpp threads (default: every core, as MLX uses).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the synthetic weights.")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, metavar="DIR",
                        help=f"Where the GGUFs are kept (default {DEFAULT_CACHE}).")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    tools = find_tools(args.llama_cpp)
    if tools is None:
        print(BUILD_HINT, file=sys.stderr)
        return 2
    from mlx_slm.bench.machine import machine_info
    from mlx_slm.synthetic import published_config

    for size in args.sizes:
        published_config(size)  # an unknown size fails here, before anything is built
    cache = args.cache.expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    result = {
        "machine": machine,
        "llama_cpp_build": None,
        "llama_cpp_cpu": None,
        "settings": {"prompt_tokens": args.prompt_tokens, "gen_tokens": args.gen_tokens,
                     "reps": args.reps, "threads": args.threads, "seed": args.seed,
                     "quantize": "llama-quantize --pure"},
        "cells": [],
        "logits_check": {},
    }
    stamp = machine["date"][:10]
    for size in args.sizes:
        if CHECK_TOOL in tools:
            print(f"[check] {size}: float32 logits, llama.cpp vs mlx-slm", file=sys.stderr)
            result["logits_check"][size] = check_logits(
                tools[CHECK_TOOL], gguf_at(size, "float32", args.seed, cache, tools), size,
                args.seed, args.threads)
        for precision in args.precisions:
            model = gguf_at(size, precision, args.seed, cache, tools)
            # Other work on the machine skews both engines; the load average shows it.
            load_before = os.getloadavg()[0]
            print(f"[bench] {size} {precision}: mlx-slm", file=sys.stderr)
            ours = run_ours(size, precision, args.prompt_tokens, args.gen_tokens, args.reps,
                            args.seed)
            print(f"[bench] {size} {precision}: llama.cpp {model.name}", file=sys.stderr)
            theirs = run_llama_bench(tools["llama-bench"], model, args.prompt_tokens,
                                     args.gen_tokens, args.reps, args.threads)
            result["llama_cpp_build"], result["llama_cpp_cpu"] = theirs["build"], theirs["cpu_info"]
            result["cells"].append({
                "size": size, "precision": precision, "mlx_slm": ours, "llama_cpp": theirs,
                "load_average": [load_before, os.getloadavg()[0]],
                "gen_tps_ratio": ours["gen_tps"] / theirs["gen_tps"],
                "prompt_tps_ratio": ours["prompt_tps"] / theirs["prompt_tps"]})
            write_results(result, stamp)  # after every cell, so a cut-short run keeps its cells
    print(markdown(result))
    return 0


def write_results(result: dict, stamp: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"llama_cpp-{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"llama_cpp-{stamp}.md").write_text(markdown(result))


if __name__ == "__main__":
    from mlx_slm.errors import SlmError

    try:
        sys.exit(main())
    except subprocess.CalledProcessError as err:
        output = err.stderr or b""
        output = output.decode(errors="replace") if isinstance(output, bytes) else output
        last = (output.strip().splitlines() or ["no output"])[-1]
        sys.exit(f"Error: {Path(err.cmd[0]).name} failed with exit code {err.returncode}: {last}")
    except (SlmError, RuntimeError) as err:
        sys.exit(f"Error: {err}")
