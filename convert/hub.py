"""Downloads from the Hugging Face Hub, with its cache, progress bars, HF_TOKEN and offline mode.

huggingface_hub does the work (it reads HF_TOKEN, HF_HUB_OFFLINE and HF_HUB_CACHE itself);
this module chooses the files and turns its exceptions into one-line errors that say what
to do.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlx_slm.errors import SlmError

# What a conversion needs from a repo: Apple's repos also hold remote code and a README.
LIGHT_FILES = ["config.json", "tokenizer.model"]
MODEL_FILES = [*LIGHT_FILES, "*.safetensors", "model.safetensors.index.json"]


class HubError(SlmError):
    """A failed download; `reason` says why in a few words, for a list of attempts."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def looks_like_repo_id(name: str) -> bool:
    """'owner/name' and not a relative path such as './x/y' or '~/x'."""
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "~"))


def repo_url(repo_id: str) -> str:
    from huggingface_hub import constants

    return f"{constants.ENDPOINT}/{repo_id}"


def offline() -> bool:
    """Whether huggingface_hub runs in offline mode (HF_HUB_OFFLINE, read at its import)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


@contextmanager
def hub_errors(repo_id: str, revision: str | None = None, what: str = "") -> Iterator[None]:
    """Turn huggingface_hub's exceptions into HubErrors; `what` names the file wanted."""
    from huggingface_hub.utils import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    at = f" at revision {revision!r}" if revision else ""
    try:
        yield
    except GatedRepoError:
        raise HubError(
            f"{repo_id} is gated: request access at {repo_url(repo_id)}, then set HF_TOKEN to "
            "a token of the account that has it.", "gated, no access"
        ) from None
    except RepositoryNotFoundError:
        raise HubError(
            f"{repo_id} was not found on the Hub: check the name, or set HF_TOKEN if it is "
            "a private repo you can read.", "not found"
        ) from None
    except RevisionNotFoundError:
        raise HubError(
            f"{repo_id} has no revision {revision!r}: check --revision (a branch, tag or "
            "commit).", "no such revision"
        ) from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as err:
        raise _not_cached(repo_id, at, what, err) from None
    except EntryNotFoundError:
        raise HubError(f"{repo_id}{at} has no {what or 'such file'}.", f"no {what}") from None
    except HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status == 401:
            raise HubError(
                f"The Hub refused the token for {repo_id} (HTTP 401): set HF_TOKEN to a valid "
                "token, or unset it.", "token refused"
            ) from None
        raise HubError(
            f"The Hub answered HTTP {status} for {repo_id}: try again later, or pass a local "
            "directory.", f"HTTP {status}"
        ) from None
    except HFValidationError:
        raise HubError(
            f"{repo_id!r} is not a valid Hub repo id (owner/name).", "invalid repo id"
        ) from None
    except OSError as err:
        # Connection failures the Hub client does not wrap, and local disk errors.
        raise HubError(
            f"Downloading from {repo_id} failed: {first_line(err)}.", first_line(err)
        ) from None


def _not_cached(repo_id: str, at: str, what: str, err: Exception) -> HubError:
    wanted = f"{what} of {repo_id}" if what else repo_id
    if hasattr(err, "snapshot_path"):  # IncompleteSnapshotError
        return HubError(
            f"The cached copy of {repo_id}{at} is incomplete and the Hub cannot be reached: "
            "reconnect (or unset HF_HUB_OFFLINE) to finish the download.", "incomplete in cache"
        )
    if offline():
        return HubError(
            f"{wanted}{at} is not in the Hugging Face cache and HF_HUB_OFFLINE is set: unset "
            "HF_HUB_OFFLINE to download it, or pass a local directory.", "offline, not cached"
        )
    return HubError(
        f"Cannot reach the Hugging Face Hub for {wanted}{at}, and it is not in the local cache: "
        "check your connection (or HF_ENDPOINT), or pass a local directory.",
        "Hub unreachable, not cached",
    )


def first_line(err: BaseException) -> str:
    """An exception's message cut to one line, for one-line errors."""
    text = getattr(err, "strerror", None) or str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def fetch_snapshot(repo_id: str, revision: str | None, patterns: list[str]) -> Path:
    """The local snapshot of `repo_id` holding the files matching `patterns`."""
    from huggingface_hub import snapshot_download

    with hub_errors(repo_id, revision):
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))


def fetch_file(repo_id: str, filename: str, revision: str | None = None) -> Path:
    """One file of a repo, from the cache or downloaded into it."""
    from huggingface_hub import hf_hub_download

    with hub_errors(repo_id, revision, filename):
        return Path(hf_hub_download(repo_id, filename, revision=revision))
