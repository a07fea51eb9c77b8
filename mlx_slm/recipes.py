"""Mixed-precision recipes for OpenELM: which layers get more bits than the rest.

A recipe is a rule over OpenELM's module paths (`transformer.token_embeddings`, which is also
the output projection when tied, `lm_head` when not, and `transformer.layers.{i}.attn.qkv_proj`,
`.attn.out_proj`, `.ffn.proj_1`, `.ffn.proj_2`). Layers it picks get HIGHER_BITS[bits], the
rest `bits`. The rules were chosen by measurement (benchmarks/quant_sensitivity.py,
docs/quantization.md): on seeded synthetic weights the first blocks are by far the most
sensitive per weight (their error passes through every later block), then the attention
projections and the embedding; the last block is not.
"""

from collections.abc import Callable

from mlx_slm.errors import SlmError

HIGHER_BITS = {2: 6, 3: 6, 4: 6, 5: 8, 6: 8}
EMBEDDING_PATHS = ("transformer.token_embeddings", "lm_head")


def block_index(path: str) -> int | None:
    """The transformer block a module path lies in, or None (embedding, output head)."""
    parts = path.split(".")
    if len(parts) > 2 and parts[:2] == ["transformer", "layers"] and parts[2].isdigit():
        return int(parts[2])
    return None


def _embedding(path: str, num_blocks: int) -> bool:
    return path in EMBEDDING_PATHS


def _attention(path: str, num_blocks: int) -> bool:
    return path.endswith((".attn.qkv_proj", ".attn.out_proj"))


def _early(path: str, num_blocks: int) -> bool:
    """In the first quarter of the blocks (at least the first block)."""
    block = block_index(path)
    return block is not None and block < max(1, num_blocks // 4)


def _early_embed(path: str, num_blocks: int) -> bool:
    return _early(path, num_blocks) or _embedding(path, num_blocks)


def _early_embed_attn(path: str, num_blocks: int) -> bool:
    return _early_embed(path, num_blocks) or _attention(path, num_blocks)


# name -> (rule: does the layer at this path get the higher width?, one-line description).
# Ordered by size: each adds the next most sensitive group per bit spent.
RECIPES: dict[str, tuple[Callable[[str, int], bool], str]] = {
    "early": (_early, "the first quarter of the blocks"),
    "early-embed": (_early_embed, "the first quarter of the blocks and the embedding "
                                  "(the output projection)"),
    "early-embed-attn": (_early_embed_attn, "the first quarter of the blocks, the embedding "
                                            "and every attention projection"),
}


def check_recipe(recipe: str, bits: int) -> None:
    """Refuse an unknown recipe, or one that cannot raise any layer above `bits`."""
    if recipe not in RECIPES:
        raise SlmError(f"Unknown quantization recipe {recipe!r}: choose one of "
                       f"{', '.join(RECIPES)}.")
    if bits not in HIGHER_BITS:
        raise SlmError(f"Recipe {recipe!r} gives some layers more than {bits} bits, and "
                       f"{bits} is the most there is; lower the bit width or drop the recipe.")


def recipe_overrides(recipe: str, layers: list[str], bits: int, group_size: int) -> dict:
    """Per-layer entries ({path: settings}) that raise the layers `recipe` picks."""
    check_recipe(recipe, bits)
    rule, _ = RECIPES[recipe]
    num_blocks = 1 + max((block_index(p) for p in layers if block_index(p) is not None),
                         default=-1)
    high = {"group_size": group_size, "bits": HIGHER_BITS[bits], "mode": "affine"}
    return {path: dict(high) for path in layers if rule(path, num_blocks)}
