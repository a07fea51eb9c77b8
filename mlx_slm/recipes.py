"""Mixed-precision recipes for OpenELM: which layers get more bits than the rest.

A recipe is a rule over OpenELM's module paths (`transformer.token_embeddings`, which is also
the output projection when tied, `lm_head` when not, and `transformer.layers.{i}.attn.qkv_proj`,
`.attn.out_proj`, `.ffn.proj_1`, `.ffn.proj_2`). Layers it picks get HIGHER_BITS[bits], the
rest `bits`. The rules were chosen by measurement (benchmarks/quant_sensitivity.py; README).
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


def _edges(path: str, num_blocks: int) -> bool:
    return _embedding(path, num_blocks) or block_index(path) in (0, num_blocks - 1)


# name -> (rule: does the layer at this path get the higher width?, one-line description)
RECIPES: dict[str, tuple[Callable[[str, int], bool], str]] = {
    "embed": (_embedding, "the embedding / output projection at higher precision"),
    "edges": (_edges, "the embedding / output projection and the first and last blocks at "
                      "higher precision"),
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
