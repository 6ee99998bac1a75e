"""Pretrained weights by name: a tag's file from the Hugging Face Hub, through its cache.

``load_pretrained("efficientvit_b1.r288_in1k")`` finds the tag's repository and file in the
tag table (``data.tags``: ``hf_hub_id``, ``hf_hub_filename``), fetches the file with
``huggingface_hub`` into its cache and converts it as ``load_timm_weights`` does.

Offline-first: the cache is read before any network call, so a cached file never touches
the network (a published checkpoint does not change). ``huggingface_hub``'s own settings
apply: ``HF_HOME``/``HF_HUB_CACHE`` (where), ``HF_ENDPOINT`` (a mirror), ``HF_HUB_OFFLINE=1``
(never a network call), ``HF_HUB_DISABLE_PROGRESS_BARS``. Every failure is one
``ValueError`` line. ``huggingface_hub`` is imported here only, on first use (the ``zoo``
extra).
"""

from __future__ import annotations

from typing import Any

from efficientvit_jax.data import tags as _tags

# The flag of every command that fetches weights, but `convert`'s (its file is --input).
_GIVE_FILE = "give --weights FILE (convert: --input FILE)"
_OFFLINE_HINT = f"without network, {_GIVE_FILE}: the checkpoint, downloaded elsewhere"


def hub_file(name: str) -> tuple[str, str]:
    """``(repository, filename)`` of the weights of tag ``name`` (a bare model name: its
    first tag, as in timm). A name without published weights raises ``ValueError`` naming
    the tags that have some."""
    tag = _tags.get_tag(name)  # an unknown model or tag lists the known ones
    if tag.hf_hub_id is None:
        have = [t.name for t in _tags.TAGS.values() if t.hf_hub_id is not None]
        raise ValueError(f"{tag.name}: no published weights; tags with weights: {', '.join(have)}")
    return tag.hf_hub_id, tag.hf_hub_filename


def fetch_weights(name: str) -> str:
    """The local path of tag ``name``'s weights file: from the cache, else downloaded into it
    (with ``huggingface_hub``'s progress bar)."""
    return fetch_file(name, *hub_file(name))


def fetch_file(name: str, repo: str, filename: str) -> str:
    """The local path of ``filename`` in Hub repository ``repo`` (the weights of ``name``, which
    the errors name): from the cache, else downloaded into it."""
    import huggingface_hub as hf  # missing: the CLI names the `zoo` extra
    from huggingface_hub import constants, errors

    where = f"{repo} {filename}"
    try:  # the cache first: no network call at all for a file already there
        return hf.hf_hub_download(repo, filename, local_files_only=True)
    except errors.LocalEntryNotFoundError:
        pass
    if constants.HF_HUB_OFFLINE:
        raise ValueError(
            f"{name}: weights {where} are not in the cache ({constants.HF_HUB_CACHE}) and "
            f"HF_HUB_OFFLINE is set; {_OFFLINE_HINT}"
        )
    _probe(name, repo, filename)
    try:
        return hf.hf_hub_download(repo, filename, library_name="efficientvit-jax")
    except errors.LocalEntryNotFoundError as e:  # the endpoint went away since the probe
        raise _unreachable(name, where, e) from None
    except errors.HfHubHTTPError as e:
        raise _answered(name, where, e) from None


def _probe(name: str, repo: str, filename: str) -> None:
    """One look-up of the file, without retries: ``hf_hub_download`` retries a failed
    connection with back-off for about 30 seconds and logs each try, where no network should
    be one line at once."""
    import huggingface_hub as hf
    from huggingface_hub import errors

    where = f"{repo} {filename}"
    try:
        hf.get_hf_file_metadata(hf.hf_hub_url(repo, filename), library_name="efficientvit-jax")
    except errors.HfHubHTTPError as e:
        raise _answered(name, where, e) from None
    except Exception as e:  # any other failure (refused, DNS, timeout, proxy): unreachable
        raise _unreachable(name, where, e) from None


def _unreachable(name: str, where: str, e: BaseException) -> ValueError:
    from huggingface_hub import constants

    return ValueError(
        f"{name}: cannot download {where} from {constants.ENDPOINT} ({_cause(e)}) and it is "
        f"not in the cache ({constants.HF_HUB_CACHE}); {_OFFLINE_HINT}"
    )


def _answered(name: str, where: str, e: Any) -> ValueError:
    """The Hub (or the mirror) answered, and not with the file."""
    from huggingface_hub import constants, errors

    code = getattr(getattr(e, "response", None), "status_code", None)
    status = f"HTTP {code}" if code is not None else _cause(e)
    missing = (errors.RepositoryNotFoundError, errors.RemoteEntryNotFoundError)
    if code == 404 or isinstance(e, missing):
        return ValueError(f"{name}: {constants.ENDPOINT} has no {where} ({status}); {_GIVE_FILE}")
    return ValueError(
        f"{name}: downloading {where} from {constants.ENDPOINT} failed ({status}); {_OFFLINE_HINT}"
    )


def _cause(e: BaseException) -> str:
    """The deepest cause's first line: the connection error, not the client's advice."""
    for _ in range(10):  # a chain of causes, never a cycle in practice: bounded anyway
        inner = e.__cause__ or e.__context__
        if inner is None:
            break
        e = inner
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first}" if first else type(e).__name__
