"""The draft model of speculative decoding, as the apps choose, check and open it.

A draft must share the target's tokenizer: the same vocabulary size and, where both
directories hold one, the same tokenizer.model bytes. `auto` picks the smallest converted
model in the cache that does.
"""

from dataclasses import dataclass
from pathlib import Path

from mlx_slm.errors import SlmError

AUTO = "auto"


@dataclass(frozen=True)
class DraftOptions:
    """--draft-model and --num-draft-tokens, built once by the CLI decorator."""

    model: str | None = None  # a model directory, a Hub repo id, or "auto"; None: no draft
    num_draft_tokens: int | None = None  # a fixed K; None adapts it

    def as_dict(self) -> dict:
        return {"draft_model": self.model, "num_draft_tokens": self.num_draft_tokens}


def check_combinable(draft: DraftOptions, constraint) -> None:
    """A draft proposes tokens the grammar never saw: the two are not combined."""
    if draft.model is not None and constraint is not None:
        raise SlmError("--draft-model cannot be combined with a structured-output option "
                       "(--json-schema, --json-object, --regex, --choice); drop one.")


@dataclass
class OpenedDraft:
    """A loaded draft and where it came from."""

    name: str
    path: Path
    draft: object  # speculative.Draft


def tokenizer_identity(model_dir: Path) -> tuple[int | None, str | None]:
    """The vocabulary size in config.json and the sha256 of tokenizer.model (None if absent)."""
    from mlx_slm.store.manifest import file_sha256
    from mlx_slm.tokenizer import TOKENIZER_FILE
    from mlx_slm.weights import read_config

    vocab = read_config(model_dir).get("vocab_size")
    tokenizer = Path(model_dir) / TOKENIZER_FILE
    return vocab, file_sha256(tokenizer) if tokenizer.is_file() else None


def tokenizer_mismatch(target_dir: Path, draft_dir: Path) -> str | None:
    """Why the draft cannot draft for the target, or None if they share the tokenizer."""
    (target_vocab, target_sha), (draft_vocab, draft_sha) = (
        tokenizer_identity(target_dir), tokenizer_identity(draft_dir))
    if draft_vocab != target_vocab:
        return f"its vocabulary has {draft_vocab} tokens, the target's {target_vocab}"
    if target_sha and draft_sha and target_sha != draft_sha:
        return (f"its tokenizer.model differs from the target's (sha256 {draft_sha[:12]} vs "
                f"{target_sha[:12]})")
    return None


def weight_bytes(model_dir: Path) -> int:
    return sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors"))


def auto_draft(target_dir: Path, models_root: Path | None = None) -> Path:
    """The smallest converted model under the cache's models/ folder (by weight bytes) that
    shares the target's tokenizer and is smaller than the target."""
    from mlx_slm.convert.auto import cache_root
    from mlx_slm.weights import read_config

    root = models_root or cache_root()
    limit = weight_bytes(target_dir)
    candidates = []
    for entry in sorted(root.iterdir()) if root.is_dir() else ():
        try:
            if read_config(entry).get("model_type") != "openelm":
                continue
            size = weight_bytes(entry)
            if 0 < size < limit and tokenizer_mismatch(target_dir, entry) is None:
                candidates.append((size, entry))
        except (SlmError, OSError):
            continue  # not a model directory, or a damaged one: not a candidate
    if not candidates:
        raise SlmError(
            f"--draft-model auto found no converted OpenELM model smaller than the target "
            f"that shares its tokenizer in {root}; convert one first, e.g. "
            "`mlx-slm generate -m apple/OpenELM-270M-Instruct -n 1`."
        )
    return min(candidates)[1]


def resolve_draft_dir(name: str, target_dir: Path | None) -> Path:
    """The draft's model directory: `name` itself, a Hub id's conversion, or (auto) the
    smallest cached model sharing the target's tokenizer."""
    from mlx_slm.apps.model_loading import resolve_model_dir
    from mlx_slm.convert.hub import looks_like_repo_id

    if name == AUTO:
        if target_dir is None:
            raise SlmError("--draft-model auto needs a target model directory (--model DIR).")
        return auto_draft(target_dir)
    if not Path(name).expanduser().exists() and not looks_like_repo_id(name):
        raise SlmError(f"Draft model directory {name} does not exist.")
    try:
        return resolve_model_dir(name)
    except SlmError as err:
        raise SlmError(f"Draft model: {err}") from None


def open_draft(options: DraftOptions, target_dir: Path, force: bool = False) -> OpenedDraft | None:
    """Resolve, check and load the draft `options` name (None without one)."""
    from mlx_slm.apps.model_loading import open_model
    from mlx_slm.loader import LoadOptions
    from mlx_slm.speculative import Draft

    if options.model is None:
        return None
    path = resolve_draft_dir(options.model, target_dir)
    name = str(path) if options.model == AUTO else options.model
    problem = tokenizer_mismatch(target_dir, path)
    if problem:
        raise SlmError(f"Draft model {name} cannot draft for this model: {problem}.")
    loaded = open_model(str(path), LoadOptions(force=force))  # in its own dtype
    return OpenedDraft(name, path, Draft(loaded.model, options.num_draft_tokens))


def draft_report(opened: OpenedDraft) -> dict:
    """The draft's fields of a JSON report: its name, K, and what it did."""
    draft = opened.draft
    return {"draft_model": opened.name,
            "num_draft_tokens": draft.num_draft_tokens or "adaptive",
            **draft.stats.as_dict()}


def format_draft_stats(report: dict) -> str:
    """The draft's part of the stats line."""
    plain = report["plain_tps"]
    alone = f", target alone {plain:.1f} tok/s" if plain else ""
    return (f"draft: acceptance {report['acceptance_rate']:.0%} "
            f"({report['accepted']}/{report['drafted']}), "
            f"mean kept {report['mean_accepted']:.2f}/round, K {report['num_draft_tokens']}"
            f"{alone}")
